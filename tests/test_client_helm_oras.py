"""helm 3.8.1 and 4.1.4 and oras-py against what cnr-oci stores, and the oracle of issue 9 item 3:
a CNR push of a `helm package` .tgz and a real `helm push` of the same file store the same blobs.

helm runs against the session `registry` (no credentials) beside an in-process cnr-oci `client`
(helm speaks OCI to the registry itself; cnr-oci is only on the CNR side). oras-py runs against the
`live_server` (a real `cnr-oci serve` in front of a registry that needs credentials), logged in as alice.
"""

from __future__ import annotations

import base64
import json
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import oras.client
import pytest

from tests import helpers
from tests.conftest import LiveServer
from tests.helmcli import Helm
from tests.helpers import body, kpm, unique

API = "/cnr/api/v1/packages"
HELM_CONFIG = "application/vnd.cncf.helm.config.v1+json"
HELM_LAYER = "application/vnd.cncf.helm.chart.content.v1.tar+gzip"
# The manifest annotations cnr-oci may write where helm writes others or none (docs/storage.md, helm).
DOCUMENTED = {f"org.opencontainers.image.{k}" for k in ("title", "version", "description", "created", "url",
                                                         "source", "authors")} | {"vnd.cnr.package.metadata",
                                                                                    "vnd.cnr.package.chart"}



PLAIN = {"Chart.yaml": "apiVersion: v2\nname: {name}\nversion: {version}\ndescription: a plain chart\n"}
RICH = {
    "Chart.yaml": """\
apiVersion: v2
name: {name}
version: {version}
kubeVersion: ">=1.20.0-0"
description: "Ünïcödé <b>bold</b> & 'quoted' — ✓ 日本"
type: application
appVersion: "2.0 <beta> & more"
home: https://example.com/?a=1&b=2
icon: https://example.com/icon.png?x=<y>
keywords: ["a<b", "c&d", "ü"]
sources: ["https://example.com/src?q=1&r=2"]
maintainers:
- name: "Zoë <z> & co"
  email: zoe@example.com
  url: https://example.com/zoë
annotations:
  example.com/note: "x < y && y > z"
  artifacthub.io/ünï: "✓"
dependencies:
- name: sub
  version: 0.1.0
  repository: ""
  condition: sub.enabled
  tags: ["t<1>"]
  enabled: true
  import-values: ["data"]
""",
    "charts/sub/Chart.yaml": "apiVersion: v2\nname: sub\nversion: 0.1.0\ndescription: sub & <chart>\n",
    "charts/sub/templates/cm.yaml": "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: sub-{{{{ .Release.Name }}}}\n",
}
TEMPLATE = {"values.yaml": "greeting: hello <world> & ünï\n",
            "templates/cm.yaml": ("apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: {{{{ .Chart.Name }}}}-cm\n"
                                  "data:\n  greeting: {{{{ .Values.greeting | quote }}}}\n")}


def package(helm: Helm, root: Path, name: str, version: str, files: dict[str, str]) -> bytes:
    """`helm package` of a chart directory written from `files` (each formatted with name and version)."""
    src = root / "src" / name
    for rel, text in {**files, **TEMPLATE}.items():
        (src / rel).parent.mkdir(parents=True, exist_ok=True)
        (src / rel).write_text(text.format(name=name, version=version))
    out = root / "pkg"
    out.mkdir(exist_ok=True)
    helm("package", str(src), "-d", str(out))
    return (out / f"{name}-{version}.tgz").read_bytes()


async def test_helm_pulls_shows_and_templates_a_chart_pushed_through_cnr(client, registry, helm, tmp_path):
    ns, name = unique("hm")
    tgz = package(helm, tmp_path, name, "1.0.0", RICH)
    assert (await client.post(f"{API}/{ns}/{name}", json=body(tgz, media_type="helm"))).status == 200
    ref = f"oci://{registry.host}/{ns}/{name}"
    (tmp_path / "out").mkdir()
    helm("pull", ref, "--version", "1.0.0", "-d", str(tmp_path / "out"), oci=True)
    assert (tmp_path / "out" / f"{name}-1.0.0.tgz").read_bytes() == tgz
    shown = helm("show", "chart", ref, "--version", "1.0.0", oci=True)
    assert f"name: {name}" in shown and "Ünïcödé <b>bold</b> & 'quoted' — ✓ 日本" in shown
    rendered = helm("template", "rel", ref, "--version", "1.0.0", oci=True)
    assert f"name: {name}-cm" in rendered and 'greeting: "hello <world> & ünï"' in rendered
    assert "name: sub-rel" in rendered  # the dependency came along


async def test_helm_push_is_listed_and_pulled_through_cnr_byte_identical(client, registry, helm, tmp_path):
    ns, name = unique("hp")
    tgz = package(helm, tmp_path, name, "0.2.0", RICH)
    helm("push", str(tmp_path / "pkg" / f"{name}-0.2.0.tgz"), f"oci://{registry.host}/{ns}", oci=True)
    listed = await (await client.get(API, params={"namespace": ns})).json()
    assert [(p["name"], p["releases"], p["manifests"]) for p in listed] == [(f"{ns}/{name}", ["0.2.0"], ["helm"])]
    manifests = await (await client.get(f"{API}/{ns}/{name}")).json()
    assert [(m["release"], m["content"]["digest"]) for m in manifests] == [("0.2.0", helpers.sha(tgz))]
    assert await (await client.get(f"{API}/{ns}/{name}/0.2.0/helm/pull")).read() == tgz
    data = await (await client.get(f"{API}/{ns}/{name}/0.2.0/helm/pull", params={"format": "json"})).json()
    assert base64.b64decode(data["blob"]) == tgz
    # helm 4 writes org.opencontainers.image.created, helm 3.8.1 does not: CNR's dates follow it.
    manifest, _ = helpers.manifest(registry.url, f"{ns}/{name}", "0.2.0")
    created = (manifest.get("annotations") or {}).get("org.opencontainers.image.created")
    assert (created is None) == (helm.version == "3")  # type: ignore[attr-defined]
    assert listed[0]["created_at"] == manifests[0]["created_at"] == created


@pytest.mark.parametrize("kind", ["plain", "rich"])
async def test_oracle_cnr_push_stores_the_blobs_helm_push_stores(client, registry, helm, tmp_path, kind):
    """Issue 9 item 3: the same `helm package` file pushed through CNR and with `helm push` into two
    repositories: equal config and layer digests; the manifests differ only in documented annotations."""
    ns_cnr, name = unique("oc")
    ns_helm, _ = unique("oh")
    tgz = package(helm, tmp_path, name, "1.2.3", PLAIN if kind == "plain" else RICH)
    resp = await client.post(f"{API}/{ns_cnr}/{name}", json=body(tgz, release="1.2.3", media_type="helm"))
    assert resp.status == 200
    helm("push", str(tmp_path / "pkg" / f"{name}-1.2.3.tgz"), f"oci://{registry.host}/{ns_helm}", oci=True)
    ours, _ = helpers.manifest(registry.url, f"{ns_cnr}/{name}", "1.2.3")
    theirs, _ = helpers.manifest(registry.url, f"{ns_helm}/{name}", "1.2.3")

    assert ours["config"] == theirs["config"]  # mediaType, digest and size: the same config blob
    assert helpers.blob(registry.url, f"{ns_cnr}/{name}", ours["config"]["digest"]) == \
        helpers.blob(registry.url, f"{ns_helm}/{name}", theirs["config"]["digest"])
    [our_layer], [their_layer] = ours["layers"], theirs["layers"]
    assert {k: v for k, v in our_layer.items() if k != "annotations"} == their_layer  # helm writes none
    assert our_layer["digest"] == "sha256:" + helpers.sha(tgz)
    assert our_layer["annotations"] == {"org.opencontainers.image.title": f"{name}-1.2.3.tgz"}  # documented

    # Outside the annotations, the manifests are the same (helm writes no top-level mediaType, and
    # neither does cnr-oci for a chart).
    rest = {k: v for k, v in ours.items() if k not in ("annotations", "layers")}
    assert rest == {k: v for k, v in theirs.items() if k not in ("annotations", "layers")}
    our_ann, their_ann = ours.get("annotations") or {}, theirs.get("annotations") or {}
    # Documented keys, and the chart's own annotations (helm's pkg/registry copies them too).
    chart_keys = {"example.com/note", "artifacthub.io/ünï"} if kind == "rich" else set()
    assert set(our_ann) <= DOCUMENTED | chart_keys, set(our_ann) - DOCUMENTED - chart_keys
    assert chart_keys <= set(our_ann)
    # Where helm writes an annotation, ours says the same (the push time aside). One difference in
    # form: cnr-oci writes non-ASCII annotation values as \\uXXXX escapes (helm._escape_non_ascii,
    # after a newer helm's pkg/registry); helm 4.1.4 writes them raw. Unescaped, they are equal.
    same = {k: v for k, v in their_ann.items() if k != "org.opencontainers.image.created"}
    assert {k: unescape(our_ann.get(k, "")) for k in same} == same
    assert all(v.isascii() for v in our_ann.values())


def unescape(value: str) -> str:
    """\\uXXXX escapes (UTF-16 units, surrogate pairs included) back to text."""
    return value.encode("ascii").decode("unicode_escape").encode("utf-16", "surrogatepass").decode("utf-16") \
        if value.isascii() else value


# -- oras-py, against the live server and its registry that needs credentials ----------------


def oras_login(live: LiveServer) -> oras.client.OrasClient:
    c = oras.client.OrasClient(hostname=live.registry.host, insecure=True, auth_backend="basic")
    c.login(username="alice", password=live.users["alice"], hostname=live.registry.host)
    return c


def cnr(live: LiveServer, method: str, path: str, data: dict[str, Any] | None = None) -> tuple[int, bytes]:
    basic = "Basic " + base64.b64encode(f"alice:{live.users['alice']}".encode()).decode()
    req = urllib.request.Request(live.url + path, method=method,
                                 headers={"Authorization": basic, "Content-Type": "application/json"},
                                 data=json.dumps(data).encode() if data is not None else None)
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


@pytest.mark.parametrize("media_type", ["helm", "kpm"])
def test_oras_pulls_what_a_cnr_client_pushed_byte_identical(live_server, tmp_path, media_type):
    ns, name = unique("or")
    blob = helpers.chart(name, "1.0.0") if media_type == "helm" else kpm(name)
    # The appr/cnr CLIs' body: nulls for the optional fields they do not fill.
    push = body(blob, media_type=media_type, manifest_name=None, metadata=None, package=f"{ns}/{name}")
    assert cnr(live_server, "POST", f"{API}/{ns}/{name}", push)[0] == 200
    files = oras_login(live_server).pull(target=f"{live_server.registry.host}/{ns}/{name}:1.0.0",
                                         outdir=str(tmp_path / "o"))
    expected = f"{name}-1.0.0.tgz" if media_type == "helm" else f"{ns}_{name}_1.0.0.tar.gz"
    assert [Path(f).name for f in files] == [expected]
    assert Path(files[0]).read_bytes() == blob


def test_an_oras_push_with_helms_media_types_is_listed_and_pulled_through_cnr(live_server, tmp_path):
    ns, name = unique("op")
    tgz = helpers.chart(name, "2.0.0")
    (tmp_path / f"{name}-2.0.0.tgz").write_bytes(tgz)
    cfg = tmp_path / "config.json"
    cfg.write_text(json.dumps({"name": name, "version": "2.0.0", "apiVersion": "v2", "description": "by oras"}))
    oras_login(live_server).push(target=f"{live_server.registry.host}/{ns}/{name}:2.0.0",
                                 files=[f"{tmp_path / f'{name}-2.0.0.tgz'}:{HELM_LAYER}"],
                                 manifest_config=f"{cfg}:{HELM_CONFIG}", disable_path_validation=True, quiet=True)
    status, data = cnr(live_server, "GET", f"{API}?namespace={ns}")
    assert status == 200
    assert [(p["name"], p["releases"], p["manifests"]) for p in json.loads(data)] == [
        (f"{ns}/{name}", ["2.0.0"], ["helm"])]
    status, data = cnr(live_server, "GET", f"{API}/{ns}/{name}")
    assert status == 200
    assert [(m["release"], m["content"]["digest"]) for m in json.loads(data)] == [("2.0.0", helpers.sha(tgz))]
    status, pulled = cnr(live_server, "GET", f"{API}/{ns}/{name}/2.0.0/helm/pull")
    assert status == 200 and pulled == tgz


def test_helm_config_writes_dependencies_as_helms_struct_marshals_them():
    """Regression (server): dependencies kept the pushed key order and unknown keys, so a chart whose
    Chart.yaml `helm package` had rewritten (keys sorted) got a config blob unlike helm push's. helm
    marshals chart.Dependency: name, version, repository (never omitted), condition, tags, enabled,
    import-values, alias; unknown keys are dropped."""
    from cnr_oci.archive import helm_config

    chart = {"name": "a", "version": "1.0.0", "dependencies": [
        {"version": "0.1.0", "tags": ["x<y"], "name": "sub", "condition": "sub.on", "alias": "s",
         "import-values": ["data"], "enabled": True, "repository": "", "unknown": 1},
        {"name": "other"}]}
    assert helm_config(chart) == (
        b'{"name":"a","version":"1.0.0","dependencies":['
        b'{"name":"sub","version":"0.1.0","repository":"","condition":"sub.on","tags":["x\\u003cy"],"enabled":true,'
        b'"import-values":["data"],"alias":"s"},{"name":"other","repository":""}]}')
