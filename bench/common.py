"""What the benchmarks share: the machine line, markdown tables, waiting for a server to answer."""

from __future__ import annotations

import contextlib
import os
import platform
import pwd
import shutil
import socket
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil


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
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
