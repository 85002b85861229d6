"""The CNR API against a real docker-registry: the behaviours appr's own API tests asserted."""

from __future__ import annotations

import asyncio
import base64

import pytest

from tests import helpers
from tests.helpers import body, chart, kpm, sha, unique

API = "/cnr/api/v1/packages"


@pytest.fixture
def pkg():
    return "/".join(unique())


async def push(client, name, blob, release="1.0.0", media_type="kpm", query="", **more):
    resp = await client.post(f"{API}/{name}{query}", json=body(blob, release, media_type, **more))
    return resp.status, await resp.json()


async def test_version_answers_all_three_versions(client):
    for path in ("/cnr/version", "/version", "/cnr/version/"):
        resp = await client.get(path)
        assert resp.status == 200
        data = await resp.json()
        assert set(data) == {"appr-api", "cnr-api", "cnr-oci"}


async def test_index_page_points_at_a_working_pull_route(client, pkg):
    blob = kpm()
    await push(client, pkg, blob)
    page = await (await client.get("/cnr/")).text()
    assert 'name="appr-package"' in page
    content = page.split('name="appr-package" content="')[1].split('"')[0]
    template = content.split(" ")[1]
    url = template.format(name=pkg, version="1.0.0", media_type="kpm")
    path = url.split("//", 1)[1].split("/", 1)[1]
    resp = await client.get("/" + path)
    assert resp.status == 200 and await resp.read() == blob


async def test_well_known_discovery_document(client):
    data = await (await client.get("/.well-known/app-registry-uri.json")).json()
    assert data["version"] == "v1.0.0" and data["uri_prefix"].endswith("/cnr/")


async def test_push_then_pull_exact_release_round_trips(client, pkg):
    blob = kpm()
    assert await push(client, pkg, blob) == (200, {"status": "ok"})
    resp = await client.get(f"{API}/{pkg}/1.0.0/kpm/pull")
    assert resp.status == 200
    assert resp.headers["Content-Type"] == "application/x-gzip"
    assert resp.headers["Content-Disposition"] == f"{pkg.replace('/', '_')}_1.0.0.tar.gz"
    assert await resp.read() == blob


async def test_pull_missing_release_is_404(client, pkg):
    await push(client, pkg, kpm())
    resp = await client.get(f"{API}/{pkg}/9.9.9/kpm/pull")
    assert resp.status == 404
    assert (await resp.json())["code"] == "package-release-not-found"


async def test_pull_unparseable_release_is_422(client, pkg):
    await push(client, pkg, kpm())
    resp = await client.get(f"{API}/{pkg}/abc/kpm/pull")
    assert resp.status == 422
    assert (await resp.json())["code"] == "invalid-release"


async def test_pull_unknown_package_is_404_package_not_found(client):
    resp = await client.get(f"{API}/nope/nothing/1.0.0/kpm/pull")
    assert resp.status == 404
    data = await resp.json()
    assert data["code"] == "package-not-found" and data["error"]["code"] == "package-not-found"


async def test_pull_with_dash_media_type_picks_the_only_one(client, pkg):
    blob = kpm()
    await push(client, pkg, blob)
    resp = await client.get(f"{API}/{pkg}/1.0.0/-/pull")
    assert resp.status == 200 and await resp.read() == blob


async def test_pull_as_json_round_trips_the_blob(client, pkg):
    blob = kpm(extra=bytes(range(256)) * 1000)
    await push(client, pkg, blob)
    for url in (f"{API}/{pkg}/1.0.0/kpm/pull?format=json", f"{API}/{pkg}/1.0.0/kpm/pull/json"):
        resp = await client.get(url)
        data = await resp.json()
        assert base64.b64decode(data["blob"]) == blob
        assert data["release"] == "1.0.0" and data["media_type"] == "kpm" and data["package"] == pkg
        assert data["filename"] == f"{pkg.replace('/', '_')}_1.0.0.tar.gz"


async def test_pull_by_version_range_and_default(client, pkg):
    blobs = {r: kpm(extra=r.encode()) for r in ("1.0.0", "1.1.0", "2.0.0-beta")}
    for r, b in blobs.items():
        await push(client, pkg, b, r)
    resp = await client.get(f"{API}/{pkg}/%3E%3D1.0%2C%3C2/kpm/pull")
    assert await resp.read() == blobs["1.1.0"]
    resp = await client.get(f"{API}/{pkg}/default/kpm/pull")
    assert await resp.read() == blobs["2.0.0-beta"]


async def test_repush_without_force_is_409_and_keeps_the_first_bytes(client, pkg, registry):
    first, second = kpm(extra=b"1"), kpm(extra=b"2")
    await push(client, pkg, first)
    status, data = await push(client, pkg, second)
    assert status == 409 and data["code"] == "package-exists"
    assert data["details"] == {"package": pkg, "release": "1.0.0", "media_type": "kpm"}
    assert await (await client.get(f"{API}/{pkg}/1.0.0/kpm/pull")).read() == first


@pytest.mark.parametrize("where", ["body-bool", "body-string", "query"])
async def test_force_push_overwrites(client, pkg, where):
    await push(client, pkg, kpm(extra=b"1"))
    second = kpm(extra=b"2")
    if where == "query":
        status, _ = await push(client, pkg, second, query="?force=true")
    else:
        status, _ = await push(client, pkg, second, force=True if where == "body-bool" else "true")
    assert status == 200
    assert await (await client.get(f"{API}/{pkg}/1.0.0/kpm/pull")).read() == second


async def test_blob_by_digest_raw_and_json(client, pkg):
    blob = kpm()
    await push(client, pkg, blob)
    digest = sha(blob)
    resp = await client.get(f"{API}/{pkg}/blobs/sha256/{digest}")
    assert resp.status == 200 and await resp.read() == blob
    assert resp.headers["Content-Disposition"] == f"{pkg.replace('/', '_')}_{digest[:8]}.tar.gz"
    for url in (f"{API}/{pkg}/blobs/sha256/{digest}?format=json", f"{API}/{pkg}/blobs/sha256/{digest}/json"):
        data = await (await client.get(url)).json()
        assert base64.b64decode(data["blob"]) == blob
        assert data["release"] == digest and "media_type" not in data
        assert data["filename"] == f"{pkg.replace('/', '_')}_{digest[:8]}.tar.gz"


async def test_unknown_blob_is_404(client, pkg):
    await push(client, pkg, kpm())
    resp = await client.get(f"{API}/{pkg}/blobs/sha256/{'0' * 64}")
    assert resp.status == 404 and (await resp.json())["code"] == "package-not-found"


async def test_delete_then_show_is_404(client, pkg):
    await push(client, pkg, kpm(), "1.0.0")
    await push(client, pkg, kpm(extra=b"2"), "1.1.0")
    resp = await client.delete(f"{API}/{pkg}/1.0.0/kpm")
    assert resp.status == 200
    assert await resp.json() == {"status": "deleted", "package": pkg, "release": "1.0.0"}
    resp = await client.get(f"{API}/{pkg}/1.0.0/kpm")
    assert resp.status == 404


async def test_deleted_release_can_be_pushed_again(client, pkg):
    await push(client, pkg, kpm())
    await client.delete(f"{API}/{pkg}/1.0.0/kpm")
    assert (await push(client, pkg, kpm(extra=b"again")))[0] == 200


async def test_delete_missing_release_is_404(client, pkg):
    await push(client, pkg, kpm())
    resp = await client.delete(f"{API}/{pkg}/2.0.0/kpm")
    assert resp.status == 404 and (await resp.json())["code"] == "package-not-found"


async def test_show_by_release_and_by_range(client, pkg):
    blob = kpm()
    await push(client, pkg, blob, "1.0.0", metadata={"k": "v"})
    await push(client, pkg, kpm(extra=b"x"), "1.2.0")
    data = await (await client.get(f"{API}/{pkg}/1.0.0/kpm")).json()
    assert data["release"] == "1.0.0" and data["package"] == pkg
    assert data["metadata"] == {"k": "v"}
    assert data["content"]["digest"] == sha(blob) and data["content"]["size"] == len(blob)
    assert data["mediaType"] == "application/vnd.cnr.package-manifest.kpm.v1.json"
    assert data["content"]["mediaType"] == "application/vnd.cnr.package.kpm.v1.tar+gzip"
    assert data["channels"] == [] and data["digest"].startswith("sha256:")
    data = await (await client.get(f"{API}/{pkg}/%5E1.0.0/kpm")).json()
    assert data["release"] == "1.2.0"


async def test_list_every_release_and_one_releases_manifests(client, pkg):
    for r in ("1.0.0", "1.1.0"):
        await push(client, pkg, kpm(extra=r.encode()), r)
    data = await (await client.get(f"{API}/{pkg}")).json()
    assert sorted(m["release"] for m in data) == ["1.0.0", "1.1.0"]
    assert (await (await client.get(f"{API}/{pkg}?media_type=helm")).json()) == []
    data = await (await client.get(f"{API}/{pkg}/1.1.0")).json()
    assert [m["release"] for m in data] == ["1.1.0"]
    resp = await client.get(f"{API}/{pkg}/3.0.0")
    assert resp.status == 404


async def test_search_hit_and_miss(client, pkg):
    await push(client, pkg, kpm())
    hits = await (await client.get("/cnr/api/v1/packages/search", params={"q": pkg.split("/")[1]})).json()
    assert pkg in hits
    assert await (await client.get("/cnr/api/v1/packages/search", params={"q": "zz-no-such"})).json() == []


async def test_list_packages_with_filters_and_trailing_slash(client, pkg):
    ns, name = pkg.split("/")
    await push(client, pkg, kpm(), "1.0.0")
    await push(client, pkg, kpm(extra=b"b"), "2.0.0-beta")
    for url in (API, API + "/"):
        data = await (await client.get(url, params={"namespace": ns})).json()
        assert [p["name"] for p in data] == [pkg]
    p = data[0]
    assert p["namespace"] == ns and p["releases"] == ["2.0.0-beta", "1.0.0"] and p["default"] == "2.0.0-beta"
    assert p["manifests"] == ["kpm"] and p["visibility"] == "public" and p["channels"] is None
    assert p["created_at"] <= p["updated_at"]
    assert [x["name"] for x in await (await client.get(API, params={"query": name.upper()})).json()] == [pkg]
    assert await (await client.get(API, params={"namespace": ns, "media_type": "helm"})).json() == []
    data = await (await client.get(API, params={"namespace": ns, "media_type": "kpm"})).json()
    assert data[0]["manifests"] == ["kpm"]
    assert await (await client.get(API, params={"query": "zz-no-such"})).json() == []


async def test_list_paging_is_opt_in(client):
    ns = unique()[0]
    for i in range(3):
        await push(client, f"{ns}/p{i}", kpm())
    data = await (await client.get(API, params={"namespace": ns, "limit": "2", "offset": "1"})).json()
    assert [p["name"] for p in data] == [f"{ns}/p1", f"{ns}/p2"]


async def test_helm_push_shows_as_helm(client):
    ns, name = unique()
    blob = chart(name)
    assert (await push(client, f"{ns}/{name}", blob, media_type="helm"))[0] == 200
    data = await (await client.get(f"{API}/{ns}/{name}/1.0.0/helm")).json()
    assert data["mediaType"] == "application/vnd.cnr.package-manifest.helm.v1.json"
    assert await (await client.get(f"{API}/{ns}/{name}/1.0.0/helm/pull")).read() == blob


async def test_routes_are_served_bare_and_with_trailing_slash(client, pkg):
    blob = kpm()
    await push(client, pkg, blob)
    for url in (f"/api/v1/packages/{pkg}/1.0.0/kpm/pull", f"/api/v1/packages/{pkg}/1.0.0/kpm/pull/"):
        resp = await client.get(url)
        assert resp.status == 200 and await resp.read() == blob


async def test_long_media_type_in_path_is_shortened(client, pkg):
    await push(client, pkg, kpm())
    resp = await client.get(f"{API}/{pkg}/1.0.0/application%2Fvnd.cnr.package-manifest.kpm.v1.json")
    assert resp.status == 200


async def test_router_404_and_405_use_the_cnr_shape(client):
    resp = await client.get("/cnr/api/v1/nothing-here")
    data = await resp.json()
    assert resp.status == 404 and data["code"] == "resource-not-found" and data["error"]["message"]
    resp = await client.put("/cnr/api/v1/packages")
    assert resp.status == 405 and (await resp.json())["code"]


async def test_login_route_exists_and_checks_fields(client):
    resp = await client.post("/cnr/api/v1/users/login", json={"user": {"username": "u", "password": "p"}})
    assert resp.status == 200 and "token" in await resp.json()
    resp = await client.post("/cnr/api/v1/users/login", json={"user": {"username": "u"}})
    assert resp.status == 400 and (await resp.json())["code"] == "invalid-usage"


async def test_health_and_readiness(client):
    assert (await client.get("/healthz")).status == 200
    assert (await client.get("/readyz")).status == 200


async def test_tags_that_are_not_releases_never_appear(client, pkg, registry):
    blob = kpm()
    await push(client, pkg, blob)
    manifest, _ = helpers.manifest(registry.url, pkg, "1.0.0")
    import json
    import urllib.request

    req = urllib.request.Request(
        f"{registry.url}/v2/{pkg}/manifests/latest", data=json.dumps(manifest).encode(), method="PUT",
        headers={"Content-Type": "application/vnd.oci.image.manifest.v1+json"},
    )
    urllib.request.urlopen(req).close()
    assert helpers.tags(registry.url, pkg) == ["1.0.0", "latest"]
    data = await (await client.get(f"{API}/{pkg}")).json()
    assert [m["release"] for m in data] == ["1.0.0"]


def upstream_requests(metrics_text: str) -> float:
    return sum(float(line.rsplit(" ", 1)[1]) for line in metrics_text.splitlines()
               if line.startswith("cnr_oci_upstream_requests_total{"))


async def test_metrics_and_a_warm_listing_asks_the_registry_nothing_per_package(client):
    ns = unique()[0]
    for i in range(5):
        await push(client, f"{ns}/p{i}", kpm())
    assert len(await (await client.get(API, params={"namespace": ns})).json()) == 5
    before = upstream_requests(await (await client.get("/metrics")).text())
    assert before > 0
    assert len(await (await client.get(API, params={"namespace": ns})).json()) == 5
    after = upstream_requests(await (await client.get("/metrics")).text())
    assert after == before
    text = await (await client.get("/metrics")).text()
    assert 'route="/cnr/api/v1/packages"' in text


async def test_identical_listings_asked_at_once_are_built_once(client):
    from cnr_oci import appkeys

    pkg = "/".join(unique())
    for r in ("1.0.0", "1.1.0"):
        assert (await client.post(f"{API}/{pkg}", json=body(kpm(), release=r))).status == 200
    store = client.app[appkeys.STORE]
    builds = 0
    real = store.manifests

    async def counting(*args, **kwargs):
        nonlocal builds
        builds += 1
        await asyncio.sleep(0.2)  # long enough for the other callers to arrive
        return await real(*args, **kwargs)

    store.manifests = counting  # type: ignore[method-assign]
    answers = await asyncio.gather(*(client.get(f"{API}/{pkg}") for _ in range(5)))
    bodies = [await a.json() for a in answers]
    assert builds == 1 and all(b == bodies[0] for b in bodies) and len(bodies[0]) == 2
