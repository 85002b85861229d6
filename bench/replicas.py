#!/usr/bin/env python3
"""Replicas and workers: how fast another replica sees a write (Redis pub/sub), and what --workers buys.

1. Propagation: two `cnr-oci serve` replicas (A, B) on one registry and one redis-server, with
   --cache-ttl 300. Each round force-pushes new bytes of one release on A, then polls B's pull
   (every 2 ms) until it serves them: the delay from A's 200 to B's first read showing it.
2. Workers: small-chart pulls (E12) against `serve --workers 1` and `--workers 2` at C=8 and C=32,
   requests/s and latency, with the load generator in this one process (it shares the cores).

    python bench/replicas.py           # 50 rounds, 3000 pulls per cell
    python bench/replicas.py --quick   # 10 rounds, 500 pulls per cell
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import gzip
import io
import shlex
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import aiohttp

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench.common import machine, pct, table, wait_http
from bench.common import run_load as common_run_load
from cnr_oci.embedded import EmbeddedRegistry, free_port

API = "/cnr/api/v1/packages"
SECRET = "bench-secret-not-for-production"


def chart(name: str, extra: bytes = b"") -> bytes:
    buf = io.BytesIO()
    with gzip.GzipFile(fileobj=buf, mode="wb", mtime=0) as gz, tarfile.open(fileobj=gz, mode="w") as tar:
        for path, data in ((f"{name}/Chart.yaml", f"apiVersion: v2\nname: {name}\nversion: 1.0.0\n".encode()),
                           (f"{name}/values.yaml", b"x: 1\n" + extra)):
            info = tarfile.TarInfo(path)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def push_body(blob: bytes) -> dict[str, Any]:
    return {"blob": base64.b64encode(blob).decode(), "release": "1.0.0", "media_type": "helm"}


@contextmanager
def redis_server(tmp: Path) -> Iterator[str]:
    port = free_port()
    proc = subprocess.Popen(["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                             "--appendonly", "no", "--dir", str(tmp)], stdout=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 10
        while subprocess.run(["redis-cli", "-p", str(port), "ping"], capture_output=True,
                             text=True).stdout.strip() != "PONG":
            assert time.monotonic() < deadline, "redis-server did not start"
            time.sleep(0.05)
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        proc.terminate()
        proc.wait(10)


@contextmanager
def serve(upstream: str, *extra: str) -> Iterator[str]:
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "cnr_oci", "serve", "--port", str(port), "--upstream", upstream,
                             "--token-secret", SECRET, "--log-level", "warning", *extra])
    try:
        wait_http(f"http://127.0.0.1:{port}/healthz", timeout=30)
        time.sleep(0.5)  # every worker up, subscribed
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.wait(90)


async def propagation(a: str, b: str, rounds: int) -> dict[str, Any]:
    """Delays (ms) from A's 200 for a force-push to B's first pull that serves the new bytes."""
    delays: list[float] = []
    async with aiohttp.ClientSession() as s:
        repo = f"prop{time.time_ns()}/app"
        first = chart("app", b"round -1")
        async with s.post(f"{a}{API}/{repo}", json=push_body(first)) as r:
            assert r.status == 200, await r.text()
        for i in range(rounds):
            async with s.get(f"{b}{API}/{repo}/1.0.0/helm/pull") as r:  # B has the old one cached
                await r.read()
            new = chart("app", f"round {i}".encode())
            async with s.post(f"{a}{API}/{repo}?force=true", json=push_body(new)) as r:
                assert r.status == 200, await r.text()
            done = time.perf_counter()
            while True:
                async with s.get(f"{b}{API}/{repo}/1.0.0/helm/pull") as r:
                    if await r.read() == new:
                        break
                if time.perf_counter() - done > 10:
                    raise AssertionError("B did not see the write within 10 s")
                await asyncio.sleep(0.002)
            delays.append((time.perf_counter() - done) * 1000)
    return {"rounds": rounds, "p50_ms": round(pct(delays, 50), 1), "p99_ms": round(pct(delays, 99), 1),
            "max_ms": round(max(delays), 1)}


async def run_load(n: int, concurrency: int, op: Callable[[], Awaitable[None]]) -> dict[str, Any]:
    """common.run_load of an op that moves no counted bytes, as this bench reports it."""
    async def counted(_: int) -> int:
        await op()
        return 0

    r = await common_run_load(n, concurrency, counted)
    return {"req_per_s": round(r["ops_per_s"]), "p50_ms": r["p50_ms"], "p99_ms": r["p99_ms"], "errors": r["errors"]}


async def pulls(base: str, n: int, concurrency: int) -> dict[str, Any]:
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=concurrency)) as s:
        repo = f"w{time.time_ns()}/app"
        blob = chart("app")
        async with s.post(f"{base}{API}/{repo}", json=push_body(blob)) as r:
            assert r.status == 200, await r.text()

        async def pull() -> None:
            async with s.get(f"{base}{API}/{repo}/1.0.0/helm/pull") as r:
                if r.status != 200 or await r.read() != blob:
                    raise AssertionError(r.status)

        await run_load(min(n, 400), concurrency, pull)  # warm every worker's caches and connections
        return await run_load(n, concurrency, pull)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="fewer rounds and requests")
    parser.add_argument("--rounds", type=int, default=50)
    parser.add_argument("--requests", type=int, default=3000)
    args = parser.parse_args()
    if args.quick:
        args.rounds, args.requests = 10, 500
    for binary in ("docker-registry", "redis-server", "redis-cli"):
        if shutil.which(binary) is None:
            print(f"{binary} is not installed", file=sys.stderr)
            return 2
    print(f"$ {shlex.join([Path(sys.executable).name, *sys.argv])}")
    print(machine(load=True))
    with tempfile.TemporaryDirectory(prefix="cnr-oci-replicas-") as tmp:
        registry = EmbeddedRegistry(Path(tmp) / "registry")
        registry.start()
        try:
            with redis_server(Path(tmp)) as redis:
                with serve(registry.url, "--redis-url", redis, "--cache-ttl", "300") as a, \
                        serve(registry.url, "--redis-url", redis, "--cache-ttl", "300") as b:
                    prop = asyncio.run(propagation(a, b, args.rounds))
                print("\nPropagation, write on A to first read on B that sees it (--cache-ttl 300):\n")
                print(table([["rounds", "p50 ms", "p99 ms", "max ms"],
                             [prop["rounds"], prop["p50_ms"], prop["p99_ms"], prop["max_ms"]]]))
                rows: list[list[Any]] = [["workers", "C", "req/s", "p50 ms", "p99 ms", "errors"]]
                for workers in (1, 2):
                    with serve(registry.url, "--redis-url", redis, "--workers", str(workers)) as base:
                        for c in (8, 32):
                            r = asyncio.run(pulls(base, args.requests, c))
                            rows.append([workers, c, r["req_per_s"], r["p50_ms"], r["p99_ms"], r["errors"]])
                print(f"\nE12 pull of one small chart, {args.requests} requests per cell:\n")
                print(table(rows))
        finally:
            registry.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
