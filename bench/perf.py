#!/usr/bin/env python3
"""Issue 13's benchmark: cnr-oci, the registry directly and the appr 0.7.4 server, side by side in one run.

Mix: 500 releases across 50 packages (2 KiB charts); each pull picks a release at random, from a
hot set of 10 releases or uniformly over the 500, reported separately. The same packages are in
the registry (helm's layout, read by cnr-oci; the direct reference does tag list + manifest +
blob GETs) and in the appr reference server (`make clients` installs it; skipped without it).
Per operation: req/s, p50, p99, errors, and cnr-oci's RSS before and after. Also: cold and warm
E5 listing of 1,000 packages (each round against a fresh cnr-oci process), E10 show, 1 MiB push
at C=4, and cnr-oci's CPU per pull with 5 against 500 releases in the package. The 50 MiB blob
row comes from bench/blobs.py (`make bench-blobs`) when it is there. Loopback only.

    python bench/perf.py            # or: make bench-perf
    python bench/perf.py --quick    # smaller counts, for a smoke run
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import json
import os
import random
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import aiohttp
import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench.common import ROOT, Cnr, Direct, MiB, chart, cpu_seconds, machine, run_load, start_cnr_oci, table
from cnr_oci.embedded import EmbeddedRegistry
from tests import appr_fill, appr_server

HELM_CONFIG = json.dumps({"name": "p", "version": "0.1.0", "apiVersion": "v2"}).encode()
PACKAGES, RELEASES, HOT = 50, 10, 10


def mix_releases() -> list[tuple[str, str]]:
    """The 500 (package, release) pairs of the mix."""
    return [(f"mix/p{i:02d}", f"1.{j}.0") for i in range(PACKAGES) for j in range(RELEASES)]


def rss_mib(pid: int) -> float:
    return round(psutil.Process(pid).memory_info().rss / MiB, 1)


async def push_all(direct: Direct, items: list[tuple[str, str, bytes]]) -> None:
    """Direct pushes, 16 at a time; those that fail (distribution answers some concurrent manifest
    PUTs to one repository with 400) are pushed again one by one."""
    failed: list[int] = []

    async def one(i: int) -> int:
        try:
            return await direct.push(items[i][0], items[i][1], items[i][2], HELM_CONFIG)
        except AssertionError:
            failed.append(i)
            raise

    await run_load(len(items), 16, one)
    for i in failed:
        await direct.push(items[i][0], items[i][1], items[i][2], HELM_CONFIG)


async def fill(direct: Direct, appr_url: str | None) -> None:
    """The mix into the registry (helm's layout) and, when it runs, into the appr server."""
    pairs = mix_releases()
    blobs = {p: appr_fill.helm_chart(p[0].split("/")[1], p[1]) for p in pairs}
    await push_all(direct, [(p, r, blobs[p, r]) for p, r in pairs])
    for name, count in (("cpu/p5", 5), ("cpu/p500", 500)):
        await push_all(direct, [(name, f"1.{i}.0", appr_fill.helm_chart(name.split("/")[1], f"1.{i}.0"))
                                for i in range(count)])
    if appr_url is not None:
        r = await run_load(len(pairs), 4, lambda i: asyncio.to_thread(
            lambda: appr_fill.push(appr_url, pairs[i][0], pairs[i][1], "helm", blobs[pairs[i]]) and 0))
        assert r["errors"] == 0, r


async def cnr_pull(s: aiohttp.ClientSession, base: str, pkg: str, release: str) -> int:
    n = 0
    async with s.get(f"{base}/cnr/api/v1/packages/{pkg}/{release}/helm/pull") as r:
        assert r.status == 200, r.status
        async for chunk in r.content.iter_any():
            n += len(chunk)
    return n


async def pulls(args: argparse.Namespace, s: aiohttp.ClientSession, direct: Direct, cnr_url: str, pid: int,
                appr_url: str | None) -> list[dict[str, Any]]:
    """Small pulls at C=1, 8, 32, hot and uniform, for every target; E10 show."""
    pairs = mix_releases()
    rnd = random.Random(13)
    hot = rnd.sample(pairs, HOT)
    targets: dict[str, Callable[[tuple[str, str]], Awaitable[int]]] = {
        "cnr-oci": lambda p: cnr_pull(s, cnr_url, *p),
        "registry direct": lambda p: direct.pull(*p),
    }
    if appr_url is not None:
        targets["appr 0.7.4"] = lambda p: cnr_pull(s, appr_url, *p)
    for op in targets.values():  # every release once: the pulls below are warm pulls
        await run_load(len(pairs), 8, lambda i, op=op: op(pairs[i]))  # type: ignore[misc]
    rows = []
    for c in args.concurrency:
        for mix, pool in (("hot", hot), ("uniform", pairs)):
            for name, op in targets.items():
                n = args.requests if name != "appr 0.7.4" else max(args.requests // 4, 50)
                picks = [rnd.choice(pool) for _ in range(n)]
                rows.append(await measured(name, "small pull", mix, c, pid if name == "cnr-oci" else None,
                                           run_load(n, c, lambda i, op=op, picks=picks: op(picks[i]))))  # type: ignore[misc]
    picks = [rnd.choice(pairs) for _ in range(args.requests)]
    show = {"cnr-oci": cnr_url, **({"appr 0.7.4": appr_url} if appr_url else {})}
    for name, base in show.items():
        n = args.requests if name == "cnr-oci" else max(args.requests // 4, 50)
        rows.append(await measured(name, "E10 show", "uniform", 8, pid if name == "cnr-oci" else None, run_load(
            n, 8, lambda i, base=base: get(s, f"{base}/cnr/api/v1/packages/{picks[i][0]}/{picks[i][1]}/helm"))))
    return rows


async def get(s: aiohttp.ClientSession, url: str) -> int:
    async with s.get(url) as r:
        assert r.status == 200, r.status
        return len(await r.read())


async def measured(target: str, op: str, mix: str, c: int, pid: int | None,
                   load: Awaitable[dict[str, Any]]) -> dict[str, Any]:
    """One row: the load's figures, with cnr-oci's RSS before and after when pid is cnr-oci's."""
    before = rss_mib(pid) if pid else None
    r = await load
    return {"target": target, "operation": op, "mix": mix, **r,
            "rss_before_MiB": before, "rss_after_MiB": rss_mib(pid) if pid else None}


async def cpu_per_pull(s: aiohttp.ClientSession, cnr_url: str, pid: int, n: int) -> dict[str, float]:
    """cnr-oci's CPU time over n warm pulls of random releases of a package, divided by n: every release
    is pulled once first, so this is what one pull costs with 5 or with 500 releases in the package."""
    out = {}
    for name, count in (("cpu/p5", 5), ("cpu/p500", 500)):
        rnd = random.Random(5)
        await run_load(count, 8, lambda i, name=name: cnr_pull(s, cnr_url, name, f"1.{i}.0"))  # type: ignore[misc]
        picks = [f"1.{rnd.randrange(count)}.0" for _ in range(n)]
        c0 = cpu_seconds(pid)
        r = await run_load(n, 8, lambda i, name=name, picks=picks: cnr_pull(s, cnr_url, name, picks[i]))  # type: ignore[misc]
        out[f"{count} releases"] = round((cpu_seconds(pid) - c0) / n * 1000, 3)
        out[f"{count} releases errors"] = r["errors"]
    return out


async def push_rows(args: argparse.Namespace, s: aiohttp.ClientSession, direct: Direct, cnr: Cnr,
                    pid: int) -> list[dict[str, Any]]:
    blobs = [chart("app", MiB) for _ in range(args.pushes)]
    d = await measured("registry direct", "1 MiB push (blob uploads + manifest PUT)", "-", 4, None, run_load(
        args.pushes, 4, lambda i: direct.push(f"pushd/app{i}", "1.0.0", blobs[i], HELM_CONFIG)))
    blobs = [chart("app", MiB) for _ in range(args.pushes)]
    c = await measured("cnr-oci", "1 MiB push (E7)", "-", 4, pid, run_load(
        args.pushes, 4, lambda i: cnr.push(f"pushc{i}/app", "1.0.0", blobs[i])))
    return [d, c]


async def listing(args: argparse.Namespace, registry: EmbeddedRegistry) -> dict[str, Any]:
    """E5 of args.packages packages: each round a fresh cnr-oci (cold), then 5 warm lists."""
    cold, first_byte, warm, cost, rss, cpu = [], [], [], [], [], []
    reg_pid = registry.proc.pid if registry.proc else None
    for _ in range(args.rounds):
        server, url = start_cnr_oci(registry.url)
        try:
            async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=600)) as s:
                cnr = Cnr(s, url)
                before = await cnr.upstream_requests(url)
                rss_before = rss_mib(server.pid)
                cpu0 = (cpu_seconds(server.pid), cpu_seconds(reg_pid) if reg_pid else 0.0)
                t = time.perf_counter()
                async with s.get(cnr.api + "?namespace=list") as r:
                    body = await r.content.readany()
                    first_byte.append(time.perf_counter() - t)
                    body += await r.content.read()
                cold.append(time.perf_counter() - t)
                cpu.append((cpu_seconds(server.pid) - cpu0[0], (cpu_seconds(reg_pid) if reg_pid else 0.0) - cpu0[1]))
                assert r.status == 200 and body.count(b'"name"') == args.packages, (r.status, body[:200])
                cost.append(await cnr.upstream_requests(url) - before)
                for _ in range(5):
                    t = time.perf_counter()
                    await cnr.get("?namespace=list")
                    warm.append(time.perf_counter() - t)
                rss.append((rss_before, rss_mib(server.pid)))
        finally:
            server.terminate()
            server.wait(30)
    ms = lambda xs: round(statistics.median(xs) * 1000, 1)  # noqa: E731
    return {"packages": args.packages, "cold_ms": ms(cold), "cold_rounds_ms": [round(x * 1000) for x in cold],
            "cold_first_byte_ms": ms(first_byte), "warm_p50_ms": ms(warm),
            "upstream_requests_cold": statistics.median(cost), "rss_MiB": rss[-1],
            "cold_cpu_s_cnr_oci": round(statistics.median(c[0] for c in cpu), 2),
            "cold_cpu_s_registry": round(statistics.median(c[1] for c in cpu), 2)}


def blobs_row(quick: bool) -> dict[str, Any] | None:
    """The 50 MiB row from bench/blobs.py (tuned nginx in the same run), when that bench exists."""
    if importlib.util.find_spec("bench.blobs") is None:
        return None
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "blobs.json"
        cmd = [sys.executable, str(ROOT / "bench" / "blobs.py"), "--json", str(out), "--only", "nginx-tuned,cnr-oci"]
        subprocess.run(cmd + (["--quick"] if quick else []), cwd=str(ROOT), check=True, stdout=subprocess.DEVNULL)
        doc: dict[str, Any] = json.loads(out.read_text())
    return doc.get("results", doc)


async def bench(args: argparse.Namespace, registry: EmbeddedRegistry, cnr_url: str, pid: int,
                appr_url: str | None) -> dict[str, Any]:
    results: dict[str, Any] = {}
    connector = aiohttp.TCPConnector(limit=200)
    async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=600)) as s:
        direct, cnr = Direct(s, registry.url), Cnr(s, cnr_url)
        small = chart("p")
        await push_all(direct, [(f"list/p{i:04d}", "1.0.0", small) for i in range(args.packages)])
        results["E5 list"] = await listing(args, registry)
        await fill(direct, appr_url)
        results["rows"] = await pulls(args, s, direct, cnr_url, pid, appr_url)
        results["rows"] += await push_rows(args, s, direct, cnr, pid)
        results["CPU ms per pull"] = await cpu_per_pull(s, cnr_url, pid, args.requests // 2)
    return results


def row_of(rows: list[dict[str, Any]], target: str, op: str, mix: str = "-", c: int | None = None) -> dict[str, Any]:
    return next(r for r in rows if r["target"] == target and r["operation"].startswith(op) and r["mix"] == mix
                and (c is None or r["concurrency"] == c))


def targets(r: dict[str, Any]) -> list[tuple[str, str, str, bool | None]]:
    """Each target of the issue with its figure; None: not measured in this run."""
    rows, out = r["rows"], []
    cnr32 = row_of(rows, "cnr-oci", "small pull", "uniform", 32)
    d32 = row_of(rows, "registry direct", "small pull", "uniform", 32)
    x = cnr32["ops_per_s"] / d32["ops_per_s"]
    out.append(("small pull C=32 uniform vs the direct sequence", ">= 10x",
                f"{x:.1f}x ({cnr32['ops_per_s']} vs {d32['ops_per_s']} req/s)", x >= 10 and cnr32["errors"] == 0))
    if any(row["target"] == "appr 0.7.4" for row in rows):
        a32 = row_of(rows, "appr 0.7.4", "small pull", "uniform", 32)
        x = cnr32["ops_per_s"] / a32["ops_per_s"]
        out.append(("small pull C=32 uniform vs appr 0.7.4", ">= 5x",
                    f"{x:.1f}x ({cnr32['ops_per_s']} vs {a32['ops_per_s']} req/s)", x >= 5))
    else:
        out.append(("small pull C=32 uniform vs appr 0.7.4", ">= 5x", "appr server not installed (make clients)",
                    None))
    cpu = r["CPU ms per pull"]
    x = cpu["500 releases"] / cpu["5 releases"]
    out.append(("CPU per pull, 500 vs 5 releases", "<= 1.1x",
                f"{x:.2f}x ({cpu['500 releases']} vs {cpu['5 releases']} ms)", x <= 1.1))
    blobs = r.get("blobs")
    if blobs:
        cnr_b = blobs.get("cnr-oci E13", {}).get("aiohttp", {})
        rss = blobs.get("cnr-oci RSS streaming 200 MiB", {})
        out.append(("50 MiB blob vs tuned nginx", ">= 0.65x", f"{cnr_b.get('ratio')}x ({cnr_b.get('MB_per_s')} MB/s)",
                    (cnr_b.get("ratio") or 0) >= 0.65))
        out.append(("RSS growth streaming 200 MiB", "< 30 MiB", f"{rss.get('growth_MiB')} MiB",
                    (rss.get("growth_MiB") or 0) < 30))
    else:
        out.append(("50 MiB blob vs tuned nginx", ">= 0.65x", "see make bench-blobs", None))
    out.append(("--blob-redirect over S3 vs direct S3 download", ">= 0.95x", "not measured here", None))
    dp, cp = row_of(rows, "registry direct", "1 MiB push"), row_of(rows, "cnr-oci", "1 MiB push")
    x = cp["ops_per_s"] / dp["ops_per_s"]
    out.append(("1 MiB push C=4 vs direct", ">= 0.7x", f"{x:.2f}x ({cp['ops_per_s']} vs {dp['ops_per_s']} req/s)",
                x >= 0.7))
    lst = r["E5 list"]
    out.append((f"warm list, {lst['packages']} packages", "<= 20 ms", f"{lst['warm_p50_ms']} ms",
                lst["warm_p50_ms"] <= 20))
    out.append((f"cold list, {lst['packages']} packages", "<= 2 s",
                f"{lst['cold_ms'] / 1000:.2f} s (first byte {lst['cold_first_byte_ms']} ms, "
                f"{lst['upstream_requests_cold']:.0f} upstream requests)", lst["cold_ms"] <= 2000))
    return out


def report(command: str, load: tuple[float, ...], r: dict[str, Any]) -> str:
    lines = ["# cnr-oci: issue 13 benchmark", "", f"command: {command}",
             f"machine: {machine()}, load {load[0]:.1f} {load[1]:.1f} {load[2]:.1f} at start", ""]
    rows: list[list[Any]] = [["target", "operation", "mix", "C", "n", "req/s", "p50 ms", "p99 ms", "errors",
                              "RSS before MiB", "RSS after MiB"]]
    for x in r["rows"]:
        rows.append([x["target"], x["operation"], x["mix"], x["concurrency"], x["n"], x["ops_per_s"], x["p50_ms"],
                     x["p99_ms"], x["errors"], x["rss_before_MiB"] or "", x["rss_after_MiB"] or ""])
    lst = r["E5 list"]
    lines += [table(rows), "",
              f"E5 list of {lst['packages']} packages (median of {len(lst['cold_rounds_ms'])} fresh processes): "
              f"cold {lst['cold_ms']} ms {lst['cold_rounds_ms']}, first byte {lst['cold_first_byte_ms']} ms, "
              f"{lst['upstream_requests_cold']:.0f} upstream requests, CPU s cnr-oci {lst['cold_cpu_s_cnr_oci']}, "
              f"registry {lst['cold_cpu_s_registry']}; warm p50 {lst['warm_p50_ms']} ms; "
              f"RSS {lst['rss_MiB'][0]} -> {lst['rss_MiB'][1]} MiB",
              "CPU of cnr-oci per pull: " + ", ".join(f"{k}: {v}" + ("" if "errors" in k else " ms")
                                                      for k, v in r["CPU ms per pull"].items()), ""]
    if r.get("blobs") is None:
        lines += ["50 MiB blob: see make bench-blobs", ""]
    rows = [["target", "wanted", "measured", "met"]]
    for name, want, got, ok in targets(r):
        rows.append([name, want, got, "n/a" if ok is None else "met" if ok else "MISSED"])
    return "\n".join([*lines, table(rows)])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="small counts, for a smoke run")
    parser.add_argument("--no-blobs", action="store_true", help="leave out the 50 MiB row (bench/blobs.py)")
    parser.add_argument("--json", default=str(ROOT / "bench" / "results" / "perf.json"))
    args = parser.parse_args()
    args.packages = 200 if args.quick else 1000
    args.requests = 200 if args.quick else 2000
    args.concurrency = [1, 8, 32]
    args.pushes = 8 if args.quick else 40
    args.rounds = 1 if args.quick else 3
    command = "python " + " ".join(shlex.quote(a) for a in sys.argv)
    load = os.getloadavg()

    with tempfile.TemporaryDirectory(prefix="cnr-oci-perf-") as tmp, ExitStack() as stack:
        registry = EmbeddedRegistry(Path(tmp) / "registry", log_path=str(Path(tmp) / "registry.log"))
        registry.start()
        stack.callback(registry.stop)
        appr_url = None
        if appr_server.installed():
            appr = appr_server.ApprServer(Path(tmp) / "appr")
            appr.start()
            stack.callback(appr.stop)
            appr_url = appr.url
        server, url = start_cnr_oci(registry.url)
        stack.callback(lambda: (server.terminate(), server.wait(30)))
        results = asyncio.run(bench(args, registry, url, server.pid, appr_url))
    results["blobs"] = None if args.no_blobs else blobs_row(args.quick)
    text = report(command, load, results)
    print(text)
    if appr_url is None:
        print("\nappr 0.7.4 reference server not installed: `make clients` installs it")
    print("\nFigures are indicative when other work shares the machine; re-run on an idle machine.")
    checks = targets(results)
    doc = {"command": command, "machine": machine(), "load_at_start": load, "results": results,
           "targets": [{"target": n, "wanted": w, "measured": g, "met": ok} for n, w, g, ok in checks]}
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(doc, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
