"""Channels (E14-E18), stored as their own manifests at tag channel-<name>."""

from __future__ import annotations

import json

import pytest

from cnr_oci import mapping, schemas
from tests import helpers
from tests.helpers import body, kpm, unique

API = "/cnr/api/v1/packages"


@pytest.fixture
async def pkg(client):
    """A package with releases 1.0.0, 1.1.0 and 2.0.0."""
    name = "/".join(unique())
    for r in ("1.0.0", "1.1.0", "2.0.0"):
        resp = await client.post(f"{API}/{name}", json=body(kpm(extra=r.encode()), r))
        assert resp.status == 200
    return name


async def add(client, pkg, channel, release):
    resp = await client.post(f"{API}/{pkg}/channels/{channel}/{release}")
    return resp.status, await resp.json()


async def test_adding_a_release_creates_the_channel_and_makes_it_current(client, pkg):
    assert await add(client, pkg, "stable", "1.0.0") == (
        200, {"name": "stable", "current": "1.0.0", "releases": ["1.0.0"]})
    _, doc = await add(client, pkg, "stable", "1.1.0")
    assert doc == {"name": "stable", "current": "1.1.0", "releases": ["1.1.0", "1.0.0"]}
    # Adding an older release makes it current too: current is the release added last.
    _, doc = await add(client, pkg, "stable", "1.0.0")
    assert doc["current"] == "1.0.0"
    assert await (await client.get(f"{API}/{pkg}/channels/stable")).json() == doc
    await add(client, pkg, "beta", "2.0.0")
    listed = await (await client.get(f"{API}/{pkg}/channels/")).json()
    assert [c["name"] for c in listed] == ["beta", "stable"]


async def test_adding_a_missing_or_malformed_release(client, pkg):
    status, data = await add(client, pkg, "stable", "9.9.9")
    assert status == 404 and data["code"] == "package-release-not-found"
    status, data = await add(client, pkg, "stable", "1.0")
    assert status == 422 and data["code"] == "invalid-release"
    status, data = await add(client, pkg, "bad%20name", "1.0.0")
    assert status == 400 and data["code"] == "invalid-usage"


async def test_unknown_channel_and_unknown_package(client, pkg):
    resp = await client.get(f"{API}/{pkg}/channels/nope")
    assert resp.status == 404 and (await resp.json())["code"] == "channel-not-found"
    resp = await client.get(f"{API}/no/such/channels")
    assert resp.status == 404 and (await resp.json())["code"] == "package-not-found"
    resp = await client.delete(f"{API}/{pkg}/channels/nope")
    assert resp.status == 404 and (await resp.json())["code"] == "channel-not-found"


async def test_removing_the_current_release_moves_current_to_the_highest_left(client, pkg):
    for r in ("2.0.0", "1.0.0", "1.1.0"):
        await add(client, pkg, "stable", r)
    resp = await client.delete(f"{API}/{pkg}/channels/stable/1.1.0")
    assert await resp.json() == {"status": "deleted", "package": pkg, "name": "stable", "release": "1.1.0"}
    doc = await (await client.get(f"{API}/{pkg}/channels/stable")).json()
    assert doc == {"name": "stable", "current": "2.0.0", "releases": ["2.0.0", "1.0.0"]}
    # Removing a release that is not current leaves current alone.
    await client.delete(f"{API}/{pkg}/channels/stable/1.0.0")
    assert (await (await client.get(f"{API}/{pkg}/channels/stable")).json())["current"] == "2.0.0"


async def test_removing_a_release_the_channel_lacks_is_404(client, pkg):
    await add(client, pkg, "stable", "1.0.0")
    resp = await client.delete(f"{API}/{pkg}/channels/stable/2.0.0")
    assert resp.status == 404


async def test_removing_the_last_release_deletes_the_channel(client, pkg, registry):
    await add(client, pkg, "stable", "1.0.0")
    assert "channel-stable" in helpers.tags(registry.url, pkg)
    await client.delete(f"{API}/{pkg}/channels/stable/1.0.0")
    assert (await client.get(f"{API}/{pkg}/channels/stable")).status == 404
    assert "channel-stable" not in helpers.tags(registry.url, pkg)


async def test_delete_channel(client, pkg, registry):
    await add(client, pkg, "stable", "1.0.0")
    resp = await client.delete(f"{API}/{pkg}/channels/stable")
    assert await resp.json() == {"channel": "stable", "package": pkg, "action": "delete"}
    assert helpers.tags(registry.url, pkg) == ["1.0.0", "1.1.0", "2.0.0"]


async def test_deleting_a_package_release_removes_it_from_every_channel(client, pkg):
    await add(client, pkg, "stable", "1.0.0")
    await add(client, pkg, "stable", "1.1.0")
    await add(client, pkg, "beta", "1.1.0")
    assert (await client.delete(f"{API}/{pkg}/1.1.0/kpm")).status == 200
    assert await (await client.get(f"{API}/{pkg}/channels/stable")).json() == {
        "name": "stable", "current": "1.0.0", "releases": ["1.0.0"]}
    assert (await client.get(f"{API}/{pkg}/channels/beta")).status == 404


async def test_show_reports_the_channels_whose_current_release_it_is(client, pkg):
    await add(client, pkg, "stable", "1.0.0")
    await add(client, pkg, "beta", "1.0.0")
    await add(client, pkg, "beta", "2.0.0")
    assert (await (await client.get(f"{API}/{pkg}/1.0.0/kpm")).json())["channels"] == ["stable"]
    assert (await (await client.get(f"{API}/{pkg}/2.0.0/kpm")).json())["channels"] == ["beta"]
    assert (await (await client.get(f"{API}/{pkg}/1.1.0/kpm")).json())["channels"] == []


async def test_pull_by_channel_as_the_appr_client_does(client, pkg):
    await add(client, pkg, "stable", "1.1.0")
    channel = await (await client.get(f"{API}/{pkg}/channels/stable")).json()
    resp = await client.get(f"{API}/{pkg}/{channel['current']}/kpm/pull")
    assert await resp.read() == kpm(extra=b"1.1.0")


async def test_a_channel_is_its_own_manifest_not_a_tag_alias(client, pkg, registry):
    await add(client, pkg, "stable", "1.0.0")
    m, digest = helpers.manifest(registry.url, pkg, "channel-stable")
    _, release_digest = helpers.manifest(registry.url, pkg, "1.0.0")
    assert digest != release_digest
    assert m["config"]["mediaType"] == "application/vnd.cnr.channel.v1+json"
    assert m["subject"]["digest"] == release_digest
    config = json.loads(helpers.blob(registry.url, pkg, m["config"]["digest"]))
    assert config == {"name": "stable", "current": "1.0.0", "releases": ["1.0.0"]}
    assert schemas.first_error(schemas.CHANNEL, config) is None
    # Channel tags are never releases.
    assert [m["release"] for m in await (await client.get(f"{API}/{pkg}")).json()] == ["2.0.0", "1.1.0", "1.0.0"]
    assert mapping.tag_to_release("channel-stable") is None
