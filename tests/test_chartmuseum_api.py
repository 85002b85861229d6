"""ChartMuseum's upload and chart API (/helm/api/<ns>/charts, /api/helm/<ns>/charts) over the same store."""

from __future__ import annotations

import asyncio
import secrets

import aiohttp
import pytest
import yaml

from cnr_oci.settings import Settings
from tests import helpers
from tests.test_auth import basic
from tests.test_helm_repo import chart, push

API = "/cnr/api/v1/packages"
CM = "/helm/api"


def ns_() -> str:
    return "cm" + secrets.token_hex(3)


def form(blob: bytes, field: str = "chart", prov: bytes | None = None) -> aiohttp.FormData:
    data = aiohttp.FormData()
    data.add_field(field, blob, filename="chart.tgz", content_type="application/octet-stream")
    if prov is not None:
        data.add_field("prov", prov, filename="chart.tgz.prov", content_type="application/octet-stream")
    return data


async def upload(client, ns: str, body, prefix: str = CM, query: str = "", **kw):
    return await client.post(f"{prefix}/{ns}/charts{query}", data=body, **kw)


async def index_versions(client, ns: str, name: str) -> list[str]:
    resp = await client.get(f"/helm/{ns}/index.yaml")
    assert resp.status == 200
    return [e["version"] for e in (yaml.safe_load(await resp.read())["entries"] or {}).get(name, [])]


async def test_raw_and_multipart_uploads_are_found_by_helm_repo_update_and_pull(client, helm, tmp_path):
    ns = ns_()
    raw, multi = chart("web", "1.0.0"), chart("web", "1.1.0")
    # cm-push with --context-path=/helm, raw body; and without it, multipart with the `chart` field
    resp = await upload(client, ns, raw, headers={"Content-Type": "application/gzip"})
    assert (resp.status, await resp.json()) == (201, {"saved": True})
    resp = await upload(client, ns, form(multi), prefix="/api/helm")
    assert (resp.status, await resp.json()) == (201, {"saved": True})
    # stored as CNR pushes of media type helm in the package <ns>/<chart name>
    listed = await (await client.get(f"{API}/{ns}/web")).json()
    assert sorted(m["release"] for m in listed) == ["1.0.0", "1.1.0"]
    assert {m["mediaType"] for m in listed} == {"application/vnd.cnr.package-manifest.helm.v1.json"}
    await asyncio.to_thread(helm, "repo", "add", "cm", str(client.make_url(f"/helm/{ns}")))
    await asyncio.to_thread(helm, "repo", "update")
    out = tmp_path / "out"
    out.mkdir()
    for version, blob in (("1.0.0", raw), ("1.1.0", multi)):
        await asyncio.to_thread(helm, "pull", "cm/web", "--version", version, "-d", str(out))
        assert (out / f"web-{version}.tgz").read_bytes() == blob


async def test_an_existing_version_is_409_and_force_overwrites_it(client):
    ns = ns_()
    first, second = chart("app", "1.0.0"), chart("app", "1.0.0", "keywords: [second]\n")
    assert (await upload(client, ns, first)).status == 201
    resp = await upload(client, ns, second)
    body = await resp.json()
    assert resp.status == 409 and set(body) == {"error"} and "already exists" in body["error"]
    resp = await upload(client, ns, form(second), query="?force")
    assert (resp.status, await resp.json()) == (201, {"saved": True})
    got = await client.get(f"/helm/{ns}/charts/app-1.0.0.tgz")
    assert await got.read() == second


async def test_the_three_list_routes_answer_get_and_head_in_chartmuseums_shapes(client):
    ns = ns_()
    for name, version in (("alpha", "1.0.0"), ("alpha", "1.2.0"), ("alpha", "2.0.0-rc.1"), ("beta", "0.1.0")):
        assert (await upload(client, ns, chart(name, version))).status == 201
    resp = await client.get(f"{CM}/{ns}/charts")
    every = await resp.json()
    assert resp.status == 200 and sorted(every) == ["alpha", "beta"]
    assert [e["version"] for e in every["alpha"]] == ["2.0.0-rc.1", "1.2.0", "1.0.0"]
    assert every["beta"][0]["urls"] == ["charts/beta-0.1.0.tgz"] and every["beta"][0]["name"] == "beta"
    assert list(await (await client.get(f"{CM}/{ns}/charts?offset=1&limit=1")).json()) == ["beta"]
    resp = await client.get(f"{CM}/{ns}/charts?limit=0")
    assert resp.status == 400 and await resp.json() == {"error": "limit is not a valid positive integer"}
    resp = await client.get(f"{CM}/{ns}/charts/alpha")
    assert resp.status == 200 and [e["version"] for e in await resp.json()] == ["2.0.0-rc.1", "1.2.0", "1.0.0"]
    resp = await client.get(f"{CM}/{ns}/charts/alpha/1.0.0")
    assert resp.status == 200 and (await resp.json())["version"] == "1.0.0"
    assert (await (await client.get(f"{CM}/{ns}/charts/alpha/latest")).json())["version"] == "1.2.0"
    resp = await client.get(f"{CM}/{ns}/charts/gamma")
    assert resp.status == 404 and await resp.json() == {"error": "chart not found"}
    resp = await client.get(f"{CM}/{ns}/charts/alpha/9.9.9")
    assert resp.status == 404 and "alpha-9.9.9" in (await resp.json())["error"]
    for path, status in (("charts", 200), ("charts/alpha", 200), ("charts/alpha/1.2.0", 200),
                         ("charts/gamma", 404), ("charts/alpha/9.9.9", 404)):
        resp = await client.head(f"{CM}/{ns}/{path}")
        assert resp.status == status, path
        assert await resp.read() == b""


async def test_delete_removes_the_release_from_index_cnr_listing_and_oci_tags(client, registry):
    ns = ns_()
    for version in ("1.0.0", "1.1.0"):
        assert (await upload(client, ns, chart("web", version))).status == 201
    assert helpers.tags(registry.url, f"{ns}/web") == ["1.0.0", "1.1.0"]
    resp = await client.delete(f"{CM}/{ns}/charts/web/1.0.0")
    assert (resp.status, await resp.json()) == (200, {"deleted": True})
    assert await index_versions(client, ns, "web") == ["1.1.0"]
    listed = await (await client.get(f"{API}/{ns}/web")).json()
    assert [m["release"] for m in listed] == ["1.1.0"]
    assert helpers.tags(registry.url, f"{ns}/web") == ["1.1.0"]
    resp = await client.delete(f"{CM}/{ns}/charts/web/1.0.0")
    assert resp.status == 404 and set(await resp.json()) == {"error"}


async def test_delete_of_a_chart_stored_under_another_package_is_404_naming_that_package(client, registry):
    ns = ns_()
    await push(client, ns, "database", chart("db", "2.0.0"), "2.0.0")
    resp = await client.delete(f"{CM}/{ns}/charts/db/2.0.0")
    body = await resp.json()
    assert resp.status == 404 and f"{ns}/database" in body["error"]
    assert helpers.tags(registry.url, f"{ns}/database") == ["2.0.0"]
    assert await index_versions(client, ns, "db") == ["2.0.0"]


async def test_bad_uploads_get_chartmuseum_errors_and_store_nothing(make_client, registry):
    client = await make_client(Settings(upstream=registry.url, max_body_size=64 * 1024))
    ns = ns_()
    cases = [
        (b"not a tarball", 400),
        (chart("web", "1.0"), 400),  # helm takes it, CNR needs strict SemVer
        (helpers.kpm(), 400),  # no Chart.yaml
        (form(chart("web", "1.0.0"), prov=b"-----BEGIN PGP SIGNED MESSAGE-----"), 400),  # not a .prov
        (form(chart("web", "1.0.0"), field="other"), 400),
        (secrets.token_bytes(100 * 1024), 413),
    ]
    for body, status in cases:
        resp = await upload(client, ns, body)
        got = await resp.json()
        assert resp.status == status and set(got) == {"error"} and got["error"], (status, got)
    assert helpers.tags(registry.url, f"{ns}/web") == []
    resp = await client.post(f"{CM}/{ns}/prov", data=b"x")
    assert resp.status == 400 and "provenance" in (await resp.json())["error"]


async def test_an_upload_without_rights_is_401_before_the_body_matters(make_client, htpasswd_registry):
    client = await make_client(Settings(upstream=htpasswd_registry.url))
    ns = ns_()
    # Not a chart: without (valid) credentials the answer is still 401, with a challenge.
    for headers in ({}, basic("alice", "wrong")):
        resp = await upload(client, ns, b"not a chart", headers=headers)
        assert resp.status == 401 and set(await resp.json()) == {"error"}
        assert resp.headers["WWW-Authenticate"].startswith("Basic")
    resp = await upload(client, ns, chart("web", "1.0.0"), headers=basic("alice"))
    assert (resp.status, await resp.json()) == (201, {"saved": True})
    # A body declared far past the limit, never sent: 401 comes first (the connection is left unusable).
    resp = await client.post(f"{CM}/{ns}/charts", headers={"Content-Length": str(1 << 40)}, data=b"")
    assert resp.status == 401


def test_hostile_forms_are_refused_with_400():
    from cnr_oci import errors
    from cnr_oci.cmapi import MAX_PARTS, parse_upload

    ct = "multipart/form-data; boundary=XyZ"
    part = b'--XyZ\r\nContent-Disposition: form-data; name="f"; filename="a"\r\n\r\nbody\r\n'
    for body, where in ((part, "not terminated"), (part * (MAX_PARTS + 1) + b"--XyZ--\r\n", "more than"),
                        (b"--XyZ\r\nno headers end\r\n--XyZ--", "without headers")):
        with pytest.raises(errors.InvalidUsage, match=where):
            parse_upload(ct, body, False)
    with pytest.raises(errors.InvalidUsage, match="boundary"):
        parse_upload("multipart/form-data", part, False)
    ok, _ = parse_upload(ct, b"preamble\r\n--XyZ\r\nContent-Disposition: form-data; name=\"chart\"; filename=\"c.tgz\""
                      b"\r\n\r\n" + chart("c", "1.0.0") + b"\r\n--XyZ--\r\n", True)
    assert ok is not None and ok.release == "1.0.0" and ok.force and ok.blob == chart("c", "1.0.0")


async def test_delete_of_a_chart_version_several_releases_hold_is_409_naming_them(client, registry):
    """appr let releases 1.0.0 and 1.1.0 hold the same chart 0.1.0: deleting one would leave it listed."""
    ns = ns_()
    same = chart("myapp", "0.1.0")
    for release in ("1.0.0", "1.1.0"):
        await push(client, ns, "myapp", same, release)
    resp = await client.delete(f"{CM}/{ns}/charts/myapp/0.1.0")
    body = await resp.json()
    assert resp.status == 409 and "1.0.0, 1.1.0" in body["error"] and set(body) == {"error"}
    assert helpers.tags(registry.url, f"{ns}/myapp") == ["1.0.0", "1.1.0"]
    assert await index_versions(client, ns, "myapp") == ["0.1.0"]


async def test_latest_and_the_order_read_versions_as_helm_does(client, registry):
    """helm reads 1.0 as 1.0.0: it sorts above 0.5.0 and is the latest."""
    from tests.test_interop import push_like_helm

    ns = ns_()
    for version in ("0.5.0", "1.0", "2.0-rc1"):
        blob = chart("loose", version)
        config = f'{{"apiVersion":"v2","name":"loose","version":"{version}"}}'.encode()
        push_like_helm(registry.url, f"{ns}/loose", version, blob, config)
    assert await index_versions(client, ns, "loose") == ["2.0-rc1", "1.0", "0.5.0"]
    latest = await (await client.get(f"{CM}/{ns}/charts/loose/latest")).json()
    assert latest["version"] == "1.0"


async def test_with_disable_force_overwrite_the_409_does_not_suggest_force(make_client, registry):
    client = await make_client(Settings(upstream=registry.url, disable_force_overwrite=True))
    ns = ns_()
    assert (await upload(client, ns, chart("app", "1.0.0"))).status == 201
    resp = await upload(client, ns, chart("app", "1.0.0"), query="?force")
    message = (await resp.json())["error"]
    assert resp.status == 409 and "?force" not in message and "does not overwrite" in message
