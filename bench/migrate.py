#!/usr/bin/env python3
"""cnr-oci migrate benchmark (issue 11): the real appr 0.7.4 server into a real docker-registry.

appr is filled, through its own API, with 500 releases over 50 packages in 5 namespaces (mostly
1-64 KiB helm and kpm tarballs, some of 1 MiB, 4 of 20 MiB; every one distinct, random, incompressible).
Then `cnr-oci migrate` copies all of it at --jobs 1, 4 and 8 (each into a fresh --repository-prefix, so
each run copies everything), and a naive loop does the same job: one aiohttp session that, release by
release, GETs the blob from appr (E12 pull) and POSTs it as a CNR push body (base64 JSON) to a cnr-oci
server over the same registry. Wall time, releases/s, MB/s and peak RSS (sampled every 5 ms, children
included) of each. Loopback only.

    python bench/migrate.py            # or: make bench-migrate
    python bench/migrate.py --quick    # 60 releases, one of 20 MiB: a smoke run

Targets: --jobs 8 at least 3x the naive loop's releases/s; the migrate process's peak RSS under 150 MiB.
Needs the appr server venv (`make clients`, tests/clients/install_appr_server.py).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import datetime
import io
import json
import os
import random
import resource
import shlex
import shutil
import subprocess
import sys
import tarfile
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import psutil

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from bench.common import machine, table, wait_http  # noqa: E402
from cnr_oci.embedded import EmbeddedRegistry, free_port  # noqa: E402
from tests import appr_fill  # noqa: E402
from tests.appr_server import ApprServer, installed  # noqa: E402

MiB = 1024 * 1024
JOBS = (1, 4, 8)
TARGET_SPEEDUP = 3.0
TARGET_RSS_MIB = 150


# -- measuring -------------------------------------------------------------------------


class RssSampler:
    """Peak of the summed RSS of some processes and all their children, every 5 ms in a thread;
    the peak of each root (with its children) too."""

    def __init__(self, *pids: int) -> None:
        self.roots = [psutil.Process(p) for p in pids]
        self.peak = 0
        self.peaks = [0] * len(pids)
        self.samples = 0
        self._trees: list[list[psutil.Process]] = [[r] for r in self.roots]
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        tick = 0
        while not self._stop.is_set():
            if tick % 20 == 0:  # children looked up every 100 ms: that scans /proc
                for i, root in enumerate(self.roots):
                    with contextlib.suppress(psutil.Error):
                        self._trees[i] = [root, *root.children(recursive=True)]
            total = 0
            for i, tree in enumerate(self._trees):
                rss = 0
                for proc in tree:
                    with contextlib.suppress(psutil.Error):
                        rss += proc.memory_info().rss
                self.peaks[i] = max(self.peaks[i], rss)
                total += rss
            self.peak = max(self.peak, total)
            self.samples += 1
            tick += 1
            time.sleep(0.005)

    def close(self) -> None:
        self._stop.set()
        self._thread.join()


def cpu_seconds(pid: int | None) -> float:
    if pid is None:
        return 0.0
    try:
        t = psutil.Process(pid).cpu_times()
    except psutil.Error:
        return 0.0
    return float(t.user + t.system)


def children_cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


# -- filling appr ----------------------------------------------------------------------


@dataclass(frozen=True)
class Planned:
    package: str  # ns/name
    release: str
    media_type: str  # helm or kpm
    size: int  # of the random payload


def plan(quick: bool, seed: int) -> list[Planned]:
    """500 (quick: 60) releases over 50 (6) packages: 4 (1) of 20 MiB, 20 (3) of 1 MiB, the rest 1-64 KiB."""
    rng = random.Random(seed)
    namespaces, per_ns, per_pkg = (2, 3, 10) if quick else (5, 10, 10)
    n_big, n_mid = (1, 3) if quick else (4, 20)
    packages = [f"bm{n}/pkg{p:02d}" for n in range(namespaces) for p in range(per_ns)]
    total = len(packages) * per_pkg
    sizes = [rng.randint(1024, 64 * 1024) for _ in range(total)]
    # The big ones in different packages, spread over the run; the 1 MiB ones anywhere else.
    big = [round((k + 0.5) * total / n_big) for k in range(n_big)]
    for i in big:
        sizes[i] = 20 * MiB
    rest = [i for i in range(total) if i not in big]
    for i in rng.sample(rest, n_mid):
        sizes[i] = MiB
    out = []
    for i in range(total):
        pkg = packages[i // per_pkg]
        media_type = "helm" if (i // per_pkg) % 2 == 0 else "kpm"
        out.append(Planned(pkg, f"1.{i % per_pkg}.0", media_type, sizes[i]))
    return out


def _tarball(files: dict[str, bytes]) -> bytes:
    import gzip

    buf = io.BytesIO()
    with gzip.GzipFile(fileobj=buf, mode="wb", mtime=0, compresslevel=1) as gz, \
            tarfile.open(fileobj=gz, mode="w") as tar:
        for path, data in files.items():
            info = tarfile.TarInfo(path)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def fill(url: str, planned: list[Planned], workdir: Path) -> tuple[int, float]:
    """Push every planned release through appr's API, a package per worker (4 at once), releases of a
    package in order. Returns the bytes pushed (the .tar.gz) and the seconds it took."""
    by_package: dict[str, list[Planned]] = {}
    for p in planned:
        by_package.setdefault(p.package, []).append(p)

    def one(releases: list[Planned]) -> int:
        n = 0
        for p in releases:
            blob: bytes | Path
            if p.size >= 20 * MiB:  # streamed from a file, never held whole
                blob = appr_fill.big_tarball(workdir / f"{p.package.replace('/', '_')}-{p.release}.tgz", p.size,
                                             name=p.package.split("/")[1])
                n += blob.stat().st_size
            else:
                blob = _tarball_for(p)
                n += len(blob)
            meta = {"bench": True, "size": p.size}
            appr_fill.push(url, p.package, p.release, p.media_type, blob, metadata=meta)
            if isinstance(blob, Path):
                blob.unlink()
        return n

    start = time.perf_counter()
    with ThreadPoolExecutor(4) as pool:
        total = sum(pool.map(one, by_package.values()))
    return total, time.perf_counter() - start


def _tarball_for(p: Planned) -> bytes:
    name = p.package.split("/")[1]
    if p.media_type == "helm":
        files = {f"{name}/Chart.yaml": f"apiVersion: v1\nname: {name}\nversion: {p.release}\n".encode(),
                 f"{name}/values.yaml": b"replicas: 1\n", f"{name}/files/data.bin": os.urandom(p.size)}
    else:
        manifest = f'{{package: {{name: "{p.package}", version: "{p.release}"}}, deploy: []}}\n'
        files = {"manifest.jsonnet": manifest.encode(), "files/data.bin": os.urandom(p.size)}
    return _tarball(files)


# -- the naive loop (run as `bench/migrate.py --naive-worker`, in its own process) -------


async def naive(source: str, target: str) -> dict[str, Any]:
    """List appr's packages (E5) and their releases (E8); then, one release after another, GET the blob
    (E12 pull) and POST it, base64 in a JSON body, to cnr-oci (E7). Times its source and target sides."""
    api_from, api_to = source + "/cnr/api/v1/packages", target + "/cnr/api/v1/packages"
    copied = failed = moved = 0
    spent = {"source_s": 0.0, "target_s": 0.0}
    timeout = aiohttp.ClientTimeout(total=600)

    async def get(s: aiohttp.ClientSession, url: str) -> tuple[int, bytes]:
        t = time.perf_counter()
        async with s.get(url) as r:
            out = r.status, await r.read()
        spent["source_s"] += time.perf_counter() - t
        return out

    async with aiohttp.ClientSession(timeout=timeout) as s:
        names = sorted(p["name"] for p in json.loads((await get(s, api_from))[1]))
        for name in names:
            for m in json.loads((await get(s, f"{api_from}/{name}"))[1]):
                media_type = appr_fill._short(m["mediaType"])
                status, blob = await get(s, f"{api_from}/{name}/{m['release']}/{media_type}/pull")
                if status != 200:
                    failed += 1
                    continue
                t = time.perf_counter()
                body = json.dumps({"release": m["release"], "media_type": media_type, "metadata": m.get("metadata"),
                                   "blob": base64.b64encode(blob).decode()})
                async with s.post(f"{api_to}/{name}", data=body, headers={"Content-Type": "application/json"}) as r:
                    if r.status == 200:
                        copied += 1
                        moved += len(blob)
                    else:
                        failed += 1
                        print(f"naive: {name} {m['release']}: {r.status} {(await r.text())[:200]}", file=sys.stderr)
                spent["target_s"] += time.perf_counter() - t
    return {"copied": copied, "failed": failed, "bytes": moved, **spent}


def copy_phase(log: Path, started: float) -> dict[str, float]:
    """From migrate's log lines: seconds from the start to the first release done (start-up, and the
    source listed: E5, then E8 of every package), and from the first to the last."""
    stamps = []
    for line in log.read_text(errors="replace").splitlines():
        if " cnr_oci.migrate: " in line and line.endswith((": copied", ": exists")):
            with contextlib.suppress(ValueError):
                stamps.append(datetime.datetime.strptime(line[:23], "%Y-%m-%d %H:%M:%S,%f").timestamp())
    if not stamps:
        return {}
    return {"first_release_after_s": round(min(stamps) - started, 2),
            "copy_phase_s": round(max(stamps) - min(stamps), 2)}


# -- the runs ----------------------------------------------------------------------------


def timed(cmd: list[str], log: Path, watch: list[int]) -> dict[str, Any]:
    """Run cmd, sampling its RSS (and that of ``watch``, summed separately); wall and CPU seconds."""
    cpu_before = children_cpu()
    watched_before = [cpu_seconds(p) for p in watch]
    start, epoch = time.perf_counter(), time.time()
    with open(log, "wb") as out:
        proc = subprocess.Popen(cmd, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        sampler = RssSampler(proc.pid)
        watched = RssSampler(*watch) if watch else None
        rc = proc.wait()
    wall = time.perf_counter() - start
    sampler.close()
    if watched:
        watched.close()
    return {"rc": rc, "seconds": wall, "started": epoch, "peak_rss": sampler.peak, "samples": sampler.samples,
            "watched_peak_rss": watched.peaks if watched else [],
            "cpu_s": children_cpu() - cpu_before,
            "watched_cpu_s": [cpu_seconds(p) - b for p, b in zip(watch, watched_before, strict=True)]}


def run(args: argparse.Namespace, tmp: Path) -> dict[str, Any]:
    planned = plan(args.quick, args.seed)
    registry = EmbeddedRegistry(tmp / "registry", log_path=str(tmp / "registry.log"))
    registry.start()
    appr = ApprServer(tmp / "appr")
    server: subprocess.Popen[bytes] | None = None
    try:
        appr.start()
        assert registry.proc is not None and appr.proc is not None
        nbytes, fill_s = fill(appr.url, planned, tmp)
        n = len(planned)
        print(f"filled appr with {n} releases, {nbytes / 1e6:.1f} MB, in {fill_s:.1f} s", file=sys.stderr)
        watch_names = ["appr", "registry"]
        watch = [appr.proc.pid, registry.proc.pid]
        runs: dict[str, Any] = {}

        # The naive loop: a cnr-oci server over the same registry, under its own repository prefix.
        port = free_port()
        server = subprocess.Popen(
            [sys.executable, "-m", "cnr_oci", "serve", "--port", str(port), "--upstream", registry.url,
             "--repository-prefix", "naive", "--log-level", "warning", "--token-secret", "bench-not-a-secret"],
            cwd=ROOT, stdin=subprocess.DEVNULL)
        cnr_url = f"http://127.0.0.1:{port}"
        wait_http(cnr_url + "/healthz")
        out = tmp / "naive.json"
        r = timed([sys.executable, str(Path(__file__).resolve()), "--naive-worker", appr.url, cnr_url, str(out)],
                  tmp / "naive.log", [server.pid, *watch])
        got = json.loads(out.read_text()) if out.exists() else {"copied": 0, "failed": n, "bytes": 0}
        r.update(copied=got["copied"], failed=n - got["copied"], bytes=got["bytes"],
                 source_s=round(got.get("source_s", 0), 2), target_s=round(got.get("target_s", 0), 2),
                 watched=["cnr-oci serve", *watch_names])
        if r["rc"] != 0:
            print((tmp / "naive.log").read_text()[-3000:], file=sys.stderr)
        runs["naive loop"] = r
        print(f"naive loop: {r['seconds']:.1f} s, {got}", file=sys.stderr)
        server.terminate()
        server.wait(30)
        server = None

        for jobs in args.jobs:
            report = tmp / f"report-{jobs}.json"
            cmd = [sys.executable, "-m", "cnr_oci", "migrate", "--from", appr.url, "--upstream", registry.url,
                   "--repository-prefix", f"run{jobs}", "--progress", "lines", "--report", str(report),
                   "--jobs", str(jobs)]
            r = timed(cmd, tmp / f"migrate-{jobs}.log", watch)
            rep: dict[str, Any] = json.loads(report.read_text()) if report.exists() else {"counts": {}, "seconds": 0}
            copied = rep["counts"].get("copied", 0)
            r.update(copied=copied, failed=n - copied, counts=rep["counts"], internal_seconds=rep["seconds"],
                     bytes=sum(x["bytes"] for x in rep.get("releases", []) if x["status"] == "copied"),
                     watched=watch_names, **copy_phase(tmp / f"migrate-{jobs}.log", r["started"]))
            if r["rc"] != 0 or copied != n:
                print((tmp / f"migrate-{jobs}.log").read_text()[-3000:], file=sys.stderr)
            runs[f"migrate --jobs {jobs}"] = r
            print(f"--jobs {jobs}: {r['seconds']:.1f} s, {rep['counts']}", file=sys.stderr)
            if args.profile and jobs == max(args.jobs):
                profile(cmd, jobs, args.profile)
    finally:
        if server is not None:
            server.terminate()
            server.wait(30)
        appr.stop()
        registry.stop()
    return {"releases": n, "bytes": nbytes, "fill_seconds": round(fill_s, 1),
            "sizes": {"20 MiB": sum(p.size >= 20 * MiB for p in planned),
                      "1 MiB": sum(p.size == MiB for p in planned),
                      "1-64 KiB": sum(p.size <= 64 * 1024 for p in planned)},
            "runs": runs}


def profile(cmd: list[str], jobs: int, out: str) -> None:
    """One more migrate run under py-spy (its own prefix), for where the time goes."""
    spy = Path(sys.executable).parent / "py-spy"
    cmd = [a if a != f"run{jobs}" else "profiled" for a in cmd]
    flame = Path(out)
    subprocess.run([str(spy), "record", "--idle", "-r", "50", "-f", "raw", "-o", str(flame), "--", *cmd],
                   cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=False)
    print(f"py-spy profile of --jobs {jobs} written to {flame}", file=sys.stderr)


def summarize(res: dict[str, Any]) -> tuple[list[list[Any]], list[tuple[str, str, str, bool]]]:
    rows: list[list[Any]] = [["run", "seconds", "releases/s", "MB/s", "peak RSS MiB", "copied", "failed",
                              "CPU s", "CPU s appr, registry"]]
    for name, r in res["runs"].items():
        cpu_w = r["watched_cpu_s"]
        peak = f"{r['peak_rss'] / MiB:.0f}"
        cpu_self = f"{r['cpu_s']:.1f}"
        if name == "naive loop":  # the client, and the cnr-oci server it pushes to
            peak += f" + serve {r['watched_peak_rss'][0] / MiB:.0f}"
            cpu_self += f" + serve {cpu_w[0]:.1f}"
            cpu_w = cpu_w[1:]
        r["releases_per_s"] = round(r["copied"] / r["seconds"], 1)
        r["MB_per_s"] = round(r["bytes"] / r["seconds"] / 1e6, 1)
        rows.append([name, f"{r['seconds']:.1f}", r["releases_per_s"], r["MB_per_s"], peak, r["copied"],
                     r["failed"], cpu_self, ", ".join(f"{c:.1f}" for c in cpu_w)])
    checks: list[tuple[str, str, str, bool]] = []
    naive_r = res["runs"].get("naive loop")
    top = max((k for k in res["runs"] if k.startswith("migrate")), key=lambda k: int(k.split()[-1]), default=None)
    if naive_r and top:
        t = res["runs"][top]
        speedup = t["releases_per_s"] / naive_r["releases_per_s"] if naive_r["releases_per_s"] else float("inf")
        res["speedup"] = round(speedup, 2)
        checks.append((f"{top} vs the naive loop, releases/s", f">= {TARGET_SPEEDUP:.0f}x",
                       f"{speedup:.2f}x ({t['releases_per_s']} vs {naive_r['releases_per_s']})",
                       speedup >= TARGET_SPEEDUP))
    for name, r in res["runs"].items():
        if name.startswith("migrate"):
            mib = r["peak_rss"] / MiB
            checks.append((f"{name} peak RSS", f"< {TARGET_RSS_MIB} MiB", f"{mib:.0f} MiB", mib < TARGET_RSS_MIB))
    for name, r in res["runs"].items():
        checks.append((f"{name}: every release copied", f"{res['releases']} copied, exit 0",
                       f"{r['copied']} copied, exit {r['rc']}", r["copied"] == res["releases"] and r["rc"] == 0))
    return rows, checks


def main() -> int:
    if len(sys.argv) == 5 and sys.argv[1] == "--naive-worker":
        result = asyncio.run(naive(sys.argv[2], sys.argv[3]))
        Path(sys.argv[4]).write_text(json.dumps(result))
        return 0 if not result["failed"] else 1
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="60 releases, one of 20 MiB: a smoke run")
    parser.add_argument("--jobs", type=lambda s: [int(j) for j in s.split(",")], default=list(JOBS),
                        help="the --jobs values to run, comma-separated (default 1,4,8)")
    parser.add_argument("--seed", type=int, default=11, help="of the release sizes (the bytes are random)")
    parser.add_argument("--profile", metavar="FILE",
                        help="also run the largest --jobs once under py-spy, writing collapsed stacks to FILE")
    parser.add_argument("--keep", action="store_true", help="keep the temporary directory (logs, reports)")
    parser.add_argument("--json", default=str(Path(__file__).parent / "results" / "migrate.json"))
    args = parser.parse_args()
    if not installed():
        print("the appr server is not installed: make clients (tests/clients/install_appr_server.py)",
              file=sys.stderr)
        return 2
    command = "python " + " ".join(shlex.quote(a) for a in sys.argv)
    where = machine(load=True)
    tmp = tempfile.mkdtemp(prefix="cnr-oci-bench-migrate-")
    try:
        res = run(args, Path(tmp))
    finally:
        if args.keep:
            print(f"kept {tmp}", file=sys.stderr)
        else:
            shutil.rmtree(tmp, ignore_errors=True)
    rows, checks = summarize(res)
    sizes = ", ".join(f"{v} of {k}" for k, v in res["sizes"].items())
    print(f"# cnr-oci migrate benchmark\n\ncommand: {command}\nmachine: {where}\n")
    print(f"source: appr 0.7.4 (run-server, filesystem db) with {res['releases']} releases ({sizes}), "
          f"{res['bytes'] / 1e6:.1f} MB; filled through its API in {res['fill_seconds']} s\n")
    print(table(rows) + "\n")
    print("peak RSS: of the process and its children, sampled every 5 ms (the naive loop: its client process + "
          "the cnr-oci server it pushes to).\nCPU s: user+system seconds spent during the run, by the process "
          "(+ that server), and by appr and the registry.\n")
    for name, r in res["runs"].items():
        if name == "naive loop":
            print(f"- naive loop: {r['source_s']} s in appr GETs (E5, E8, E12 pull), {r['target_s']} s in cnr-oci "
                  "pushes (base64 + E7 POST)")
        elif "copy_phase_s" in r:
            print(f"- {name}: first release done {r['first_release_after_s']} s after the start (start-up, E5, and "
                  f"E8 of every package), the rest in {r['copy_phase_s']} s")
    print()
    out = [["target", "wanted", "measured", "met"]] + [[n, w, g, "yes" if ok else "NO"] for n, w, g, ok in checks]
    print(table(out))
    if args.quick:
        print("\n(--quick: a smoke run; the targets are the issue's for the full 500 releases)")
    doc = {"command": command, "machine": where, "results": res,
           "targets": [{"target": n, "wanted": w, "measured": g, "met": ok} for n, w, g, ok in checks]}
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(doc, indent=2))
    return 0 if all(ok for *_, ok in checks) else 1


if __name__ == "__main__":
    raise SystemExit(main())
