"""What the benchmarks share: the machine line, markdown tables, waiting for a server to answer."""

from __future__ import annotations

import contextlib
import os
import platform
import time
import urllib.request
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
