"""The real appr 0.7.4 CLI (tests/clients/install_appr.py) against `cnr-oci serve` with an htpasswd
registry, run as its users run it. appr always calls <endpoint>/cnr/...

appr deletes the .tar.gz it pushes, so the pushes of the CLI go through a recording HTTP proxy (the
client's own proxy support, HTTP_PROXY): the test then knows the exact bytes pushed and compares every
pull with them."""

from __future__ import annotations

import base64
import hashlib
import http.client
import http.server
import io
import json
import re
import subprocess
import tarfile
import threading
import urllib.parse
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.clients.common import client_env, run
from tests.clients.install_appr import main as install_appr
from tests.conftest import LiveServer
from tests.helpers import unique

CHART = {"Chart.yaml": b"apiVersion: v1\nname: NAME\nversion: VERSION\ndescription: appr client test\n",
         "values.yaml": b"replicas: 1\n",
         "templates/cm.yaml": b"apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: x\n"}
COMPOSE = b'version: "2"\nservices:\n  web:\n    image: nginx\n'


@pytest.fixture(scope="module")
def appr_venv() -> Path:
    return install_appr()


class Recorder:
    """A forward HTTP proxy that records each request body: what the client really sent."""

    def __init__(self) -> None:
        self.requests: list[tuple[str, str, bytes]] = []
        rec = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def _relay(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                rec.requests.append((self.command, self.path, body))
                url = urllib.parse.urlsplit(self.path)
                conn = http.client.HTTPConnection(url.netloc, timeout=30)
                headers = {k: v for k, v in self.headers.items() if k.lower() not in ("proxy-connection", "connection")}
                conn.request(self.command, url.path + ("?" + url.query if url.query else ""), body, headers)
                resp = conn.getresponse()
                data = resp.read()
                self.send_response(resp.status)
                for k, v in resp.getheaders():
                    if k.lower() not in ("transfer-encoding", "connection", "content-length"):
                        self.send_header(k, v)
                self.send_header("Content-Length", str(len(data)))
                self.send_header("Connection", "close")
                self.end_headers()
                self.wfile.write(data)
                conn.close()

            do_GET = do_POST = do_DELETE = _relay

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def pushes(self) -> list[dict[str, Any]]:
        return [json.loads(b) for m, p, b in self.requests
                if m == "POST" and "/api/v1/packages/" in p and "/channels/" not in p]


@pytest.fixture(scope="module")
def recorder() -> Iterator[Recorder]:
    rec = Recorder()
    yield rec
    rec.server.shutdown()
    rec.server.server_close()


class Appr:
    """The appr CLI with its own HOME, logged in as alice."""

    def __init__(self, venv: Path, home: Path, live: LiveServer, recorder: Recorder) -> None:
        self.venv, self.home, self.live, self.rec = venv, home, live, recorder
        self.url = live.url

    def __call__(self, *args: str, cwd: Path | None = None, proxy: bool = False,
                 home: Path | None = None) -> subprocess.CompletedProcess[str]:
        h = home or self.home
        env = client_env(h)
        if proxy:  # the client's own proxy support; the proxy forwards to the live server
            for k in ("NO_PROXY", "no_proxy"):
                env.pop(k)
            env["HTTP_PROXY"] = env["http_proxy"] = self.rec.url
        return run(self.venv, "appr", *args, home=h, cwd=cwd, env=env)

    def ok(self, *args: str, **kw: Any) -> subprocess.CompletedProcess[str]:
        p = self(*args, **kw)
        assert p.returncode == 0, p.stdout + p.stderr
        return p

    def json(self, *args: str, **kw: Any) -> Any:
        return json.loads(self.ok(*args, "--output", "json", **kw).stdout)

    def push(self, *args: str, cwd: Path) -> dict[str, Any]:
        """A push through the recorder; returns the body appr sent."""
        before = len(self.rec.pushes())
        self.ok("push", *args, cwd=cwd, proxy=True)
        sent = self.rec.pushes()[before:]
        assert len(sent) == 1
        return sent[0]

    def pull_tarball(self, ref: str, media_type: str, dest: Path) -> tuple[dict[str, Any], bytes]:
        dest.mkdir(parents=True, exist_ok=True)
        out = self.json("pull", "-t", media_type, f"{self.url}/{ref}", "--tarball", "--dest", str(dest))
        return out, Path(out["path"]).read_bytes()


@pytest.fixture(scope="module")
def appr(appr_venv: Path, live_server: LiveServer, recorder: Recorder,
         tmp_path_factory: pytest.TempPathFactory) -> Appr:
    cli = Appr(appr_venv, tmp_path_factory.mktemp("appr-home"), live_server, recorder)
    cli.ok("login", "-u", "alice", "-p", live_server.users["alice"], live_server.url)
    return cli


def make_chart(root: Path, name: str, version: str) -> Path:
    d = root / name
    for rel, data in CHART.items():
        (d / rel).parent.mkdir(parents=True, exist_ok=True)
        (d / rel).write_bytes(data.replace(b"NAME", name.encode()).replace(b"VERSION", version.encode()))
    return d


def make_compose(root: Path) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    (root / "docker-compose.yaml").write_bytes(COMPOSE)
    return root


def members(blob: bytes) -> dict[str, bytes]:
    with tarfile.open(fileobj=io.BytesIO(blob), mode="r:gz") as tar:
        return {m.name: tar.extractfile(m).read() for m in tar.getmembers() if m.isfile()}  # type: ignore[union-attr]


def error_of(p: subprocess.CompletedProcess[str]) -> dict[str, Any]:
    """appr prints a refused request's body as YAML after 'appr: error:'."""
    assert p.returncode == 2, p.stdout + p.stderr
    doc = yaml.safe_load(p.stderr.split("appr: error:", 1)[1])
    assert isinstance(doc, dict)
    return doc


def test_login_logout_htpasswd(appr: Appr, tmp_path: Path) -> None:
    """login stores the server's token and later verbs send it; a wrong password is refused 401 by the
    registry; logout removes the token and pushes are 401 again."""
    home = tmp_path / "home"
    home.mkdir()
    bad = error_of(appr("login", "-u", "alice", "-p", "wrong", appr.url, home=home))
    assert bad["response"]["code"] == "unauthorized-access" and "401" in bad["message"]
    assert not (home / ".appr" / "auths.yaml").exists() or "token" not in (home / ".appr" / "auths.yaml").read_text()

    ns, name = unique("login")
    src = make_compose(tmp_path / "c")
    anon = error_of(appr("push", f"{appr.url}/{ns}/{name}@1.0.0", "-t", "docker-compose", cwd=src, home=home))
    assert anon["response"]["code"] == "unauthorized-access"

    out = appr.json("login", "-u", "bob", "-p", appr.live.users["bob"], appr.url, home=home)
    assert out["status"] == "Login succeeded"
    auths = yaml.safe_load((home / ".appr" / "auths.yaml").read_text())["auths"]
    assert auths[f"{appr.url}/cnr"]["token"]
    appr.ok("push", f"{appr.url}/{ns}/{name}@1.0.0", "-t", "docker-compose", cwd=src, home=home)

    assert appr.json("logout", appr.url, home=home)["status"] == f"Logout complete from {appr.url}"
    assert f"{appr.url}/cnr" not in (yaml.safe_load((home / ".appr" / "auths.yaml").read_text())["auths"] or {})
    again = error_of(appr("push", f"{appr.url}/{ns}/{name}@1.0.1", "-t", "docker-compose", cwd=src, home=home))
    assert again["response"]["code"] == "unauthorized-access"


def test_push_helm_chart_dir_repush_409_force(appr: Appr, tmp_path: Path) -> None:
    """appr push in a chart dir packs it under <name>/ and sends media_type helm with the chart's
    name; the same push again is 409 package-exists; -f replaces it; the pull is the pushed bytes."""
    ns, name = unique("helm")
    chart = make_chart(tmp_path, name, "1.2.3")
    body = appr.push(f"{appr.url}/{ns}/{name}", cwd=chart)
    assert (body["media_type"], body["release"], body["manifest_name"], body["package"]) == (
        "helm", "1.2.3", name, f"{ns}/{name}")
    blob = base64.b64decode(body["blob"])
    assert members(blob) == {f"{name}/{k}": v.replace(b"NAME", name.encode()).replace(b"VERSION", b"1.2.3")
                             for k, v in CHART.items()}

    err = error_of(appr("push", f"{appr.url}/{ns}/{name}", cwd=chart))
    assert err["response"]["code"] == "package-exists" and "409" in err["message"]
    assert err["response"]["details"] == {"package": f"{ns}/{name}", "release": "1.2.3", "media_type": "helm"}

    (chart / "values.yaml").write_bytes(b"replicas: 2\n")
    forced = appr.push(f"{appr.url}/{ns}/{name}", "-f", cwd=chart)
    assert forced["blob"] != body["blob"]
    _, pulled = appr.pull_tarball(f"{ns}/{name}@1.2.3", "helm", tmp_path / "out")
    assert pulled == base64.b64decode(forced["blob"])
    assert members(pulled)[f"{name}/values.yaml"] == b"replicas: 2\n"


def test_push_chart_named_unlike_package(appr: Appr, tmp_path: Path) -> None:
    """Issue 9: a chart whose Chart.yaml name differs from the package name is stored (was 422)."""
    ns, name = unique("rename")
    chart = make_chart(tmp_path, "inner-chart", "0.1.0")
    body = appr.push(f"{appr.url}/{ns}/{name}", cwd=chart)
    assert body["manifest_name"] == "inner-chart"
    _, pulled = appr.pull_tarball(f"{ns}/{name}@0.1.0", "helm", tmp_path / "out")
    assert pulled == base64.b64decode(body["blob"])


def test_push_docker_compose_null_fields_with_channel(appr: Appr, tmp_path: Path) -> None:
    """Issue 9: appr sends "manifest_name": null and "metadata": null for a non-helm push; it is stored
    (was 400), -c adds it to the channel, and the pull is the pushed bytes."""
    ns, name = unique("compose")
    src = make_compose(tmp_path / "src")
    body = appr.push(f"{appr.url}/{ns}/{name}", "--media-type", "docker-compose", "--version", "1.0.0",
                     "-c", "stable", cwd=src)
    assert body["manifest_name"] is None and body["metadata"] is None and body["media_type"] == "docker-compose"
    assert members(base64.b64decode(body["blob"])) == {"docker-compose.yaml": COMPOSE}
    assert appr.json("channel", f"{appr.url}/{ns}/{name}", "-c", "stable") == [
        {"name": "stable", "current": "1.0.0", "releases": ["1.0.0"]}]
    _, pulled = appr.pull_tarball(f"{ns}/{name}:stable", "docker-compose", tmp_path / "out")
    assert pulled == base64.b64decode(body["blob"])


KPM_PUSH = r"""
import base64, json, os, sys
from appr.client import ApprClient
from appr.pack import pack_kub
# What PushCmd._push sends for media type kpm (appr/commands/push.py): manifest_name stays None and
# metadata is ManifestJsonnet.metadata(); rendering manifest.jsonnet needs jsonnet, which has no
# Python 3.11 build that appr can use, so the metadata is given as that method returns it.
url, package, release, out = sys.argv[1:5]
pack_kub(out, filter_files=False)
body = {"manifest_name": None, "name": package, "release": release,
        "metadata": {"variables": {"replicas": 1}, "resources": [], "shards": None, "dependencies": []},
        "media_type": "kpm", "blob": base64.b64encode(open(out, "rb").read()).decode()}
print(json.dumps(ApprClient(url).push(package, body, force=False)))
"""


def test_push_kpm_with_the_clients_body(appr: Appr, tmp_path: Path) -> None:
    """kpm: appr's own ApprClient.push with the body PushCmd builds (appr can't render jsonnet on 3.11);
    the CLI then lists, shows and pulls it byte for byte."""
    ns, name = unique("kpm")
    src = tmp_path / "src"
    src.mkdir()
    (src / "manifest.jsonnet").write_text(f'{{package: {{name: "{ns}/{name}", version: "2.0.0"}}, deploy: []}}\n')
    out = tmp_path / "pushed.tar.gz"
    p = subprocess.run([str(appr.venv / "bin" / "python"), "-c", KPM_PUSH, appr.url, f"{ns}/{name}", "2.0.0", str(out)],
                       capture_output=True, text=True, cwd=src, env=client_env(appr.home), timeout=60)
    assert p.returncode == 0, p.stderr
    assert json.loads(p.stdout) == {"status": "ok"}
    shown = appr.json("show", f"{appr.url}/{ns}/{name}", "-t", "kpm")
    assert shown[0]["metadata"]["variables"] == {"replicas": 1}
    _, pulled = appr.pull_tarball(f"{ns}/{name}@2.0.0", "kpm", tmp_path / "out")
    assert pulled == out.read_bytes()


@pytest.fixture(scope="module")
def published(appr: Appr, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """One namespace with a helm chart (1.0.0, 1.1.0, 2.0.0-rc.1) and a docker-compose package
    (1.0.0), pushed by the CLI; the exact blobs it sent, by (package, release)."""
    root = tmp_path_factory.mktemp("published")
    ns, _ = unique("pub")
    chart, compose = f"chart{ns[-4:]}", f"compose{ns[-4:]}"
    blobs: dict[tuple[str, str], bytes] = {}
    for v in ("1.0.0", "1.1.0", "2.0.0-rc.1"):
        body = appr.push(f"{appr.url}/{ns}/{chart}", cwd=make_chart(root / v, chart, v))
        blobs[(chart, v)] = base64.b64decode(body["blob"])
    body = appr.push(f"{appr.url}/{ns}/{compose}@1.0.0", "-t", "docker-compose", cwd=make_compose(root / "c"))
    blobs[(compose, "1.0.0")] = base64.b64decode(body["blob"])
    return {"ns": ns, "chart": chart, "compose": compose, "blobs": blobs, "root": root}


def test_list_with_each_filter(appr: Appr, published: dict[str, Any]) -> None:
    """appr list: -o namespace, -s search (case-insensitive substring), -t media type."""
    ns, chart, compose = published["ns"], published["chart"], published["compose"]
    by_ns = appr.json("list", appr.url, "-o", ns)
    assert sorted(p["name"] for p in by_ns) == sorted([f"{ns}/{chart}", f"{ns}/{compose}"])
    helm = next(p for p in by_ns if p["name"] == f"{ns}/{chart}")
    assert helm["releases"] == ["2.0.0-rc.1", "1.1.0", "1.0.0"] and helm["default"] == "2.0.0-rc.1"
    assert helm["manifests"] == ["helm"] and helm["namespace"] == ns

    found = appr.json("list", appr.url, "-s", compose.upper())
    assert [p["name"] for p in found] == [f"{ns}/{compose}"]
    assert [p["name"] for p in appr.json("list", appr.url, "-o", ns, "-t", "docker-compose")] == [f"{ns}/{compose}"]
    assert [p["name"] for p in appr.json("list", appr.url, "-o", ns, "-t", "helm")] == [f"{ns}/{chart}"]
    assert appr.json("list", appr.url, "-o", ns, "-t", "kpm") == []
    text = appr.ok("list", appr.url, "-o", ns).stdout
    assert re.search(rf"^{re.escape(appr.url)}/{ns}/{chart} +2\.0\.0-rc\.1 +- +helm$", text, re.M), text


def test_show(appr: Appr, published: dict[str, Any]) -> None:
    """appr show lists the manifests with the digest of the bytes pushed; -v picks one release."""
    ns, chart, blobs = published["ns"], published["chart"], published["blobs"]
    shown = appr.json("show", f"{appr.url}/{ns}/{chart}")
    assert [m["release"] for m in shown] == ["2.0.0-rc.1", "1.1.0", "1.0.0"]
    for m in shown:
        assert m["content"]["digest"] == hashlib.sha256(blobs[(chart, m["release"])]).hexdigest()
        assert m["content"]["size"] == len(blobs[(chart, m["release"])])
        assert m["metadata"] == {"maintainers": [], "source": []}
    one = appr.json("show", f"{appr.url}/{ns}/{chart}@1.1.0")
    assert [m["release"] for m in one] == ["1.1.0"]
    text = appr.ok("show", f"{appr.url}/{ns}/{chart}", "-w").stdout
    assert hashlib.sha256(blobs[(chart, "1.0.0")]).hexdigest() in text


def test_pull_every_form(appr: Appr, published: dict[str, Any], tmp_path: Path) -> None:
    """appr pull (which asks for ?format=json) by exact version, range, default, channel, digest and
    media type '-'; inspect (the raw pull); every answer is the bytes pushed."""
    ns, chart, compose, blobs = published["ns"], published["chart"], published["compose"], published["blobs"]
    ref = f"{ns}/{chart}"
    out, data = appr.pull_tarball(f"{ref}@1.0.0", "helm", tmp_path / "exact")
    assert data == blobs[(chart, "1.0.0")] and Path(out["path"]).name == f"{ns}_{chart}_1.0.0.tar.gz"
    out, data = appr.pull_tarball(f"{ref}@1", "helm", tmp_path / "range")  # range: prereleases excluded
    assert data == blobs[(chart, "1.1.0")] and out["path"].endswith("_1.1.0.tar.gz")
    out, data = appr.pull_tarball(ref, "helm", tmp_path / "default")  # default: prereleases included
    assert data == blobs[(chart, "2.0.0-rc.1")]
    digest = hashlib.sha256(blobs[(chart, "1.0.0")]).hexdigest()
    out, data = appr.pull_tarball(f"{ref}@sha256:{digest}", "helm", tmp_path / "digest")
    assert data == blobs[(chart, "1.0.0")] and Path(out["path"]).name == f"{ns}_{chart}_{digest[:8]}.tar.gz"
    out, data = appr.pull_tarball(f"{ns}/{compose}@1.0.0", "-", tmp_path / "dash")
    assert data == blobs[(compose, "1.0.0")] and out["media_type"] == "docker-compose"

    appr.ok("channel", f"{appr.url}/{ref}@1.0.0", "-c", "pullme", "--set-release")
    out, data = appr.pull_tarball(f"{ref}:pullme", "helm", tmp_path / "channel")
    assert data == blobs[(chart, "1.0.0")]

    # Without --tarball appr extracts the package: the files are the chart's.
    dest = tmp_path / "extract"
    dest.mkdir()
    extracted = Path(appr.json("pull", "-t", "helm", f"{appr.url}/{ref}@1.1.0", "--dest", str(dest))["path"])
    assert (extracted / chart / "values.yaml").read_bytes() == CHART["values.yaml"]

    # inspect: the raw .tar.gz route; the tree and one file of the pushed blob.
    tree = appr.json("inspect", "-t", "helm", f"{appr.url}/{ref}@1.1.0")["output"]
    assert tree.split("\n") == sorted(members(blobs[(chart, "1.1.0")]))
    by_digest = appr.json("inspect", "-t", "helm", f"{appr.url}/{ref}@sha256:{digest}")["output"]  # raw blob route
    assert by_digest.split("\n") == sorted(members(blobs[(chart, "1.0.0")]))
    one = appr.ok("inspect", "-t", "helm", f"{appr.url}/{ref}@1.1.0", "-f", f"{chart}/values.yaml").stdout
    assert one.strip() == repr(CHART["values.yaml"])  # appr prints the bytes object on Python 3

    missing = error_of(appr("pull", "-t", "helm", f"{appr.url}/{ref}@9.9.9", "--dest", str(tmp_path)))
    assert missing["response"]["code"] == "package-release-not-found"


def test_channel_add_remove_delete(appr: Appr, published: dict[str, Any]) -> None:
    """appr channel --set-release / --remove-release / --delete, and the listing after each."""
    ref = f"{appr.url}/{published['ns']}/{published['chart']}"
    assert appr.json("channel", f"{ref}@1.0.0", "-c", "beta", "--set-release") == {
        "name": "beta", "current": "1.0.0", "releases": ["1.0.0"]}
    added = appr.json("channel", f"{ref}@1.1.0", "-c", "beta", "--set-release")
    assert added["current"] == "1.1.0" and sorted(added["releases"]) == ["1.0.0", "1.1.0"]
    missing = error_of(appr("channel", f"{ref}@3.0.0", "-c", "beta", "--set-release"))
    assert "404" in missing["message"]
    removed = appr.json("channel", f"{ref}@1.1.0", "-c", "beta", "--remove-release")
    assert removed["status"] == "deleted" and removed["release"] == "1.1.0"
    assert appr.json("channel", ref, "-c", "beta") == [{"name": "beta", "current": "1.0.0", "releases": ["1.0.0"]}]
    names = [c["name"] for c in appr.json("channel", ref)]
    assert "beta" in names
    assert appr.json("channel", ref, "-c", "beta", "--delete") == {
        "channel": "beta", "package": f"{published['ns']}/{published['chart']}", "action": "delete"}
    assert "beta" not in [c["name"] for c in appr.json("channel", ref)]
    assert "stable" in appr.ok("channel", f"{ref}@1.0.0", "-c", "stable", "--set-release").stdout


def test_delete_package(appr: Appr, tmp_path: Path) -> None:
    """appr delete-package removes one release (and it leaves its channels); it may be pushed again."""
    ns, name = unique("del")
    src = make_compose(tmp_path / "src")
    appr.push(f"{appr.url}/{ns}/{name}@1.0.0", "-t", "docker-compose", "-c", "stable", cwd=src)
    appr.push(f"{appr.url}/{ns}/{name}@1.0.1", "-t", "docker-compose", cwd=src)
    out = appr.json("delete-package", "-t", "docker-compose", f"{appr.url}/{ns}/{name}@1.0.0")
    assert out == {"status": "deleted", "package": f"{ns}/{name}", "release": "1.0.0"}
    assert appr.json("list", appr.url, "-o", ns)[0]["releases"] == ["1.0.1"]
    assert appr.json("channel", f"{appr.url}/{ns}/{name}") == []
    gone = error_of(appr("delete-package", "-t", "docker-compose", f"{appr.url}/{ns}/{name}@1.0.0"))
    assert "404" in gone["message"]
    body = appr.push(f"{appr.url}/{ns}/{name}@1.0.0", "-t", "docker-compose", cwd=src)
    _, pulled = appr.pull_tarball(f"{ns}/{name}@1.0.0", "docker-compose", tmp_path / "out")
    assert pulled == base64.b64decode(body["blob"])


def test_helm_dep(appr: Appr, published: dict[str, Any], tmp_path: Path) -> None:
    """appr helm dep: the requirements.yaml 'appr:' entries, by range and by channel, are pulled into
    appr_charts/ and rewritten as file:// dependencies."""
    ns, chart, blobs = published["ns"], published["chart"], published["blobs"]
    appr.ok("channel", f"{appr.url}/{ns}/{chart}@1.0.0", "-c", "dep", "--set-release")
    work = tmp_path / "umbrella"
    work.mkdir()
    (work / "requirements.yaml").write_text(yaml.safe_dump({
        "dependencies": [{"name": "other", "version": "0.1.0", "repository": "https://example.invalid"}],
        "appr": [{"name": f"{appr.url}/{ns}/{chart}", "version": ">=1.0,<2"}]}))
    out = appr.ok("helm", "dep", cwd=work)
    deps = {d["name"]: d for d in yaml.safe_load(out.stdout)["dependencies"]}
    assert deps[chart]["version"] == "1.1.0"
    assert deps[chart]["repository"] == f"file://appr_charts/{ns}/{chart}"
    for rel, data in members(blobs[(chart, "1.1.0")]).items():
        assert (work / "appr_charts" / ns / rel).read_bytes() == data

    (work / "requirements.yaml").write_text(yaml.safe_dump({"appr": [{"name": f"{appr.url}/{ns}/{chart}",
                                                                       "version": ":dep"}]}))
    out = appr.ok("helm", "dep", cwd=work)
    assert yaml.safe_load(out.stdout)["dependencies"][0]["version"] == "1.0.0"


DISCOVER = r"""
import json, sys
from appr.discovery import discover_sources, ishosted
name = sys.argv[1]
print(json.dumps([ishosted(name), discover_sources(name, sys.argv[2], "helm")]))
"""


def test_discovery_meta_tag(appr: Appr, published: dict[str, Any]) -> None:
    """appr's discovery (appr/discovery.py) reads the appr-package meta tag of the server's page and
    finds a pull URL that serves the pushed bytes. The CLI only reaches it for a hosted name, which its
    package-name parsing limits to the default ports, so the client's function is run directly."""
    ns, chart, blobs = published["ns"], published["chart"], published["blobs"]
    name = f"{appr.live.host}/{ns}/{chart}"
    p = subprocess.run([str(appr.venv / "bin" / "python"), "-c", DISCOVER, name, "1.0.0"], capture_output=True,
                       text=True, env=client_env(appr.home), timeout=60)
    assert p.returncode == 0, p.stderr
    hosted, sources = json.loads(p.stdout)
    assert hosted is True
    assert sources == [f"{appr.url}/cnr/api/v1/packages/{ns}/{chart}/1.0.0/helm/pull"]
    token = yaml.safe_load((appr.home / ".appr" / "auths.yaml").read_text())["auths"][f"{appr.url}/cnr"]["token"]
    url = urllib.parse.urlsplit(sources[0])
    conn = http.client.HTTPConnection(url.netloc, timeout=30)
    conn.request("GET", url.path, headers={"Authorization": token})
    resp = conn.getresponse()
    status, data = resp.status, resp.read()
    conn.close()
    assert status == 200 and data == blobs[(chart, "1.0.0")]


async def test_appr_pulls_a_migrated_release_by_its_old_appr_digest(appr, appr_server, live_server, tmp_path):
    """After `cnr-oci migrate` from the real appr server into the live server's registry, the appr CLI
    pulls by the digest pipelines pinned on appr (sha256 of the gunzipped tar), and gets the bytes."""
    import asyncio
    import secrets

    from tests import appr_fill
    from tests.test_migrate import migrate

    ns = "p" + secrets.token_hex(3)
    exp = await asyncio.to_thread(appr_fill.fill, appr_server.url, ns, big=0)
    done = await asyncio.to_thread(
        migrate, "--from", appr_server.url, "--package", f"{ns}/webapp", "--upstream", live_server.registry.url,
        "--registry-username", "alice", "--registry-password", live_server.users["alice"])
    assert done.returncode == 0, done.stdout + done.stderr
    m = exp.packages[f"{ns}/webapp"].manifests[("1.1.0", "helm")]
    assert m.digest != m.sha256  # appr's digest is not the .tar.gz's: only the migration's record finds it
    _, data = await asyncio.to_thread(appr.pull_tarball, f"{ns}/webapp@sha256:{m.digest}", "helm", tmp_path / "old")
    assert hashlib.sha256(data).hexdigest() == m.sha256
