"""cnrclient 0.3.5, the early `cnr` CLI (the bare /api/v1, no /cnr prefix), run as its users run it against
`cnr-oci serve` in front of an htpasswd registry: login/logout, push (helm, and docker-compose with
"metadata": null), 409 and force, list with each filter, show, pull by exact version, default, channel and
digest (JSON: `pull`; raw: `inspect`), channels, delete. It has no `helm` verb, and its package names take
no range. The client talks through a recording proxy, so pushed and pulled bytes are compared."""

from __future__ import annotations

import base64
import hashlib
import json
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from tests.clients.install_cnrclient import main as install_cnrclient
from tests.clients.recorder import Recorder
from tests.conftest import LIVE_USERS, LiveServer
from tests.test_client_cnr import (
    Cnr,
    check_helm_pulls,
    check_repush_409_then_force,
    make_chart,
    make_compose,
    members,
    uniq,
)

pytestmark = pytest.mark.timeout(120)


@pytest.fixture(scope="module")
def cc(live_server: LiveServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cnr]:
    venv = install_cnrclient()
    rec = Recorder(live_server.url)
    c = Cnr(venv, tmp_path_factory.mktemp("cnrclient-home"), rec, alias=rec.url)  # a URL works everywhere
    c.ok("login", rec.url, "-u", "alice", "-p", LIVE_USERS["alice"])
    yield c
    rec.close()


def pushed_blob(c: Cnr, mark: int, ns: str, name: str) -> tuple[dict[str, object], bytes]:
    posts = [e for e in c.rec.find(mark, "POST", f"/api/v1/packages/{ns}/{name}?")]
    assert posts, [e.path for e in c.rec.since(mark)]
    assert all(e.path.startswith("/api/v1/") for e in c.rec.since(mark))  # never /cnr
    body = json.loads(posts[-1].body)
    return body, base64.b64decode(body["blob"])


def push_chart(c: Cnr, chart: Path, ns: str, *extra: str) -> str:
    return c.ok("push", c.alias, "--ns", ns, *extra, cwd=chart)


def pull_tarball(c: Cnr, ref: str, media_type: str, dest: Path) -> tuple[dict[str, str], bytes]:
    dest.mkdir(parents=True, exist_ok=True)
    out = c.json("pull", "-t", media_type, ref, "--tarball", "--dest", str(dest))
    assert isinstance(out, dict)
    return out, Path(out["path"]).read_bytes()


def test_login_bad_password_then_logout(cc: Cnr, tmp_path: Path) -> None:
    other = Cnr(cc.venv, tmp_path, cc.rec, alias=cc.alias)
    mark = len(cc.rec.log)
    rc, _, err = other("login", cc.alias, "-u", "bob", "-p", "wrong")
    assert rc == 2 and "401" in err, err
    assert next(cc.rec.find(mark, "POST", "/api/v1/users/login")).status == 401
    rc, _, err = other("list", cc.alias)
    assert rc == 2 and "401" in err, err
    assert "Login succeeded" in other.ok("login", cc.alias, "-u", "bob", "-p", LIVE_USERS["bob"])
    auths = yaml.safe_load((tmp_path / ".cnr" / "auths.yaml").read_text())["auths"]
    assert list(auths) == [cc.alias]  # the token is kept under the URL as typed, so logout finds it
    assert isinstance(other.json("list", cc.alias), list)
    assert "Logout complete" in other.ok("logout", cc.alias)
    assert yaml.safe_load((tmp_path / ".cnr" / "auths.yaml").read_text())["auths"] == {}
    rc, _, err = other("list", cc.alias)
    assert rc == 2 and "401" in err, err


def test_helm_push_and_every_pull_returns_the_pushed_bytes(cc: Cnr, tmp_path: Path) -> None:
    ns, name = uniq("ns"), uniq("chart")
    chart = make_chart(tmp_path, name, "1.0.0")
    mark = len(cc.rec.log)
    assert "pushed" in push_chart(cc, chart, ns)
    body, blob = pushed_blob(cc, mark, ns, name)
    assert body["media_type"] == "helm" and body["release"] == "1.0.0" and "manifest_name" not in body
    assert set(members(blob)) == {f"{name}/Chart.yaml", f"{name}/values.yaml", f"{name}/templates/cm.yaml"}
    ref = f"{cc.alias}/{ns}/{name}"

    shown = cc.json("show", f"{ref}@1.0.0", "-t", "helm")
    assert isinstance(shown, list) and len(shown) == 1
    digest = shown[0]["content"]["digest"]
    assert digest == hashlib.sha256(blob).hexdigest()
    assert digest in cc.ok("show", ref, "-w")

    check_helm_pulls(cc, ref, blob, chart, tmp_path, prefix="")


def test_docker_compose_push_with_null_metadata(cc: Cnr, tmp_path: Path) -> None:
    ns, name = uniq("ns"), uniq("app")
    src = make_compose(tmp_path)
    mark = len(cc.rec.log)
    cc.ok("push", cc.alias, "-t", "docker-compose", "--name", f"{ns}/{name}", "-v", "1.0.0", cwd=src)
    body, blob = pushed_blob(cc, mark, ns, name)
    assert body["metadata"] is None and body["media_type"] == "docker-compose"
    ref = f"{cc.alias}/{ns}/{name}"
    _, got = pull_tarball(cc, f"{ref}@1.0.0", "docker-compose", tmp_path / "p")
    assert got == blob and members(got) == {"./docker-compose.yml": (src / "docker-compose.yml").read_bytes()}
    mark = len(cc.rec.log)
    cc.ok("push", cc.alias, "-t", "docker-compose", "--name", f"{ns}/{name}", "-v", "1.1.0", "-c", "stable", cwd=src)
    assert [e.status for e in cc.rec.since(mark)] == [200, 200]
    _, got = pull_tarball(cc, f"{ref}:stable", "docker-compose", tmp_path / "c")
    assert got == pushed_blob(cc, mark, ns, name)[1]


def test_repush_is_409_and_force_replaces(cc: Cnr, tmp_path: Path) -> None:
    ns, name = uniq("ns"), uniq("chart")
    push_chart(cc, make_chart(tmp_path, name, "1.0.0", "a"), ns)
    check_repush_409_then_force(cc, ("push", cc.alias, "--ns", ns), ("push", cc.alias, "--ns", ns, "-f"),
                                f"{cc.alias}/{ns}/{name}", tmp_path)


def test_list_with_each_filter(cc: Cnr, tmp_path: Path) -> None:
    ns, other_ns = uniq("ns"), uniq("ns")
    chart, app = uniq("chart"), uniq("app")
    push_chart(cc, make_chart(tmp_path, chart, "1.0.0"), ns)
    push_chart(cc, make_chart(tmp_path, chart, "1.2.0-rc.1"), ns)
    cc.ok("push", cc.alias, "-t", "docker-compose", "--name", f"{other_ns}/{app}", "-v", "2.0.0",
          cwd=make_compose(tmp_path))

    def names(*args: str) -> set[str]:
        out = cc.json("list", cc.alias, *args)
        assert isinstance(out, list)
        return {p["name"] for p in out}

    assert {f"{ns}/{chart}", f"{other_ns}/{app}"} <= names()
    assert names("-o", ns) == {f"{ns}/{chart}"}
    assert names("-s", chart.upper()[2:]) == {f"{ns}/{chart}"}
    assert names("-s", "no-such-thing-" + ns) == set()
    assert f"{other_ns}/{app}" in names("-t", "docker-compose") and f"{ns}/{chart}" not in names("-t", "docker-compose")
    assert names("-t", "helm", "-o", other_ns) == set()
    assert names("-u", "alice", "-o", ns) == {f"{ns}/{chart}"}
    out = cc.json("list", cc.alias, "-o", ns)
    assert isinstance(out, list) and out[0]["releases"] == ["1.2.0-rc.1", "1.0.0"]
    assert f"{other_ns}/{app}" in cc.ok("list", cc.alias, "-o", other_ns)


def test_channels_add_remove_delete_and_pull_by_channel(cc: Cnr, tmp_path: Path) -> None:
    ns, name = uniq("ns"), uniq("chart")
    ref = f"{cc.alias}/{ns}/{name}"
    blobs = {}
    for v in ("1.0.0", "1.1.0"):
        mark = len(cc.rec.log)
        push_chart(cc, make_chart(tmp_path, name, v), ns)
        blobs[v] = pushed_blob(cc, mark, ns, name)[1]
    assert cc.json("channel", ref) == []
    assert cc.json("channel", ref, "-c", "stable", "--set-release", "-v", "1.0.0") == {
        "name": "stable", "current": "1.0.0", "releases": ["1.0.0"]}
    cc.ok("channel", ref, "-c", "stable", "--set-release", "-v", "1.1.0")
    assert cc.json("channel", ref, "-c", "stable") == [{"name": "stable", "current": "1.1.0",
                                                        "releases": ["1.1.0", "1.0.0"]}]
    _, got = pull_tarball(cc, f"{ref}:stable", "helm", tmp_path / "s1")
    assert got == blobs["1.1.0"]
    assert cc.json("channel", ref, "-c", "stable", "--remove-release", "-v", "1.1.0") == {
        "status": "deleted", "package": f"{ns}/{name}", "name": "stable", "release": "1.1.0"}
    _, got = pull_tarball(cc, f"{ref}:stable", "helm", tmp_path / "s2")
    assert got == blobs["1.0.0"]
    assert cc.json("channel", ref, "-c", "stable", "--delete") == {
        "channel": "stable", "package": f"{ns}/{name}", "action": "delete"}
    assert cc.json("channel", ref) == []


def test_delete_package(cc: Cnr, tmp_path: Path) -> None:
    ns, name = uniq("ns"), uniq("chart")
    ref = f"{cc.alias}/{ns}/{name}"
    for v in ("1.0.0", "1.1.0"):
        push_chart(cc, make_chart(tmp_path, name, v), ns)
    assert cc.json("delete-package", "-t", "helm", f"{ref}@1.1.0") == {
        "status": "deleted", "package": f"{ns}/{name}", "release": "1.1.0"}
    shown = cc.json("show", ref)
    assert isinstance(shown, list) and [m["release"] for m in shown] == ["1.0.0"]
    rc, _, err = cc("pull", "-t", "helm", f"{ref}@1.1.0", "--dest", str(tmp_path))
    assert rc == 2 and "404" in err
