"""`serve --workers N`: N server processes on one port (SO_REUSEPORT) under one parent.

The parent starts the embedded registry once (when there is no --upstream) and creates the token
secret once, then spawns the workers, each a whole server (its own event loop, caches and metrics)
bound with SO_REUSEPORT: the kernel spreads new connections over them. Workers share package locks
and cache invalidation only through Redis, so more than one worker needs --redis-url (cli checks it).
SIGTERM or SIGINT to the parent stops every worker gracefully (in-flight requests finish), then the
registry; a worker that dies stops the others too, and the parent exits non-zero (let the
supervisor restart the whole). Workers are in their own process group (a terminal's Ctrl-C reaches
the parent only, which stops each worker once) and stop by themselves if the parent disappears.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import multiprocessing
import os
import signal
import socket
import sys
import threading
import time
from collections.abc import Callable, Sequence
from multiprocessing.process import BaseProcess

from cnr_oci import accesslog, server
from cnr_oci.app import create_app, upstream_of
from cnr_oci.auth import load_secret
from cnr_oci.settings import Settings

log = logging.getLogger(__name__)
STOP_WAIT = 75.0  # aiohttp's graceful shutdown is 60 s


def run(settings: Settings, limits: server.Limits) -> int:
    """Serve with ``settings.workers`` processes until SIGTERM/SIGINT; the exit code."""
    _check_port(settings.host, settings.port)
    load_secret(settings.token_secret, settings.data_dir)  # created once, not raced by the workers
    return asyncio.run(_supervise(settings, limits))


def _check_port(host: str, port: int) -> None:
    """OSError when another process listens on the port. The workers bind with SO_REUSEPORT, which
    would let them join another server's listening sockets (another --workers deployment of the same
    user, on another upstream, say) and split its connections with it; a bind without it fails there."""
    for family, kind, proto, _, addr in socket.getaddrinfo(host or None, port, type=socket.SOCK_STREAM,
                                                           flags=socket.AI_PASSIVE):
        with socket.socket(family, kind, proto) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as asyncio does: TIME_WAIT is no owner
            if family == socket.AF_INET6:
                probe.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            probe.bind(addr)


async def _supervise(settings: Settings, limits: server.Limits) -> int:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    async with upstream_of(settings) as url:
        each = dataclasses.replace(settings, upstream=url)
        spawn = multiprocessing.get_context("spawn")
        procs = [spawn.Process(target=_worker, args=(each, limits, os.getpid()), name=f"cnr-oci worker {i}")
                 for i in range(settings.workers)]
        for proc in procs:
            proc.start()
        log.info("%d workers on %s:%d: pids %s", len(procs), settings.host, settings.port,
                 ", ".join(str(p.pid) for p in procs))
        stopping = asyncio.create_task(stop.wait())
        died = asyncio.create_task(_first_exit(procs))
        await asyncio.wait([stopping, died], return_when=asyncio.FIRST_COMPLETED)
        stopping.cancel()
        died.cancel()
        if not stop.is_set():
            dead = next(p for p in procs if p.exitcode is not None)
            log.error("%s (pid %s) exited with code %s: stopping the others", dead.name, dead.pid, dead.exitcode)
        for proc in procs:
            if proc.is_alive() and proc.pid is not None:
                os.kill(proc.pid, signal.SIGTERM)
        await asyncio.to_thread(_join, procs)
    if stop.is_set() and all(p.exitcode == 0 for p in procs):
        return 0
    return 1


async def _first_exit(procs: Sequence[BaseProcess]) -> None:
    while all(p.exitcode is None for p in procs):
        await asyncio.sleep(0.2)


def _join(procs: Sequence[BaseProcess]) -> None:
    deadline = time.monotonic() + STOP_WAIT
    for proc in procs:
        proc.join(max(deadline - time.monotonic(), 0.1))
        if proc.is_alive():
            log.error("%s (pid %s) did not stop in %.0f s: killed", proc.name, proc.pid, STOP_WAIT)
            proc.kill()
            proc.join()


def _worker(settings: Settings, limits: server.Limits, parent: int) -> None:
    """One worker: a whole server on the shared port."""
    os.setpgrp()
    accesslog.configure(settings.log_level, settings.log_format, tag=f" [{os.getpid()}]")
    threading.Thread(target=_orphan_watch, args=(parent, lambda: os.kill(os.getpid(), signal.SIGTERM)),
                     daemon=True).start()
    try:
        server.run(create_app(settings), host=settings.host, port=settings.port, limits=limits, reuse_port=True,
                   ssl_context=server.tls_listener(settings.tls_cert, settings.tls_key),
                   announce=lambda msg: log.info("%s", msg.strip()))
    except OSError as exc:
        print(f"cnr-oci worker: cannot serve on {settings.host}:{settings.port}: {exc}", file=sys.stderr)
        sys.exit(2)


def _orphan_watch(parent: int, stop: Callable[[], None], interval: float = 1.0) -> None:
    """Stop the worker when its parent is gone (killed with SIGKILL, say)."""
    while os.getppid() == parent:
        time.sleep(interval)
    stop()
