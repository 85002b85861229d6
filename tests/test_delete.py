"""Deleting releases: lost answers, and tags that other tools put on a release's manifest."""

from __future__ import annotations

import json
import urllib.request

from cnr_oci.settings import Settings
from tests import helpers
from tests.fake_upstream import make_proxy
from tests.helpers import body, kpm, unique

API = "/cnr/api/v1/packages"


async def _with_channel(client, pkg: str) -> None:
    for r in ("1.0.0", "1.1.0"):
        assert (await client.post(f"{API}/{pkg}", json=body(kpm(extra=r.encode()), release=r))).status == 200
        assert (await client.post(f"{API}/{pkg}/channels/stable/{r}")).status == 200


def _stored_channel(registry_url: str, pkg: str, name: str) -> dict | None:
    """The channel document as stored in the registry, bypassing cnr-oci."""
    if f"channel-{name}" not in helpers.tags(registry_url, pkg):
        return None
    m, _ = helpers.manifest(registry_url, pkg, f"channel-{name}")
    return json.loads(helpers.blob(registry_url, pkg, m["config"]["digest"]))


def _delete_tag_behind_our_back(registry_url: str, pkg: str, tag: str) -> None:
    _, digest = helpers.manifest(registry_url, pkg, tag)
    req = urllib.request.Request(f"{registry_url}/v2/{pkg}/manifests/{digest}", method="DELETE")
    urllib.request.urlopen(req).close()


async def test_lost_delete_answer_leaves_no_channel_pointing_at_the_deleted_release(
        aiohttp_server, make_client, client, registry):
    pkg = "/".join(unique())
    await _with_channel(client, pkg)
    proxy = await aiohttp_server(make_proxy(
        registry.url, reset_after=lambda r: r.method == "DELETE" and "/manifests/sha256:" in r.path))
    lossy = await make_client(Settings(upstream=str(proxy.make_url("")).rstrip("/"), cache_ttl=0))
    resp = await lossy.delete(f"{API}/{pkg}/1.1.0/kpm")
    # The delete went through although its answer was lost: the tag is gone, so it succeeded.
    assert resp.status == 200, await resp.text()
    assert "1.1.0" not in helpers.tags(registry.url, pkg)
    assert _stored_channel(registry.url, pkg, "stable") == {
        "name": "stable", "current": "1.0.0", "releases": ["1.0.0"]}
    got = await (await client.get(f"{API}/{pkg}/channels/stable")).json()
    assert got["current"] == "1.0.0"
    assert (await client.get(f"{API}/{pkg}/{got['current']}/kpm/pull")).status == 200


async def test_channel_never_names_a_release_deleted_by_another_tool_and_a_retried_delete_repairs_it(
        client, registry):
    pkg = "/".join(unique())
    await _with_channel(client, pkg)
    _delete_tag_behind_our_back(registry.url, pkg, "1.1.0")
    # Readers never see the deleted release in the channel.
    got = await (await client.get(f"{API}/{pkg}/channels/stable")).json()
    assert got == {"name": "stable", "current": "1.0.0", "releases": ["1.0.0"]}
    assert [c["current"] for c in await (await client.get(f"{API}/{pkg}/channels")).json()] == ["1.0.0"]
    # A (retried) delete of the gone release is 404, and it repairs what is stored.
    resp = await client.delete(f"{API}/{pkg}/1.1.0/kpm")
    assert resp.status == 404
    assert _stored_channel(registry.url, pkg, "stable")["releases"] == ["1.0.0"]


async def test_channel_whose_releases_are_all_gone_is_not_found(client, registry):
    pkg = "/".join(unique())
    await _with_channel(client, pkg)
    assert (await client.post(f"{API}/{pkg}/channels/beta/1.1.0")).status == 200
    _delete_tag_behind_our_back(registry.url, pkg, "1.1.0")
    resp = await client.get(f"{API}/{pkg}/channels/beta")
    assert resp.status == 404 and (await resp.json())["code"] == "channel-not-found"
    assert [c["name"] for c in await (await client.get(f"{API}/{pkg}/channels")).json()] == ["stable"]


async def test_delete_refuses_when_another_tag_shares_the_manifest(client, registry):
    pkg = "/".join(unique())
    blob = kpm()
    assert (await client.post(f"{API}/{pkg}", json=body(blob))).status == 200
    _, raw, _ = helpers._get(f"{registry.url}/v2/{pkg}/manifests/1.0.0", "application/vnd.oci.image.manifest.v1+json")
    req = urllib.request.Request(f"{registry.url}/v2/{pkg}/manifests/latest", data=raw, method="PUT",
                                 headers={"Content-Type": "application/vnd.oci.image.manifest.v1+json"})
    urllib.request.urlopen(req).close()
    before = helpers.tags(registry.url, pkg)
    assert before == ["1.0.0", "latest"]
    resp = await client.delete(f"{API}/{pkg}/1.0.0/kpm")
    data = await resp.json()
    assert resp.status == 409 and data["code"] == "resource-in-use", data
    assert data["details"]["tags"] == ["latest"] and "latest" in data["message"]
    assert helpers.tags(registry.url, pkg) == before
    assert await (await client.get(f"{API}/{pkg}/1.0.0/kpm/pull")).read() == blob
