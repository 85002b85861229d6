"""Scale-out without containers: two `cnr-oci serve` replicas sharing one redis-server and one
docker-registry, behind a round-robin TCP proxy on loopback (a new connection per request, so the
requests of one client alternate between the replicas). A mixed load of racing pushes, pulls, channel
moves and deletes shows one winner per racing release, no lost acknowledged push, and every channel
consistent at the end (deploy/compose.yaml is the same shape with nginx in front)."""

from __future__ import annotations

import asyncio
import itertools
import json
import random
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass, field

import aiohttp
import pytest

from tests.helpers import body, kpm, unique
from tests.test_replicas import API, start_replica, stop, wait_subscribers

PACKAGES = 3
RACERS = 4  # concurrent non-force pushes of one release, each with its own bytes
SETTLE = 5.0  # seconds the end state may take to reach both replicas (Redis pub/sub; the cache TTL is 300)


class RoundRobinProxy:
    """A TCP proxy on 127.0.0.1: each accepted connection goes to the next backend in turn."""

    def __init__(self, backends: list[tuple[str, int]]) -> None:
        self.backends = backends
        self.turn = itertools.cycle(range(len(backends)))
        self.connections: Counter[int] = Counter()
        self.server: asyncio.Server | None = None
        self.port = 0
        self.tasks: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        self.server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]

    async def close(self) -> None:
        assert self.server is not None
        self.server.close()
        await asyncio.wait_for(asyncio.gather(*self.tasks, return_exceptions=True), 10)
        await self.server.wait_closed()

    async def _handle(self, c_reader: asyncio.StreamReader, c_writer: asyncio.StreamWriter) -> None:
        index = next(self.turn)
        self.connections[index] += 1
        task = asyncio.current_task()
        assert task is not None
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)
        try:
            b_reader, b_writer = await asyncio.open_connection(*self.backends[index])
        except OSError:
            c_writer.close()
            return
        await asyncio.gather(self._pipe(c_reader, b_writer), self._pipe(b_reader, c_writer))

    @staticmethod
    async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            with suppress(ConnectionError, OSError):
                writer.close()


@asynccontextmanager
async def scaled_out(registry, redis_url: str | None, tmp) -> AsyncIterator[tuple[aiohttp.ClientSession, str,
                                                                             RoundRobinProxy]]:
    """Two replicas behind the proxy, and a session that opens a new connection for every request."""
    started = [start_replica(registry.url, redis_url, tmp / f"replica-{i}.log") for i in range(2)]
    proxy = RoundRobinProxy([("127.0.0.1", int(url.rsplit(":", 1)[1])) for _, url in started])
    try:
        if redis_url:
            await wait_subscribers(redis_url, 2)
        await proxy.start()
        connector = aiohttp.TCPConnector(force_close=True, limit=32)
        async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=60)) as s:
            yield s, f"http://127.0.0.1:{proxy.port}", proxy
    finally:
        if proxy.server is not None:
            await proxy.close()
        for proc, _ in started:
            stop(proc)


@dataclass
class Package:
    """What the test knows: the bytes of every acknowledged push, what it deleted, its channels."""

    repo: str
    acked: dict[str, bytes] = field(default_factory=dict)
    deleted: set[str] = field(default_factory=set)
    channels: dict[str, list[str]] = field(default_factory=dict)  # releases, in the order they were added
    statuses: Counter[int] = field(default_factory=Counter)


async def racers(session: aiohttp.ClientSession, url: str, pkg: Package, release: str,
                 allowed: tuple[int, ...] = (200, 409)) -> list[tuple[int, bytes]]:
    """RACERS non-force pushes of one release at once, each with different bytes: (status, bytes) each."""
    blobs = [kpm(extra=f"{pkg.repo} {release} racer {i}".encode()) for i in range(RACERS)]

    async def push(blob: bytes) -> tuple[int, bytes]:
        async with session.post(f"{url}{API}/{pkg.repo}", json=body(blob, release=release)) as r:
            text = await r.text()
            assert r.status in allowed, (r.status, text)
            if r.status == 409:
                assert json.loads(text)["error"]["code"] == "package-exists", text
            return r.status, blob

    return list(await asyncio.gather(*(push(b) for b in blobs)))


async def race(session: aiohttp.ClientSession, url: str, pkg: Package, release: str) -> None:
    """One race: exactly one 200, the rest 409; the winner's bytes are acknowledged."""
    outcomes = await racers(session, url, pkg, release)
    winners = [blob for status, blob in outcomes if status == 200]
    pkg.statuses.update(status for status, _ in outcomes)
    assert len(winners) == 1, f"{pkg.repo}@{release}: {[s for s, _ in outcomes]}"
    pkg.acked[release] = winners[0]


async def pull(session: aiohttp.ClientSession, url: str, pkg: Package, release: str) -> tuple[int, bytes]:
    async with session.get(f"{url}{API}/{pkg.repo}/{release}/kpm/pull") as r:
        return r.status, await r.read()


async def pulls(session: aiohttp.ClientSession, url: str, pkg: Package, releases: list[str], rounds: int
                ) -> int:
    """Pulls while the rest goes on: a 200 is always the acknowledged bytes. Returns the count of 404s
    (another replica's write not yet seen: allowed during the load, not at the end)."""
    misses = 0
    for _ in range(rounds):
        for release in releases:
            status, data = await pull(session, url, pkg, release)
            assert status in (200, 404), status
            if status == 200:
                assert data == pkg.acked[release], f"{pkg.repo}@{release}: other bytes than acknowledged"
            else:
                misses += 1
    return misses


async def deletes(session: aiohttp.ClientSession, url: str, pkg: Package, releases: list[str]) -> None:
    for release in releases:
        async with session.delete(f"{url}{API}/{pkg.repo}/{release}/kpm") as r:
            assert r.status == 200, await r.text()
        pkg.deleted.add(release)


async def channel_moves(session: aiohttp.ClientSession, url: str, pkg: Package, name: str,
                        releases: list[str], rng: random.Random) -> None:
    """Adds and removes, one at a time on this channel (so the test knows the outcome), alternating
    replicas through the proxy while the other channels and packages move at the same time."""
    held: list[str] = []
    for step in range(8):
        if held and (step % 3 == 2):
            release = rng.choice(held)
            async with session.delete(f"{url}{API}/{pkg.repo}/channels/{name}/{release}") as r:
                assert r.status == 200, await r.text()
            held.remove(release)
        else:
            release = rng.choice(releases)
            async with session.post(f"{url}{API}/{pkg.repo}/channels/{name}/{release}") as r:
                assert r.status == 200, await r.text()
                assert (await r.json())["current"] == release  # adding makes it current
            if release in held:
                held.remove(release)
            held.append(release)
    if not held:  # end with something on the channel
        async with session.post(f"{url}{API}/{pkg.repo}/channels/{name}/{releases[0]}") as r:
            assert r.status == 200, await r.text()
        held.append(releases[0])
    pkg.channels[name] = held


async def eventually(check: Callable[[], Awaitable[None]], bound: float = SETTLE) -> None:
    """check() passes within bound seconds (the last failure is raised)."""
    deadline = time.monotonic() + bound
    while True:
        try:
            await check()
            return
        except AssertionError:
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.1)


async def check_end_state(session: aiohttp.ClientSession, url: str, pkg: Package) -> None:
    """Asked twice, so both replicas answer (round-robin over new connections)."""
    for _ in range(2):
        async with session.get(f"{url}{API}/{pkg.repo}") as r:
            listed = {m["release"] for m in await r.json()}
        assert listed == set(pkg.acked) - pkg.deleted, pkg.repo
        for release, data in pkg.acked.items():
            want = (404, None) if release in pkg.deleted else (200, data)
            status, got = await pull(session, url, pkg, release)
            assert (status, got if status == 200 else None) == want, f"{pkg.repo}@{release}: lost or stale"
        async with session.get(f"{url}{API}/{pkg.repo}/channels") as r:
            channels = {c["name"]: c for c in await r.json()}
        assert set(channels) == set(pkg.channels)
        for name, held in pkg.channels.items():
            c = channels[name]
            assert sorted(c["releases"]) == sorted(held), (pkg.repo, name, c)
            assert c["current"] == held[-1] and c["current"] in c["releases"], (pkg.repo, name, c)
            for release in c["releases"]:  # every release the channel names exists
                async with session.get(f"{url}{API}/{pkg.repo}/{release}/kpm") as r:
                    assert r.status == 200, (pkg.repo, release)
                    # a release shows the channels it is current in
                    assert (name in (await r.json())["channels"]) == (release == c["current"]), (pkg.repo, name)
            status, got = await pull(session, url, pkg, c["current"])
            assert (status, got) == (200, pkg.acked[c["current"]])


@pytest.mark.timeout(90)
async def test_a_mixed_load_over_two_replicas_loses_nothing_and_leaves_channels_consistent(
        registry, redis_server, tmp_path):
    rng = random.Random(14)
    ns = unique("so")[0]
    pkgs = [Package(f"{ns}/app{i}") for i in range(PACKAGES)]
    started = time.monotonic()
    async with scaled_out(registry, redis_server, tmp_path) as (session, url, proxy):
        # 1. Races of every package's first releases, all at once.
        first = ["1.0.0", "1.1.0", "1.2.0", "1.3.0"]
        await asyncio.gather(*(race(session, url, p, r) for p in pkgs for r in first))
        # 2. The mix, all at once: more races, pulls, channel moves on two channels, deletes.
        later = ["2.0.0", "2.1.0", "2.2.0"]
        work: list[Awaitable[object]] = []
        for p in pkgs:
            work += [race(session, url, p, r) for r in later]
            work.append(pulls(session, url, p, ["1.0.0", "1.1.0", "1.2.0"], rounds=3))
            work.append(deletes(session, url, p, ["1.3.0"]))
            work += [channel_moves(session, url, p, name, ["1.0.0", "1.1.0", "1.2.0"], rng)
                     for name in ("stable", "beta")]
        results = await asyncio.gather(*work)
        # 3. Deletes of releases pushed during the mix, one of them on a channel.
        for p in pkgs:
            await deletes(session, url, p, ["2.2.0"])
        # 4. The end state, on both replicas.
        for p in pkgs:
            await eventually(lambda p=p: check_end_state(session, url, p))
        elapsed = time.monotonic() - started
        stale_reads = sum(r for r in results if isinstance(r, int))
        statuses = sum((p.statuses for p in pkgs), Counter())
        print(f"\nscale-out: {sum(proxy.connections.values())} connections "
              f"({dict(proxy.connections)} per replica), pushes {dict(statuses)}, "
              f"{stale_reads} pulls of an acknowledged release answered 404 during the load, {elapsed:.1f} s")
        assert min(proxy.connections.values()) > 50, proxy.connections  # both replicas carried the load
        assert statuses[200] == PACKAGES * (len(first) + len(later))
        assert statuses[409] == (RACERS - 1) * PACKAGES * (len(first) + len(later))


async def test_without_redis_racing_pushes_over_two_replicas_can_both_win(registry, tmp_path):
    """The control: the test above can fail. Without --redis-url each replica locks only its own
    process, so a race spread over both can acknowledge two pushes of one release: one is lost. (The
    registry itself may also break under unlocked concurrent writes: a 500 to two tag writes at once is a
    503 here, a DIGEST_INVALID to a manifest PUT a 502.)"""
    ns = unique("so")[0]
    pkgs = [Package(f"{ns}/app{i}") for i in range(PACKAGES)]
    async with scaled_out(registry, None, tmp_path) as (session, url, _):
        races = await asyncio.gather(*(racers(session, url, p, f"1.{i}.0", (200, 409, 502, 503))
                                       for p in pkgs for i in range(8)))
    winners = Counter(sum(status == 200 for status, _ in outcomes) for outcomes in races)
    print(f"\nwithout Redis, races by number of winners: {dict(winners)}")
    assert max(winners) > 1, winners
