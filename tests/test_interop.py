"""Interop both ways: helm's layout, charts and artifacts pushed by others, ORAS, skopeo."""

from __future__ import annotations

import base64
import gzip
import json
import re
import subprocess
from pathlib import Path

import oras.client
import pytest

from cnr_oci import layout, wire
from cnr_oci.settings import Settings
from tests import helpers
from tests.conftest import require_binary, start_registry
from tests.helpers import body, chart, kpm, unique

API = "/cnr/api/v1/packages"
HELM_CONFIG = "application/vnd.cncf.helm.config.v1+json"
HELM_LAYER = "application/vnd.cncf.helm.chart.content.v1.tar+gzip"
RFC3339 = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$")

CHART_YAML = b"""apiVersion: v2
name: {name}
version: 1.0.0
description: Demo <chart> & co
home: https://example.com/home
sources:
  - https://example.com/src
maintainers:
  - name: Ann
    email: ann@example.com
  - name: Bob
kubeVersion: ">=1.19.0-0"
appVersion: "2.1"
annotations:
  example.com/team: platform
  org.opencontainers.image.title: not-the-title
"""


def helm_layout(name: str, tgz: bytes) -> tuple[bytes, dict]:
    """What `helm push` writes for this chart (helm pkg/registry), written out by hand:
    the config is json.Marshal(chart.Metadata) in struct order with Go's HTML escaping."""
    config = (
        f'{{"name":"{name}","home":"https://example.com/home","sources":["https://example.com/src"],'
        '"version":"1.0.0","description":"Demo \\u003cchart\\u003e \\u0026 co",'
        '"maintainers":[{"name":"Ann","email":"ann@example.com"},{"name":"Bob"}],'
        '"apiVersion":"v2","appVersion":"2.1","annotations":{"example.com/team":"platform",'
        '"org.opencontainers.image.title":"not-the-title"},"kubeVersion":"\\u003e=1.19.0-0"}'
    ).encode()
    manifest = {
        "schemaVersion": 2,
        "config": helpers.descriptor(HELM_CONFIG, config),
        "layers": [helpers.descriptor(HELM_LAYER, tgz)],
        "annotations": {
            "org.opencontainers.image.description": "Demo <chart> & co",
            "org.opencontainers.image.title": name,
            "org.opencontainers.image.version": "1.0.0",
            "org.opencontainers.image.url": "https://example.com/home",
            "org.opencontainers.image.source": "https://example.com/src",
            "org.opencontainers.image.authors": "Ann (ann@example.com), Bob",
            "example.com/team": "platform",
        },
    }
    return config, manifest


async def test_cnr_push_of_a_chart_is_stored_exactly_as_helm_push_stores_it(client, registry):
    ns, name = unique()
    tgz = helpers.tarball({f"{name}/Chart.yaml": CHART_YAML.replace(b"{name}", name.encode())})
    assert (await client.post(f"{API}/{ns}/{name}", json=body(tgz, media_type="helm"))).status == 200
    got, _ = helpers.manifest(registry.url, f"{ns}/{name}", "1.0.0")
    config, want = helm_layout(name, tgz)
    assert got["schemaVersion"] == want["schemaVersion"]
    assert got.get("mediaType", layout.OCI_MANIFEST) == layout.OCI_MANIFEST
    assert "artifactType" not in got
    assert got["config"] == want["config"]
    assert helpers.blob(registry.url, f"{ns}/{name}", got["config"]["digest"]) == config
    assert len(got["layers"]) == 1
    layer = dict(got["layers"][0])
    # The one addition: a title on the layer, which helm ignores and ORAS uses as the file name.
    assert layer.pop("annotations") == {"org.opencontainers.image.title": f"{name}-1.0.0.tgz"}
    assert layer == want["layers"][0]
    ann = dict(got["annotations"])
    assert RFC3339.match(ann.pop("org.opencontainers.image.created"))
    # And a copy of the config (docs/storage.md), which the chart repository reads instead of the blob.
    assert ann.pop("vnd.cnr.package.chart").encode() == config
    assert ann == want["annotations"]


def push_like_helm(registry_url, repo, tag, tgz, chart_json, layer_type=HELM_LAYER):
    helpers.put_blob(registry_url, repo, tgz)
    helpers.put_blob(registry_url, repo, chart_json)
    doc = {
        "schemaVersion": 2,
        "config": helpers.descriptor(HELM_CONFIG, chart_json),
        "layers": [helpers.descriptor(layer_type, tgz)],
        "annotations": {"org.opencontainers.image.title": repo.rsplit("/", 1)[1],
                        "org.opencontainers.image.version": tag,
                        "org.opencontainers.image.created": "2024-01-02T03:04:05Z"},
    }
    return helpers.put_manifest(registry_url, repo, tag, doc)


@pytest.mark.parametrize("layer_type", [HELM_LAYER, "application/tar+gzip"], ids=["helm", "legacy"])
async def test_a_chart_pushed_the_way_helm_pushes_it_shows_up_as_helm(client, registry, layer_type):
    ns, name = unique()
    repo = f"{ns}/{name}"
    tgz = chart(name, "0.3.0")
    push_like_helm(registry.url, repo, "0.3.0", tgz,
                   json.dumps({"name": name, "version": "0.3.0", "apiVersion": "v2"}).encode(), layer_type)
    listed = await (await client.get(API, params={"namespace": ns})).json()
    assert listed[0]["name"] == repo and listed[0]["manifests"] == ["helm"] and listed[0]["releases"] == ["0.3.0"]
    assert listed[0]["created_at"] == "2024-01-02T03:04:05Z"
    manifests = await (await client.get(f"{API}/{repo}")).json()
    assert [(m["release"], m["mediaType"]) for m in manifests] == [("0.3.0", wire.manifest_media_type("helm"))]
    shown = await (await client.get(f"{API}/{repo}/0.3.0/helm")).json()
    assert shown["content"]["digest"] == helpers.sha(tgz)
    assert await (await client.get(f"{API}/{repo}/0.3.0/helm/pull")).read() == tgz
    data = await (await client.get(f"{API}/{repo}/default/-/pull?format=json")).json()
    assert base64.b64decode(data["blob"]) == tgz and data["media_type"] == "helm"


def oras_client(registry):
    return oras.client.OrasClient(hostname=registry.host, insecure=True)


async def test_a_chart_pushed_with_oras_using_helms_media_types_shows_up(client, registry, tmp_path):
    ns, name = unique()
    tgz_path = tmp_path / f"{name}-1.2.3.tgz"
    tgz_path.write_bytes(chart(name, "1.2.3"))
    cfg = tmp_path / "config.json"
    cfg.write_text(json.dumps({"name": name, "version": "1.2.3", "apiVersion": "v2"}))
    oras_client(registry).push(
        target=f"{registry.host}/{ns}/{name}:1.2.3",
        files=[f"{tgz_path}:{HELM_LAYER}"], manifest_config=f"{cfg}:{HELM_CONFIG}",
        disable_path_validation=True, quiet=True,
    )
    resp = await client.get(f"{API}/{ns}/{name}/1.2.3/helm/pull")
    assert resp.status == 200 and await resp.read() == tgz_path.read_bytes()


async def test_a_generic_oras_artifact_is_skipped_as_documented(client, registry, tmp_path):
    ns, name = unique()
    f = tmp_path / "notes.txt"
    f.write_text("hello")
    oras_client(registry).push(target=f"{registry.host}/{ns}/{name}:1.0.0", files=[str(f)],
                               disable_path_validation=True, quiet=True)
    assert helpers.tags(registry.url, f"{ns}/{name}") == ["1.0.0"]
    assert await (await client.get(API, params={"namespace": ns})).json() == []
    assert await (await client.get(f"{API}/{ns}/{name}")).json() == []
    resp = await client.get(f"{API}/{ns}/{name}/1.0.0/-")
    assert resp.status == 404 and (await resp.json())["code"] == "package-not-found"


@pytest.mark.parametrize("media_type", ["kpm", "helm"])
async def test_a_cnr_package_can_be_pulled_with_oras(client, registry, tmp_path, media_type):
    ns, name = unique()
    blob = chart(name) if media_type == "helm" else kpm()
    assert (await client.post(f"{API}/{ns}/{name}", json=body(blob, media_type=media_type))).status == 200
    files = oras_client(registry).pull(target=f"{registry.host}/{ns}/{name}:1.0.0", outdir=str(tmp_path))
    expected = f"{name}-1.0.0.tgz" if media_type == "helm" else f"{ns}_{name}_1.0.0.tar.gz"
    assert [Path(f).name for f in files] == [expected]
    assert Path(files[0]).read_bytes() == blob


# -- images beside apps ---------------------------------------------------------------


def skopeo(*args: str) -> str:
    require_binary("skopeo")
    proc = subprocess.run(["skopeo", *args], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def write_image_layout(root: Path) -> str:
    """A tiny real OCI image (linux/amd64, one layer) as an OCI layout; returns its manifest digest."""
    blobs = root / "blobs" / "sha256"
    blobs.mkdir(parents=True)
    tar = helpers.tarball({"hello.txt": b"hello from the image\n"})
    diff_id = "sha256:" + helpers.sha(gzip.decompress(tar))
    config = json.dumps({"architecture": "amd64", "os": "linux", "config": {"Cmd": ["/hello"]},
                         "rootfs": {"type": "layers", "diff_ids": [diff_id]}}).encode()
    manifest = json.dumps({
        "schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": helpers.descriptor("application/vnd.oci.image.config.v1+json", config),
        "layers": [helpers.descriptor("application/vnd.oci.image.layer.v1.tar+gzip", tar)],
    }).encode()
    for data in (tar, config, manifest):
        (blobs / helpers.sha(data)).write_bytes(data)
    (root / "oci-layout").write_text('{"imageLayoutVersion": "1.0.0"}')
    index = {"schemaVersion": 2, "manifests": [
        helpers.descriptor("application/vnd.oci.image.manifest.v1+json", manifest,
                           annotations={"org.opencontainers.image.ref.name": "latest"})]}
    (root / "index.json").write_text(json.dumps(index))
    return "sha256:" + helpers.sha(manifest)


async def test_an_image_and_a_chart_share_a_release_tag(client, registry, tmp_path):
    ns = unique()[0]
    repo, ref = f"{ns}/app", f"{registry.host}/{ns}/app:1.0.0"
    image_digest = write_image_layout(tmp_path / "layout")
    skopeo("copy", f"oci:{tmp_path / 'layout'}:latest", f"docker://{ref}", "--dest-tls-verify=false")
    tgz = chart("app")
    assert (await client.post(f"{API}/{repo}", json=body(tgz, media_type="helm"))).status == 200

    index, _ = helpers.manifest(registry.url, repo, "1.0.0")
    platforms = {e["digest"]: e["platform"] for e in index["manifests"]}
    assert platforms[image_digest] == {"architecture": "amd64", "os": "linux"}
    assert sorted(p["os"] for p in platforms.values()) == ["linux", "unknown"]

    inspected = json.loads(skopeo("inspect", "--tls-verify=false", "--override-os", "linux",
                                  "--override-arch", "amd64", f"docker://{ref}"))
    image, _ = helpers.manifest(registry.url, repo, image_digest)
    assert inspected["Architecture"] == "amd64" and inspected["Os"] == "linux"
    assert inspected["Layers"] == [image["layers"][0]["digest"]]
    skopeo("copy", "--src-tls-verify=false", "--override-os", "linux", "--override-arch", "amd64",
           f"docker://{ref}", f"oci:{tmp_path / 'out'}:x")
    out = json.loads((tmp_path / "out" / "index.json").read_text())
    assert out["manifests"][0]["digest"] == image_digest

    assert await (await client.get(f"{API}/{repo}/1.0.0/helm/pull")).read() == tgz
    assert await (await client.get(f"{API}/{repo}/1.0.0/-/pull")).read() == tgz
    assert (await client.delete(f"{API}/{repo}/1.0.0/helm")).status == 200
    _, digest = helpers.manifest(registry.url, repo, "1.0.0")
    assert digest == image_digest


# -- content-addressed mirroring ------------------------------------------------------


@pytest.fixture(scope="module")
def mirror(tmp_path_factory):
    reg = start_registry(tmp_path_factory.mktemp("mirror"))
    yield reg
    reg.stop()


async def test_a_repository_copied_with_skopeo_serves_the_same_releases(client, make_client, registry, mirror):
    ns, name = unique()
    repo = f"{ns}/{name}"
    blobs = {("1.0.0", "helm"): chart(name), ("1.0.0", "kpm"): kpm(extra=b"a"), ("1.1.0", "kpm"): kpm(extra=b"b")}
    for (release, mt), blob in blobs.items():
        assert (await client.post(f"{API}/{repo}", json=body(blob, release, mt))).status == 200
    assert (await client.post(f"{API}/{repo}/channels/stable/1.1.0")).status == 200
    for tag in helpers.tags(registry.url, repo):
        skopeo("copy", "--all", "--preserve-digests", "--src-tls-verify=false", "--dest-tls-verify=false",
               f"docker://{registry.host}/{repo}:{tag}", f"docker://{mirror.host}/{repo}:{tag}")
    for tag in helpers.tags(registry.url, repo):
        assert helpers.manifest(mirror.url, repo, tag)[1] == helpers.manifest(registry.url, repo, tag)[1]
    copy = await make_client(Settings(upstream=mirror.url))
    for path in ("", "/1.0.0", "/1.0.0/helm", "/1.1.0/kpm", "/channels", "/channels/stable"):
        assert (await (await copy.get(f"{API}/{repo}{path}")).json()
                == await (await client.get(f"{API}/{repo}{path}")).json())
    for (release, mt), blob in blobs.items():
        assert await (await copy.get(f"{API}/{repo}/{release}/{mt}/pull")).read() == blob
        assert await (await copy.get(f"{API}/{repo}/blobs/sha256/{helpers.sha(blob)}")).read() == blob


def _put_helm_with_annotations(registry_url: str, repo: str, tag: str, annotations: dict[str, str]) -> bytes:
    name = repo.rsplit("/", 1)[1]
    tgz = chart(name, "0.1.0")
    chart_json = json.dumps({"name": name, "version": "0.1.0", "apiVersion": "v2"}).encode()
    helpers.put_blob(registry_url, repo, tgz)
    helpers.put_blob(registry_url, repo, chart_json)
    helpers.put_manifest(registry_url, repo, tag, {
        "schemaVersion": 2, "config": helpers.descriptor(HELM_CONFIG, chart_json),
        "layers": [helpers.descriptor(layout.HELM_LAYER, tgz)], "annotations": annotations})
    return tgz


@pytest.mark.parametrize("metadata", ["[" * 30_000 + "]" * 30_000, "NaN", "1e999999", "{not json"])
async def test_metadata_another_tool_wrote_badly_reads_as_null_and_breaks_no_listing(client, registry, metadata):
    repo = "/".join(unique())
    _put_helm_with_annotations(registry.url, repo, "1.0.0", {layout.ANN_METADATA: metadata})
    shown = await client.get(f"{API}/{repo}/1.0.0/helm")
    assert shown.status == 200 and (await shown.json())["metadata"] is None
    listed = await client.get(f"{API}/{repo}")
    assert listed.status == 200 and json.loads(await listed.text(), parse_constant=lambda c: 1 / 0)


@pytest.mark.parametrize("created", ["zzzz", "   ", "not-a-date", "2024-13"])
async def test_a_created_date_that_is_no_date_reads_as_null(client, registry, created):
    ns, name = unique()
    _put_helm_with_annotations(registry.url, f"{ns}/{name}", "1.0.0", {layout.ANN_CREATED: created})
    assert (await (await client.get(f"{API}/{ns}/{name}/1.0.0/helm")).json())["created_at"] is None
    listed = await (await client.get(API, params={"namespace": ns})).json()
    assert listed[0]["created_at"] is None and listed[0]["updated_at"] is None


async def test_a_config_nested_too_deep_is_502_not_500(client, registry):
    ns, name = unique()
    repo = f"{ns}/{name}"
    blob = kpm()
    nested = "[" * 30_000 + "]" * 30_000
    config = (f'{{"package": "{repo}", "release": "1.0.0", "media_type": "kpm", "created_at": "2024-01-01T00:00:00Z", '
              f'"metadata": {{"a": {nested}}}}}').encode()
    helpers.put_blob(registry.url, repo, blob)
    helpers.put_blob(registry.url, repo, config)
    helpers.put_manifest(registry.url, repo, "1.0.0", {
        "schemaVersion": 2, "mediaType": layout.OCI_MANIFEST, "artifactType": layout.artifact_type("kpm"),
        "config": helpers.descriptor(layout.CNR_CONFIG, config),
        "layers": [helpers.descriptor(layout.layer_media_type("kpm"), blob)]})
    resp = await client.get(f"{API}/{repo}/1.0.0/kpm")
    assert resp.status == 502 and (await resp.json())["code"] == "upstream-unavailable"
