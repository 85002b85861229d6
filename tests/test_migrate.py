"""`cnr-oci migrate` from the real appr 0.7.4 server (and from another cnr-oci) into a real registry."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import secrets
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from cnr_oci.settings import Settings
from tests import appr_fill, helpers

ROOT = Path(__file__).resolve().parent.parent
API = "/cnr/api/v1/packages"


def migrate(*args: str, timeout: float = 120, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """The real command line, as an operator runs it."""
    return subprocess.run([sys.executable, "-m", "cnr_oci", "migrate", "--progress", "lines", *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=timeout, env={**os.environ, **(env or {})})


def report_of(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text())


async def check_migrated(client: Any, exp: appr_fill.Expected) -> None:
    """Every package, release, media type, metadata, created_at and channel of the source, through
    cnr-oci's API; every blob byte for byte (by cnr-oci's digest and by appr's old one)."""
    for name, pkg in exp.packages.items():
        listed = await (await client.get(f"{API}/{name}")).json()
        got = {(m["release"], m["mediaType"].split(".")[-3]): m for m in listed}
        assert set(got) == set(pkg.manifests), name
        for key, m in pkg.manifests.items():
            release, media_type = key
            obj = got[key]
            assert obj["metadata"] == m.metadata, (name, key)
            assert obj["created_at"] == m.created_at.split(".")[0] + "Z", (name, key, obj["created_at"])
            pulled = await client.get(f"{API}/{name}/{release}/{media_type}/pull")
            assert pulled.status == 200
            h = hashlib.sha256()
            async for chunk in pulled.content.iter_chunked(1 << 20):
                h.update(chunk)
            assert h.hexdigest() == m.sha256, (name, key)
            assert obj["content"]["digest"] == m.sha256
            old = await client.get(f"{API}/{name}/blobs/sha256/{m.digest}")  # appr's digest, pinned by pipelines
            assert old.status == 200, (name, key)
            h = hashlib.sha256()
            async for chunk in old.content.iter_chunked(1 << 20):
                h.update(chunk)
            assert h.hexdigest() == m.sha256
        channels = {c["name"]: c for c in await (await client.get(f"{API}/{name}/channels")).json()}
        assert set(channels) == set(pkg.channels), name
        for cname, ch in pkg.channels.items():
            assert set(channels[cname]["releases"]) == set(ch.releases)
            assert channels[cname]["current"] == ch.current, (name, cname)


@pytest.fixture
def target(registry, make_client):
    """A cnr-oci over the test registry, to check what a migration wrote."""
    async def make() -> Any:
        return await make_client(Settings(upstream=registry.url, cache_ttl=0))
    return make


async def test_everything_in_an_appr_server_moves_and_a_second_run_copies_nothing(appr_server, registry, target,
                                                                                   tmp_path):
    ns = "m" + secrets.token_hex(3)
    exp = await asyncio.to_thread(appr_fill.fill, appr_server.url, ns, big=50 * appr_fill.MIB, workdir=tmp_path)
    report = tmp_path / "report.json"
    done = await asyncio.to_thread(migrate, "--from", appr_server.url, "--namespace", ns, "--upstream", registry.url,
                                   "--jobs", "4", "--report", str(report))
    assert done.returncode == 0, done.stdout + done.stderr
    first = report_of(report)
    total = sum(len(p.manifests) for p in exp.packages.values())
    assert first["counts"] == {"copied": total}, first["counts"]
    assert {r["source_digest_of"] for r in first["releases"]} == {"tar"}  # appr hashed the gunzipped tar
    await check_migrated(await target(), exp)

    again = await asyncio.to_thread(migrate, "--from", appr_server.url, "--namespace", ns, "--upstream",
                                    registry.url, "--report", str(report))
    assert again.returncode == 0, again.stdout + again.stderr
    assert report_of(report)["counts"] == {"exists": total}
    assert {c["status"] for c in report_of(report)["channels"]} == {"exists"}


@pytest.mark.parametrize("helm, flags", [(".tools/helm", []), (".tools/helm4/helm", ["--plain-http"])],
                         ids=["helm-3.8.1", "helm-4.1.4"])
async def test_helm_pulls_a_migrated_chart_from_the_registry(appr_server, registry, tmp_path, helm, flags):
    helm = str(ROOT / helm)
    (tmp_path / "out").mkdir()  # helm 3.8 pull -d does not create it
    ns = "h" + secrets.token_hex(3)
    exp = await asyncio.to_thread(appr_fill.fill, appr_server.url, ns, big=0)
    done = await asyncio.to_thread(migrate, "--from", appr_server.url, "--package", f"{ns}/webapp",
                                   "--upstream", registry.url)
    assert done.returncode == 0, done.stdout + done.stderr
    m = exp.packages[f"{ns}/webapp"].manifests[("1.1.0", "helm")]
    host = registry.url.removeprefix("http://")
    env = {"HOME": str(tmp_path), "HELM_CACHE_HOME": str(tmp_path / "c"), "HELM_CONFIG_HOME": str(tmp_path / "g"),
           "HELM_DATA_HOME": str(tmp_path / "d"), "PATH": "/usr/bin:/bin"}
    pulled = await asyncio.to_thread(subprocess.run, [helm, "pull", f"oci://{host}/{ns}/webapp", "--version", "1.1.0",
                                                      *flags, "-d", str(tmp_path / "out")],
                                     capture_output=True, text=True, env=env, timeout=60)
    assert pulled.returncode == 0, pulled.stderr
    tgz = (tmp_path / "out" / "webapp-1.1.0.tgz").read_bytes()
    assert hashlib.sha256(tgz).hexdigest() == m.sha256


async def test_another_cnr_oci_is_a_source_too(registry, own_registry, make_client, tmp_path):
    """Source: a cnr-oci over a second registry; its digests are the .tar.gz's own."""
    source = await make_client(Settings(upstream=own_registry.url, cache_ttl=0))
    ns = "c" + secrets.token_hex(3)
    blobs = {("1.0.0", "kpm"): helpers.kpm(), ("1.1.0-rc.1", "kpm"): helpers.kpm(),
             ("1.0.0", "helm"): helpers.chart("app", "1.0.0"), ("2.0.0+build.1", "helm"): helpers.chart("app", "2.0.0")}
    for (release, media_type), blob in blobs.items():
        body = helpers.body(blob, release, media_type, metadata={"r": release})
        assert (await source.post(f"{API}/{ns}/app", json=body)).status == 200
    assert (await source.post(f"{API}/{ns}/app/channels/stable/1.0.0")).status == 200
    url = str(source.make_url("")).rstrip("/")
    report = tmp_path / "r.json"
    # cnr-oci serves the API bare too: read it as a cnrclient-era source, without the /cnr prefix.
    done = await asyncio.to_thread(migrate, "--from", url, "--from-prefix", "", "--package", f"{ns}/app",
                                   "--upstream", registry.url, "--report", str(report))
    assert done.returncode == 0, done.stdout + done.stderr
    assert {r["source_digest_of"] for r in report_of(report)["releases"]} == {"tar+gzip"}
    target = await make_client(Settings(upstream=registry.url, cache_ttl=0))
    for (release, media_type), blob in blobs.items():
        pulled = await target.get(f"{API}/{ns}/app/{release}/{media_type}/pull")
        assert pulled.status == 200 and await pulled.read() == blob
        shown = await (await target.get(f"{API}/{ns}/app/{release}/{media_type}")).json()
        assert shown["metadata"] == {"r": release}
    assert await (await target.get(f"{API}/{ns}/app/channels/stable")).json() == {
        "name": "stable", "current": "1.0.0", "releases": ["1.0.0"]}


async def test_a_dry_run_prints_the_plan_and_writes_nothing(appr_server, registry, tmp_path):
    ns = "d" + secrets.token_hex(3)
    exp = await asyncio.to_thread(appr_fill.fill, appr_server.url, ns, big=0)
    report = tmp_path / "plan.json"
    done = await asyncio.to_thread(migrate, "--from", appr_server.url, "--namespace", ns, "--upstream", registry.url,
                                   "--dry-run", "--report", str(report))
    assert done.returncode == 0, done.stdout + done.stderr
    assert report_of(report)["counts"] == {"planned": sum(len(p.manifests) for p in exp.packages.values())}
    assert "plan from" in done.stdout
    for name in exp.packages:
        assert helpers.tags(registry.url, name) == [], name


async def test_a_conflict_is_reported_and_overwritten_only_with_force(appr_server, registry, make_client, tmp_path):
    ns = "f" + secrets.token_hex(3)
    exp = await asyncio.to_thread(appr_fill.fill, appr_server.url, ns, big=0)
    target = await make_client(Settings(upstream=registry.url, cache_ttl=0))
    other = helpers.kpm()
    assert (await target.post(f"{API}/{ns}/stack", json=helpers.body(other, "0.1.0", "kpm"))).status == 200
    report = tmp_path / "r.json"
    done = await asyncio.to_thread(migrate, "--from", appr_server.url, "--package", f"{ns}/stack", "--upstream",
                                   registry.url, "--report", str(report))
    assert done.returncode == 1
    conflicts = [r for r in report_of(report)["releases"] if r["status"] == "conflict"]
    assert [(r["release"], r["media_type"]) for r in conflicts] == [("0.1.0", "kpm")]
    assert await (await target.get(f"{API}/{ns}/stack/0.1.0/kpm/pull")).read() == other
    done = await asyncio.to_thread(migrate, "--from", appr_server.url, "--package", f"{ns}/stack", "--upstream",
                                   registry.url, "--force", "--report", str(report))
    assert done.returncode == 0, done.stdout + done.stderr
    assert report_of(report)["counts"].get("overwritten") == 1
    want = exp.packages[f"{ns}/stack"].manifests[("0.1.0", "kpm")]
    pulled = await (await target.get(f"{API}/{ns}/stack/0.1.0/kpm/pull")).read()
    assert hashlib.sha256(pulled).hexdigest() == want.sha256


def test_usage_errors_exit_2():
    assert migrate().returncode == 2
    assert migrate("--from", "ftp://x").returncode == 2
    assert migrate("--from", "http://127.0.0.1:1", "--package", "noslash").returncode == 2


# -- killed and resumed ---------------------------------------------------------------------------------


def expected_tags(pkg: appr_fill.Package) -> set[str]:
    return {r.replace("+", "_") for r in pkg.releases} | {f"channel-{c}" for c in pkg.channels}


@pytest.mark.timeout(180)
@pytest.mark.parametrize("point", ["fetch", "written", "channels"])
async def test_a_migration_killed_at_any_point_completes_exactly_when_run_again(appr_server, registry, target,
                                                                                tmp_path, point):
    """SIGKILL during a blob, mid-package (one release tagged, the rest not), and between the tags
    and the channels; the second run ends with every release once, every channel, nothing extra."""
    ns = "k" + secrets.token_hex(3)
    big = 50 * appr_fill.MIB if point == "fetch" else 0
    exp = await asyncio.to_thread(appr_fill.fill, appr_server.url, ns, big=big, workdir=tmp_path)
    args = ["--from", appr_server.url, "--namespace", ns, "--upstream", registry.url, "--jobs", "2",
            "--workdir", str(tmp_path)]
    killed = await asyncio.to_thread(migrate, *args, env={"CNR_OCI_MIGRATE_KILL_AT": point})
    assert killed.returncode == -9, killed.stdout + killed.stderr
    report = tmp_path / "r.json"
    done = await asyncio.to_thread(migrate, *args, "--report", str(report))
    assert done.returncode == 0, done.stdout + done.stderr
    counts = report_of(report)["counts"]
    assert counts.get("copied", 0) + counts.get("exists", 0) == sum(len(p.manifests) for p in exp.packages.values())
    assert counts.get("exists", 0) >= 1 or point == "fetch"  # what the killed run finished is not copied again
    client = await target()
    await check_migrated(client, exp)
    for name, pkg in exp.packages.items():
        assert set(helpers.tags(registry.url, name)) == expected_tags(pkg), name
        for release in pkg.releases:  # one entry per media type, never two
            listed = await (await client.get(f"{API}/{name}/{release}")).json()
            types = [m["mediaType"] for m in listed]
            assert sorted(types) == sorted(set(types)) and len(types) == len(pkg.media_types(release))


# -- bad sources --------------------------------------------------------------------------------------------


@pytest.fixture
async def bad_source(aiohttp_server):
    """A CNR source (in process: no real server can be made to lie about a digest) with one good package,
    one whose blob does not match its advertised digest, and one whose manifest list answers 500."""
    from aiohttp import web

    good, bad, served = helpers.kpm("good"), helpers.kpm("bad"), helpers.kpm("other bytes")

    def manifest(pkg: str, blob: bytes) -> dict[str, Any]:
        return {"package": pkg, "release": "1.0.0", "mediaType": "application/vnd.cnr.package-manifest.kpm.v0.json",
                "metadata": None, "created_at": "2017-10-18T21:18:31.071062",
                "content": {"digest": hashlib.sha256(blob).hexdigest(), "size": len(blob), "urls": []}}

    async def packages(request: web.Request) -> web.Response:
        return web.json_response([{"name": n} for n in ("src/good", "src/bad", "src/err")])

    async def manifests(request: web.Request) -> web.Response:
        name = request.match_info["name"]
        if name == "err":
            return web.Response(status=500, text="boom")
        return web.json_response([manifest(f"src/{name}", good if name == "good" else bad)])

    async def blob(request: web.Request) -> web.Response:
        return web.Response(body=good if request.match_info["name"] == "good" else served)

    async def channels(request: web.Request) -> web.Response:
        return web.json_response([])

    app = web.Application()
    app.router.add_get("/cnr/api/v1/packages", packages)
    app.router.add_get("/cnr/api/v1/packages/src/{name}", manifests)
    app.router.add_get("/cnr/api/v1/packages/src/{name}/channels", channels)
    app.router.add_get("/cnr/api/v1/packages/src/{name}/blobs/sha256/{digest}", blob)
    server = await aiohttp_server(app)
    return str(server.make_url("")).rstrip("/"), good


async def test_a_bad_source_is_reported_nothing_wrong_is_written_and_the_rest_moves(bad_source, registry, target,
                                                                                    tmp_path):
    url, good = bad_source
    report = tmp_path / "r.json"
    done = await asyncio.to_thread(migrate, "--from", url, "--upstream", registry.url, "--report", str(report))
    assert done.returncode == 1, done.stdout + done.stderr
    doc = report_of(report)
    status = {r["package"]: r for r in doc["releases"]}
    assert status["src/good"]["status"] == "copied"
    assert status["src/bad"]["status"] == "failed"
    assert "do not match the advertised digest" in status["src/bad"]["detail"]
    assert "src/err" in doc["packages_failed"] and "500" in doc["packages_failed"]["src/err"]
    assert helpers.tags(registry.url, "src/bad") == [] and helpers.tags(registry.url, "src/err") == []
    client = await target()
    assert await (await client.get(f"{API}/src/good/1.0.0/kpm/pull")).read() == good
    assert "failed" in done.stdout and "src/bad" in done.stdout


async def test_an_unreachable_source_exits_1_with_a_report(registry, tmp_path):
    from cnr_oci.embedded import free_port

    report = tmp_path / "r.json"
    done = await asyncio.to_thread(migrate, "--from", f"http://127.0.0.1:{free_port()}", "--upstream", registry.url,
                                   "--report", str(report))
    assert done.returncode == 1
    assert "*/*" in report_of(report)["packages_failed"]


# -- operating it ---------------------------------------------------------------------------------------------


@pytest.mark.timeout(120)
async def test_sigterm_stops_cleanly_reports_what_was_done_and_leaves_no_registry_running(appr_server, tmp_path):
    """Into the embedded registry (started by migrate itself): SIGTERM mid-blob stops it, removes the spool,
    writes a partial report and exits 130; the same command then finishes."""
    ns = "t" + secrets.token_hex(3)
    await asyncio.to_thread(appr_fill.fill, appr_server.url, ns, big=50 * appr_fill.MIB, workdir=tmp_path)
    data, spool, report = tmp_path / "data", tmp_path / "spool", tmp_path / "r.json"
    spool.mkdir()
    args = [sys.executable, "-m", "cnr_oci", "migrate", "--progress", "lines", "--from", appr_server.url,
            "--namespace", ns, "--data-dir", str(data), "--workdir", str(spool), "--report", str(report), "--jobs", "1"]
    proc = await asyncio.to_thread(subprocess.Popen, args, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                   text=True)
    for _ in range(600):  # until the big blob is on its way
        await asyncio.sleep(0.05)
        if any(p.stat().st_size > 1 << 20 for p in spool.glob("*/*")):
            break
    proc.terminate()
    _, err = await asyncio.to_thread(proc.communicate, timeout=60)
    assert proc.returncode == 130, err
    assert "interrupted" in err and "Traceback" not in err
    assert report_of(report)["interrupted"] is True
    assert list(spool.iterdir()) == []
    running = subprocess.run(["pgrep", "-f", str(data)], capture_output=True, text=True).stdout.split()
    assert running == [], running
    again = await asyncio.to_thread(migrate, "--from", appr_server.url, "--namespace", ns, "--data-dir", str(data),
                                    "--workdir", str(spool), timeout=120)
    assert again.returncode == 0, again.stdout + again.stderr


def test_a_bad_workdir_or_report_path_is_a_usage_error_before_anything_moves(tmp_path):
    unreachable = "http://127.0.0.1:9"
    bad_workdir = migrate("--from", unreachable, "--upstream", unreachable, "--workdir", str(tmp_path / "nope"))
    assert bad_workdir.returncode == 2 and "--workdir" in bad_workdir.stderr
    bad_report = migrate("--from", unreachable, "--upstream", unreachable, "--report", str(tmp_path / "no" / "r.json"))
    assert bad_report.returncode == 2 and "--report" in bad_report.stderr


async def test_a_target_that_wants_credentials_fails_fast_without_them(appr_server, tmp_path):
    from tests.conftest import HTPASSWD_USERS as USERS
    from tests.conftest import start_htpasswd_registry

    (tmp_path / "reg").mkdir()
    reg = await asyncio.to_thread(start_htpasswd_registry, tmp_path / "reg", USERS)
    try:
        done = await asyncio.to_thread(migrate, "--from", appr_server.url, "--package", "x/y", "--upstream", reg.url)
        assert done.returncode == 2 and "requires credentials" in done.stderr, done.stderr
        user, password = next(iter(USERS.items()))
        wrong = await asyncio.to_thread(migrate, "--from", appr_server.url, "--package", "x/y", "--upstream", reg.url,
                                        "--registry-username", user, "--registry-password", password + "x")
        assert wrong.returncode == 2 and "refuses the credentials" in wrong.stderr, wrong.stderr
    finally:
        await asyncio.to_thread(reg.stop)


async def test_a_namespace_the_source_does_not_have_is_reported_not_passed(appr_server, registry, tmp_path):
    report = tmp_path / "r.json"
    done = await asyncio.to_thread(migrate, "--from", appr_server.url, "--namespace", "typo" + secrets.token_hex(3),
                                   "--upstream", registry.url, "--report", str(report))
    assert done.returncode == 1
    assert list(report_of(report)["packages_failed"].values()) == ["the source lists no package in this namespace"]
