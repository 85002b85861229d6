#!/usr/bin/env python3
"""Large blobs: E13 GET of a 50 MiB blob through cnr-oci against the proxies one could put instead.

One run starts a docker-registry, two nginx reverse proxies in front of it (Debian's nginx-light,
`proxy_buffering off` alone, and tuned: `proxy_buffer_size 1m` etc., see bench/common.py), a bare
aiohttp pass-through (no hashing, and with sha256) and cnr-oci, pushes a 50 MiB and a 200 MiB blob,
and GETs the 50 MiB one through each, the targets interleaved round by round. Figures are the
median of the rounds; the ratio is to the tuned nginx of the same run. Then cnr-oci streams the
200 MiB blob while its RSS is sampled. Loopback only; one request at a time.

Two clients, each in its own columns: aiohttp reading 1 MiB chunks (the client of bench/run.py
and of issue 13's figures), and a light one (http.client reading into one buffer) that leaves
more of the 2 cores to the server. CPU-s/GB is the server's (nginx: its worker) per GB served;
for cnr-oci also its main thread's, the event loop, which is the part that cannot spread.

    python bench/blobs.py                        # or: make bench-blobs
    python bench/blobs.py --quick                # fewer rounds, for a smoke run
    python bench/blobs.py --baseline /work/main  # A/B: also the cnr-oci of another checkout
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import http.client
import json
import os
import shlex
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench.common import RssSampler, machine, nginx_proxy, table, wait_http
from cnr_oci.embedded import EmbeddedRegistry, free_port

MiB = 1024 * 1024
REPO = "bigblobs/blob"
ROOT = Path(__file__).resolve().parent.parent
SHORT = {"direct": "distribution direct", "nginx-default": "nginx, default unbuffered proxy",
         "nginx-tuned": "nginx, tuned", "aiohttp": "bare aiohttp pass-through, no hashing",
         "aiohttp-sha256": "bare aiohttp pass-through, sha256", "cnr-oci": "cnr-oci E13"}


# -- a bare aiohttp pass-through, the reference for "what aiohttp can do" -------------------------


def passthrough(port: int, upstream: str, hashing: bool) -> None:
    """GET /anything is fetched from upstream and streamed back; with ``hashing``, sha256 on the loop."""
    import aiohttp
    from aiohttp import web

    async def handler(request: web.Request) -> web.StreamResponse:
        session: aiohttp.ClientSession = request.app["session"]
        async with session.get(upstream + request.path_qs) as up:
            resp = web.StreamResponse(status=up.status)
            if up.content_length is not None:
                resp.content_length = up.content_length
            await resp.prepare(request)
            h = hashlib.sha256()
            async for chunk in up.content.iter_chunked(1024 * 1024):
                if hashing:
                    h.update(chunk)
                await resp.write(chunk)
            await resp.write_eof()
            return resp

    async def session_ctx(app: web.Application) -> Any:
        app["session"] = aiohttp.ClientSession(auto_decompress=False, read_bufsize=4 * MiB)
        yield
        await app["session"].close()

    app = web.Application()
    app.cleanup_ctx.append(session_ctx)
    app.router.add_get("/{tail:.*}", handler)
    web.run_app(app, host="127.0.0.1", port=port, print=None, access_log=None)


# -- the client: blocking, one keep-alive connection, read into one buffer (cheap on CPU) ----------


class Getter:
    def __init__(self, url: str) -> None:
        self.host, port = url.removeprefix("http://").split(":")
        self.port = int(port)
        self.conn: http.client.HTTPConnection | None = None
        self.buf = memoryview(bytearray(MiB))

    def get(self, path: str, check: str | None = None) -> int:
        """GET path, read the body whole; returns its size (and checks its sha256 when asked)."""
        if self.conn is None:
            self.conn = http.client.HTTPConnection(self.host, self.port, timeout=120)
        self.conn.request("GET", path)
        resp = self.conn.getresponse()
        if resp.status != 200:
            raise RuntimeError(f"GET {path}: {resp.status} {resp.read()[:200]!r}")
        h = hashlib.sha256() if check else None
        n = 0
        while True:
            got = resp.readinto(self.buf)
            if not got:
                break
            n += got
            if h is not None:
                h.update(self.buf[:got])
        if resp.will_close:
            self.conn.close()
            self.conn = None
        if h is not None and "sha256:" + h.hexdigest() != check:
            raise RuntimeError(f"GET {path}: other bytes")
        return n

    def close(self) -> None:
        if self.conn is not None:
            self.conn.close()


class AioGetter:
    """The client of bench/run.py and of the issue's figures: aiohttp, reading 1 MiB chunks."""

    def __init__(self, url: str) -> None:
        import aiohttp

        self.url = url
        self.loop = asyncio.new_event_loop()

        async def make() -> aiohttp.ClientSession:
            return aiohttp.ClientSession(auto_decompress=False)

        self.session = self.loop.run_until_complete(make())

    def get(self, path: str, check: str | None = None) -> int:
        async def fetch() -> int:
            h = hashlib.sha256() if check else None
            n = 0
            async with self.session.get(self.url + path) as r:
                if r.status != 200:
                    raise RuntimeError(f"GET {path}: {r.status}")
                async for chunk in r.content.iter_chunked(MiB):
                    n += len(chunk)
                    if h is not None:
                        h.update(chunk)
            if h is not None and "sha256:" + h.hexdigest() != check:
                raise RuntimeError(f"GET {path}: other bytes")
            return n

        return self.loop.run_until_complete(fetch())

    def close(self) -> None:
        self.loop.run_until_complete(self.session.close())
        self.loop.close()


def pct(values: list[float], p: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, round(p / 100 * (len(s) - 1)))] if s else float("nan")


def latencies_beside(url: str, large: str, small: str, n: int = 200) -> list[float]:
    """Milliseconds of ``n`` GETs of ``small`` while two other clients GET ``large`` over and over."""
    stop = threading.Event()

    def stream() -> None:
        g = Getter(url)
        while not stop.is_set():
            g.get(large)
        g.close()

    streams = [threading.Thread(target=stream) for _ in range(2)]
    for t in streams:
        t.start()
    time.sleep(0.3)
    g = Getter(url)
    out = []
    for _ in range(n):
        t0 = time.perf_counter()
        g.get(small)
        out.append((time.perf_counter() - t0) * 1000)
    g.close()
    stop.set()
    for t in streams:
        t.join()
    return out


def put_blob(url: str, repo: str, data: bytes) -> str:
    """A monolithic upload straight into the registry; returns the digest."""
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    host, port = url.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=120)
    conn.request("POST", f"/v2/{repo}/blobs/uploads/")
    resp = conn.getresponse()
    resp.read()
    loc = resp.headers["Location"]
    loc = loc[loc.index("/v2/"):] if "/v2/" in loc else loc
    conn.request("PUT", f"{loc}{'&' if '?' in loc else '?'}digest={digest}", body=data,
                 headers={"Content-Type": "application/octet-stream"})
    resp = conn.getresponse()
    resp.read()
    conn.close()
    assert resp.status == 201, resp.status
    return digest


def main_thread_cpu(pid: int) -> float:
    """User + system CPU of a process's main thread (cnr-oci's event loop) so far."""
    return next(t.user_time + t.system_time for t in psutil.Process(pid).threads() if t.id == pid)


def cpu_seconds(pid: int) -> float:
    """User + system CPU of a process and its children (nginx's worker) so far."""
    proc = psutil.Process(pid)
    total = 0.0
    for p in [proc, *proc.children(recursive=True)]:
        t = p.cpu_times()
        total += t.user + t.system
    return total


# -- the run -------------------------------------------------------------------------------------


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="3 rounds of 2 GETs, for a smoke run")
    parser.add_argument("--rounds", type=int, default=5, help="rounds; the median is reported (default 5)")
    parser.add_argument("--gets", type=int, default=4, help="GETs of the blob per target per round (default 4)")
    parser.add_argument("--size", type=int, default=50, help="blob size in MiB (default 50)")
    parser.add_argument("--only", default="", help="comma-separated targets to run, of: " + ", ".join(SHORT)
                        + " (nginx-tuned and cnr-oci always run)")
    parser.add_argument("--json", default=str(ROOT / "bench" / "results" / "blobs.json"))
    parser.add_argument("--variant", action="append", default=[], metavar="'ENV=VALUE ...'",
                        help="also run a cnr-oci with this environment (for A/B of an experiment)")
    parser.add_argument("--baseline", action="append", default=[], metavar="CHECKOUT",
                        help="also run the cnr-oci of another checkout (e.g. /work/main), for an A/B")
    parser.add_argument("--perf-stat", action="store_true",
                        help="count instructions and page faults of each cnr-oci per byte (needs perf)")
    parser.add_argument("--passthrough", nargs=3, metavar=("PORT", "UPSTREAM", "HASH"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.passthrough:
        passthrough(int(args.passthrough[0]), args.passthrough[1], args.passthrough[2] == "1")
        return 0
    if args.quick:
        args.rounds, args.gets = 3, 2
    command = "python " + " ".join(shlex.quote(a) for a in sys.argv)
    only = {SHORT[k.strip()] for k in args.only.split(",") if k.strip()} | {SHORT["nginx-tuned"], SHORT["cnr-oci"]}
    load = os.getloadavg()

    with tempfile.TemporaryDirectory(prefix="cnr-oci-blobs-") as tmp, ExitStack() as stack:
        registry = EmbeddedRegistry(Path(tmp) / "registry", log_path=str(Path(tmp) / "registry.log"))
        registry.start()
        stack.callback(registry.stop)
        data = os.urandom(args.size * MiB)
        digest = put_blob(registry.url, REPO, data)
        big = os.urandom(200 * MiB)
        big_digest = put_blob(registry.url, REPO, big)
        small = os.urandom(1024)
        small_digest = put_blob(registry.url, REPO, small)
        del data, big

        def spawn(cmd: list[str], health: str, env: dict[str, str] | None = None,
                  cwd: Path = ROOT) -> tuple[str, int]:
            port = free_port()
            proc = subprocess.Popen([a.replace("{port}", str(port)) for a in cmd], cwd=str(cwd),
                                    env={**os.environ, **(env or {})})

            def stop() -> None:
                proc.terminate()
                proc.wait(30)

            stack.callback(stop)
            url = f"http://127.0.0.1:{port}"
            wait_http(url + health)
            return url, proc.pid

        targets: dict[str, tuple[str, int | None, str]] = {}  # name: (url, pid, path)
        blob_path = f"/v2/{REPO}/blobs/{digest}"
        targets["distribution direct"] = (registry.url, registry.proc.pid if registry.proc else None, blob_path)
        for tuned, name in ((False, "nginx, default unbuffered proxy"), (True, "nginx, tuned")):
            url, pid = stack.enter_context(nginx_proxy(registry.url, tmp, tuned=tuned))
            targets[name] = (url, pid, blob_path)
        for hashing, name in (("0", "bare aiohttp pass-through, no hashing"),
                              ("1", "bare aiohttp pass-through, sha256")):
            if not args.only or name in only:
                url, pid = spawn([sys.executable, "bench/blobs.py", "--passthrough", "{port}", registry.url,
                                  hashing], "/v2/")
                targets[name] = (url, pid, blob_path)
        serve = [sys.executable, "-m", "cnr_oci", "serve", "--port", "{port}", "--upstream", registry.url,
                 "--log-level", "warning", "--token-secret", "bench-secret-not-for-production"]
        cnr_url, cnr_pid = spawn(serve, "/healthz")
        e13 = f"/cnr/api/v1/packages/{REPO}/blobs/sha256/{digest.removeprefix('sha256:')}"
        targets["cnr-oci E13"] = (cnr_url, cnr_pid, e13)
        for checkout in args.baseline:
            url, pid = spawn(serve, "/healthz", {"PYTHONPATH": checkout}, cwd=Path(checkout))
            targets[f"cnr-oci E13 ({checkout})"] = (url, pid, e13)
            only.add(f"cnr-oci E13 ({checkout})")
        for variant in args.variant:
            env = dict(kv.partition("=")[::2] for kv in variant.split())
            url, pid = spawn(serve, "/healthz", env)
            targets[f"cnr-oci E13 [{variant}]"] = (url, pid, e13)
            only.add(f"cnr-oci E13 [{variant}]")
        if args.only:
            targets = {k: v for k, v in targets.items() if k in only}

        clients: dict[str, Callable[[str], Any]] = {"aiohttp": AioGetter, "light": Getter}
        counters: dict[str, tuple[subprocess.Popen[bytes], Path]] = {}
        if args.perf_stat:  # instructions and page faults per byte, which a loaded machine does not skew
            for name, (_, pid, _) in targets.items():
                if pid and name.startswith("cnr-oci"):
                    out = Path(tmp) / f"perf-{pid}.txt"
                    counters[name] = (subprocess.Popen(
                        ["perf", "stat", "-x", ",", "-e", "instructions,page-faults,context-switches", "-p", str(pid),
                         "-o", str(out)]), out)
            time.sleep(0.5)
        getters = {(c, name): make(url) for c, make in clients.items() for name, (url, _, _) in targets.items()}
        for (_, name), g in getters.items():  # warm up, and check the bytes once
            g.get(targets[name][2], check=digest)
        speeds: dict[tuple[str, str], list[float]] = {key: [] for key in getters}
        cpu: dict[tuple[str, str], float] = dict.fromkeys(getters, 0.0)
        loop_cpu: dict[tuple[str, str], float] = dict.fromkeys(getters, 0.0)
        moved: dict[tuple[str, str], int] = dict.fromkeys(getters, 0)
        keys = list(getters)
        for rnd in range(args.rounds):
            for key in keys[rnd % len(keys):] + keys[:rnd % len(keys)]:
                _, pid, path = targets[key[1]]
                c0 = cpu_seconds(pid) if pid else 0.0
                m0 = main_thread_cpu(pid) if pid else 0.0
                t = time.perf_counter()
                n = sum(getters[key].get(path) for _ in range(args.gets))
                wall = time.perf_counter() - t
                cpu[key] += (cpu_seconds(pid) if pid else 0.0) - c0
                loop_cpu[key] += (main_thread_cpu(pid) if pid else 0.0) - m0
                moved[key] += n
                speeds[key].append(n / wall / 1e6)

        stats: dict[str, dict[str, float]] = {}
        for name, (proc, out) in counters.items():
            proc.send_signal(2)
            proc.wait(10)
            served = sum(moved[(c, name)] for c in clients) + len(clients) * args.size * MiB  # + the warm-up
            stats[name] = {line.split(",")[2]: float(line.split(",")[0]) / served
                           for line in out.read_text().splitlines() if line and line[0].isdigit()}

        # Small GETs on the same loop while two large streams run: what a download costs its neighbours.
        beside: dict[str, list[float]] = {}
        rss_after: dict[str, int] = {}
        for name, (url, pid, path) in targets.items():
            if name.startswith("cnr-oci") and pid:
                beside[name] = latencies_beside(url, path, path.replace(digest.removeprefix("sha256:"),
                                                                        small_digest.removeprefix("sha256:")))
                rss_after[name] = psutil.Process(pid).memory_info().rss

        # RSS of cnr-oci while it streams 200 MiB.
        rss = RssSampler(cnr_pid)
        light = getters[("light", "cnr-oci E13")]
        light.get(e13)  # the 50 MiB once more, so the first-use allocations are done
        before = rss.window()
        light.get(f"/cnr/api/v1/packages/{REPO}/blobs/sha256/{big_digest.removeprefix('sha256:')}", check=big_digest)
        peak, after = rss.peak, psutil.Process(cnr_pid).memory_info().rss
        rss.close()
        for g in getters.values():
            g.close()

    results: dict[str, Any] = {}
    rows = [["", "MB/s, aiohttp client", "x tuned nginx", "MB/s, light client", "x tuned nginx", "CPU-s/GB",
             "main thread CPU-s/GB"]]
    ref = {c: statistics.median(speeds[(c, "nginx, tuned")]) for c in clients}
    for name in targets:
        row: list[Any] = [name]
        results[name] = {}
        for c in clients:
            med = statistics.median(speeds[(c, name)])
            results[name][c] = {"MB_per_s": round(med), "rounds": [round(x) for x in speeds[(c, name)]],
                                "ratio": round(med / ref[c], 2)}
            row += [f"{med:,.0f}", f"{med / ref[c]:.2f}"]
        gb = sum(moved[(c, name)] for c in clients) / 1e9
        cpu_gb = sum(cpu[(c, name)] for c in clients) / gb
        main_gb = sum(loop_cpu[(c, name)] for c in clients) / gb
        results[name]["cpu_s_per_GB"] = round(cpu_gb, 2) if targets[name][1] else None
        results[name]["main_thread_cpu_s_per_GB"] = round(main_gb, 2) if targets[name][1] else None
        rows.append([*row, *([f"{cpu_gb:.2f}", f"{main_gb:.2f}"] if targets[name][1] else ["", ""])])
    mib: Callable[[int], float] = lambda b: round(b / MiB, 1)  # noqa: E731
    results["cnr-oci RSS streaming 200 MiB"] = {"before_MiB": mib(before), "peak_MiB": mib(peak),
                                                "after_MiB": mib(after), "growth_MiB": mib(peak - before)}
    print(f"# Large blobs: GET of a {args.size} MiB blob, {args.rounds} rounds x {args.gets} GETs\n")
    print(f"command: {command}\nmachine: {machine()}, load {load[0]:.1f} {load[1]:.1f} {load[2]:.1f} at start\n")
    print(table(rows) + "\n")
    if stats:
        print(table([["perf stat, per byte served", *next(iter(stats.values()))],
                     *[[name, *(f"{v:.4g}" for v in st.values())] for name, st in stats.items()]]) + "\n")
        results["perf_stat_per_byte"] = stats
    rows = [["1 KiB E13 GETs while 2 clients stream the large blob", "n", "p50 ms", "p99 ms",
             "server RSS MiB after all"]]
    for name, lat in beside.items():
        results[name]["small_beside_large"] = {"n": len(lat), "p50_ms": round(pct(lat, 50), 2),
                                               "p99_ms": round(pct(lat, 99), 2)}
        results[name]["rss_after_MiB"] = mib(rss_after[name])
        rows.append([name, len(lat), f"{pct(lat, 50):.2f}", f"{pct(lat, 99):.2f}", mib(rss_after[name])])
    if beside:
        print(table(rows) + "\n")
    r = results["cnr-oci RSS streaming 200 MiB"]
    print(f"cnr-oci RSS streaming 200 MiB: {r['before_MiB']} MiB before, peak {r['peak_MiB']} MiB "
          f"(+{r['growth_MiB']} MiB), {r['after_MiB']} MiB after\n")
    checks = []
    if "cnr-oci E13" in results:
        for c in clients:
            ratio = results["cnr-oci E13"][c]["ratio"]
            checks.append((f"E13 {args.size} MiB blob vs tuned nginx, {c} client", ">= 0.65x", f"{ratio}x",
                           ratio >= 0.65))
    checks.append(("RSS growth streaming 200 MiB", "< 30 MiB", f"{r['growth_MiB']} MiB", r["growth_MiB"] < 30))
    rows = [["target", "wanted", "measured", "met"], *[[a, b, c, "yes" if ok else "NO"] for a, b, c, ok in checks]]
    print(table(rows))
    doc = {"command": command, "machine": machine(), "results": results}
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(doc, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
