"""Answers the issue-10 refactor changed, pinned to what the code before it answered (b3e6fb7).

Found by tests/differential_check.py; these run without the old tree.
"""

from __future__ import annotations

import urllib.request

import pytest

from cnr_oci.settings import Settings
from tests import helpers
from tests.conftest import start_registry
from tests.helpers import body, kpm, sha, unique

API = "/cnr/api/v1/packages"


@pytest.mark.parametrize("method", ["POST", "PUT", "DELETE", "OPTIONS", "PATCH"])
async def test_a_wrong_method_on_cnr_itself_is_405_allowing_get_and_head(client, method):
    resp = await client.request(method, "/cnr")
    data = await resp.json()
    assert resp.status == 405 and data["code"] == "invalid-usage", data
    assert set(resp.headers["Allow"].split(",")) == {"GET", "HEAD"}


async def test_cnr_itself_and_with_a_slash_still_serve_the_index(client):
    for path in ("/cnr", "/cnr/", "/"):
        resp = await client.get(path)
        assert resp.status == 200 and resp.content_type == "text/html", path
        assert (await client.head(path)).status == 200
    metrics = await (await client.get("/metrics")).text()
    assert 'route="/cnr"' in metrics and 'route="/cnr/"' in metrics


async def test_an_unknown_blob_is_package_not_found_naming_the_digest(client):
    ns, name = unique()
    assert (await client.post(f"{API}/{ns}/{name}", json=body(kpm()))).status == 200
    digest = "b" * 64
    for suffix in ("", "/json"):
        resp = await client.get(f"{API}/{ns}/{name}/blobs/sha256/{digest}{suffix}")
        data = await resp.json()
        assert resp.status == 404 and data["code"] == "package-not-found"
        assert data["message"] == f"blob sha256:{digest} not found in {ns}/{name}"
        assert data["details"] == {"package": f"{ns}/{name}", "release": f"sha256:{digest}", "media_type": None}


async def test_a_pull_whose_blob_is_gone_names_the_blob_not_the_query(client, registry):
    ns, name = unique()
    blob = kpm(extra=b"gone")
    assert (await client.post(f"{API}/{ns}/{name}", json=body(blob))).status == 200
    req = urllib.request.Request(f"{registry.url}/v2/{ns}/{name}/blobs/sha256:{sha(blob)}", method="DELETE")
    urllib.request.urlopen(req).close()
    resp = await client.get(f"{API}/{ns}/{name}/1.0.0/kpm/pull")
    data = await resp.json()
    assert resp.status == 404 and data["code"] == "package-not-found"
    assert data["message"] == f"blob sha256:{sha(blob)} not found in {ns}/{name}"
    assert data["details"] == {"package": f"{ns}/{name}", "release": f"sha256:{sha(blob)}", "media_type": None}


@pytest.fixture(scope="module")
def no_delete_registry(tmp_path_factory):
    reg = start_registry(tmp_path_factory.mktemp("nodelete"), delete_enabled=False)
    yield reg
    reg.stop()


async def test_refused_deletes_name_the_release_or_the_channel_they_tried(make_client, no_delete_registry):
    client = await make_client(Settings(upstream=no_delete_registry.url))
    ns, name = unique()
    pkg = f"{ns}/{name}"
    assert (await client.post(f"{API}/{pkg}", json=body(kpm()))).status == 200
    assert (await client.post(f"{API}/{pkg}/channels/stable/1.0.0")).status == 200
    for path, details in (
        ("/1.0.0/kpm", {"package": pkg, "release": "1.0.0"}),
        ("/channels/stable/1.0.0", {"package": pkg, "channel": "stable"}),  # the last one: the channel goes
        ("/channels/stable", {"package": pkg, "channel": "stable"}),
    ):
        resp = await client.delete(f"{API}/{pkg}{path}")
        data = await resp.json()
        assert resp.status == 501 and data["code"] == "unsupported", data
        assert data["message"] == "the registry refuses deletion (405 UNSUPPORTED); nothing was deleted"
        assert data["details"] == details, path


async def test_a_stored_config_that_is_no_json_is_502_without_a_registry_prefix(client, registry):
    from cnr_oci import layout

    ns, name = unique()
    repo = f"{ns}/{name}"
    helpers.put_blob(registry.url, repo, b"not json")
    helpers.put_blob(registry.url, repo, kpm())
    helpers.put_manifest(registry.url, repo, "1.0.0", {
        "schemaVersion": 2, "mediaType": layout.OCI_MANIFEST,
        "config": helpers.descriptor(layout.CNR_CONFIG, b"not json"),
        "layers": [helpers.descriptor(layout.layer_media_type("kpm"), kpm())]})
    resp = await client.get(f"{API}/{repo}/1.0.0/kpm")
    data = await resp.json()
    assert resp.status == 502 and data["code"] == "upstream-unavailable"
    assert data["message"].startswith(f"config {repo}@sha256:"), data["message"]


def test_the_manifest_and_config_caches_hold_at_most_8192_entries_however_small():
    """Before the split the LRUs held 8192 entries and 32 MiB; weighed by raw bytes alone, ~50 000
    small manifests (3.5 KiB each once parsed) or ~500 000 small configs would fit."""
    import json

    from cnr_oci import layout, readmodel

    read = readmodel.ReadModel(client=None)  # type: ignore[arg-type]  # no registry call is made
    for i in range(10_000):
        raw = json.dumps({"schemaVersion": 2, "n": i}).encode()
        readmodel._keep(read._manifests, f"sha256:{i}", layout.Manifest(f"sha256:{i}", None, raw, json.loads(raw)))
        readmodel._keep(read._configs, f"sha256:{i}", ({"n": i}, len(raw)))
    assert len(read._manifests) <= 8192 and len(read._configs) <= 8192
    big = b"x" * (5 * 1024 * 1024)
    readmodel._keep(read._configs, "sha256:big", ({}, len(big)))
    assert "sha256:big" in read._configs  # large entries still count by their bytes


# -- known differences, not fixed: the lead decides --------------------------------------------------------


def _ghost_channel(registry_url: str, repo: str) -> None:
    """A channel naming release 9.9.9, which does not exist (another tool wrote it)."""
    import json

    from cnr_oci import layout

    config = json.dumps({"current": "9.9.9", "name": "ghost", "releases": ["9.9.9"]}).encode()
    helpers.put_blob(registry_url, repo, config)
    helpers.put_blob(registry_url, repo, b"{}")
    helpers.put_manifest(registry_url, repo, "channel-ghost", {
        "schemaVersion": 2, "mediaType": layout.OCI_MANIFEST, "artifactType": layout.CHANNEL_ARTIFACT,
        "config": helpers.descriptor(layout.CHANNEL_CONFIG, config),
        "layers": [helpers.descriptor(layout.EMPTY_MEDIA_TYPE, b"{}")]})


@pytest.mark.xfail(strict=True, reason="since the split the refusal names the release of the route, not the channel")
async def test_a_refused_delete_of_a_channel_that_names_a_gone_release_names_the_channel(
        make_client, no_delete_registry):
    client = await make_client(Settings(upstream=no_delete_registry.url))
    ns, name = unique()
    pkg = f"{ns}/{name}"
    assert (await client.post(f"{API}/{pkg}", json=body(kpm()))).status == 200
    _ghost_channel(no_delete_registry.url, pkg)
    resp = await client.delete(f"{API}/{pkg}/9.9.9/kpm")
    data = await resp.json()
    assert resp.status == 501 and data["code"] == "unsupported"
    assert data["details"] == {"package": pkg, "channel": "ghost"}


@pytest.mark.xfail(strict=True, reason="since the split a refused channel rewrite on E17 reads 'the registry refuses "
                   "deletion' with details; before, 'registry: PUT ...: registry answered 405' and {}")
async def test_a_channel_rewrite_refused_on_e17_is_a_plain_501(make_client, own_registry, monkeypatch):
    from cnr_oci import embedded

    client = await make_client(Settings(upstream=own_registry.url))
    ns, name = unique()
    pkg = f"{ns}/{name}"
    for r in ("1.0.0", "2.0.0"):
        assert (await client.post(f"{API}/{pkg}", json=body(kpm(extra=r.encode()), r))).status == 200
        assert (await client.post(f"{API}/{pkg}/channels/stable/{r}")).status == 200
    # The same registry, restarted read-only: distribution answers 405 to every write.
    monkeypatch.setattr(embedded, "CONFIG", embedded.CONFIG.replace(
        "  maintenance:\n", "  maintenance:\n    readonly:\n      enabled: true\n"))
    own_registry.restart()
    resp = await client.delete(f"{API}/{pkg}/channels/stable/2.0.0")  # not the last release: a rewrite
    data = await resp.json()
    assert resp.status == 501 and data["code"] == "unsupported"
    assert data["message"].startswith("registry: PUT ") and data["details"] == {}


async def test_e9_checks_the_package_name_before_the_release(client):
    """A bad name and a bad release: the name is reported (400), as on every other route."""
    resp = await client.get(f"{API}/Bad/App/v1")
    data = await resp.json()
    assert resp.status == 400 and data["code"] == "invalid-usage" and data["details"] == {"package": "Bad/App"}


# -- found on the way, the same before the split ------------------------------------------------------------


@pytest.mark.xfail(strict=True, reason="also before the split: E11 reads every channel after the delete, and one "
                   "unreadable channel turns a done delete into a 502; E18 cannot remove that channel either")
async def test_a_channel_another_tool_broke_neither_fails_a_done_delete_nor_stays_forever(client, registry):
    from cnr_oci import layout

    ns, name = unique()
    pkg = f"{ns}/{name}"
    for r in ("1.0.0", "2.0.0"):
        assert (await client.post(f"{API}/{pkg}", json=body(kpm(extra=r.encode()), r))).status == 200
    config = b'{"name": 5}'  # no channel document
    helpers.put_blob(registry.url, pkg, config)
    helpers.put_blob(registry.url, pkg, b"{}")
    helpers.put_manifest(registry.url, pkg, "channel-bad", {
        "schemaVersion": 2, "mediaType": layout.OCI_MANIFEST,
        "config": helpers.descriptor(layout.CHANNEL_CONFIG, config),
        "layers": [helpers.descriptor(layout.EMPTY_MEDIA_TYPE, b"{}")]})
    resp = await client.delete(f"{API}/{pkg}/2.0.0/kpm")
    assert "2.0.0" not in helpers.tags(registry.url, pkg)  # it was deleted...
    assert resp.status == 200, await resp.text()  # ...so the client must not be told it failed
    assert (await client.delete(f"{API}/{pkg}/channels/bad")).status == 200
