"""The classic helm chart repository (/helm/<ns>/index.yaml) with the real helm CLI, 3.8.1 and 4.1.4."""

from __future__ import annotations

import asyncio
import gzip
import hashlib
import json
import secrets

import pytest
import yaml

from cnr_oci.helmrepo import CHART_FIELDS
from tests import helpers

API = "/cnr/api/v1/packages"


def chart(name: str, version: str, extra: str = "") -> bytes:
    text = f"apiVersion: v2\nname: {name}\nversion: {version}\ndescription: chart {name}\nappVersion: '9.9'\n{extra}"
    return helpers.tarball({f"{name}/Chart.yaml": text.encode(), f"{name}/values.yaml": b"replicas: 1\n",
                            f"{name}/templates/cm.yaml": b"apiVersion: v1\nkind: ConfigMap\nmetadata:\n"
                                                        b"  name: {{ .Release.Name }}-cm\n"
                                                        b"data:\n  replicas: '{{ .Values.replicas }}'\n"})


async def push(client, ns: str, package: str, blob: bytes, release: str) -> None:
    resp = await client.post(f"{API}/{ns}/{package}", json=helpers.body(blob, release, "helm"))
    assert resp.status == 200, await resp.text()


async def test_helm_repo_add_search_pull_and_template_see_every_chart_of_the_namespace(client, registry, helm,
                                                                                        tmp_path):
    ns = "r" + secrets.token_hex(3)
    blobs = {("web", "1.0.0"): chart("web", "1.0.0"), ("web", "1.1.0-rc.1"): chart("web", "1.1.0-rc.1"),
             ("web", "1.0.1"): chart("web", "1.0.1")}
    for (name, version), blob in blobs.items():
        await push(client, ns, name, blob, version)
    # A package whose name differs from its chart's: listed under the chart's name.
    renamed = chart("db", "2.0.0")
    await push(client, ns, "database", renamed, "2.0.0")
    # A chart pushed with helm push (OCI), beside the CNR ones.
    pushed = chart("cache", "0.3.0")
    (tmp_path / "cache-0.3.0.tgz").write_bytes(pushed)
    await asyncio.to_thread(helm, "push", "cache-0.3.0.tgz", f"oci://{registry.host}/{ns}", oci=True)
    # An operator bundle (helm media type, no Chart.yaml) is no chart: left out.
    await push(client, ns, "bundle", helpers.kpm(), "1.0.0")

    base = str(client.make_url(f"/helm/{ns}")).rstrip("/")
    await asyncio.to_thread(helm, "repo", "add", "cnr", base)
    await asyncio.to_thread(helm, "repo", "update")
    stable = await asyncio.to_thread(helm, "search", "repo", "cnr/", "--versions")
    assert "cnr/web" in stable and "1.0.1" in stable and "1.0.0" in stable and "1.1.0-rc.1" not in stable
    assert "cnr/db" in stable and "cnr/cache" in stable and "bundle" not in stable
    devel = await asyncio.to_thread(helm, "search", "repo", "cnr/web", "--devel", "--versions")
    assert "1.1.0-rc.1" in devel
    out = tmp_path / "out"
    out.mkdir()
    for name, version, blob in (("web", "1.0.1", blobs[("web", "1.0.1")]), ("db", "2.0.0", renamed),
                                ("cache", "0.3.0", pushed)):
        await asyncio.to_thread(helm, "pull", f"cnr/{name}", "--version", version, "-d", str(out))
        assert (out / f"{name}-{version}.tgz").read_bytes() == blob, name
    rendered = await asyncio.to_thread(helm, "template", "rel", "cnr/web", "--version", "1.0.0")
    assert "name: rel-cm" in rendered and "replicas: '1'" in rendered


async def test_the_same_release_through_three_doors_is_byte_identical(client, registry, helm, tmp_path):
    ns = "b" + secrets.token_hex(3)
    blob = chart("app", "1.2.3")
    await push(client, ns, "app", blob, "1.2.3")
    base = str(client.make_url(f"/helm/{ns}")).rstrip("/")
    await asyncio.to_thread(helm, "repo", "add", "three", base)
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    await asyncio.to_thread(helm, "pull", "three/app", "--version", "1.2.3", "-d", str(tmp_path / "a"))
    await asyncio.to_thread(helm, "pull", f"oci://{registry.host}/{ns}/app", "--version", "1.2.3", "-d",
                            str(tmp_path / "b"), oci=True)
    cnr = await (await client.get(f"{API}/{ns}/app/1.2.3/helm/pull")).read()
    assert (tmp_path / "a" / "app-1.2.3.tgz").read_bytes() == (tmp_path / "b" / "app-1.2.3.tgz").read_bytes() \
        == cnr == blob


async def test_index_yaml_is_what_helm_reads_with_etag_304_gzip_and_per_caller_headers(client):
    ns = "i" + secrets.token_hex(3)
    blob = chart("web", "1.0.0", "keywords: [a, b]\nmaintainers:\n  - name: Ann\n")
    await push(client, ns, "web", blob, "1.0.0")
    resp = await client.get(f"/helm/{ns}/index.yaml", headers={"Accept-Encoding": "identity"})
    assert resp.status == 200 and resp.headers["Content-Type"] == "application/x-yaml"
    assert "Authorization" in resp.headers["Vary"] and resp.headers["Cache-Control"].startswith("private")
    doc = yaml.safe_load(await resp.read())
    assert doc["apiVersion"] == "v1" and list(doc["entries"]) == ["web"]
    entry = doc["entries"]["web"][0]
    assert set(entry) <= set(CHART_FIELDS) | {"urls", "digest", "created"}
    assert entry["digest"] == hashlib.sha256(blob).hexdigest() and entry["urls"] == ["charts/web-1.0.0.tgz"]
    assert entry["apiVersion"] == "v2" and entry["appVersion"] == "9.9" and entry["keywords"] == ["a", "b"]
    assert entry["maintainers"] == [{"name": "Ann"}] and entry["created"].endswith("Z")
    etag = resp.headers["ETag"]
    again = await client.get(f"/helm/{ns}/index.yaml", headers={"If-None-Match": etag})
    assert again.status == 304 and again.headers["ETag"] == etag
    zipped = await client.get(f"/helm/{ns}/index.yaml", headers={"Accept-Encoding": "gzip"}, auto_decompress=False)
    assert zipped.headers["Content-Encoding"] == "gzip"
    assert yaml.safe_load(gzip.decompress(await zipped.read()))["entries"] == doc["entries"]
    # cnr-oci's own write shows at once: a new version, a new ETag.
    await push(client, ns, "web", chart("web", "1.1.0"), "1.1.0")
    fresh = await client.get(f"/helm/{ns}/index.yaml", headers={"If-None-Match": etag})
    assert fresh.status == 200 and fresh.headers["ETag"] != etag
    assert [e["version"] for e in yaml.safe_load(await fresh.read())["entries"]["web"]] == ["1.1.0", "1.0.0"]


async def test_unknown_chart_files_and_bad_namespaces_are_404_and_400(client):
    ns = "n" + secrets.token_hex(3)
    await push(client, ns, "web", chart("web", "1.0.0"), "1.0.0")
    assert (await client.get(f"/helm/{ns}/charts/web-9.9.9.tgz")).status == 404
    assert (await client.get(f"/helm/{ns}/charts/..%2Fx.tgz")).status == 404
    assert (await client.get("/helm/Bad_NS/index.yaml")).status == 400
    assert (await client.get(f"/helm/{ns}/charts/web-1.0.0.tgz")).status == 200
    empty = yaml.safe_load(await (await client.get("/helm/nothing" + secrets.token_hex(3) + "/index.yaml")).read())
    assert empty["entries"] == {}


async def test_helm_repo_add_needs_credentials_where_the_registry_does(live_server, helm, tmp_path):
    """An htpasswd registry: without credentials `helm repo add` fails, with alice's it works (Basic is
    passed through to the registry as alice), and her password never reaches the server's log."""
    import base64
    import urllib.request

    ns = "a" + secrets.token_hex(3)
    user, password = "alice", live_server.users["alice"]
    auth = "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()
    body = json.dumps(helpers.body(chart("web", "1.0.0"), "1.0.0", "helm")).encode()
    req = urllib.request.Request(f"{live_server.url}{API}/{ns}/web", data=body, method="POST",
                                 headers={"Authorization": auth, "Content-Type": "application/json"})
    await asyncio.to_thread(lambda: urllib.request.urlopen(req, timeout=30).close())
    base = f"{live_server.url}/helm/{ns}"
    with pytest.raises(AssertionError):
        await asyncio.to_thread(helm, "repo", "add", "anon", base)
    await asyncio.to_thread(helm, "repo", "add", "priv", base, "--username", user, "--password", password)
    await asyncio.to_thread(helm, "repo", "update")
    (tmp_path / "out").mkdir()
    await asyncio.to_thread(helm, "pull", "priv/web", "--version", "1.0.0", "-d", str(tmp_path / "out"))
    assert (tmp_path / "out" / "web-1.0.0.tgz").is_file()
    assert password not in live_server.log_path.read_text()


async def test_helm_dependency_update_resolves_from_the_repository(client, helm, tmp_path):
    ns = "d" + secrets.token_hex(3)
    lib = chart("lib", "0.2.0")
    await push(client, ns, "lib", lib, "0.2.0")
    await push(client, ns, "lib", chart("lib", "0.1.0"), "0.1.0")
    base = str(client.make_url(f"/helm/{ns}")).rstrip("/")
    app = tmp_path / "app"
    (app / "templates").mkdir(parents=True)
    (app / "Chart.yaml").write_text(f"apiVersion: v2\nname: app\nversion: 1.0.0\ndependencies:\n"
                                    f"  - name: lib\n    version: '>=0.1.0 <1.0.0'\n    repository: {base}\n")
    await asyncio.to_thread(helm, "repo", "add", "deps", base)  # helm 3.8 wants the repository known
    await asyncio.to_thread(helm, "dependency", "update", str(app))
    assert (app / "charts" / "lib-0.2.0.tgz").read_bytes() == lib


async def test_a_chart_pushed_by_oras_py_is_in_the_index_and_pulled_by_helm(client, registry, helm, tmp_path):
    """oras-py, an independent OCI client, pushes a chart in helm's media types; helm finds it through
    the classic repository and pulls the same bytes."""
    import oras.client

    from cnr_oci.layout import HELM_CONFIG, HELM_LAYER

    ns = "o" + secrets.token_hex(3)
    tgz = chart("orased", "0.4.0")
    (tmp_path / "orased-0.4.0.tgz").write_bytes(tgz)
    cfg = tmp_path / "config.json"
    cfg.write_text(json.dumps({"name": "orased", "version": "0.4.0", "apiVersion": "v2", "appVersion": "7"}))
    oras_client = oras.client.OrasClient(hostname=registry.host, insecure=True)
    await asyncio.to_thread(oras_client.push, target=f"{registry.host}/{ns}/orased:0.4.0",
                            files=[f"{tmp_path / 'orased-0.4.0.tgz'}:{HELM_LAYER}"],
                            manifest_config=f"{cfg}:{HELM_CONFIG}", disable_path_validation=True, quiet=True)
    alias = "or" + secrets.token_hex(2)
    await asyncio.to_thread(helm, "repo", "add", alias, str(client.make_url(f"/helm/{ns}")))
    found = await asyncio.to_thread(helm, "search", "repo", f"{alias}/orased")
    assert "0.4.0" in found and "7" in found
    (tmp_path / "out").mkdir()
    await asyncio.to_thread(helm, "pull", f"{alias}/orased", "--version", "0.4.0", "-d", str(tmp_path / "out"))
    assert (tmp_path / "out" / "orased-0.4.0.tgz").read_bytes() == tgz


async def test_odd_characters_in_chart_yaml_reach_helm_and_pyyaml_unchanged(client, helm):
    """Each entry is a JSON flow mapping: YAML-looking words stay strings, and characters YAML treats
    specially (line separators, NEL, DEL, a BOM, emoji, quotes) are escaped so both parsers read them back."""
    ns = "u" + secrets.token_hex(3)
    odd = "é 😀 \u2028 x\u0085y \u007f \ufeff: # {a} 'q' \"dq\" \\ end"
    extra = "keywords: ['yes', '0x1', '~', 'null']\nannotations:\n  'a: b': 'on'\n"
    text = "apiVersion: v2\nname: odd\nversion: 1.0.0\n" + yaml.safe_dump({"description": odd}) + extra
    blob = helpers.tarball({"odd/Chart.yaml": text.encode(), "odd/values.yaml": b"a: 1\n"})
    await push(client, ns, "odd", blob, "1.0.0")
    entry = yaml.safe_load(await (await client.get(f"/helm/{ns}/index.yaml")).read())["entries"]["odd"][0]
    assert entry["description"] == odd and entry["keywords"] == ["yes", "0x1", "~", "null"]
    assert entry["annotations"] == {"a: b": "on"}
    alias = "u" + secrets.token_hex(2)
    await asyncio.to_thread(helm, "repo", "add", alias, str(client.make_url(f"/helm/{ns}")))
    found = await asyncio.to_thread(helm, "search", "repo", f"{alias}/odd", "-o", "json")
    # helm's Metadata.Validate (sanitizeString) makes spaces of space characters and drops what is not
    # printable; everything else arrives as it is in Chart.yaml.
    helms = "".join(" " if c.isspace() else c for c in odd if c.isspace() or c.isprintable())
    assert json.loads(found)[0]["description"] == helms


class Calls:
    """Counts the registry calls the server's OCI client makes, by method name."""

    def __init__(self, client, names=("catalog", "tags", "get_manifest", "get_small_blob")) -> None:
        from collections import Counter

        from cnr_oci import appkeys

        self.counts: Counter[str] = Counter()
        oci = client.app[appkeys.STORE].read.client
        for name in names:
            real = getattr(oci, name)

            async def counted(*a, _real=real, _name=name, **kw):
                self.counts[_name] += 1
                return await _real(*a, **kw)

            setattr(oci, name, counted)

    def take(self) -> dict[str, int]:
        out = dict(self.counts)
        self.counts.clear()
        return out


async def test_a_cold_index_reads_no_configs_of_cnr_pushes_and_a_write_rereads_only_its_package(make_client,
                                                                                               registry):
    from cnr_oci.settings import Settings

    client = await make_client(Settings(upstream=registry.url, cache_ttl=300))
    ns = "c" + secrets.token_hex(3)
    for i in range(4):
        for v in ("1.0.0", "1.1.0"):
            await push(client, ns, f"p{i}", chart(f"p{i}", v), v)
    calls = Calls(client)
    # Cold for this server's caches: forget what the pushes left, as a restart would.
    from cnr_oci import appkeys

    store = client.app[appkeys.STORE]
    for i in range(4):
        store.read.forget(f"{ns}/p{i}")
    store.read._manifests.clear()
    first = await client.get(f"/helm/{ns}/index.yaml")
    assert first.status == 200 and len(yaml.safe_load(await first.read())["entries"]) == 4
    cold = calls.take()
    # One tag list per package, one manifest per release, and no config: cnr-oci's manifests carry a copy.
    assert cold.get("tags") == 4 and cold.get("get_manifest") == 8 and not cold.get("get_small_blob"), cold
    await push(client, ns, "p2", chart("p2", "1.2.0"), "1.2.0")
    calls.take()
    again = await client.get(f"/helm/{ns}/index.yaml")
    assert [e["version"] for e in yaml.safe_load(await again.read())["entries"]["p2"]] == ["1.2.0", "1.1.0", "1.0.0"]
    after_write = calls.take()
    # Only p2 is read again (its tag list and its one new release's manifest), plus the catalog.
    assert after_write.get("tags") == 1 and after_write.get("get_manifest", 0) <= 1, after_write
    warm = await client.get(f"/helm/{ns}/index.yaml", headers={"If-None-Match": again.headers["ETag"]})
    assert warm.status == 304 and calls.take() == {}
