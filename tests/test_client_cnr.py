"""cnr 0.4.1, the 2017 `cnr` CLI (the /cnr prefix), run as its users run it against `cnr-oci serve` in front
of an htpasswd registry. Every verb it has: login/logout, push (helm and docker-compose: the latter sends
"manifest_name": null and "metadata": null), 409 and force, list with each filter, show, pull by exact
version, default, channel and digest (JSON: `pull`; raw: `inspect`), by range (`helm dep`), channels,
delete. The client talks through a recording proxy, so the bytes it pushed are compared with those pulled."""

from __future__ import annotations

import base64
import hashlib
import io
import json
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from tests.clients.common import client_env, run
from tests.clients.install_cnr import main as install_cnr
from tests.clients.recorder import Recorder
from tests.conftest import LIVE_USERS, LiveServer
from tests.helpers import unique


def uniq(prefix: str) -> str:
    return unique(prefix)[0]

pytestmark = pytest.mark.timeout(120)


@dataclass
class Cnr:
    venv: Path
    home: Path
    rec: Recorder
    alias: str = "live"

    def __call__(self, *args: str, cwd: Path | None = None) -> tuple[int, str, str]:
        p = run(self.venv, "cnr", *args, home=self.home, cwd=cwd, env=client_env(self.home))
        return p.returncode, p.stdout, p.stderr

    def ok(self, *args: str, cwd: Path | None = None) -> str:
        rc, out, err = self(*args, cwd=cwd)
        assert rc == 0, (args, out, err)
        return out

    def json(self, *args: str, cwd: Path | None = None) -> object:
        return json.loads(self.ok(*args, "--output", "json", cwd=cwd))


@pytest.fixture(scope="module")
def cnr(live_server: LiveServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cnr]:
    venv = install_cnr()
    rec = Recorder(live_server.url)
    home = tmp_path_factory.mktemp("cnr-home")
    c = Cnr(venv, home, rec)
    c.ok("config", "alias", c.alias, rec.url)  # the way a user names a plain-http registry for `cnr push`
    c.ok("login", c.alias, "-u", "alice", "-p", LIVE_USERS["alice"])
    yield c
    rec.close()


def make_chart(root: Path, name: str, version: str, marker: str = "") -> Path:
    d = root / f"{name}-{version}{marker}"
    (d / "templates").mkdir(parents=True)
    (d / "Chart.yaml").write_text(f"apiVersion: v1\nname: {name}\nversion: {version}\ndescription: d{marker}\n"
                                  "maintainers:\n- name: alice\nsources:\n- https://example.invalid/src\n")
    (d / "values.yaml").write_text(f"replicas: 1\nmarker: '{marker}'\n")
    (d / "templates" / "cm.yaml").write_text("kind: ConfigMap\ndata: {{ .Values.marker | quote }}\n")
    return d


def make_compose(root: Path, marker: str = "") -> Path:
    d = root / f"compose{marker}"
    d.mkdir()
    (d / "docker-compose.yml").write_text(f"version: '3'\nservices:\n  web:\n    image: nginx{marker}\n")
    return d


def pushed_blob(c: Cnr, mark: int, ns: str, name: str) -> tuple[dict[str, object], bytes]:
    """The last push body the client sent for ns/name since ``mark``, and its decoded blob."""
    posts = [e for e in c.rec.find(mark, "POST", f"/api/v1/packages/{ns}/{name}?")]  # under /cnr or bare
    assert posts, [e.path for e in c.rec.since(mark)]
    body = json.loads(posts[-1].body)
    return body, base64.b64decode(body["blob"])


def members(blob: bytes) -> dict[str, bytes]:
    with tarfile.open(fileobj=io.BytesIO(blob), mode="r:gz") as t:
        return {m.name: t.extractfile(m).read() for m in t.getmembers() if m.isfile()}  # type: ignore[union-attr]


def pull_tarball(c: Cnr, ref: str, media_type: str, dest: Path) -> tuple[dict[str, str], bytes]:
    dest.mkdir(parents=True, exist_ok=True)
    out = c.json("pull", "-t", media_type, ref, "--tarball", "--dest", str(dest))
    assert isinstance(out, dict)
    return out, Path(out["path"]).read_bytes()


def test_login_bad_password_then_logout_drops_the_token(live_server: LiveServer, cnr: Cnr,
                                                        tmp_path: Path) -> None:
    home = tmp_path / "home"
    home.mkdir()
    other = Cnr(cnr.venv, home, cnr.rec)
    other.ok("config", "alias", "live", cnr.rec.url)
    rc, _, err = other("login", "live", "-u", "bob", "-p", "wrong")
    assert rc != 0 and "401" in err, err
    assert not (home / ".cnr" / "auths.yaml").exists()
    rc, _, err = other("list", "live")
    assert rc != 0 and "401" in err, err  # the registry needs credentials, so does every read
    assert "Login succeeded" in other.ok("login", "live", "-u", "bob", "-p", LIVE_USERS["bob"])
    key = cnr.rec.url + "/cnr"  # cnr stores the token under the resolved endpoint with its /cnr prefix
    auths = yaml.safe_load((home / ".cnr" / "auths.yaml").read_text())["auths"]
    assert list(auths) == [key] and auths[key]
    assert isinstance(other.json("list", "live"), list)
    mark = len(cnr.rec.log)
    other.ok("list", "live")
    assert next(cnr.rec.find(mark, "GET", "/cnr/api/v1/packages")).headers["Authorization"] == auths[key]
    # `cnr logout <alias>` deletes the key as typed, which is not where login stored it (a client quirk):
    # the user logs out by the stored key.
    assert "Logout complete" in other.ok("logout", key)
    assert yaml.safe_load((home / ".cnr" / "auths.yaml").read_text())["auths"] == {}
    rc, _, err = other("list", "live")
    assert rc != 0 and "401" in err, err


def test_helm_push_and_every_pull_returns_the_pushed_bytes(cnr: Cnr, tmp_path: Path) -> None:
    ns, name = uniq("ns"), uniq("chart")
    chart = make_chart(tmp_path, name, "1.0.0")
    mark = len(cnr.rec.log)
    assert "pushed" in cnr.ok("push", f"{cnr.alias}/{ns}/{name}", cwd=chart)
    body, blob = pushed_blob(cnr, mark, ns, name)
    assert body["media_type"] == "helm" and body["release"] == "1.0.0" and body["manifest_name"] == name
    assert body["metadata"] == {"maintainers": [{"name": "alice"}], "source": ["https://example.invalid/src"]}
    assert set(members(blob)) == {f"{name}/Chart.yaml", f"{name}/values.yaml", f"{name}/templates/cm.yaml"}
    ref = f"{cnr.alias}/{ns}/{name}"

    shown = cnr.json("show", f"{ref}@1.0.0", "-t", "helm")
    assert isinstance(shown, list) and len(shown) == 1
    digest = shown[0]["content"]["digest"]
    assert digest == hashlib.sha256(blob).hexdigest() and shown[0]["content"]["size"] == len(blob)
    assert shown[0]["metadata"] == body["metadata"]
    assert "1.0.0" in cnr.ok("show", ref) and digest in cnr.ok("show", ref, "-w")

    check_helm_pulls(cnr, ref, blob, chart, tmp_path, prefix="/cnr")
    assert "marker" in cnr.ok("inspect", "-t", "helm", f"{ref}@1.0.0", "-f", f"{name}/values.yaml")


def check_helm_pulls(cli: Cnr, ref: str, blob: bytes, chart: Path, tmp_path: Path, prefix: str) -> None:
    """Pulls of release 1.0.0 of ref (ns/name) by version, default and digest, as a tarball and
    extracted, and the raw pulls of `inspect`: every one gives the pushed bytes."""
    ns, name = ref.rsplit("/", 2)[-2:]
    digest = hashlib.sha256(blob).hexdigest()
    out, got = pull_tarball(cli, f"{ref}@1.0.0", "helm", tmp_path / "exact")
    assert got == blob and out["path"].endswith(f"{ns}_{name}_1.0.0.tar.gz")
    out, got = pull_tarball(cli, ref, "helm", tmp_path / "default")
    assert got == blob and out["version"] == "default"
    out, got = pull_tarball(cli, f"{ref}@sha256:{digest}", "helm", tmp_path / "digest")
    assert got == blob and out["path"].endswith(f"{ns}_{name}_{digest[:8]}.tar.gz")

    # the JSON pull without --tarball extracts the chart
    ext = cli.json("pull", "-t", "helm", f"{ref}@1.0.0", "--dest", str(tmp_path / "x"))
    assert isinstance(ext, dict)
    assert (Path(ext["path"]) / name / "values.yaml").read_bytes() == (chart / "values.yaml").read_bytes()

    # raw pulls: `inspect` GETs .../pull and the blob route without format=json
    mark = len(cli.rec.log)
    assert cli.ok("inspect", "-t", "helm", f"{ref}@1.0.0").split() == sorted(members(blob))
    cli.ok("inspect", "-t", "helm", f"{ref}@sha256:{digest}")
    raw = [e for e in cli.rec.since(mark) if e.method == "GET"]
    assert [e.path for e in raw] == [f"{prefix}/api/v1/packages/{ns}/{name}/1.0.0/helm/pull",
                                     f"{prefix}/api/v1/packages/{ns}/{name}/blobs/sha256/{digest}"]
    assert all(e.status == 200 and e.response == blob for e in raw)


def test_non_helm_push_sends_nulls_and_is_stored(cnr: Cnr, tmp_path: Path) -> None:
    """Issue 9: cnr sends "manifest_name": null and "metadata": null for every non-helm push."""
    ns, name = uniq("ns"), uniq("app")
    src = make_compose(tmp_path)
    mark = len(cnr.rec.log)
    assert "pushed" in cnr.ok("push", "-t", "docker-compose", f"{cnr.alias}/{ns}/{name}@1.0.0", cwd=src)
    body, blob = pushed_blob(cnr, mark, ns, name)
    assert body["manifest_name"] is None and body["metadata"] is None and body["media_type"] == "docker-compose"
    post = next(cnr.rec.find(mark, "POST", f"/packages/{ns}/{name}?"))
    assert post.status == 200 and json.loads(post.response) == {"status": "ok"}
    ref = f"{cnr.alias}/{ns}/{name}"
    _, got = pull_tarball(cnr, f"{ref}@1.0.0", "docker-compose", tmp_path / "p")
    assert got == blob and members(got) == {"./docker-compose.yml": (src / "docker-compose.yml").read_bytes()}
    shown = cnr.json("show", f"{ref}@1.0.0", "-t", "docker-compose")
    assert isinstance(shown, list) and shown[0]["metadata"] is None
    # with -c the client swallows a push error and then sets the channel: both must have worked
    mark = len(cnr.rec.log)
    cnr.ok("push", "-t", "docker-compose", f"{ref}@1.1.0", "-c", "stable", cwd=src)
    assert [e.status for e in cnr.rec.since(mark)] == [200, 200]
    _, got = pull_tarball(cnr, f"{ref}:stable", "docker-compose", tmp_path / "c")
    assert got == pushed_blob(cnr, mark, ns, name)[1]


def test_repush_is_409_and_force_replaces(cnr: Cnr, tmp_path: Path) -> None:
    ns, name = uniq("ns"), uniq("chart")
    ref = f"{cnr.alias}/{ns}/{name}"
    cnr.ok("push", ref, cwd=make_chart(tmp_path, name, "1.0.0", "a"))
    check_repush_409_then_force(cnr, ("push", ref), ("push", "-f", ref), ref, tmp_path)


def check_repush_409_then_force(cli: Cnr, push: tuple[str, ...], force: tuple[str, ...], ref: str,
                                tmp_path: Path) -> None:
    """Release 1.0.0 of ref (ns/name) exists: pushing other bytes is 409, forcing replaces them."""
    ns, name = ref.rsplit("/", 2)[-2:]
    second = make_chart(tmp_path, name, "1.0.0", "b")
    mark = len(cli.rec.log)
    rc, _, err = cli(*push, cwd=second)
    assert rc == 2 and "409 Client Error" in err, err
    post = next(cli.rec.find(mark, "POST", f"/packages/{ns}/{name}?force=false"))
    assert post.status == 409 and json.loads(post.response)["code"] == "package-exists"
    mark = len(cli.rec.log)
    cli.ok(*force, cwd=second)
    assert next(cli.rec.find(mark, "POST", f"/packages/{ns}/{name}?force=true")).status == 200
    _, blob = pushed_blob(cli, mark, ns, name)
    _, got = pull_tarball(cli, f"{ref}@1.0.0", "helm", tmp_path / "p")
    assert got == blob and b"marker: 'b'" in members(got)[f"{name}/values.yaml"]


def test_list_with_each_filter(cnr: Cnr, tmp_path: Path) -> None:
    ns, other_ns = uniq("ns"), uniq("ns")
    chart, app = uniq("chart"), uniq("app")
    cnr.ok("push", f"{cnr.alias}/{ns}/{chart}", cwd=make_chart(tmp_path, chart, "1.0.0"))
    cnr.ok("push", f"{cnr.alias}/{ns}/{chart}", cwd=make_chart(tmp_path, chart, "1.2.0-rc.1"))
    cnr.ok("push", "-t", "docker-compose", f"{cnr.alias}/{other_ns}/{app}@2.0.0", cwd=make_compose(tmp_path))

    def names(*args: str) -> set[str]:
        out = cnr.json("list", cnr.alias, *args)
        assert isinstance(out, list)
        return {p["name"] for p in out}

    everything = names()
    assert {f"{ns}/{chart}", f"{other_ns}/{app}"} <= everything
    assert names("-o", ns) == {f"{ns}/{chart}"}
    assert names("-o", other_ns) == {f"{other_ns}/{app}"}
    assert names("-s", chart.upper()[2:]) == {f"{ns}/{chart}"}  # a case-insensitive substring
    assert names("-s", "no-such-thing-" + ns) == set()
    assert f"{other_ns}/{app}" in names("-t", "docker-compose") and f"{ns}/{chart}" not in names("-t", "docker-compose")
    assert names("-t", "helm", "-o", other_ns) == set()
    assert names("-u", "alice", "-o", ns) == {f"{ns}/{chart}"}  # username: sent, and ignored
    out = cnr.json("list", cnr.alias, "-o", ns)
    assert isinstance(out, list)
    assert out[0]["releases"] == ["1.2.0-rc.1", "1.0.0"] and out[0]["default"] == "1.2.0-rc.1"
    assert out[0]["manifests"] == ["helm"]
    assert f"{cnr.alias}/{other_ns}/{app}" in cnr.ok("list", cnr.alias, "-o", other_ns)


def test_channels_add_remove_delete_and_pull_by_channel(cnr: Cnr, tmp_path: Path) -> None:
    ns, name = uniq("ns"), uniq("chart")
    ref = f"{cnr.alias}/{ns}/{name}"
    blobs = {}
    for v in ("1.0.0", "1.1.0"):
        mark = len(cnr.rec.log)
        cnr.ok("push", ref, cwd=make_chart(tmp_path, name, v))
        blobs[v] = pushed_blob(cnr, mark, ns, name)[1]
    assert cnr.json("channel", ref) == []
    added = cnr.json("channel", ref, "-c", "stable", "--set-release", "-v", "1.0.0")
    assert added == {"name": "stable", "current": "1.0.0", "releases": ["1.0.0"]}
    cnr.ok("channel", ref, "-c", "stable", "--set-release", "-v", "1.1.0")
    assert cnr.json("channel", ref, "-c", "stable") == [{"name": "stable", "current": "1.1.0",
                                                          "releases": ["1.1.0", "1.0.0"]}]
    assert "stable" in cnr.ok("channel", ref)
    out, got = pull_tarball(cnr, f"{ref}:stable", "helm", tmp_path / "s1")
    assert got == blobs["1.1.0"] and out["path"].endswith("_1.1.0.tar.gz")
    rc, _, err = cnr("channel", ref, "-c", "stable", "--set-release", "-v", "9.9.9")
    assert rc == 2 and "404" in err
    removed = cnr.json("channel", ref, "-c", "stable", "--remove-release", "-v", "1.1.0")
    assert removed == {"status": "deleted", "package": f"{ns}/{name}", "name": "stable", "release": "1.1.0"}
    _, got = pull_tarball(cnr, f"{ref}:stable", "helm", tmp_path / "s2")
    assert got == blobs["1.0.0"]
    cnr.ok("channel", ref, "-c", "beta", "--set-release", "-v", "1.1.0")
    deleted = cnr.json("channel", ref, "-c", "stable", "--delete")
    assert deleted == {"channel": "stable", "package": f"{ns}/{name}", "action": "delete"}
    chans = cnr.json("channel", ref)
    assert isinstance(chans, list) and [c["name"] for c in chans] == ["beta"]
    rc, _, err = cnr("pull", "-t", "helm", f"{ref}:stable", "--dest", str(tmp_path))
    assert rc == 2 and "404" in err


def test_delete_package(cnr: Cnr, tmp_path: Path) -> None:
    ns, name = uniq("ns"), uniq("chart")
    ref = f"{cnr.alias}/{ns}/{name}"
    for v in ("1.0.0", "1.1.0"):
        cnr.ok("push", ref, cwd=make_chart(tmp_path, name, v))
    out = cnr.json("delete-package", "-t", "helm", f"{ref}@1.1.0")
    assert out == {"status": "deleted", "package": f"{ns}/{name}", "release": "1.1.0"}
    shown = cnr.json("show", ref)
    assert isinstance(shown, list) and [m["release"] for m in shown] == ["1.0.0"]
    rc, _, err = cnr("pull", "-t", "helm", f"{ref}@1.1.0", "--dest", str(tmp_path))
    assert rc == 2 and "404" in err
    rc, _, err = cnr("delete-package", "-t", "helm", f"{ref}@1.1.0")
    assert rc == 2 and "404" in err
    # a deleted release may be pushed again
    assert "pushed" in cnr.ok("push", ref, cwd=make_chart(tmp_path, name, "1.1.0", "again"))


def test_helm_dep_pulls_by_range_and_channel(cnr: Cnr, tmp_path: Path) -> None:
    ns, name = uniq("ns"), uniq("dep")
    ref = f"{cnr.alias}/{ns}/{name}"
    blobs = {}
    for v in ("1.0.0", "1.2.0", "2.0.0"):
        mark = len(cnr.rec.log)
        cnr.ok("push", ref, cwd=make_chart(tmp_path, name, v))
        blobs[v] = pushed_blob(cnr, mark, ns, name)[1]
    cnr.ok("channel", ref, "-c", "stable", "--set-release", "-v", "1.0.0")
    app = tmp_path / "app"
    app.mkdir()
    (app / "requirements.yaml").write_text(yaml.safe_dump({
        "dependencies": [{"name": "redis", "version": "1.0.0", "repository": "https://charts.example.invalid"}],
        "appr": [{"name": ref, "version": ">=1.0.0,<2.0.0"}]}))
    mark = len(cnr.rec.log)
    deps = yaml.safe_load(cnr.ok("helm", "dep", cwd=app))["dependencies"]
    mine = next(d for d in deps if d["name"] == name)
    assert mine["version"] == "1.2.0" and mine["repository"].endswith(f"appr_charts/{ns}/{name}")
    assert any(d["name"] == "redis" for d in deps)
    pull = next(cnr.rec.find(mark, "GET", "/pull"))
    assert pull.path == f"/cnr/api/v1/packages/{ns}/{name}/%3E=1.0.0,%3C2.0.0/helm/pull?format=json"
    assert base64.b64decode(json.loads(pull.response)["blob"]) == blobs["1.2.0"]
    extracted = app / "appr_charts" / ns / name
    assert {f"{name}/{p.relative_to(extracted).as_posix()}": p.read_bytes()
            for p in extracted.rglob("*") if p.is_file()} == members(blobs["1.2.0"])
    # a channel in requirements.yaml
    (app / "requirements.yaml").write_text(
        yaml.safe_dump({"dependencies": [], "appr": [{"name": ref, "version": ":stable"}]}))
    assert yaml.safe_load(cnr.ok("helm", "dep", cwd=app))["dependencies"][0]["version"] == "1.0.0"
