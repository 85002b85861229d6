#!/usr/bin/env python3
"""cnr-oci benchmark: a real docker-registry and a cnr-oci process, side by side.

Every operation is also done directly against the registry in the same run, as the
physical reference (tag list + manifest GET + blob GET for a pull; blob GET for a blob;
blob uploads + manifest PUT for a push). Loopback only; bounded in count and time.

    python bench/run.py            # or: make bench
    python bench/run.py --quick    # smaller counts, for a smoke run
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shlex
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench.common import Cnr, Direct, MiB, RssSampler, chart, machine, pct, run_load, sha, start_cnr_oci, table
from cnr_oci.embedded import EmbeddedRegistry

# -- the run ---------------------------------------------------------------------------


async def bench(args: argparse.Namespace, registry: EmbeddedRegistry, cnr_url: str, pid: int) -> dict[str, Any]:
    results: dict[str, Any] = {}
    rss = RssSampler(pid)
    connector = aiohttp.TCPConnector(limit=200)
    async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=600)) as s:
        direct, cnr = Direct(s, registry.url), Cnr(s, cnr_url)
        rss_start = rss.window()

        # E5 list over many packages, cold (first call after start) then warm.
        small = chart("p")
        config = json.dumps({"name": "p", "version": "0.1.0", "apiVersion": "v2"}).encode()
        await run_load(args.packages, 16, lambda i: direct.push(f"listns/p{i:04d}", "1.0.0", small, config))
        t = time.perf_counter()
        got = await cnr.get("")
        cold = time.perf_counter() - t
        before = await cnr.upstream_requests(cnr_url)
        warm = []
        for _ in range(5):
            t = time.perf_counter()
            await cnr.get("")
            warm.append(time.perf_counter() - t)
        upstream_warm = await cnr.upstream_requests(cnr_url) - before
        results["E5 list"] = {"packages": args.packages, "cold_ms": round(cold * 1000, 1),
                              "warm_p50_ms": round(pct(warm, 50) * 1000, 1), "body_bytes": got,
                              "upstream_requests_during_5_warm_lists": upstream_warm}

        # E12 pull / E13 blob / E10 show of a small chart, C concurrent clients.
        tgz = chart("app")
        await cnr.push("small/app", "1.0.0", tgz)
        hexd = sha(tgz).removeprefix("sha256:")
        c, n = args.concurrency, args.requests
        results["direct pull (tags+manifest+blob)"] = await run_load(n, c, lambda i: direct.pull("small/app", "1.0.0"))
        results["E12 pull"] = await run_load(n, c, lambda i: cnr.get("/small/app/1.0.0/helm/pull"))
        results["direct blob"] = await run_load(n, c, lambda i: direct.blob("small/app", "sha256:" + hexd))
        results["E13 blob"] = await run_load(n, c, lambda i: cnr.get(f"/small/app/blobs/sha256/{hexd}"))
        results["E10 show"] = await run_load(n, c, lambda i: cnr.get("/small/app/1.0.0/helm"))

        # Pushes of 1 MiB charts, distinct bytes each, 4 at a time.
        blobs = [chart("app", MiB) for _ in range(args.pushes)]
        cfg = json.dumps({"name": "app", "version": "0.1.0", "apiVersion": "v2"}).encode()
        results["direct push 1 MiB"] = await run_load(
            args.pushes, 4, lambda i: direct.push(f"pushd/app{i}", "1.0.0", blobs[i], cfg))
        blobs = [chart("app", MiB) for _ in range(args.pushes)]
        results["E7 push 1 MiB"] = await run_load(
            args.pushes, 4, lambda i: cnr.push(f"pushc{i}/app", "1.0.0", blobs[i]))

        # Blob-size sweep: one client, E13 raw against a direct blob GET.
        sweep = {}
        for size, reps in args.sweep:
            data = os.urandom(size)
            digest = await direct.put_blob("sweep/blobs", data)
            del data
            # Each lambda is awaited within its own iteration; the default binds digest all the same.
            d = await run_load(reps, 1, lambda i, digest=digest: direct.blob("sweep/blobs", digest))
            base = rss.window()
            e = await run_load(reps, 1, lambda i, digest=digest: cnr.get(
                f"/sweep/blobs/blobs/sha256/{digest.removeprefix('sha256:')}"))
            growth = rss.peak - base
            sweep[f"{size // 1024} KiB" if size < MiB else f"{size // MiB} MiB"] = {
                "reps": reps, "direct_MB_per_s": d["MB_per_s"], "cnr_MB_per_s": e["MB_per_s"],
                "ratio": round(e["MB_per_s"] / d["MB_per_s"], 2) if d["MB_per_s"] else None,
                "cnr_rss_growth_MiB": round(growth / MiB, 1), "errors": d["errors"] + e["errors"]}
        results["E13 blob-size sweep"] = sweep
        results["cnr-oci peak RSS MiB"] = round(max(rss.peak, rss_start) / MiB, 1)
    rss.close()
    return results


def targets(r: dict[str, Any]) -> list[tuple[str, str, str, bool]]:
    sweep = r["E13 blob-size sweep"]
    big = sweep.get("200 MiB") or list(sweep.values())[-1]
    mid = sweep.get("50 MiB") or list(sweep.values())[-1]
    pull_ratio = r["E12 pull"]["p50_ms"] / r["direct pull (tags+manifest+blob)"]["p50_ms"]
    push_ratio = r["E7 push 1 MiB"]["ops_per_s"] / r["direct push 1 MiB"]["ops_per_s"]
    lst = r["E5 list"]
    return [
        ("E13 blob of 50 MiB vs direct MB/s", ">= 0.8x",
         f"{mid['ratio']}x ({mid['cnr_MB_per_s']} vs {mid['direct_MB_per_s']} MB/s)",
         (mid["ratio"] or 0) >= 0.8),
        ("RSS growth streaming 200 MiB", "< 30 MiB", f"{big['cnr_rss_growth_MiB']} MiB",
         big["cnr_rss_growth_MiB"] < 30),
        ("E12 pull p50, C=32, vs direct sequence", "<= 1.5x, 0 errors",
         f"{pull_ratio:.2f}x ({r['E12 pull']['p50_ms']} vs {r['direct pull (tags+manifest+blob)']['p50_ms']} ms), "
         f"{r['E12 pull']['errors']} errors",
         pull_ratio <= 1.5 and r["E12 pull"]["errors"] == 0),
        (f"E5 list, {lst['packages']} packages, warm", "<= 100 ms, no per-package upstream request",
         f"{lst['warm_p50_ms']} ms, "
         f"{lst['upstream_requests_during_5_warm_lists']:.0f} upstream requests in 5 warm lists",
         lst["warm_p50_ms"] <= 100 and lst["upstream_requests_during_5_warm_lists"] < 5 * 2),
        (f"E5 list, {lst['packages']} packages, cold", "<= 3 s", f"{lst['cold_ms'] / 1000:.2f} s",
         lst["cold_ms"] <= 3000),
        ("push 1 MiB charts vs direct ops/s", ">= 0.7x",
         f"{push_ratio:.2f}x ({r['E7 push 1 MiB']['ops_per_s']} vs {r['direct push 1 MiB']['ops_per_s']} ops/s)",
         push_ratio >= 0.7),
    ]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="small counts, for a smoke run")
    parser.add_argument("--json", default=str(Path(__file__).parent / "results" / "latest.json"))
    args = parser.parse_args()
    args.packages = 100 if args.quick else 1000
    args.requests = 200 if args.quick else 2000
    args.concurrency = 32
    args.pushes = 8 if args.quick else 40
    args.sweep = [(1024, 50), (MiB, 10), (50 * MiB, 2), (200 * MiB, 1)] if args.quick else \
        [(1024, 300), (MiB, 50), (50 * MiB, 6), (200 * MiB, 3)]
    command = "python " + " ".join(shlex.quote(a) for a in sys.argv)

    with tempfile.TemporaryDirectory(prefix="cnr-oci-bench-") as tmp:
        registry = EmbeddedRegistry(Path(tmp) / "registry", log_path=str(Path(tmp) / "registry.log"))
        registry.start()
        server, url = start_cnr_oci(registry.url)
        try:
            results = asyncio.run(bench(args, registry, url, server.pid))
        finally:
            server.terminate()
            server.wait(30)
            registry.stop()

    print(f"# cnr-oci benchmark\n\ncommand: {command}\nmachine: {machine()}\n")
    rows = [["operation", "n", "C", "ops/s", "p50 ms", "p99 ms", "MB/s", "errors"]]
    for name, r in results.items():
        if isinstance(r, dict) and "ops_per_s" in r:
            rows.append([name, r["n"], r["concurrency"], r["ops_per_s"], r["p50_ms"], r["p99_ms"], r["MB_per_s"],
                         r["errors"]])
    print(table(rows) + "\n")
    lst = results["E5 list"]
    print(f"E5 list of {lst['packages']} packages: cold {lst['cold_ms']} ms, warm p50 {lst['warm_p50_ms']} ms, "
          f"{lst['upstream_requests_during_5_warm_lists']:.0f} upstream requests during 5 warm lists\n")
    rows = [["blob size", "reps", "direct MB/s", "cnr-oci MB/s", "ratio", "cnr-oci RSS growth MiB"]]
    for size, r in results["E13 blob-size sweep"].items():
        rows.append([size, r["reps"], r["direct_MB_per_s"], r["cnr_MB_per_s"], r["ratio"], r["cnr_rss_growth_MiB"]])
    print(table(rows) + "\n")
    print(f"cnr-oci peak RSS: {results['cnr-oci peak RSS MiB']} MiB\n")
    rows = [["target", "wanted", "measured", "met"]]
    checks = targets(results)
    for name, want, got, ok in checks:
        rows.append([name, want, got, "yes" if ok else "NO"])
    print(table(rows))
    doc = {"command": command, "machine": machine(), "results": results,
           "targets": [{"target": n, "wanted": w, "measured": g, "met": ok} for n, w, g, ok in checks]}
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(doc, indent=2))
    print("\n" + json.dumps(doc))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
