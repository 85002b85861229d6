"""Two `cnr-oci serve` replicas on one registry, with a long --cache-ttl: a write on one drops the
other's caches through Redis pub/sub (--redis-url), and a Redis outage fails no read."""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager
from pathlib import Path

import aiohttp
import pytest
import yaml

from cnr_oci.embedded import EmbeddedRegistry, free_port, stop_process
from tests import helpers
from tests.conftest import TEST_SECRET, require_binary
from tests.helpers import body, chart, kpm, unique

API = "/cnr/api/v1/packages"
LONG_TTL = "300"
BOUND = 10.0  # seconds a replica may take to see another's write (far below the TTL)


def start_replica(upstream: str, redis_url: str | None, log_path: Path,
                  *extra: str) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    args = [sys.executable, "-m", "cnr_oci", "serve", "--port", str(port), "--upstream", upstream,
            "--token-secret", TEST_SECRET, "--cache-ttl", LONG_TTL, "--log-level", "warning", *extra]
    if redis_url:
        args += ["--redis-url", redis_url]
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(args, stdout=log, stderr=log)
    helpers.wait_served(proc, port, log_path)
    return proc, f"http://127.0.0.1:{port}"


def stop(proc: subprocess.Popen[bytes]) -> None:
    stop_process(proc, 20)


@asynccontextmanager
async def replicas(registry: EmbeddedRegistry, redis_url: str | None, tmp: Path
                   ) -> AsyncIterator[tuple[aiohttp.ClientSession, str, str]]:
    """Replicas A and B, and a session to talk to both."""
    started = [start_replica(registry.url, redis_url, tmp / f"replica-{i}.log") for i in range(2)]
    try:
        if redis_url:  # B must be subscribed before A writes: wait for its subscription
            await wait_subscribers(redis_url, 2)
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as session:
            yield session, started[0][1], started[1][1]
    finally:
        for proc, _ in started:
            stop(proc)


async def wait_subscribers(redis_url: str, count: int, timeout: float = 15.0) -> None:
    from redis.asyncio import from_url

    redis = from_url(redis_url)
    try:
        deadline = time.monotonic() + timeout
        while dict(await redis.pubsub_numsub("cnr-oci:forget")).get(b"cnr-oci:forget", 0) < count:
            assert time.monotonic() < deadline, "the replicas did not subscribe"
            await asyncio.sleep(0.05)
    finally:
        await redis.aclose()


async def get(session: aiohttp.ClientSession, url: str) -> tuple[int, bytes]:
    async with session.get(url) as resp:
        return resp.status, await resp.read()


async def eventually(check: Callable[[], Awaitable[bool]], bound: float = BOUND) -> float:
    """Seconds until check() holds; fails past the bound."""
    start = time.monotonic()
    while not await check():
        assert time.monotonic() - start < bound, f"not seen within {bound} s (the cache TTL is {LONG_TTL} s)"
        await asyncio.sleep(0.05)
    return time.monotonic() - start


async def force_push_seen(session: aiohttp.ClientSession, a: str, b: str) -> bool:
    """Push on A, pull on B (cached), force-push on A; True when B's pull changes within BOUND."""
    repo = "/".join(unique())
    old, new = kpm(extra=b"old"), kpm(extra=b"new")
    async with session.post(f"{a}{API}/{repo}", json=body(old)) as r:
        assert r.status == 200, await r.text()
    assert await get(session, f"{b}{API}/{repo}/1.0.0/kpm/pull") == (200, old)
    async with session.post(f"{a}{API}/{repo}?force=true", json=body(new)) as r:
        assert r.status == 200
    assert await get(session, f"{a}{API}/{repo}/1.0.0/kpm/pull") == (200, new)  # A's own write: at once
    try:
        await eventually(lambda: _pulls(session, f"{b}{API}/{repo}/1.0.0/kpm/pull", new), bound=3.0)
    except AssertionError:
        assert await get(session, f"{b}{API}/{repo}/1.0.0/kpm/pull") == (200, old)
        return False
    return True


async def _pulls(session: aiohttp.ClientSession, url: str, want: bytes) -> bool:
    return await get(session, url) == (200, want)


async def test_a_force_push_on_one_replica_is_seen_by_the_other_before_the_ttl(registry, redis_server, tmp_path):
    async with replicas(registry, redis_server, tmp_path) as (session, a, b):
        assert await force_push_seen(session, a, b)


async def test_without_redis_the_other_replica_serves_the_old_release_until_the_ttl(registry, tmp_path):
    """The control: the test above can fail. Without --redis-url B keeps its cached tag."""
    async with replicas(registry, None, tmp_path) as (session, a, b):
        assert not await force_push_seen(session, a, b)


async def releases(session: aiohttp.ClientSession, url: str) -> list[str]:
    status, raw = await get(session, url)
    assert status == 200, raw
    return sorted(m["release"] for m in json.loads(raw))


async def test_a_delete_on_one_replica_is_seen_by_the_other(registry, redis_server, tmp_path):
    async with replicas(registry, redis_server, tmp_path) as (session, a, b):
        repo = "/".join(unique())
        for release in ("1.0.0", "2.0.0"):
            async with session.post(f"{a}{API}/{repo}", json=body(kpm(), release=release)) as r:
                assert r.status == 200
        assert await releases(session, f"{b}{API}/{repo}") == ["1.0.0", "2.0.0"]
        assert (await get(session, f"{b}{API}/{repo}/2.0.0/kpm/pull"))[0] == 200
        async with session.delete(f"{a}{API}/{repo}/2.0.0/kpm") as r:
            assert r.status == 200, await r.text()

        async def gone() -> bool:
            return (await releases(session, f"{b}{API}/{repo}") == ["1.0.0"]
                    and (await get(session, f"{b}{API}/{repo}/2.0.0/kpm/pull"))[0] == 404)

        await eventually(gone)


async def test_the_helm_index_of_one_replica_sees_an_upload_on_the_other(registry, redis_server, tmp_path):
    async with replicas(registry, redis_server, tmp_path) as (session, a, b):
        ns = "rp" + unique()[0]

        async def upload(version: str) -> None:
            async with session.post(f"{a}/helm/api/{ns}/charts", data=chart("web", version),
                                    headers={"Content-Type": "application/gzip"}) as r:
                assert r.status == 201, await r.text()

        async def versions() -> list[str]:
            status, raw = await get(session, f"{b}/helm/{ns}/index.yaml")
            assert status == 200, raw
            return sorted(e["version"] for e in (yaml.safe_load(raw)["entries"] or {}).get("web", []))

        await upload("1.0.0")
        assert await versions() == ["1.0.0"]  # cached on B now, for 300 s
        await upload("1.1.0")

        async def both() -> bool:
            return await versions() == ["1.0.0", "1.1.0"]

        await eventually(both)


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[Callable[[bool], str]]:
    """A redis-server of the test's own, on a fixed port: call with False to stop it, True to start it."""
    require_binary("redis-server")
    port = free_port()
    procs: list[subprocess.Popen[bytes]] = []

    def switch(on: bool) -> str:
        if on:
            procs.append(subprocess.Popen(["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                                           "--appendonly", "no", "--dir", str(tmp_path)],
                                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
            deadline = time.monotonic() + 10
            while subprocess.run(["redis-cli", "-p", str(port), "ping"], capture_output=True,
                                 text=True).stdout.strip() != "PONG":
                assert time.monotonic() < deadline, "redis-server did not start"
                time.sleep(0.05)
        else:
            procs[-1].terminate()
            procs[-1].wait(10)
        return f"redis://127.0.0.1:{port}/0"

    yield switch
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


async def test_with_redis_stopped_reads_work_and_invalidation_resumes_when_it_is_back(registry, own_redis, tmp_path):
    url = own_redis(True)
    async with replicas(registry, url, tmp_path) as (session, a, b):
        assert await force_push_seen(session, a, b)
        repo = "/".join(unique())
        old, new = kpm(extra=b"before"), kpm(extra=b"after")
        async with session.post(f"{a}{API}/{repo}", json=body(old)) as r:
            assert r.status == 200
        own_redis(False)
        for base in (a, b):  # reads never need Redis
            assert await get(session, f"{base}{API}/{repo}/1.0.0/kpm/pull") == (200, old)
            assert await releases(session, f"{base}{API}/{repo}") == ["1.0.0"]
        # Writes take the shared package lock, which fails closed: a clean 503, never a 500 or a hang.
        async with session.post(f"{a}{API}/{repo}?force=true", json=body(new)) as r:
            assert r.status == 503, await r.text()
            assert (await r.json())["error"]["code"] == "upstream-unavailable"
        assert await get(session, f"{b}{API}/{repo}/1.0.0/kpm/pull") == (200, old)
        own_redis(True)
        await wait_subscribers(url, 2)  # both replicas subscribe again by themselves
        assert await force_push_seen(session, a, b)


async def test_the_first_write_after_a_redis_restart_succeeds_and_reaches_the_other_replica(registry, own_redis,
                                                                                           tmp_path):
    """Pooled connections left dead by the restart are retried once on a fresh one: the first lock and the
    first publish after Redis is back do not fail (a new user saw a 503, then a lost invalidation)."""
    url = own_redis(True)
    async with replicas(registry, url, tmp_path) as (session, a, b):
        repo = "/".join(unique())
        old, new = kpm(extra=b"before"), kpm(extra=b"after")
        async with session.post(f"{a}{API}/{repo}", json=body(old)) as r:
            assert r.status == 200
        assert await get(session, f"{b}{API}/{repo}/1.0.0/kpm/pull") == (200, old)  # cached on B
        own_redis(False)
        own_redis(True)
        await wait_subscribers(url, 2)
        async with session.post(f"{a}{API}/{repo}?force=true", json=body(new)) as r:
            assert r.status == 200, await r.text()
        async def b_sees_new() -> bool:
            return await get(session, f"{b}{API}/{repo}/1.0.0/kpm/pull") == (200, new)

        await eventually(b_sees_new)


async def test_one_write_is_published_once_applied_by_the_others_and_never_echoed(redis_server):
    """Own messages are ignored, and a forget applied from another replica is not published again
    (else two replicas would bounce one message forever)."""
    from redis.asyncio import from_url

    from cnr_oci.invalidation import Invalidation
    from cnr_oci.readmodel import ReadModel

    channel = f"cnr-oci:forget:test:{unique()[0]}"
    reads = [ReadModel(None, cache_ttl=300) for _ in range(3)]  # type: ignore[arg-type]  # forget needs no client
    seen: list[list[tuple[str, str | None]]] = [[], [], []]
    for read, log in zip(reads, seen, strict=True):
        read.on_forget.append(lambda repo, tag, log=log: log.append((repo, tag)))
    buses = [from_url(redis_server) for _ in range(4)]
    spy = buses[3].pubsub(ignore_subscribe_messages=True)
    await spy.subscribe(channel)
    replicas_ = [Invalidation(bus, read, channel=channel) for bus, read in zip(buses, reads, strict=False)]
    try:
        for r in replicas_:
            await r.start()
        for r in replicas_:
            await asyncio.wait_for(r.subscribed.wait(), 10)
        reads[0].forget("ns/app", "1-0-0")
        await eventually(lambda: _true(seen[1] and seen[2]))
        await asyncio.sleep(0.5)  # room for an echo, if there were one
        assert seen == [[("ns/app", "1-0-0")]] * 3
        published = []
        deadline = time.monotonic() + 0.5
        while time.monotonic() < deadline:  # None also stands for the subscription's confirmation
            if (msg := await spy.get_message(timeout=0.1)) is not None:
                published.append(json.loads(msg["data"]))
        assert published == [{"from": replicas_[0].replica, "repo": "ns/app", "tag": "1-0-0"}]
    finally:
        for r in replicas_:
            await r.close()
        await spy.aclose()
        for bus in buses:
            await bus.aclose()


async def _true(value: object) -> bool:
    return bool(value)


# -- --workers ----------------------------------------------------------------------------


def _pids_of(needle: str) -> set[int]:
    """Processes whose command line holds ``needle``."""
    found = set()
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if needle.encode() in (entry / "cmdline").read_bytes():
                    found.add(int(entry.name))
            except OSError:
                pass
    return found


def _alive(pid: int) -> bool:
    try:
        return "\nState:\tZ" not in Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return False


def test_two_workers_share_one_port_and_one_embedded_registry_and_stop_on_sigterm(redis_server, tmp_path):
    require_binary("docker-registry")
    port, data, log_path = free_port(), tmp_path / "data", tmp_path / "serve.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen([sys.executable, "-m", "cnr_oci", "serve", "--port", str(port), "--data-dir", str(data),
                                 "--token-secret", TEST_SECRET, "--workers", "2", "--redis-url", redis_server],
                                stdout=log, stderr=log)
    try:
        helpers.wait_served(proc, port, log_path)
        pids: set[int] = set()
        deadline = time.monotonic() + 20
        while len(pids) < 2:  # each request on a new connection: the kernel spreads them over the workers
            assert time.monotonic() < deadline, f"only {pids} answered"
            status, raw, _ = helpers._get(f"http://127.0.0.1:{port}/metrics")
            assert status == 200
            pids |= {int(float(line.split()[1])) for line in raw.decode().splitlines()
                     if line.startswith("cnr_oci_process_id ")}
        assert proc.pid not in pids
        for pid in pids:
            assert f"PPid:\t{proc.pid}\n" in Path(f"/proc/{pid}/status").read_text()
        registries = _pids_of(str(data / "registry.yml"))
        assert len(registries) == 1, "the parent starts the embedded registry, once"
        # Both workers serve the same store: a push through one is pulled through the other.
        blob = kpm()
        repo = "/".join(unique())
        req = urllib.request.Request(f"http://127.0.0.1:{port}{API}/{repo}", data=json.dumps(body(blob)).encode(),
                                     headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=30) as resp:
            assert resp.status == 200
        for _ in range(6):
            assert helpers._get(f"http://127.0.0.1:{port}{API}/{repo}/1.0.0/kpm/pull")[1] == blob
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0, log_path.read_text()[-3000:]
        assert not any(_alive(pid) for pid in pids | registries), "a worker or the registry outlived the parent"
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_several_workers_without_redis_are_refused(tmp_path):
    out = subprocess.run([sys.executable, "-m", "cnr_oci", "serve", "--port", str(free_port()), "--workers", "2",
                          "--data-dir", str(tmp_path)], capture_output=True, text=True, timeout=30)
    assert out.returncode == 2
    assert "--workers above 1 needs --redis-url" in out.stderr
