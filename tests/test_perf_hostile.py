"""Hostile inputs to issue 13's code: the Redis invalidation channel, a registry whose blob GETs
redirect (to storage, to itself, to odd places), the blob cache's single flight."""

from __future__ import annotations

import asyncio
import base64
import io
import json
import logging
from collections.abc import Callable
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from cnr_oci import appkeys
from cnr_oci.settings import Settings
from tests.fake_upstream import HOP, SESSION, _forwarding_app
from tests.helpers import body, kpm, sha, unique

API = "/cnr/api/v1/packages"
SECRET = "X-Amz-Signature=deadbeefcafe0123456789"


# -- the invalidation channel ------------------------------------------------------------------


async def published(redis_server: str, *messages: str) -> tuple[list[tuple[str, str | None]], Any]:
    """A subscribed replica's view of these messages from another: the forgets it applied (waiting up to
    5 s for the first), and its Invalidation (closed), whose tasks must still be alive."""
    from redis.asyncio import from_url

    from cnr_oci.invalidation import Invalidation
    from cnr_oci.readmodel import ReadModel

    channel = f"cnr-oci:forget:test:{unique()[0]}"
    read = ReadModel(None, cache_ttl=300)  # type: ignore[arg-type]  # forget needs no client
    seen: list[tuple[str, str | None]] = []
    read.on_forget.append(lambda repo, tag: seen.append((repo, tag)))
    bus, sender = from_url(redis_server), from_url(redis_server)
    inv = Invalidation(bus, read, channel=channel)
    try:
        await inv.start()
        await asyncio.wait_for(inv.subscribed.wait(), 10)
        for message in messages:
            await sender.publish(channel, message)
        for _ in range(100):
            if seen:
                break
            await asyncio.sleep(0.05)
        await asyncio.sleep(0.1)
        alive = all(not t.done() for t in inv._tasks)
    finally:
        await inv.close()
        await bus.aclose()
        await sender.aclose()
    return seen, alive


async def test_a_deeply_nested_message_does_not_kill_the_subscriber(redis_server):
    """json.loads raises RecursionError (not a ValueError) on deep nesting: the subscriber must
    survive it and apply the next well-formed message from another replica."""
    seen, alive = await published(redis_server, "[" * 200_000, '{"from": "x", "repo": "a", "tag": ' + "[" * 200_000,
                                  json.dumps({"from": "other", "repo": "ns/app", "tag": None}))
    assert seen == [("ns/app", None)] and alive


async def test_an_oversized_message_is_dropped_and_the_next_one_applied(redis_server):
    """A message can only name a repository of <= 255 characters: a 1 MB one is not applied (each
    forget keeps its repository as a key of several caches, 100,000 entries each)."""
    seen, _ = await published(redis_server,
                              json.dumps({"from": "other", "repo": "n/" + "a" * 1_000_000, "tag": None}),
                              json.dumps({"from": "other", "repo": "ns/app", "tag": "1-0-0"}))
    assert seen == [("ns/app", "1-0-0")]


# -- a registry whose blob GETs redirect -------------------------------------------------------


def redirecting_registry(target: str, location: Callable[[web.Request], str],
                         seen: list[tuple[str, str, dict[str, str]]]) -> web.Application:
    """Forwards to the real registry and asks for Basic credentials (any); a blob GET is answered
    307 to ``location(request)``. Every request is recorded (method, path_qs, headers)."""

    async def handle(request: web.Request) -> web.StreamResponse:
        seen.append((request.method, request.path_qs, dict(request.headers)))
        if request.path.startswith("/v2/") and "Authorization" not in request.headers:
            return web.json_response({"errors": [{"code": "UNAUTHORIZED", "message": "auth"}]}, status=401,
                                     headers={"WWW-Authenticate": 'Basic realm="r"'})
        if request.method == "GET" and "/blobs/sha256:" in request.path:
            return web.Response(status=307, headers={"Location": location(request)})
        headers = {k: v for k, v in request.headers.items() if k not in HOP and k != "Authorization"}
        async with request.app[SESSION].request(request.method, target + request.path_qs, headers=headers,
                                                data=io.BytesIO(await request.read()),
                                                allow_redirects=False) as up:
            payload = await up.read()
            out = {k: v for k, v in up.headers.items() if k not in HOP}
        return web.Response(status=up.status, headers=out, body=payload)

    return _forwarding_app(handle)


def storage(blobs: dict[str, bytes], seen: list[tuple[str, str, dict[str, str]]],
            loop: bool = False) -> web.Application:
    """Presigned-URL storage: /b/<digest>?sig serves the blob, or (loop) redirects to itself."""

    async def handle(request: web.Request) -> web.StreamResponse:
        seen.append((request.method, request.path_qs, dict(request.headers)))
        if loop:
            return web.Response(status=302, headers={"Location": str(request.url)})
        return web.Response(body=blobs[request.match_info["digest"]])

    app = web.Application()
    app.router.add_get("/b/{digest}", handle)
    return app


BASIC = {"Authorization": "Basic " + base64.b64encode(b"alice:s3cr3t-pass").decode()}


async def _setup(aiohttp_server, make_client, client, registry, *, loop: bool = False, redirect: bool,
                 location: Callable[[Any, web.Request], str] | None = None) -> dict[str, Any]:
    ns, name = unique()
    blob = kpm(unique()[1])
    resp = await client.post(f"{API}/{ns}/{name}", json=body(blob))
    assert resp.status == 200, await resp.text()
    at_registry: list[tuple[str, str, dict[str, str]]] = []
    at_storage: list[tuple[str, str, dict[str, str]]] = []
    store = await aiohttp_server(storage({"sha256:" + sha(blob): blob}, at_storage, loop=loop))

    def default(request: web.Request) -> str:
        return str(store.make_url(f"/b/{request.path.rsplit('/', 1)[1]}")) + "?" + SECRET

    reg = await aiohttp_server(redirecting_registry(
        registry.url, (lambda r: location(store, r)) if location else default, at_registry))
    cnr = await make_client(Settings(upstream=str(reg.make_url("")).rstrip("/"), blob_redirect=redirect))
    return {"ns": ns, "name": name, "blob": blob, "cnr": cnr, "registry": at_registry, "storage": at_storage,
            "store": store, "reg": reg}


@pytest.mark.parametrize("redirect", [False, True])
async def test_no_credential_reaches_storage_or_the_307(aiohttp_server, make_client, client, registry, redirect):
    s = await _setup(aiohttp_server, make_client, client, registry, redirect=redirect)
    resp = await s["cnr"].get(f"{API}/{s['ns']}/{s['name']}/1.0.0/kpm/pull", headers=BASIC, allow_redirects=False)
    assert any(h.get("Authorization") == BASIC["Authorization"] for _, _, h in s["registry"])  # the registry got them
    if redirect:
        assert resp.status == 307
        location = resp.headers["Location"]
        assert "alice" not in location and "s3cr3t" not in location and location.endswith(SECRET)
        assert resp.headers["Cache-Control"] == "no-store"
        assert s["storage"] == []
    else:
        assert resp.status == 200 and await resp.read() == s["blob"]
        assert len(s["storage"]) == 1
        assert all("Authorization" not in h for _, _, h in s["storage"])


async def test_a_redirect_loop_at_storage_is_a_cnr_error_that_logs_no_presigned_signature(
        aiohttp_server, make_client, client, registry, caplog):
    """The storage URL's query is a capability (a presigned signature): an error naming the URL
    must not carry it into the log."""
    s = await _setup(aiohttp_server, make_client, client, registry, loop=True, redirect=False)
    caplog.set_level(logging.INFO)
    resp = await s["cnr"].get(f"{API}/{s['ns']}/{s['name']}/1.0.0/kpm/pull", headers=BASIC)
    assert resp.status in (502, 503) and (await resp.json())["error"]["code"].startswith("upstream")
    assert len(s["storage"]) >= 2  # it did loop
    assert not [r for r in caplog.records if r.name.startswith("cnr_oci") and "deadbeefcafe" in r.getMessage()]


@pytest.mark.parametrize("where", ["ftp://example.invalid/x", "file:///etc/passwd", "javascript:alert(1)",
                                   "http://", "//", ""])
async def test_an_unusable_redirect_target_is_a_502_not_a_500_nor_a_307(aiohttp_server, make_client, client,
                                                                       registry, where):
    s = await _setup(aiohttp_server, make_client, client, registry, redirect=True,
                     location=lambda store, r: where)
    resp = await s["cnr"].get(f"{API}/{s['ns']}/{s['name']}/1.0.0/kpm/pull", headers=BASIC, allow_redirects=False)
    assert resp.status == 502, (resp.status, await resp.text())
    assert (await resp.json())["error"]["code"].startswith("upstream")


async def test_a_relative_redirect_to_the_registry_itself_in_a_loop_ends_in_a_cnr_error_logging_no_signature(
        aiohttp_server, make_client, client, registry, caplog):
    """Same origin: followed as the caller (credentials allowed there), a loop is bounded, and the
    signed query of the URL it was sent to is in no cnr-oci log line."""
    caplog.set_level(logging.INFO)
    s = await _setup(aiohttp_server, make_client, client, registry, redirect=True,
                     location=lambda store, r: r.path + "?" + SECRET)
    resp = await s["cnr"].get(f"{API}/{s['ns']}/{s['name']}/1.0.0/kpm/pull", headers=BASIC, allow_redirects=False)
    assert resp.status in (502, 503), (resp.status, await resp.text())
    assert len(s["registry"]) < 60
    assert not [r for r in caplog.records if r.name.startswith("cnr_oci") and "deadbeefcafe" in r.getMessage()]


@pytest.mark.parametrize("where", ["http://169.254.169.254/latest/meta-data/", "http://[fe80::1]:80/x",
                                   "http://[fd00:ec2::254]/latest", "http://0.0.0.0:9/x"])
@pytest.mark.parametrize("size", ["small", "large"])
async def test_a_registry_cannot_send_cnr_oci_to_the_metadata_service(aiohttp_server, make_client, client, registry,
                                                                     where, size):
    """Server-side request forgery: a registry (or whoever answers as one) redirecting a blob GET to a
    link-local or reserved address gets a 502, and nothing is fetched there. It used to be followed, and a
    large internal answer streamed to the client until the digest check cut it at the end."""
    s = await _setup(aiohttp_server, make_client, client, registry, redirect=False,
                     location=lambda store, r: where)
    cnr = s["cnr"] if size == "small" else await make_client(Settings(
        upstream=str(s["reg"].make_url("")).rstrip("/"), blob_cache_size=0))  # the streamed path
    resp = await cnr.get(f"{API}/{s['ns']}/{s['name']}/1.0.0/kpm/pull", headers=BASIC)
    body_ = await resp.json()
    assert resp.status == 502 and "link-local or reserved" in body_["error"]["message"], body_


# -- the blob cache's read permissions ---------------------------------------------------------


def test_a_forget_costs_the_event_loop_no_scan_of_every_permission():
    """Every write here (and every other replica's, through Redis) forgets a repository's read
    permissions: with 100,000 held, that was a scan of them all on the event loop (~0.1-0.3 s a write)."""
    import time

    from cnr_oci.blobcache import ALLOWED_ENTRIES, BlobCache

    cache = BlobCache(None, ttl=300)  # type: ignore[arg-type]  # forget and the grants need no client
    for i in range(ALLOWED_ENTRIES):
        cache.grant((f"id{i % 50}", f"ns/r{i}", "sha256:x"), 0)
    start = time.perf_counter()
    for i in range(20):
        cache.forget(f"other/x{i}")
    assert (time.perf_counter() - start) / 20 < 0.005
    cache.forget("ns/r7")  # and a forget still withdraws what it names, only that
    assert not cache.allowed(("id7", "ns/r7", "sha256:x"))
    assert cache.allowed(("id8", "ns/r8", "sha256:x"))


def test_a_read_permission_granted_across_a_write_is_not_kept():
    """A GET or HEAD that began before a write to its repository answered for the state before it:
    its grant is not kept (the old code kept it, since it was set after the forget)."""
    from cnr_oci.blobcache import BlobCache

    cache = BlobCache(None, ttl=300)  # type: ignore[arg-type]
    key = ("alice", "ns/app", "sha256:x")
    began = cache.writes
    cache.forget("ns/app")
    cache.grant(key, began)
    assert not cache.allowed(key)
    cache.grant(key, cache.writes)
    assert cache.allowed(key)


# -- --workers ---------------------------------------------------------------------------------


def test_workers_refuse_a_port_another_server_listens_on_with_so_reuseport(registry, redis_server, tmp_path):
    """SO_REUSEPORT lets the workers bind next to any listener of the same user that set it too (another
    --workers deployment): they would silently split its connections. They must refuse the port."""
    import socket
    import subprocess
    import sys

    from cnr_oci.embedded import free_port
    from tests.conftest import TEST_SECRET

    port = free_port()
    with socket.socket() as other:
        other.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        other.bind(("127.0.0.1", port))
        other.listen()
        proc = subprocess.Popen([sys.executable, "-m", "cnr_oci", "serve", "--host", "127.0.0.1", "--port", str(port),
                                 "--upstream", registry.url, "--token-secret", TEST_SECRET, "--data-dir",
                                 str(tmp_path), "--workers", "2", "--redis-url", redis_server],
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        try:
            out, _ = proc.communicate(timeout=4)
        finally:
            if proc.poll() is None:
                proc.terminate()
                proc.communicate(timeout=20)
        assert proc.returncode == 2 and b"cannot serve on" in out, out[-2000:]


# -- the streamed listing ----------------------------------------------------------------------


async def test_a_listing_that_fails_mid_stream_is_cut_never_a_complete_short_list(
        aiohttp_server, make_client, client, registry):
    from tests.fake_upstream import make_proxy

    ns = unique()[0]
    for name in ("a1", "b2", "c3", "d4"):
        resp = await client.post(f"{API}/{ns}/{name}", json=body(kpm(name)))
        assert resp.status == 200
    proxy = await aiohttp_server(make_proxy(registry.url, fail=lambda r: r.path == f"/v2/{ns}/c3/tags/list",
                                            fail_status=500))
    cnr = await make_client(Settings(upstream=str(proxy.make_url("")).rstrip("/")))
    resp = await cnr.get(f"{API}?namespace={ns}")
    assert resp.status == 200  # the first summaries went out before c3 failed
    with pytest.raises(aiohttp.ClientPayloadError):
        await resp.read()


@pytest.mark.parametrize("query, expect", [("offset=1&limit=2", ["b2", "c3"]), ("offset=4", []), ("limit=0", []),
                                           ("offset=99999999999999999999", []), ("offset=3&limit=99", ["d4"])])
async def test_listing_windows_at_the_edges(client, query, expect):
    ns = unique()[0]
    for name in ("a1", "b2", "c3", "d4"):
        resp = await client.post(f"{API}/{ns}/{name}", json=body(kpm(name)))
        assert resp.status == 200
    resp = await client.get(f"{API}?namespace={ns}&{query}")
    assert resp.status == 200, await resp.text()
    assert [p["name"].split("/")[1] for p in await resp.json()] == expect


@pytest.mark.parametrize("query", ["offset=-1", "limit=-1", "limit=x", "offset=" + "9" * 5000, "limit=1.5"])
async def test_bad_listing_windows_are_422(client, query):
    resp = await client.get(f"{API}?{query}")
    assert resp.status == 422, await resp.text()


# -- the blob cache against identities ----------------------------------------------------------


async def test_concurrent_cold_gets_of_several_identities_each_get_the_registrys_answer(token_client, tokens,
                                                                                        monkeypatch):
    """alice's in-flight GET is shared with nobody else: carol (403), a wrong password (401), nobody (401),
    each asking at the same time, get their own refusal, and no byte of the blob."""
    from tests.test_blob_cache import package, push, record_upstream
    from tests.token_server import basic

    name = f"a{unique()[0]}/x"
    blob = package()
    await push(token_client, name, blob, **basic("admin"))
    record_upstream(token_client, monkeypatch, delay=0.2)
    who = [("alice", basic("alice"), 200), ("carol", basic("carol"), 403),
           ("wrong", basic("alice", "not-her-password"), 401), ("nobody", {}, 401)]

    async def get(headers: dict[str, str], path: str) -> tuple[int, bytes]:
        resp = await token_client.get(path, headers=headers)
        return resp.status, await resp.read()

    for path in (f"{API}/{name}/1.0.0/kpm/pull", f"{API}/{name}/blobs/sha256/{sha(blob)}",
                 f"{API}/{name}/blobs/sha256/{sha(blob)}?format=json"):
        answers = await asyncio.gather(*(get(h, path) for _, h, _ in who))
        for (label, _, status), (got, data) in zip(who, answers, strict=True):
            assert got == status, (label, path, got, data[:200])
            if status != 200:
                assert blob not in data and b'"blob"' not in data
    for label, headers, _ in who:  # no HEAD on a blob route: no existence answer apart from the GET's
        assert (await token_client.head(f"{API}/{name}/1.0.0/kpm/pull", headers=headers)).status == 405, label


@pytest.mark.parametrize("claim", [-10, +10, -1])
async def test_a_body_shorter_or_longer_than_its_content_length_never_enters_the_cache(make_client, claim):
    """The registry claims a Content-Length other than the blob's bytes: a CNR 5xx, nothing cached, and the
    next GET (a correct answer) is served whole."""
    from tests.fake_upstream import RawServer, http_answer

    blob = kpm(unique()[1])
    digest = "sha256:" + sha(blob)
    lying = [True]

    def answer(method: str, target: str) -> bytes:
        if "/blobs/" not in target:
            return http_answer(404, b'{"errors": [{"code": "NAME_UNKNOWN", "message": "x"}]}')
        if lying[0]:
            return http_answer(200, blob, "application/octet-stream", length=len(blob) + claim)
        return http_answer(200, blob, "application/octet-stream")

    raw = RawServer(answer)
    try:
        cnr = await make_client(Settings(upstream=await raw.start()))
        resp = await cnr.get(f"{API}/ns/app/blobs/sha256/{sha(blob)}")
        assert resp.status in (502, 503), (resp.status, await resp.text())
        assert digest not in cnr.app[appkeys.STORE].read.blobs
        lying[0] = False
        resp = await cnr.get(f"{API}/ns/app/blobs/sha256/{sha(blob)}")
        assert resp.status == 200 and await resp.read() == blob
    finally:
        await raw.close()


def test_a_worker_killed_stops_the_others_and_the_parent_exits_non_zero(registry, redis_server, tmp_path):
    import os
    import signal
    import subprocess
    import sys
    import time
    from pathlib import Path

    from cnr_oci.embedded import free_port
    from tests import helpers
    from tests.conftest import TEST_SECRET

    port, log_path = free_port(), tmp_path / "serve.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen([sys.executable, "-m", "cnr_oci", "serve", "--port", str(port), "--upstream",
                                 registry.url, "--token-secret", TEST_SECRET, "--data-dir", str(tmp_path),
                                 "--workers", "2", "--redis-url", redis_server], stdout=log, stderr=log)
    try:
        helpers.wait_served(proc, port, log_path)
        deadline = time.monotonic() + 10
        while True:
            children = [int(p) for p in Path(f"/proc/{proc.pid}/task/{proc.pid}/children").read_text().split()]
            workers = [c for c in children if b"spawn_main" in Path(f"/proc/{c}/cmdline").read_bytes()]
            if len(workers) == 2:
                break
            assert time.monotonic() < deadline, children
            time.sleep(0.05)
        os.kill(workers[0], signal.SIGKILL)
        assert proc.wait(20) == 1, log_path.read_text()[-2000:]
        assert "exited with code -9: stopping the others" in log_path.read_text()
        assert not Path(f"/proc/{workers[1]}").exists() or "State:\tZ" in Path(f"/proc/{workers[1]}/status").read_text()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
