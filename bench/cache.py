#!/usr/bin/env python3
"""The blob cache and the release-list memo, measured: small pulls at C=1, 8, 32 and the server's CPU
per pull with 5 against 500 releases (median of 3 rounds), for this tree and (with --baseline DIR)
another checkout of cnr-oci, side by side in one run against one registry. Loopback only; bounded.

    python bench/cache.py                              # this tree
    python bench/cache.py --baseline /path/to/cnr-oci  # and another checkout, e.g. before the cache
    python bench/cache.py --quick                      # smaller counts, for a smoke run
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shlex
import statistics
import subprocess
import sys
import tempfile
import urllib.parse
from pathlib import Path
from typing import Any

import aiohttp
import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench.common import machine, table, wait_http
from bench.run import Cnr, Direct, chart, run_load
from cnr_oci.embedded import EmbeddedRegistry, free_port

ROOT = Path(__file__).resolve().parent.parent

RELEASE_COUNTS = (5, 500)
CONFIG = json.dumps({"name": "app", "version": "0.1.0", "apiVersion": "v2"}).encode()


def start_server(src: Path, registry: EmbeddedRegistry) -> tuple[subprocess.Popen[bytes], str]:
    """`cnr-oci serve` from the checkout ``src``, in front of the registry."""
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "cnr_oci", "serve", "--port", str(port), "--upstream", registry.url,
         "--log-level", "warning", "--token-secret", "bench-secret-not-for-production"],
        cwd=str(src), env={**_env(), "PYTHONPATH": str(src)})
    url = f"http://127.0.0.1:{port}"
    wait_http(url + "/healthz")
    return proc, url


def _env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}


async def cpu_per_pull(cnr: Cnr, pid: int, path: str, n: int) -> float:
    """Microseconds of the server's CPU (user + system) per pull of ``path``, over n sequential pulls."""
    for _ in range(20):  # warm: caches filled, code paths hot
        await cnr.get(path)
    before = cpu_seconds(pid)
    result = await run_load(n, 1, lambda i: cnr.get(path))
    assert result["errors"] == 0, result
    return (cpu_seconds(pid) - before) / n * 1e6


def cpu_seconds(pid: int) -> float:
    """CPU time of every thread of the process: from /proc/PID/task/*/schedstat (nanoseconds) where
    Linux has it, else psutil's user + system (in clock ticks of 10 ms)."""
    try:
        return sum(int((task / "schedstat").read_text().split()[0])
                   for task in Path(f"/proc/{pid}/task").iterdir()) / 1e9
    except (OSError, ValueError, IndexError):
        return float(sum(psutil.Process(pid).cpu_times()[:2]))


def _by_count(item: tuple[str, Any]) -> tuple[int, str]:
    count, _, kind = item[0].partition(" releases, ")
    return int(count), kind


async def bench(args: argparse.Namespace, registry: EmbeddedRegistry,
                servers: dict[str, tuple[str, int]]) -> dict[str, Any]:
    results: dict[str, Any] = {"pulls": {}, "cpu": {}}
    connector = aiohttp.TCPConnector(limit=200)
    async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=600)) as s:
        direct = Direct(s, registry.url)
        tgz = chart("app")
        await direct.push("small/app", "1.0.0", tgz, CONFIG)
        for count in RELEASE_COUNTS:
            await run_load(count, 8, lambda i, count=count: direct.push(f"rel{count}/app", f"1.0.{i}", tgz, CONFIG))

        for c in (1, 8, 32):
            row = {"direct (tags+manifest+blob)": await run_load(args.requests, c,
                                                                 lambda i: direct.pull("small/app", "1.0.0"))}
            for name, (url, _) in servers.items():
                row[name] = await run_load(args.requests, c, lambda i, url=url: Cnr(s, url).get(
                    "/small/app/1.0.0/helm/pull"))
            results["pulls"][c] = row

        # Rounds alternate the order of 5 and 500, and the median is kept: the machine may be shared.
        for name, (url, pid) in servers.items():
            cnr = Cnr(s, url)
            rounds: dict[str, list[float]] = {}
            for n in range(args.rounds):
                for count in RELEASE_COUNTS if n % 2 == 0 else reversed(RELEASE_COUNTS):
                    for kind, release in (("exact (latest)", f"1.0.{count - 1}"), ("exact (first)", "1.0.0"),
                                          ("range >=1.0.0", urllib.parse.quote(">=1.0.0"))):
                        rounds.setdefault(f"{count} releases, {kind}", []).append(await cpu_per_pull(
                            cnr, pid, f"/rel{count}/app/{release}/helm/pull", args.cpu_pulls))
            results["cpu"][name] = {k: statistics.median(v) for k, v in sorted(rounds.items(), key=_by_count)}
    return results


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--baseline", type=Path, help="another cnr-oci checkout to run side by side")
    parser.add_argument("--quick", action="store_true", help="small counts, for a smoke run")
    args = parser.parse_args()
    args.requests = 300 if args.quick else 2000
    args.cpu_pulls = 200 if args.quick else 1000
    args.rounds = 1 if args.quick else 3
    command = "python " + " ".join(shlex.quote(a) for a in sys.argv)

    with tempfile.TemporaryDirectory(prefix="cnr-oci-bench-cache-") as tmp:
        registry = EmbeddedRegistry(Path(tmp) / "registry", log_path=str(Path(tmp) / "registry.log"))
        registry.start()
        procs: list[subprocess.Popen[bytes]] = []
        servers: dict[str, tuple[str, int]] = {}
        try:
            for name, src in [("cnr-oci (this tree)", ROOT)] + (
                    [(f"cnr-oci ({args.baseline})", args.baseline)] if args.baseline else []):
                proc, url = start_server(src, registry)
                procs.append(proc)
                servers[name] = (url, proc.pid)
            results = asyncio.run(bench(args, registry, servers))
        finally:
            for proc in procs:
                proc.terminate()
                proc.wait(30)
            registry.stop()

    print(f"# cnr-oci cache benchmark\n\ncommand: {command}\nmachine: {machine(load=True)}\n")
    names = list(next(iter(results["pulls"].values())))
    rows = [["small pull (2 KiB chart), pulls/s"] + [f"C={c}" for c in results["pulls"]]]
    for name in names:
        rows.append([name] + [f"{r[name]['ops_per_s']} (p50 {r[name]['p50_ms']} ms, {r[name]['errors']} err)"
                              for r in results["pulls"].values()])
    print(table(rows) + "\n")
    for name, per in results["cpu"].items():
        rows = [["server CPU per pull, " + name, "µs"]] + [[k, round(v)] for k, v in per.items()]
        print(table(rows))
        for kind in ("exact (latest)", "exact (first)", "range >=1.0.0"):
            few, many = per[f"{RELEASE_COUNTS[0]} releases, {kind}"], per[f"{RELEASE_COUNTS[1]} releases, {kind}"]
            print(f"{kind}: {RELEASE_COUNTS[1]} vs {RELEASE_COUNTS[0]} releases: {many / few:.2f}x")
        print()
    print(json.dumps({"command": command, "machine": machine(), "results": results}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
