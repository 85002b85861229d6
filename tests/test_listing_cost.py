"""What a cold E5 listing costs in registry requests: at most 2 per package (tag list, the highest
release's manifest) plus the catalog, whatever the number of releases."""

from __future__ import annotations

import dataclasses

from cnr_oci.settings import Settings
from tests.helpers import body, kpm, unique

API = "/cnr/api/v1/packages"
PACKAGES = 20
RELEASES = ["1.0.0", "1.1.0", "2.0.0-rc.1", "2.0.0"]


def upstream_requests(metrics_text: str) -> float:
    return sum(float(line.rsplit(" ", 1)[1]) for line in metrics_text.splitlines()
               if line.startswith("cnr_oci_upstream_requests_total{"))


async def test_cold_listing_costs_at_most_two_requests_per_package(make_client, own_registry):
    settings = Settings(upstream=own_registry.url, max_body_size=4 * 1024 * 1024)
    writer = await make_client(settings)
    ns = unique()[0]
    for i in range(PACKAGES):
        for r in RELEASES:
            resp = await writer.post(f"{API}/{ns}/p{i:02d}", json=body(kpm(extra=r.encode()), release=r))
            assert resp.status == 200, await resp.text()
    reader = await make_client(dataclasses.replace(settings))  # a fresh process's caches: cold
    before = upstream_requests(await (await reader.get("/metrics")).text())
    listed = await (await reader.get(API)).json()
    cost = upstream_requests(await (await reader.get("/metrics")).text()) - before
    assert [p["name"] for p in listed] == [f"{ns}/p{i:02d}" for i in range(PACKAGES)]
    for p in listed:
        assert p["releases"] == ["2.0.0", "2.0.0-rc.1", "1.1.0", "1.0.0"] and p["default"] == "2.0.0"
        assert p["manifests"] == ["kpm"] and p["created_at"] and p["created_at"] <= p["updated_at"]
    # One catalog page, then a tag list and one manifest a package; no request per release.
    assert cost <= 2 * PACKAGES + 1, cost


async def test_listing_skips_a_highest_release_that_holds_no_package(client, registry):
    """An image tagged above the package's releases is not the default; the request walk stops at
    the first release that holds a package."""
    from tests import helpers

    pkg = "/".join(unique())
    assert (await client.post(f"{API}/{pkg}", json=body(kpm(), release="1.0.0"))).status == 200
    config = helpers.put_blob(registry.url, pkg, b"{}")
    layer = helpers.put_blob(registry.url, pkg, b"not a package")
    helpers.put_manifest(registry.url, pkg, "9.0.0", {
        "schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": config, "size": 2},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": layer, "size": 13}],
    })
    listed = await (await client.get(API, params={"namespace": pkg.split("/")[0]})).json()
    assert [(p["name"], p["default"], p["releases"], p["manifests"]) for p in listed] == [
        (pkg, "1.0.0", ["1.0.0"], ["kpm"])]


async def test_listing_streams_and_a_limit_stops_the_reads(make_client, own_registry):
    """E5 goes out chunked (no Content-Length: the first byte does not wait for the last package),
    and limit/offset take a window of it."""
    settings = Settings(upstream=own_registry.url, max_body_size=4 * 1024 * 1024)
    writer = await make_client(settings)
    ns = unique()[0]
    for i in range(6):
        assert (await writer.post(f"{API}/{ns}/p{i}", json=body(kpm(), release="1.0.0"))).status == 200
    reader = await make_client(dataclasses.replace(settings))
    resp = await reader.get(API)
    assert resp.status == 200 and resp.headers.get("Transfer-Encoding") == "chunked"
    assert "Content-Length" not in resp.headers and resp.content_type == "application/json"
    assert [p["name"] for p in await resp.json()] == [f"{ns}/p{i}" for i in range(6)]
    reader = await make_client(dataclasses.replace(settings))
    before = upstream_requests(await (await reader.get("/metrics")).text())
    page = await (await reader.get(API, params={"offset": "1", "limit": "2"})).json()
    assert [p["name"] for p in page] == [f"{ns}/p1", f"{ns}/p2"]
    # The catalog and at most 2 requests a package: the packages past the window are read once, and kept.
    assert upstream_requests(await (await reader.get("/metrics")).text()) - before <= 1 + 2 * 6
    assert await (await reader.get(API, params={"limit": "0"})).json() == []
    assert (await reader.get(API, params={"limit": "x"})).status == 422
