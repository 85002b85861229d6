"""When the registry misbehaves: retries, unknown outcomes, a kill mid-push, shared locks."""

from __future__ import annotations

import asyncio
import collections
import os
import signal
import subprocess
import sys

import aiohttp

from cnr_oci import appkeys
from cnr_oci.embedded import free_port
from cnr_oci.settings import Settings
from tests import helpers
from tests.conftest import TEST_SECRET
from tests.fake_upstream import make_proxy
from tests.helpers import body, kpm, unique

API = "/cnr/api/v1/packages"


def url_of(server) -> str:
    return str(server.make_url("")).rstrip("/")


async def test_idempotent_reads_are_retried_on_503(aiohttp_server, make_client, client, registry):
    repo = "/".join(unique())
    blob = kpm()
    assert (await client.post(f"{API}/{repo}", json=body(blob))).status == 200
    burst = collections.Counter()

    def twice(request):
        if request.method == "GET" and "/tags/list" in request.path and burst["tags"] < 2:
            burst["tags"] += 1
            return True
        return False

    proxy = await aiohttp_server(make_proxy(registry.url, fail=twice, fail_status=503))
    flaky = await make_client(Settings(upstream=url_of(proxy)))
    resp = await flaky.get(f"{API}/{repo}/1.0.0/kpm/pull")
    assert resp.status == 200 and await resp.read() == blob
    assert burst["tags"] == 2


async def test_puts_are_not_retried_blindly(aiohttp_server, make_client, registry):
    seen = collections.Counter()
    proxy = await aiohttp_server(make_proxy(
        registry.url, fail=lambda r: r.method == "PUT" and "/manifests/" in r.path, fail_status=503, seen=seen))
    client = await make_client(Settings(upstream=url_of(proxy)))
    repo = "/".join(unique())
    resp = await client.post(f"{API}/{repo}", json=body(kpm()))
    assert resp.status == 503
    assert seen["PUT manifest"] == 1
    assert helpers.tags(registry.url, repo) == []


async def test_a_tag_write_whose_answer_was_lost_is_rolled_back(aiohttp_server, make_client, registry):
    proxy = await aiohttp_server(make_proxy(
        registry.url, lose_answer=lambda r: r.method == "PUT" and "/manifests/1.0.0" in r.path))
    client = await make_client(Settings(upstream=url_of(proxy)))
    repo = "/".join(unique())
    resp = await client.post(f"{API}/{repo}", json=body(kpm()))
    assert resp.status == 503 and (await resp.json())["code"] == "upstream-unavailable"
    assert helpers.tags(registry.url, repo) == ["1.0.0"]  # it did go through
    # The next read of the package settles it: the client was told the push failed.
    assert (await client.get(f"{API}/{repo}/1.0.0/kpm")).status == 404
    assert helpers.tags(registry.url, repo) == []
    assert client.app[appkeys.STORE].write.in_doubt == 0


async def test_registry_killed_during_100_concurrent_pushes(make_client, own_registry):
    client = await make_client(Settings(upstream=own_registry.url, connect_timeout=1, cache_ttl=0))
    ns = unique()[0]
    blobs = {f"{ns}/p{i}": kpm(extra=os.urandom(16 * 1024)) for i in range(100)}
    done = 0
    killed = asyncio.Event()

    async def push(repo: str, blob: bytes) -> int:
        nonlocal done
        resp = await client.post(f"{API}/{repo}", json=body(blob))
        await resp.read()
        done += 1
        if done >= 15 and not killed.is_set():
            killed.set()
            own_registry.kill()  # SIGKILL, mid-flight for the others
        return resp.status

    statuses = dict(zip(blobs, await asyncio.gather(*(push(r, b) for r, b in blobs.items())), strict=True))
    ok = [r for r, s in statuses.items() if s == 200]
    failed = [r for r, s in statuses.items() if s != 200]
    assert ok and failed, statuses
    assert {statuses[r] for r in failed} <= {502, 503}, statuses
    own_registry.start()
    left = await client.app[appkeys.STORE].write.settle()
    for repo in ok:
        assert await (await client.get(f"{API}/{repo}/1.0.0/kpm/pull")).read() == blobs[repo]
    damaged = {}
    for repo in failed:
        # No failed push leaves a tag that resolves, and CNR never shows it as a release.
        status, _, _ = helpers._get(f"{own_registry.url}/v2/{repo}/manifests/1.0.0",
                                    "application/vnd.oci.image.manifest.v1+json")
        assert status != 200, repo
        assert (await client.get(f"{API}/{repo}/1.0.0/kpm")).status != 200, repo
        if helpers.tags(own_registry.url, repo):
            # distribution 2.8 writes a tag as files that a SIGKILL can leave half-written:
            # a name in tags/list that resolves to nothing (404), or a truncated link (500).
            damaged[repo] = status
    assert left <= sum(1 for s in damaged.values() if s >= 500)
    for repo, status in damaged.items():
        if status == 404:  # pushing the release again repairs it
            assert (await client.post(f"{API}/{repo}", json=body(blobs[repo]))).status == 200
            assert await (await client.get(f"{API}/{repo}/1.0.0/kpm/pull")).read() == blobs[repo]


# -- two replicas sharing Redis ---------------------------------------------------------


def start_replica(upstream: str, redis_url: str | None) -> tuple[subprocess.Popen, str]:
    port = free_port()
    args = [sys.executable, "-m", "cnr_oci", "serve", "--port", str(port), "--upstream", upstream,
            "--token-secret", TEST_SECRET, "--log-level", "warning"]
    if redis_url:
        args += ["--redis-url", redis_url]
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return proc, f"http://127.0.0.1:{port}"


async def wait_up(session: aiohttp.ClientSession, base: str) -> None:
    for _ in range(200):
        try:
            async with session.get(base + "/healthz") as r:
                if r.status == 200:
                    return
        except aiohttp.ClientError:
            pass
        await asyncio.sleep(0.05)
    raise AssertionError(f"{base} did not start")


async def test_two_replicas_sharing_redis_have_one_winner(registry, redis_server):
    replicas = [start_replica(registry.url, redis_server) for _ in range(2)]
    try:
        async with aiohttp.ClientSession() as session:
            for _, base in replicas:
                await wait_up(session, base)
            repo = "/".join(unique())
            blobs = [kpm(extra=str(i).encode()) for i in range(20)]

            async def push(i: int) -> int:
                base = replicas[i % 2][1]
                async with session.post(f"{base}{API}/{repo}", json=body(blobs[i])) as r:
                    await r.read()
                    return r.status

            statuses = await asyncio.gather(*(push(i) for i in range(20)))
            assert statuses.count(200) == 1 and statuses.count(409) == 19, statuses
            winner = blobs[statuses.index(200)]
            for _, base in replicas:
                async with session.get(f"{base}{API}/{repo}/1.0.0/kpm/pull") as r:
                    assert await r.read() == winner
    finally:
        for proc, _ in replicas:
            proc.terminate()
            proc.wait(20)


# -- graceful shutdown ------------------------------------------------------------------


async def test_sigterm_finishes_in_flight_requests_and_refuses_new_ones(registry, client):
    repo = "/".join(unique())
    assert (await client.post(f"{API}/{repo}", json=body(kpm()))).status == 200
    data = os.urandom(32 * 1024 * 1024)
    digest = helpers.put_blob(registry.url, repo, data).removeprefix("sha256:")
    proc, base = start_replica(registry.url, None)
    try:
        timeout = aiohttp.ClientTimeout(total=60)
        async with aiohttp.ClientSession(timeout=timeout) as session:
            await wait_up(session, base)
            async with session.get(f"{base}{API}/{repo}/blobs/sha256/{digest}") as resp:
                got = bytearray(await resp.content.readexactly(1024 * 1024))
                proc.send_signal(signal.SIGTERM)
                refused = False
                for _ in range(100):  # the listener closes as soon as the signal is handled
                    await asyncio.sleep(0.1)
                    try:
                        async with aiohttp.ClientSession() as fresh:
                            (await fresh.get(f"{base}/healthz")).release()
                    except aiohttp.ClientConnectionError:
                        refused = True
                        break
                assert refused, "new connections were still accepted 10 s after SIGTERM"
                async for chunk in resp.content.iter_chunked(256 * 1024):
                    got += chunk
                    await asyncio.sleep(0.001)
            assert bytes(got) == data
        assert proc.wait(30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
