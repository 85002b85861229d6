"""What the benchmarks share: the machine line, markdown tables, waiting for a server to answer."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import io
import json
import os
import platform
import pwd
import shutil
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import psutil

from cnr_oci.embedded import free_port, stop_process
from tests.helpers import tarball


def machine(load: bool = False) -> str:
    """Cores, CPU model, memory, OS and Python; with ``load``, the load average at start."""
    cpu = "unknown cpu"
    with contextlib.suppress(OSError, StopIteration), open("/proc/cpuinfo") as info:
        cpu = next(line.split(":", 1)[1].strip() for line in info if line.startswith("model name"))
    mem = psutil.virtual_memory().total / 2**30
    at_start = ", load {:.1f} {:.1f} {:.1f} at start".format(*os.getloadavg()) if load else ""
    return (f"{os.cpu_count()} cores, {cpu}, {mem:.0f} GiB, {platform.system()} {platform.release()}, "
            f"Python {platform.python_version()}{at_start}")


def table(rows: list[list[Any]]) -> str:
    """A markdown table; the first row is the header."""
    widths = [max(len(str(row[i])) for row in rows) for i in range(len(rows[0]))]
    lines = ["| " + " | ".join(str(c).ljust(w) for c, w in zip(row, widths, strict=True)) + " |" for row in rows]
    lines.insert(1, "|" + "|".join("-" * (w + 2) for w in widths) + "|")
    return "\n".join(lines)


def wait_http(url: str, timeout: float = 20) -> None:
    """Until ``url`` answers (any status); raises the last error after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            urllib.request.urlopen(url, timeout=1).close()
            return
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


# -- load, content and clients shared by run.py and perf.py -----------------------------------

MiB = 1024 * 1024
MANIFEST = "application/vnd.oci.image.manifest.v1+json"
ACCEPT = MANIFEST + ", application/vnd.oci.image.index.v1+json"
ROOT = Path(__file__).resolve().parent.parent


def start_cnr_oci(upstream: str, extra: list[str] | None = None) -> tuple[subprocess.Popen[bytes], str]:
    """A `cnr-oci serve` process in front of ``upstream`` on a free port, answering; and its URL."""
    port = free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "cnr_oci", "serve", "--port", str(port), "--upstream", upstream,
         "--log-level", "warning", "--token-secret", "bench-secret-not-for-production", "--max-body-size", "16MiB",
         *(extra or [])],
        cwd=str(ROOT))
    url = f"http://127.0.0.1:{port}"
    try:
        wait_http(url + "/healthz")
    except OSError:
        server.terminate()
        raise
    return server, url


def cpu_seconds(pid: int) -> float:
    """User + system CPU time a process has used so far."""
    t = psutil.Process(pid).cpu_times()
    return float(t.user + t.system)


class RssSampler:
    """Samples a process's RSS every 5 ms in a thread; reports the peak of a window."""

    def __init__(self, pid: int) -> None:
        self.proc = psutil.Process(pid)
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self.proc.memory_info().rss)
            time.sleep(0.005)

    def window(self) -> int:
        """Start a window: returns the RSS now and resets the peak."""
        now = self.proc.memory_info().rss
        self.peak = now
        return now

    def close(self) -> None:
        self._stop.set()
        self._thread.join()


def pct(values: list[float], p: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, round(p / 100 * (len(s) - 1)))] if s else float("nan")


async def run_load(n: int, concurrency: int, op: Callable[[int], Awaitable[int]]) -> dict[str, Any]:
    """n calls of op with `concurrency` workers; op returns bytes moved."""
    latencies: list[float] = []
    errors = 0
    moved = 0
    counter = iter(range(n))

    async def worker() -> None:
        nonlocal errors, moved
        for i in counter:
            t = time.perf_counter()
            try:
                moved += await op(i)
            except Exception:  # counted, and reported
                errors += 1
                continue
            latencies.append(time.perf_counter() - t)

    start = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    wall = time.perf_counter() - start
    return {
        "n": n, "concurrency": concurrency, "errors": errors, "seconds": round(wall, 3),
        "ops_per_s": round(len(latencies) / wall, 1),
        "p50_ms": round(pct(latencies, 50) * 1000, 2), "p99_ms": round(pct(latencies, 99) * 1000, 2),
        "MB_per_s": round(moved / wall / 1e6, 1),
    }


# -- content ---------------------------------------------------------------------------


def chart(name: str, payload: int = 0) -> bytes:
    files = {f"{name}/Chart.yaml": f"apiVersion: v2\nname: {name}\nversion: 0.1.0\n".encode(),
             f"{name}/values.yaml": b"replicas: 1\n"}
    if payload:
        files[f"{name}/files/data.bin"] = os.urandom(payload)  # incompressible: the .tgz is ~payload
    return tarball(files)


def sha(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


class Direct:
    """The registry itself, through the same kind of client."""

    def __init__(self, session: aiohttp.ClientSession, url: str) -> None:
        self.s = session
        self.url = url

    async def put_blob(self, repo: str, data: bytes) -> str:
        digest = sha(data)
        async with self.s.head(f"{self.url}/v2/{repo}/blobs/{digest}") as r:
            if r.status == 200:
                return digest
        async with self.s.post(f"{self.url}/v2/{repo}/blobs/uploads/") as r:
            loc = r.headers["Location"]
        sep = "&" if "?" in loc else "?"
        async with self.s.put(f"{loc}{sep}digest={digest}", data=io.BytesIO(data),
                              headers={"Content-Type": "application/octet-stream"}) as r:
            assert r.status == 201, r.status
        return digest

    async def push(self, repo: str, tag: str, blob: bytes, config: bytes) -> int:
        layer = await self.put_blob(repo, blob)
        cfg = await self.put_blob(repo, config)
        doc = {"schemaVersion": 2, "mediaType": MANIFEST,
               "config": {"mediaType": "application/vnd.cncf.helm.config.v1+json", "digest": cfg, "size": len(config)},
               "layers": [{"mediaType": "application/vnd.cncf.helm.chart.content.v1.tar+gzip", "digest": layer,
                           "size": len(blob)}]}
        async with self.s.put(f"{self.url}/v2/{repo}/manifests/{tag}", data=json.dumps(doc).encode(),
                              headers={"Content-Type": MANIFEST}) as r:
            assert r.status == 201, r.status
        return len(blob)

    async def pull(self, repo: str, tag: str) -> int:
        async with self.s.get(f"{self.url}/v2/{repo}/tags/list") as r:
            assert tag in (await r.json())["tags"]
        async with self.s.get(f"{self.url}/v2/{repo}/manifests/{tag}", headers={"Accept": ACCEPT}) as r:
            doc = await r.json(content_type=None)
        return await self.blob(repo, doc["layers"][0]["digest"])

    async def blob(self, repo: str, digest: str) -> int:
        n = 0
        async with self.s.get(f"{self.url}/v2/{repo}/blobs/{digest}") as r:
            assert r.status == 200, r.status
            async for chunk in r.content.iter_chunked(MiB):
                n += len(chunk)
        return n


class Cnr:
    def __init__(self, session: aiohttp.ClientSession, url: str) -> None:
        self.s = session
        self.api = url + "/cnr/api/v1/packages"

    async def push(self, repo: str, release: str, blob: bytes, media_type: str = "helm") -> int:
        body = json.dumps({"release": release, "media_type": media_type, "blob": base64.b64encode(blob).decode()})
        async with self.s.post(f"{self.api}/{repo}", data=io.BytesIO(body.encode()),
                               headers={"Content-Type": "application/json"}) as r:
            assert r.status == 200, (r.status, await r.text())
        return len(blob)

    async def get(self, path: str) -> int:
        n = 0
        async with self.s.get(self.api + path) as r:
            assert r.status == 200, r.status
            async for chunk in r.content.iter_chunked(MiB):
                n += len(chunk)
        return n

    async def upstream_requests(self, base: str) -> float:
        async with self.s.get(base + "/metrics") as r:
            text = await r.text()
        return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
                   if line.startswith("cnr_oci_upstream_requests_total{"))


NGINX_HINT = "nginx is not installed: apt-get install -y nginx-light (Debian)"

# What "tuned" adds to a default unbuffered proxy (`proxy_buffering off` alone): big buffers,
# HTTP/1.1 and kept-alive upstream connections, no Nagle delay.
NGINX_TUNED = """
    proxy_http_version 1.1;
    proxy_set_header Connection "";
    proxy_buffer_size 1m;
    proxy_buffers 8 1m;
    proxy_busy_buffers_size 2m;
    tcp_nodelay on;
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def nginx_proxy(upstream: str, workdir: str | os.PathLike[str], *, tuned: bool = True,
                binary: str = "nginx") -> Iterator[tuple[str, int]]:
    """An nginx reverse proxy to ``upstream`` (``http://host:port``) on 127.0.0.1, with its own
    config, logs and temp files under ``workdir``; one worker, unbuffered (``proxy_buffering off``).
    With ``tuned``, ``proxy_buffer_size 1m`` and friends (NGINX_TUNED). Yields (url, master pid).

    Raises FileNotFoundError with NGINX_HINT when nginx is not installed.
    """
    exe = shutil.which(binary) or shutil.which(binary, path="/usr/sbin:/sbin")
    if exe is None:
        raise FileNotFoundError(NGINX_HINT)
    root = Path(workdir) / ("nginx-tuned" if tuned else "nginx-default")
    root.mkdir(parents=True, exist_ok=True)
    port = _free_port()
    user = f"user {pwd.getpwuid(os.getuid()).pw_name};" if os.getuid() == 0 else ""
    temps = "\n".join(f"    {k}_temp_path {root / k};" for k in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"))
    conf = root / "nginx.conf"
    conf.write_text(f"""{user}
daemon off;
worker_processes 1;
pid {root / "nginx.pid"};
error_log {root / "error.log"} warn;
events {{ worker_connections 1024; }}
http {{
    access_log off;
{temps}
    upstream backend {{ server {upstream.removeprefix("http://").rstrip("/")}; {"keepalive 16;" if tuned else ""} }}
    server {{
        listen 127.0.0.1:{port};
        proxy_buffering off;
        {NGINX_TUNED if tuned else ""}
        location / {{ proxy_pass http://backend; }}
    }}
}}
""")
    proc = subprocess.Popen([exe, "-p", str(root), "-c", str(conf)], stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_http(url + "/")
        yield url, proc.pid
    finally:
        stop_process(proc)
