"""What cnr-oci writes into the registry: the MUSTs of oci-mapping.md."""

from __future__ import annotations

import json

import pytest
import yaml

from cnr_oci import layout, schemas
from cnr_oci.settings import Settings
from tests import helpers
from tests.conftest import start_registry
from tests.helpers import body, chart, kpm, sha, unique

API = "/cnr/api/v1/packages"


async def push(client, repo, blob, release="1.0.0", media_type="kpm", **more):
    resp = await client.post(f"{API}/{repo}", json=body(blob, release, media_type, **more))
    assert resp.status == 200, await resp.text()


async def test_kpm_is_an_oci_artifact_with_the_cnr_config(client, registry):
    repo = "/".join(unique())
    blob = kpm()
    await push(client, repo, blob, metadata={"a": 1})
    m, _ = helpers.manifest(registry.url, repo, "1.0.0")
    assert schemas.first_error(schemas.CNR_MANIFEST, m) is None
    assert m["mediaType"] == layout.OCI_MANIFEST
    assert m["artifactType"] == "application/vnd.cnr.package.kpm.v1"
    assert m["config"]["mediaType"] == "application/vnd.cnr.package.config.v1+json"
    assert m["layers"][0]["mediaType"] == "application/vnd.cnr.package.kpm.v1.tar+gzip"
    assert m["layers"][0]["digest"] == "sha256:" + sha(blob)
    assert m["annotations"]["org.opencontainers.image.version"] == "1.0.0"
    assert m["annotations"]["org.opencontainers.image.created"]
    config = json.loads(helpers.blob(registry.url, repo, m["config"]["digest"]))
    assert isinstance(config, dict) and schemas.first_error(schemas.CNR_CONFIG, config) is None
    assert config["package"] == repo and config["release"] == "1.0.0" and config["media_type"] == "kpm"
    assert config["metadata"] == {"a": 1}
    # The CNR content digest is the layer's OCI digest, and the blob is those bytes.
    shown = await (await client.get(f"{API}/{repo}/1.0.0/kpm")).json()
    assert shown["content"]["digest"] == sha(blob)
    assert helpers.blob(registry.url, repo, "sha256:" + sha(blob)) == blob


async def test_helm_chart_is_stored_in_helms_own_layout(client, registry):
    ns, name = unique()
    blob = chart(name)
    await push(client, f"{ns}/{name}", blob, media_type="helm")
    m, _ = helpers.manifest(registry.url, f"{ns}/{name}", "1.0.0")
    assert m["config"]["mediaType"] == "application/vnd.cncf.helm.config.v1+json"
    assert [layer["mediaType"] for layer in m["layers"]] == ["application/vnd.cncf.helm.chart.content.v1.tar+gzip"]
    assert m["layers"][0]["digest"] == "sha256:" + sha(blob)
    assert "artifactType" not in m
    config = json.loads(helpers.blob(registry.url, f"{ns}/{name}", m["config"]["digest"]))
    assert config == {"apiVersion": "v2", "name": name, "version": "0.1.0", "description": "test chart"}
    ann = m["annotations"]
    assert ann["org.opencontainers.image.title"] == name
    assert ann["org.opencontainers.image.version"] == "1.0.0"
    assert ann["org.opencontainers.image.description"] == "test chart"
    assert ann["org.opencontainers.image.created"]


async def test_build_metadata_plus_becomes_underscore_in_the_tag(client, registry):
    repo = "/".join(unique())
    await push(client, repo, kpm(), "1.0.0+build.7")
    assert helpers.tags(registry.url, repo) == ["1.0.0_build.7"]
    shown = await (await client.get(f"{API}/{repo}/1.0.0+build.7/kpm")).json()
    assert shown["release"] == "1.0.0+build.7"


async def test_no_two_releases_share_a_manifest_digest(client, registry):
    repo = "/".join(unique())
    blob = kpm()
    await push(client, repo, blob, "1.0.0")
    await push(client, repo, blob, "1.1.0")
    _, d1 = helpers.manifest(registry.url, repo, "1.0.0")
    _, d2 = helpers.manifest(registry.url, repo, "1.1.0")
    assert d1 != d2
    # So deleting one by digest leaves the other's tag in place.
    assert (await client.delete(f"{API}/{repo}/1.0.0/kpm")).status == 200
    assert helpers.tags(registry.url, repo) == ["1.1.0"]


async def test_repository_prefix_keeps_packages_apart(make_client, registry):
    prefix = "apps" + unique()[0]
    client = await make_client(Settings(upstream=registry.url, repository_prefix=prefix))
    repo = "/".join(unique())
    await push(client, repo, kpm())
    assert helpers.tags(registry.url, f"{prefix}/{repo}") == ["1.0.0"]
    assert helpers.tags(registry.url, repo) == []
    listed = await (await client.get(API)).json()
    assert [p["name"] for p in listed] == [repo]


async def test_a_stored_config_that_fails_its_schema_is_a_502(client, registry):
    repo = "/".join(unique())
    await push(client, repo, kpm())
    m, _ = helpers.manifest(registry.url, repo, "1.0.0")
    bad = json.dumps({"package": "NOT VALID"}).encode()
    helpers.put_blob(registry.url, repo, bad)
    m["config"] = {"mediaType": layout.CNR_CONFIG, "digest": "sha256:" + sha(bad), "size": len(bad)}
    helpers.put_manifest(registry.url, repo, "2.0.0", m)
    resp = await client.get(f"{API}/{repo}/2.0.0/kpm")
    assert resp.status == 502 and (await resp.json())["code"] == "upstream-unavailable"


@pytest.fixture(scope="module")
def no_delete_registry(tmp_path_factory):
    reg = start_registry(tmp_path_factory.mktemp("nodelete"), delete_enabled=False)
    yield reg
    reg.stop()


async def test_registry_refusing_deletes_gives_501_and_deletes_nothing(make_client, no_delete_registry):
    client = await make_client(Settings(upstream=no_delete_registry.url))
    repo = "/".join(unique())
    await push(client, repo, kpm())
    resp = await client.delete(f"{API}/{repo}/1.0.0/kpm")
    data = await resp.json()
    assert resp.status == 501 and data["code"] == "unsupported"
    assert "refuses deletion" in data["message"]
    assert helpers.tags(no_delete_registry.url, repo) == ["1.0.0"]
    assert (await client.get(f"{API}/{repo}/1.0.0/kpm")).status == 200


async def test_helm_config_keeps_chart_yaml_fields(client, registry):
    ns, name = unique()
    meta = {"apiVersion": "v2", "name": name, "version": "3.2.1", "appVersion": "9.9",
            "keywords": ["a", "b"], "maintainers": [{"name": "Ann", "email": "ann@example.com"}],
            "home": "https://example.com", "sources": ["https://example.com/src"]}
    blob = helpers.tarball({f"{name}/Chart.yaml": yaml.safe_dump(meta).encode()})
    await push(client, f"{ns}/{name}", blob, "3.2.1", "helm")
    m, _ = helpers.manifest(registry.url, f"{ns}/{name}", "3.2.1")
    assert json.loads(helpers.blob(registry.url, f"{ns}/{name}", m["config"]["digest"])) == meta
    ann = m["annotations"]
    assert ann["org.opencontainers.image.url"] == "https://example.com"
    assert ann["org.opencontainers.image.source"] == "https://example.com/src"
    assert ann["org.opencontainers.image.authors"] == "Ann (ann@example.com)"


async def test_a_helm_push_that_is_not_a_chart_is_stored_as_a_generic_artifact(client, registry):
    """operator-courier pushes operator bundles (no Chart.yaml) with media type helm."""
    repo = "/".join(unique())
    bundle = helpers.tarball({"bundle/bundle.yaml": b"data:\n  packages: []\n"})
    await push(client, repo, bundle, media_type="helm")
    m, _ = helpers.manifest(registry.url, repo, "1.0.0")
    assert m["artifactType"] == layout.artifact_type("helm")
    assert m["config"]["mediaType"] == layout.CNR_CONFIG
    assert [layer["mediaType"] for layer in m["layers"]] == [layout.layer_media_type("helm")]
    shown = await (await client.get(f"{API}/{repo}/1.0.0/helm")).json()
    assert shown["content"]["digest"] == sha(bundle)
    assert await (await client.get(f"{API}/{repo}/1.0.0/helm/pull")).read() == bundle


async def test_a_chart_named_unlike_its_package_is_stored_in_helms_layout(client, registry):
    repo = "/".join(unique())
    tgz = chart("othername", "2.0.0")
    await push(client, repo, tgz, release="2.0.0", media_type="helm")
    m, _ = helpers.manifest(registry.url, repo, "2.0.0")
    assert m["config"]["mediaType"] == layout.HELM_CONFIG and m["layers"][0]["mediaType"] == layout.HELM_LAYER
    config = json.loads(helpers.blob(registry.url, repo, m["config"]["digest"]))
    assert config["name"] == "othername"
    assert await (await client.get(f"{API}/{repo}/2.0.0/helm/pull")).read() == tgz


@pytest.mark.parametrize("nulls", [{"manifest_name": None, "metadata": None},
                                   {"media_type": None, "name": None, "package": None, "organization": None,
                                    "force": None}])
async def test_optional_fields_may_be_null_as_appr_and_cnr_send_them(client, registry, nulls):
    repo = "/".join(unique())
    blob = kpm()
    resp = await client.post(f"{API}/{repo}", json={**body(blob, "1.0.0", "kpm"), **nulls})
    assert resp.status == 200, await resp.text()
    assert await (await client.get(f"{API}/{repo}/1.0.0/kpm/pull")).read() == blob


async def test_a_tag_list_or_tag_read_in_flight_when_a_write_lands_is_not_kept(client):
    """A read that began before our own write may carry the old state: it answers its caller, but the
    next read asks the registry again instead of serving it for --cache-ttl."""
    import asyncio

    from cnr_oci import appkeys

    read = client.app[appkeys.STORE].read
    ns, name = helpers.unique()
    repo = f"{ns}/{name}"
    assert (await client.post(f"/cnr/api/v1/packages/{repo}", json=helpers.body(helpers.kpm(), "1.0.0"))).status == 200
    read.forget(repo, "1.0.0")
    calls = {"tags": 0, "get_manifest": 0}
    gate = asyncio.Event()
    for method in calls:
        real = getattr(read.client, method)

        async def slow(*a, _real=real, _name=method, **kw):
            calls[_name] += 1
            result = await _real(*a, **kw)
            await gate.wait()
            return result

        setattr(read.client, method, slow)
    reading = asyncio.gather(read.tags(repo), read.manifest(repo, "1.0.0"))
    await asyncio.sleep(0.2)
    read.forget(repo, "1.0.0")  # a write lands while both reads wait
    gate.set()
    await reading
    await read.tags(repo)
    await read.manifest(repo, "1.0.0")
    assert calls == {"tags": 2, "get_manifest": 2}
