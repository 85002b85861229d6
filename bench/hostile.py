#!/usr/bin/env python3
"""cnr-oci hostile-input benchmark: every bomb of issue 8, sent to a real cnr-oci process.

Starts a docker-registry with an htpasswd file (so anonymous callers are refused) and, for each
(bomb, identity) row, a fresh `cnr-oci serve` subprocess. Each bomb is sent anonymously and with
`Authorization: Basic` for a user that may push (the second exercises the limits themselves, not
just the 401). For each row it prints the answer's status, the time to the answer, the server's
RSS growth (peak sampled every 20 ms, minus the RSS before the bomb) and the max `/healthz`
latency (polled every 20 ms) during the attack, against the targets of the issue:
every bomb answered within 1 s, RSS growth under 50 MiB, /healthz under 100 ms throughout.

Loopback only; bounded: a per-row time limit, an RSS cap that kills a runaway server, and a
fresh server per row, so one bomb cannot spoil the next. Bodies are built incrementally (the
expanded bytes of a bomb are never held in memory here).

    python bench/hostile.py            # or: make bench-hostile
    python bench/hostile.py --quick    # smaller bombs, for a smoke run
    python bench/hostile.py --only yaml --server-arg=--max-body-size=16MiB
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import http.client
import json
import os
import secrets
import shlex
import subprocess
import sys
import tarfile
import tempfile
import threading
import time
import zlib
from collections import Counter
from collections.abc import Awaitable, Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import bcrypt
import psutil

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from run import machine, table  # noqa: E402  (bench/ is put on sys.path just above)

from cnr_oci.embedded import EmbeddedRegistry, free_port, stop_process  # noqa: E402  (the checkout is put on sys.path above)

MiB = 1024 * 1024
GiB = 1024 * MiB
API = "/cnr/api/v1/packages"
LOGIN = "/cnr/api/v1/users/login"
USER, PASSWORD = "bench", "bench-hostile-pw"
TOKEN_SECRET = "hostile-bench-secret-not-for-production"
TIME_TARGET_S = 1.0
RSS_TARGET_MIB = 50.0
HEALTHZ_TARGET_MS = 100.0
SAMPLE_S = 0.020


# -- building bodies (incrementally) ----------------------------------------------------------


def gzip_stream(chunks: Iterable[bytes], level: int = 9) -> bytes:
    """Gzip an iterable of chunks; only the compressed output is kept."""
    z = zlib.compressobj(level, zlib.DEFLATED, 31)
    out = bytearray()
    for chunk in chunks:
        out += z.compress(chunk)
    out += z.flush()
    return bytes(out)


def zeros(n: int, block: int = 4 * MiB) -> Iterator[bytes]:
    """n zero bytes, block by block."""
    buf = bytes(block)
    while n > 0:
        yield buf[: min(n, block)]
        n -= block


def header(name: str, size: int, kind: bytes = tarfile.REGTYPE) -> bytes:
    """One 512-byte ustar header (the size may be anything: the data is streamed after it)."""
    info = tarfile.TarInfo(name)
    info.size = size
    info.type = kind
    info.mtime = 0
    return info.tobuf(format=tarfile.USTAR_FORMAT)


def member(name: str, data: bytes, kind: bytes = tarfile.REGTYPE) -> bytes:
    """Header plus data padded to a block."""
    return header(name, len(data), kind) + data + bytes(-len(data) % 512)


def pax(records: dict[str, str]) -> bytes:
    """A pax extended header member ('x') carrying these records."""
    body = b""
    for key, value in records.items():
        rec = f" {key}={value}\n".encode()
        n = len(rec) + 1
        while len(str(n)) + len(rec) != n:
            n = len(str(n)) + len(rec)
        body += str(n).encode() + rec
    return member("././@PaxHeader", body, tarfile.XHDTYPE)


END = bytes(1024)


def chart_yaml(name: str, extra: str = "", version: str = "1.0.0") -> bytes:
    return f"apiVersion: v2\nname: {name}\nversion: {version}\ndescription: hostile bench\n{extra}".encode()


def tgz(name: str, yaml_text: bytes, payload: bytes = b"") -> bytes:
    """A small valid chart; with payload, an extra file of those bytes (stored, not compressed)."""
    parts = [member(f"{name}/Chart.yaml", yaml_text)]
    if payload:
        parts.append(member(f"{name}/files/data.bin", payload))
    return gzip_stream([*parts, END], level=0 if payload else 9)


def push_body(blob: bytes, media_type: str = "helm") -> bytes:
    return json.dumps({"release": "1.0.0", "media_type": media_type,
                       "blob": base64.b64encode(blob).decode()}).encode()


def pax_bomb(size: int) -> bytes:
    """A pax header member that declares `size` bytes (tarfile reads them all into memory)."""
    first = f"{size} comment=".encode()
    chunks = [header("././@PaxHeader", size, tarfile.XHDTYPE), first]
    chunks += zeros(size - len(first))
    chunks += [member("paxbomb/Chart.yaml", chart_yaml("paxbomb")), END]
    return gzip_stream(chunks)


def longname_bomb(size: int) -> bytes:
    """A GNU long-name member ('L') of `size` bytes (read whole as the next member's name)."""
    chunks: list[bytes] = [header("././@LongLink", size, tarfile.GNUTYPE_LONGNAME)]
    return gzip_stream(chunks + list(zeros(size)) + [member("longname/Chart.yaml", chart_yaml("longname")), END])


def many_members(count: int) -> bytes:
    """`count` empty regular files with distinct names; headers are built from one template."""
    template = bytearray(header("m/0000000", 0))
    width = 7
    template[0:100] = bytes(100)
    template[148:156] = b" " * 8
    base = sum(template)

    def blocks() -> Iterator[bytes]:
        batch = bytearray()
        for i in range(count):
            name = b"m/%07d" % i if i < 10**width else b"m/%d" % i
            h = bytearray(template)
            h[0 : len(name)] = name
            h[148:155] = b"%06o\0" % (base + sum(name))
            batch += h
            if len(batch) >= 4 * MiB:
                yield bytes(batch)
                batch.clear()
        yield bytes(batch) + END

    return gzip_stream(blocks(), level=6)


def gzip_bomb(size: int) -> bytes:
    """A chart whose first member is `size` zero bytes (inflated to reach Chart.yaml)."""
    chunks = [header("gzbomb/files/zeros", size)]
    return gzip_stream(chunks + list(zeros(size)) + [member("gzbomb/Chart.yaml", chart_yaml("gzbomb")), END])


def yaml_alias_bomb() -> bytes:
    """Chart.yaml whose `keywords` nest 9 levels through aliases: 9**9 strings once expanded."""
    lines = ['a0: &a0 ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    for i in range(1, 8):
        lines.append(f"a{i}: &a{i} [" + ",".join([f"*a{i - 1}"] * 9) + "]")
    lines.append("keywords: [" + ",".join(["*a7"] * 9) + "]")
    text = chart_yaml("yamlbomb", "\n".join(lines) + "\n")
    return tgz("yamlbomb", text)


def sparse01() -> bytes:
    """A pax GNU sparse 0.1 header whose map is not integers."""
    recs = {"GNU.sparse.major": "0", "GNU.sparse.minor": "1", "GNU.sparse.name": "sparse/Chart.yaml",
            "GNU.sparse.realsize": "10", "GNU.sparse.map": "0,x"}
    return gzip_stream([pax(recs), member("sparse/GNUSparseFile.0/Chart.yaml", b"name: sparse\n"), END])


def sparse10() -> bytes:
    """A pax GNU sparse 1.0 member whose in-data map starts with a non-integer field count."""
    recs = {"GNU.sparse.major": "1", "GNU.sparse.minor": "0", "GNU.sparse.name": "sparse/Chart.yaml",
            "GNU.sparse.realsize": "10"}
    return gzip_stream([pax(recs), member("sparse/GNUSparseFile.0/Chart.yaml", b"x\nnot-a-number\n" + bytes(500)),
                        END])


# -- raw HTTP -----------------------------------------------------------------------------------


@dataclass
class Answer:
    status: int | None  # None: no status line (see outcome)
    seconds: float
    outcome: str = "answered"  # answered | closed | reset | no answer | still open
    excerpt: str = ""

    @property
    def cnr_shaped(self) -> bool:
        """An error answer in the CNR shape: a JSON object with a code."""
        try:
            doc = json.loads(self.excerpt)
        except ValueError:
            return self.excerpt.lstrip().startswith('{"code"')  # cut at 4 KiB
        return isinstance(doc, dict) and "code" in doc


def request_head(method: str, path: str, port: int, headers: dict[str, str], length: int | None) -> bytes:
    lines = [f"{method} {path} HTTP/1.1", f"Host: 127.0.0.1:{port}", "Connection: close"]
    lines += [f"{k}: {v}" for k, v in headers.items()]
    if length is not None:
        lines.append(f"Content-Length: {length}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


async def exchange(port: int, head: bytes, body: bytes = b"", *, timeout: float,
                   drip: float | None = None, chunk: int = 256 * 1024) -> Answer:
    """Send head and body while reading the answer; the time is to the status line.

    With drip, the body goes one byte every `drip` seconds. The answer may come before
    the body is sent (a 401 or 413 must), so sending and reading run side by side.
    """
    t0 = time.perf_counter()
    deadline = t0 + timeout
    try:
        reader, writer = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), timeout)
    except (TimeoutError, OSError) as exc:
        return Answer(None, time.perf_counter() - t0, "reset", f"connect: {exc!r}"[:120])

    async def send() -> None:
        writer.write(head)
        await writer.drain()
        view = memoryview(body)
        if drip is not None:
            for i in range(len(view)):
                writer.write(view[i : i + 1])
                await writer.drain()
                await asyncio.sleep(drip)
        else:
            for off in range(0, len(view), chunk):
                writer.write(view[off : off + chunk])
                await writer.drain()

    sender = asyncio.create_task(send())
    try:
        line = await asyncio.wait_for(reader.readline(), max(0.0, deadline - time.perf_counter()))
        seconds = time.perf_counter() - t0
        if not line:
            return Answer(None, seconds, "closed")
        try:
            status = int(line.split()[1])
        except (IndexError, ValueError):
            return Answer(None, seconds, "closed", repr(line[:80]))
        excerpt = b""
        try:  # a little of the answer, for the JSON report; bounded in time and size
            rest = await asyncio.wait_for(reader.read(4096), min(2.0, max(0.1, deadline - time.perf_counter())))
            excerpt = rest.split(b"\r\n\r\n", 1)[-1]
        except (TimeoutError, OSError):
            pass
        return Answer(status, seconds, "answered", excerpt.decode("utf-8", "replace"))
    except TimeoutError:
        return Answer(None, time.perf_counter() - t0, "still open" if drip is not None else "no answer")
    except OSError as exc:
        return Answer(None, time.perf_counter() - t0, "reset", repr(exc)[:120])
    finally:
        sender.cancel()  # its fate (sent, cancelled, reset) is irrelevant once the answer is in
        await asyncio.wait([sender])
        if not sender.cancelled():
            sender.exception()  # retrieved, so asyncio does not log it
        writer.transport.abort()


# -- measuring ----------------------------------------------------------------------------------


class Watch:
    """During one bomb: the server's peak RSS and the max /healthz latency, each in a thread.

    The RSS thread kills the server when its growth passes `cap` bytes (a runaway bomb must not
    take the machine down); a /healthz request still pending when the window ends counts with
    the time it has waited so far.
    """

    def __init__(self, proc: subprocess.Popen[bytes], port: int, cap: int) -> None:
        self.proc = proc
        self.ps = psutil.Process(proc.pid)
        self.port = port
        self.cap = cap
        self.base = self.ps.memory_info().rss
        self.peak = self.base
        self.killed = False
        self.latencies: list[float] = []
        self.health_errors = 0
        self.pending_since: float | None = None
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._rss, daemon=True),
                         threading.Thread(target=self._health, daemon=True)]
        for t in self._threads:
            t.start()

    def _rss(self) -> None:
        while not self._stop.is_set():
            try:
                rss = self.ps.memory_info().rss
            except psutil.Error:
                return
            self.peak = max(self.peak, rss)
            if rss - self.base > self.cap and not self.killed:
                self.killed = True
                self.proc.kill()
                return
            time.sleep(SAMPLE_S)

    def _health(self) -> None:
        conn: http.client.HTTPConnection | None = None
        while not self._stop.is_set():
            t = time.perf_counter()
            self.pending_since = t
            try:
                if conn is None:
                    conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
                conn.request("GET", "/healthz")
                resp = conn.getresponse()
                resp.read()
                if resp.status != 200:
                    self.health_errors += 1
                self.latencies.append(time.perf_counter() - t)
            except (OSError, http.client.HTTPException):
                self.health_errors += 1
                self.latencies.append(time.perf_counter() - t)
                if conn is not None:
                    conn.close()
                conn = None
                self._stop.wait(0.2)  # the server may be gone: do not spin
            self.pending_since = None
            self._stop.wait(SAMPLE_S)
        if conn is not None:
            conn.close()

    def close(self) -> dict[str, Any]:
        pending = self.pending_since
        waited = time.perf_counter() - pending if pending is not None else 0.0
        self._stop.set()
        healthz_max = max([*self.latencies, waited]) if self.latencies or pending else 0.0
        return {"rss_base_MiB": round(self.base / MiB, 1), "rss_growth_MiB": round((self.peak - self.base) / MiB, 1),
                "healthz_max_ms": round(healthz_max * 1000, 1), "healthz_polls": len(self.latencies),
                "healthz_errors": self.health_errors, "killed_for_rss": self.killed}


class Server:
    """One `python -m cnr_oci serve` process running this checkout's code."""

    def __init__(self, upstream: str, log: Path, extra: list[str]) -> None:
        self.port = free_port()
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))
        self.cmd = [sys.executable, "-m", "cnr_oci", "serve", "--port", str(self.port), "--upstream", upstream,
                    "--token-secret", TOKEN_SECRET, "--log-level", "warning", *extra]
        self.log = open(log, "ab")  # noqa: SIM115  closed in stop()
        self.proc = subprocess.Popen(self.cmd, env=env, cwd=str(ROOT), stdout=self.log, stderr=self.log)

    def wait_ready(self, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"cnr-oci exited with code {self.proc.returncode} (see {self.log.name})")
            try:
                conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=1)
                conn.request("GET", "/healthz")
                if conn.getresponse().status == 200:
                    conn.close()
                    return
            except (OSError, http.client.HTTPException):
                pass
            time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"cnr-oci did not answer /healthz in {timeout} s (see {self.log.name})")

    def stop(self) -> int | None:
        """Stop the process; its exit code if it had already died."""
        died = self.proc.poll()
        stop_process(self.proc)
        self.log.close()
        return died


# -- the bombs ----------------------------------------------------------------------------------


@dataclass
class Ctx:
    port: int
    identity: str  # anonymous | credentials | malformed
    ns: str
    timeout: float
    args: argparse.Namespace

    def auth(self) -> dict[str, str]:
        if self.identity != "credentials":
            return {}
        return {"Authorization": "Basic " + base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()}

    async def post(self, path: str, body: bytes, headers: dict[str, str] | None = None, **kw: Any) -> Answer:
        head = request_head("POST", path, self.port,
                            {"Content-Type": "application/json", **self.auth(), **(headers or {})}, len(body))
        return await exchange(self.port, head, body, timeout=self.timeout, **kw)


@dataclass
class Outcome:
    status: str
    seconds: float
    worst: Answer
    answers: list[Answer] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)


def summarize(answers: list[Answer]) -> Outcome:
    """Several answers as one row: statuses counted; the time is the slowest."""
    def label(a: Answer) -> str:
        if a.status is None:
            return a.outcome
        return f"{a.status}" + (" not CNR JSON" if a.status >= 400 and not a.cnr_shaped else "")
    counts = Counter(label(a) for a in answers)
    status = ", ".join(f"{k}x{n}" if len(answers) > 1 else k for k, n in sorted(counts.items()))
    worst = max(answers, key=lambda a: a.seconds)
    return Outcome(status, worst.seconds, worst, answers)


@dataclass
class Bomb:
    name: str
    what: str
    run: Callable[[Ctx], Awaitable[Outcome]]
    identities: tuple[str, ...] = ("anonymous", "credentials")
    busy_ok: bool = False  # a 503 (server busy) is a fair answer
    time_target: str = "1 s"  # or "cut" (slow bodies: closed by the server before the run gives up)
    status_only: bool = False
    size: int = 0  # bytes sent per request
    setup: Callable[[Ctx], Awaitable[None]] | None = None  # before the watch starts (not measured)


def build_bombs(args: argparse.Namespace) -> list[Bomb]:
    q = args.quick
    bombs: list[Bomb] = []

    def single(name: str, what: str, body: bytes, path: Callable[[Ctx], str], **kw: Any) -> None:
        async def run(ctx: Ctx) -> Outcome:
            return summarize([await ctx.post(path(ctx), body)])
        bombs.append(Bomb(name, what, run, size=len(body), **kw))

    def pkg(name: str) -> Callable[[Ctx], str]:
        return lambda ctx: f"{API}/{ctx.ns}/{name}"

    def log(msg: str) -> None:
        print(f"  building: {msg}", file=sys.stderr, flush=True)

    def want(name: str) -> bool:
        """Selected by --only (the large bodies are built only when selected)."""
        return not args.only or any(o.lower() in name.lower() for o in args.only)

    if want("concurrent pushes"):
        # 8 ordinary large pushes at once.
        n_push, push_mb = 8, (6 if q else 58)
        log(f"{n_push} pushes of {push_mb} MB")
        payload = os.urandom(int(push_mb * 1e6 * 3 / 4) - 1024)
        big = push_body(tgz("push", chart_yaml("push"), payload))
        del payload

        async def pushes(ctx: Ctx) -> Outcome:
            return summarize(await asyncio.gather(*(ctx.post(f"{API}/{ctx.ns}-p{i}/push", big) for i in range(n_push))))
        bombs.append(Bomb("concurrent pushes", f"{n_push} x {len(big) / 1e6:.1f} MB push bodies at once", pushes,
                          busy_ok=True, size=len(big)))

    if want("pax header bomb"):
        size = 128 * MiB if q else GiB
        log(f"pax header of {size // MiB} MiB")
        body = push_body(pax_bomb(size))
        single("pax header bomb", f"{len(body) / 1e6:.2f} MB body, {size // MiB} MiB pax header", body, pkg("paxbomb"))

    if want("GNU long-name bomb"):
        size = 64 * MiB if q else 512 * MiB
        log(f"GNU long name of {size // MiB} MiB")
        body = push_body(longname_bomb(size))
        single("GNU long-name bomb", f"{len(body) / 1e6:.2f} MB body, {size // MiB} MiB name", body, pkg("longname"))

    if want("many members"):
        count = 100_000 if q else 1_000_000
        log(f"{count} empty members")
        body = push_body(many_members(count))
        single("many members", f"{len(body) / 1e6:.2f} MB body, {count} empty members", body, pkg("members"))

    if want("gzip bomb"):
        size = 128 * MiB if q else GiB
        log(f"gzip bomb of {size // MiB} MiB")
        body = push_body(gzip_bomb(size))
        single("gzip bomb", f"{len(body) / 1e6:.2f} MB body, {size // MiB} MiB of zeros in a member", body,
               pkg("gzbomb"))

    body = push_body(yaml_alias_bomb())
    single("YAML alias bomb", f"Chart.yaml keywords: 9 levels of aliases ({len(yaml_alias_bomb())} B tgz)", body,
           pkg("yamlbomb"))

    depth = 100_000
    single("deep JSON push", f"{depth} x '[' as the push body", b"[" * depth, pkg("deepjson"))
    single("deep JSON login", f"{depth} x '[' as the login body", b"[" * depth, lambda ctx: LOGIN)

    # Readers of big metadata: releases whose config carries ~3.8 MiB of small keys each (under the
    # manifest cap, so accepted), listed (E8) by several callers at once.
    releases, readers = (3, 3) if q else (10, 6)
    metadata = json.dumps({"metadata": {f"k{i}": i for i in range(240_000)}})[len('{"metadata": '):-1]

    async def push_big(ctx: Ctx) -> None:
        pusher = Ctx(ctx.port, "credentials", ctx.ns, ctx.timeout, ctx.args)
        for i in range(releases):
            body = (b'{"release": "1.0.%d", "media_type": "kpm", "metadata": ' % i + metadata.encode()
                    + b', "blob": "' + base64.b64encode(tgz("big", b"x: 1\n")) + b'"}')
            answer = await pusher.post(f"{API}/{ctx.ns}/big", body)
            assert answer.status == 200, answer.excerpt

    async def read_big(ctx: Ctx) -> Outcome:
        head = request_head("GET", f"{API}/{ctx.ns}/big", ctx.port, ctx.auth(), None)
        return summarize(list(await asyncio.gather(*(exchange(ctx.port, head, timeout=ctx.timeout)
                                                      for _ in range(readers)))))
    bombs.append(Bomb("big metadata listing", f"{readers} concurrent E8 of {releases} releases with ~3.8 MiB "
                      "of metadata (240k keys) each", read_big, identities=("credentials",), setup=push_big,
                      time_target="none"))

    # A compressed request body: aiohttp would inflate it on the event loop before any handler.
    size = (64 if q else 1024) * MiB
    encoded = gzip_stream(zeros(size))

    async def gzip_bodies(ctx: Ctx) -> Outcome:
        return summarize(list(await asyncio.gather(*(
            ctx.post(p, encoded, headers={"Content-Encoding": "gzip"}) for p in (LOGIN, API) * 4))))
    bombs.append(Bomb("gzip-encoded bodies", f"8 x {len(encoded) / 1e6:.2f} MB bodies with Content-Encoding: gzip "
                      f"({size // MiB} MiB inflated), to login and the package list", gzip_bodies, size=len(encoded)))
    single("deep JSON in blob field", f"push body {{\"blob\": {depth} x '['}}",
           b'{"release": "1.0.0", "media_type": "helm", "blob": ' + b"[" * depth + b"]" * depth + b"}",
           pkg("deepblob"))

    single("huge version", "Chart.yaml version: a 5001-digit integer",
           push_body(tgz("hugever", chart_yaml("hugever", version="1" + "0" * 5000))), pkg("hugever"))
    single("sources: 5", "Chart.yaml sources: 5 (not a list)",
           push_body(tgz("sources", chart_yaml("sources", "sources: 5\n"))), pkg("sources"))
    single("sparse 0.1 map", "pax GNU.sparse.map=0,x", push_body(sparse01()), pkg("sparse"))
    single("sparse 1.0 map", "pax GNU sparse 1.0, map field count 'x'", push_body(sparse10()), pkg("sparse"))

    # Slow bodies: many connections that each send one byte every few seconds.
    # Given up after more than --max-concurrent-pushes' queue wait (10 s), so its 503 shows.
    conns, give_up, drip = (50, 15.0, 2.0) if q else (200, 30.0, 2.0)

    async def slow(ctx: Ctx) -> Outcome:
        head = request_head("POST", f"{API}/{ctx.ns}/slow", ctx.port,
                            {"Content-Type": "application/json", **ctx.auth()}, MiB)
        answers = await asyncio.gather(*(exchange(ctx.port, head, b"{" * MiB, timeout=give_up, drip=drip)
                                         for _ in range(conns)))
        out = summarize(list(answers))
        out.extra = {"connections": conns, "give_up_s": give_up, "byte_every_s": drip,
                     "still_open": sum(a.outcome == "still open" for a in answers)}
        return out
    bombs.append(Bomb("slow bodies", f"{conns} connections, 1 byte every {drip:.0f} s, given up after {give_up:.0f} s",
                      slow, busy_ok=True, time_target="cut"))

    # Malformed Authorization headers: raw bytes no HTTP library would send.
    creds = base64.b64encode(f"{USER}:{PASSWORD}".encode())
    for name, what, value in (
            ("auth: trailing CR", "Authorization: Basic <valid>\\r", b"Basic " + creds + b"\r"),
            ("auth: control char", "Authorization: Basic <valid with \\x01 inside>",
             b"Basic " + creds[:4] + b"\x01" + creds[4:]),
            ("auth: token with DEL", "Authorization: cnroci1.\\x7f...", b"cnroci1.\x7f" + creds)):
        async def bad(ctx: Ctx, value: bytes = value) -> Outcome:
            head = (f"GET {API} HTTP/1.1\r\nHost: 127.0.0.1:{ctx.port}\r\nConnection: close\r\n").encode() + \
                b"Authorization: " + value + b"\r\n\r\n"
            return summarize([await exchange(ctx.port, head, timeout=ctx.timeout)])
        bombs.append(Bomb(name, what + " on GET " + API, bad, identities=("malformed",), status_only=True))

    if args.only:
        bombs = [b for b in bombs if any(o.lower() in b.name.lower() for o in args.only)]
    return bombs


# -- the run ------------------------------------------------------------------------------------


def judge(bomb: Bomb, out: Outcome, m: dict[str, Any], give_up: float) -> list[str]:
    """Which targets a row misses (empty: all met)."""
    fails = []
    statuses = [a.status for a in out.answers]
    if m.get("server_died") is not None:
        fails.append("server died")
    if m["killed_for_rss"]:
        fails.append("killed (RSS cap)")
    if any(s is None for s in statuses) and bomb.time_target != "cut":
        fails.append("no status")
    if any(s is not None and s >= 500 and not (bomb.busy_ok and s == 503) for s in statuses):
        fails.append("5xx")
    if not bomb.status_only:
        if any(a.status is not None and a.status >= 400 and not a.cnr_shaped for a in out.answers):
            fails.append("not CNR JSON")
        if bomb.time_target == "cut":
            if out.extra.get("still_open"):
                fails.append("still open")
        elif bomb.time_target != "none" and out.seconds > TIME_TARGET_S:
            fails.append("time")
        if m["rss_growth_MiB"] >= RSS_TARGET_MIB:
            fails.append("rss")
        if m["healthz_max_ms"] >= HEALTHZ_TARGET_MS:
            fails.append("healthz")
    return fails


async def run_row(bomb: Bomb, identity: str, upstream: str, tmp: Path, args: argparse.Namespace,
                  run_id: str) -> dict[str, Any]:
    server = Server(upstream, tmp / "cnr-oci.log", args.server_arg)
    try:
        await asyncio.to_thread(server.wait_ready)
        warm = Ctx(server.port, "credentials", "", args.timeout, args).auth()
        for _ in range(3):  # warm-up, so first-request allocations are not counted
            conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=5)
            conn.request("GET", API, headers=warm)
            conn.getresponse().read()
            conn.close()
        await asyncio.sleep(0.3)
        ctx = Ctx(server.port, identity, f"h{run_id}-{identity[:4]}", args.timeout, args)
        if bomb.setup is not None:
            await bomb.setup(ctx)
            await asyncio.sleep(0.3)
        watch = Watch(server.proc, server.port, args.rss_cap * MiB)
        try:
            out = await asyncio.wait_for(bomb.run(ctx), args.timeout + 15)
        except TimeoutError:
            out = summarize([Answer(None, args.timeout + 15, "no answer")])
        finally:
            m = watch.close()
    finally:
        died = server.stop()  # synchronous: it must run even when the run is interrupted
    m["server_died"] = died if died is not None and not m["killed_for_rss"] else None
    fails = judge(bomb, out, m, args.timeout)
    return {"bomb": bomb.name, "identity": identity, "what": bomb.what, "status": out.status,
            "answer_s": round(out.seconds, 3), **m, "time_target": bomb.time_target, "status_only": bomb.status_only,
            "met": not fails, "failed": fails, "excerpt": out.worst.excerpt[:300], "outcome": out.worst.outcome,
            "body_bytes": bomb.size, **out.extra}


def print_report(doc: dict[str, Any]) -> None:
    print(f"# cnr-oci hostile-input benchmark\n\ncommand: {doc['command']}\nmachine: {doc['machine']}\n"
          f"targets: answered within {TIME_TARGET_S:g} s (slow bodies: cut by the server before the run gives up), "
          f"RSS growth < {RSS_TARGET_MIB:g} MiB, /healthz < {HEALTHZ_TARGET_MS:g} ms; "
          "no 5xx but 503 server-busy; malformed auth: status only\n")
    rows = [["bomb", "identity", "status", "answer s", "RSS growth MiB", "healthz max ms", "met", "missed"]]
    for r in doc["rows"]:
        rows.append([r["bomb"], r["identity"], r["status"], f"{r['answer_s']:.2f}", r["rss_growth_MiB"],
                     r["healthz_max_ms"], "yes" if r["met"] else "NO", ", ".join(r["failed"])])
    print(table(rows) + "\n")
    print("bombs:\n" + "\n".join(f"- {name}: {what}" for name, what in
                                 {r["bomb"]: r["what"] for r in doc["rows"]}.items()))
    met = sum(r["met"] for r in doc["rows"])
    print(f"\n{met} of {len(doc['rows'])} rows met every target; {doc['seconds']:.0f} s in all\n")


async def amain(args: argparse.Namespace, command: str) -> dict[str, Any]:
    started = time.perf_counter()
    bombs = build_bombs(args)
    run_id = secrets.token_hex(3)
    with tempfile.TemporaryDirectory(prefix="cnr-oci-hostile-") as tmpdir:
        tmp = Path(tmpdir)
        # Cost 4 (not distribution's usual 10): the registry's bcrypt is not what is measured.
        hashed = bcrypt.hashpw(PASSWORD.encode(), bcrypt.gensalt(rounds=4)).decode()
        (tmp / "htpasswd").write_text(f"{USER}:{hashed}\n")
        registry = EmbeddedRegistry(tmp / "registry", log_path=str(tmp / "registry.log"), htpasswd=tmp / "htpasswd")
        registry.start()
        rows = []
        try:
            for bomb in bombs:
                for identity in bomb.identities:
                    print(f"  {bomb.name} / {identity} ...", file=sys.stderr, flush=True)
                    row = await run_row(bomb, identity, registry.url, tmp, args, run_id)
                    verdict = "met" if row["met"] else "missed: " + ", ".join(row["failed"])
                    print(f"    {row['status']} in {row['answer_s']:.2f} s, RSS +{row['rss_growth_MiB']} MiB, "
                          f"healthz max {row['healthz_max_ms']} ms, {verdict}", file=sys.stderr, flush=True)
                    rows.append(row)
        finally:
            registry.stop()
            if args.keep_log:
                for name in ("cnr-oci.log", "registry.log"):
                    if (tmp / name).exists():
                        Path(args.keep_log).mkdir(parents=True, exist_ok=True)
                        (Path(args.keep_log) / name).write_bytes((tmp / name).read_bytes())
    return {"command": command, "machine": machine(),
            "targets": {"answer_s": TIME_TARGET_S, "rss_growth_MiB": RSS_TARGET_MIB, "healthz_ms": HEALTHZ_TARGET_MS},
            "quick": args.quick, "seconds": round(time.perf_counter() - started, 1), "rows": rows}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="smaller bombs, fewer slow connections")
    parser.add_argument("--only", action="append", default=[], help="run only bombs whose name contains this")
    parser.add_argument("--timeout", type=float, default=None, help="seconds per request before 'no answer'")
    parser.add_argument("--rss-cap", type=int, default=3072, help="MiB of RSS growth at which the server is killed")
    parser.add_argument("--server-arg", action="append", default=[], help="extra flag for cnr-oci serve (repeat)")
    parser.add_argument("--keep-log", help="copy the server and registry logs into this directory")
    parser.add_argument("--json", default=str(Path(__file__).parent / "results" / "hostile-latest.json"))
    args = parser.parse_args()
    if args.timeout is None:
        args.timeout = 20.0 if args.quick else 60.0
    command = "python " + " ".join(shlex.quote(a) for a in sys.argv)
    try:
        doc = asyncio.run(amain(args, command))
    except KeyboardInterrupt:
        print("interrupted; the server and the registry are stopped", file=sys.stderr)
        return 130
    print_report(doc)
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(doc, indent=2))
    print(json.dumps(doc))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
