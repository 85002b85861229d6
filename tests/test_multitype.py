"""Several media types in one release: the tag becomes an OCI index, one entry each."""

from __future__ import annotations

import asyncio

import pytest

from cnr_oci import layout, wire
from tests import helpers
from tests.helpers import body, chart, kpm, unique

API = "/cnr/api/v1/packages"
ANN = "vnd.cnr.package.media-type"


@pytest.fixture
async def both(client):
    """Package ns/name whose release 1.0.0 holds helm, then kpm."""
    ns, name = unique()
    pkg = f"{ns}/{name}"
    h, k = chart(name), kpm()
    assert (await client.post(f"{API}/{pkg}", json=body(h, media_type="helm"))).status == 200
    assert (await client.post(f"{API}/{pkg}", json=body(k, media_type="kpm"))).status == 200
    return pkg, h, k


async def test_a_second_media_type_turns_the_tag_into_an_index(both, registry):
    pkg, _, _ = both
    index, _ = helpers.manifest(registry.url, pkg, "1.0.0")
    assert index["mediaType"] == layout.OCI_INDEX
    entries = {e["annotations"][ANN]: e for e in index["manifests"]}
    assert set(entries) == {"helm", "kpm"}
    for e in entries.values():
        assert e["platform"] == {"architecture": "unknown", "os": "unknown"}
        child, digest = helpers.manifest(registry.url, pkg, e["digest"])
        assert digest == e["digest"]
    assert child["mediaType"] == layout.OCI_MANIFEST


async def test_release_lists_both_and_pull_picks_each(client, both):
    pkg, h, k = both
    data = await (await client.get(f"{API}/{pkg}/1.0.0")).json()
    assert sorted(m["mediaType"] for m in data) == [wire.manifest_media_type("helm"), wire.manifest_media_type("kpm")]
    assert await (await client.get(f"{API}/{pkg}/1.0.0/helm/pull")).read() == h
    assert await (await client.get(f"{API}/{pkg}/1.0.0/kpm/pull")).read() == k
    listed = await (await client.get(API, params={"namespace": pkg.split("/")[0]})).json()
    assert listed[0]["manifests"] == ["helm", "kpm"]


async def test_dash_media_type_on_several_is_400_naming_both(client, both):
    pkg, _, _ = both
    resp = await client.get(f"{API}/{pkg}/1.0.0/-/pull")
    data = await resp.json()
    assert resp.status == 400 and data["code"] == "invalid-usage"
    assert "helm" in data["message"] and "kpm" in data["message"]


async def test_repush_of_one_media_type_is_409_and_force_replaces_only_it(client, both, registry):
    pkg, h, _ = both
    resp = await client.post(f"{API}/{pkg}", json=body(kpm(extra=b"new")))
    assert resp.status == 409
    resp = await client.post(f"{API}/{pkg}?force=true", json=body(kpm(extra=b"new")))
    assert resp.status == 200
    index, _ = helpers.manifest(registry.url, pkg, "1.0.0")
    assert sorted(e["annotations"][ANN] for e in index["manifests"]) == ["helm", "kpm"]
    assert await (await client.get(f"{API}/{pkg}/1.0.0/kpm/pull")).read() == kpm(extra=b"new")
    assert await (await client.get(f"{API}/{pkg}/1.0.0/helm/pull")).read() == h


async def test_deleting_one_media_type_rewrites_and_the_last_removes_the_tag(client, both, registry):
    pkg, h, _ = both
    index, _ = helpers.manifest(registry.url, pkg, "1.0.0")
    helm_digest = next(e["digest"] for e in index["manifests"] if e["annotations"][ANN] == "helm")
    assert (await client.delete(f"{API}/{pkg}/1.0.0/kpm")).status == 200
    # A helm-only release is the helm manifest itself, never an index (helm 3.18-3.20, 4.0-4.1.1).
    top, digest = helpers.manifest(registry.url, pkg, "1.0.0")
    assert digest == helm_digest and "manifests" not in top  # the helm manifest itself, no index
    assert await (await client.get(f"{API}/{pkg}/1.0.0/-/pull")).read() == h
    assert (await client.delete(f"{API}/{pkg}/1.0.0/helm")).status == 200
    assert helpers.tags(registry.url, pkg) == []


async def test_three_media_types_then_delete_one_keeps_an_index(client, both, registry):
    pkg, _, _ = both
    assert (await client.post(f"{API}/{pkg}", json=body(kpm(extra=b"dc"), media_type="docker-compose"))).status == 200
    assert (await client.delete(f"{API}/{pkg}/1.0.0/helm")).status == 200
    index, _ = helpers.manifest(registry.url, pkg, "1.0.0")
    assert sorted(e["annotations"][ANN] for e in index["manifests"]) == ["docker-compose", "kpm"]


async def test_a_helm_only_release_never_uses_an_index(client, registry):
    ns, name = unique()
    assert (await client.post(f"{API}/{ns}/{name}", json=body(chart(name), media_type="helm"))).status == 200
    resp = await client.post(f"{API}/{ns}/{name}?force=true", json=body(chart(name, extra=b"2"), media_type="helm"))
    assert resp.status == 200
    top, _ = helpers.manifest(registry.url, f"{ns}/{name}", "1.0.0")
    _, _, headers = helpers._get(f"{registry.url}/v2/{ns}/{name}/manifests/1.0.0",
                                 f"{layout.OCI_MANIFEST}, {layout.OCI_INDEX}")
    assert headers["Content-Type"] == layout.OCI_MANIFEST and "manifests" not in top
    assert top["config"]["mediaType"] == layout.HELM_CONFIG


@pytest.mark.timeout(90)
async def test_listing_forty_multi_type_releases_does_not_deadlock(client):
    """The listing fan-out is bounded at the leaf registry calls only: 40 index releases
    (more than the fan-out width) used to hold every slot while asking for more."""
    ns, name = unique()
    pkg = f"{ns}/{name}"
    h, k = chart(name), kpm()
    releases = [f"1.{i}.0" for i in range(40)]
    for r in releases:
        assert (await client.post(f"{API}/{pkg}", json=body(h, release=r, media_type="helm"))).status == 200
        assert (await client.post(f"{API}/{pkg}", json=body(k, release=r, media_type="kpm"))).status == 200
    listed = await (await asyncio.wait_for(client.get(f"{API}/{pkg}"), 20)).json()
    assert len(listed) == 80 and {m["release"] for m in listed} == set(releases)
    summary = await (await asyncio.wait_for(client.get(f"{API}?namespace={ns}"), 20)).json()
    assert summary[0]["releases"][0] == "1.39.0" and summary[0]["manifests"] == ["helm", "kpm"]
    # An unrelated package still answers meanwhile and after.
    other = "/".join(unique())
    assert (await client.post(f"{API}/{other}", json=body(kpm()))).status == 200
    assert (await asyncio.wait_for(client.get(f"{API}/{other}"), 10)).status == 200
