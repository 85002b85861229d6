"""The HTTP edge (cnr_oci/server.py, bodies.py, logsafe.py): slow bodies and heads, the connection cap, and no
credentials from malformed headers in logs or error bodies. A real server on a free port."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import ssl
import statistics
import sys
import time
from collections.abc import AsyncIterator

import aiohttp
import aiohttp.http_exceptions
import aiohttp.http_parser
import aiohttp.web_protocol
import pytest
from aiohttp import web

from cnr_oci import logsafe
from cnr_oci.app import create_app
from cnr_oci.bodies import read_body
from cnr_oci.server import LimitedRunner, LimitedSite, Limits
from cnr_oci.settings import Settings

BODY_LIMIT = 64 * 1024
GRACE = 1.0


async def echo(request: web.Request) -> web.Response:
    """A test route reading its body like routes.push will: small grace, default rate."""
    data = await read_body(request, BODY_LIMIT, grace=GRACE)
    return web.json_response({"received": len(data)})


@contextlib.asynccontextmanager
async def live(settings: Settings, limits: Limits, tls: ssl.SSLContext | None = None) -> AsyncIterator[int]:
    """cnr-oci (plus POST /test/echo) behind LimitedRunner/LimitedSite; yields the port."""
    app = create_app(settings)
    app.router.add_post("/test/echo", echo)
    runner = LimitedRunner(app, limits=limits)
    await runner.setup()
    try:
        site = LimitedSite(runner, "127.0.0.1", 0, ssl_context=tls)
        await site.start()
        yield site.port
    finally:
        await runner.cleanup()


@contextlib.asynccontextmanager
async def conn(port: int) -> AsyncIterator[tuple[asyncio.StreamReader, asyncio.StreamWriter]]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        yield reader, writer
    finally:
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()


async def response(reader: asyncio.StreamReader, timeout: float = 5.0) -> tuple[int, dict[str, str], bytes]:
    """One HTTP response (Content-Length framed) from a raw connection."""
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), timeout)
    lines = head.decode("latin-1").split("\r\n")
    headers = {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:] if line)}
    data = await asyncio.wait_for(reader.readexactly(int(headers.get("content-length", "0"))), timeout)
    return int(lines[0].split()[1]), headers, data


async def closed_within(reader: asyncio.StreamReader, timeout: float) -> bool:
    """True if the server closes the connection (EOF or reset) within timeout."""
    try:
        while await asyncio.wait_for(reader.read(65536), timeout):
            pass
    except TimeoutError:
        return False
    except ConnectionError:
        pass
    return True


GET_HEALTHZ = b"GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n"


def use_parser(monkeypatch: pytest.MonkeyPatch, parser: str) -> None:
    """aiohttp's C (llhttp) or pure-Python request parser for the connections of this test."""
    cls = getattr(aiohttp.http_parser, "HttpRequestParserC" if parser == "c" else "HttpRequestParserPy", None)
    if cls is None:
        pytest.skip("aiohttp's C parser is not built")
    monkeypatch.setattr(aiohttp.web_protocol, "HttpRequestParser", cls)


# --- defect 7: slow bodies ---------------------------------------------------------------

async def test_slowloris_body_is_answered_408_and_closed_within_grace(settings):
    async with live(settings, Limits()) as port, conn(port) as (reader, writer):
        writer.write(b"POST /test/echo HTTP/1.1\r\nHost: t\r\nContent-Length: 1000\r\n\r\n")
        start = time.monotonic()
        async with dripping(writer, b"x", 0.3):
            status, _, data = await response(reader, timeout=GRACE + 3)
            elapsed = time.monotonic() - start
            assert status == 408
            assert json.loads(data)["code"] == "invalid-usage"
            assert GRACE - 0.1 <= elapsed < GRACE + 1.0, elapsed
            assert await closed_within(reader, 1.0), "connection kept open after 408"


@contextlib.asynccontextmanager
async def dripping(writer: asyncio.StreamWriter, byte: bytes, interval: float) -> AsyncIterator[None]:
    """A slowloris: one byte every interval, while the body of the with-block runs."""
    async def trickle() -> None:
        for _ in range(100):
            writer.write(byte)
            await asyncio.sleep(interval)

    task = asyncio.create_task(trickle())
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError, ConnectionError):
            await task


async def test_read_body_passes_a_normal_body_and_rejects_oversized_ones(settings):
    async with live(settings, Limits()) as port:
        async with conn(port) as (reader, writer):
            writer.write(b"POST /test/echo HTTP/1.1\r\nHost: t\r\nContent-Length: 5000\r\n\r\n" + b"y" * 5000)
            status, _, data = await response(reader)
            assert (status, json.loads(data)) == (200, {"received": 5000})
        async with conn(port) as (reader, writer):  # declared too large: refused before reading
            writer.write(b"POST /test/echo HTTP/1.1\r\nHost: t\r\nContent-Length: %d\r\n\r\n" % (BODY_LIMIT + 1))
            status, _, data = await response(reader)
            assert (status, json.loads(data)["code"]) == (413, "payload-too-large")
        async with conn(port) as (reader, writer):  # chunked: counted as it arrives
            chunk = b"z" * 16384
            writer.write(b"POST /test/echo HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n"
                         + (b"4000\r\n" + chunk + b"\r\n") * 5 + b"0\r\n\r\n")
            status, _, data = await response(reader)
            assert (status, json.loads(data)["code"]) == (413, "payload-too-large")


@pytest.mark.parametrize("parser", ["c", "py"])
async def test_read_body_answers_4xx_to_broken_chunks_and_stays_quiet_when_the_client_hangs_up(
        settings, caplog, monkeypatch, parser):
    use_parser(monkeypatch, parser)
    async with live(settings, Limits()) as port:
        async with conn(port) as (reader, writer):
            writer.write(b"POST /test/echo HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n")
            await asyncio.sleep(0.2)  # the handler is reading when the broken chunk size comes
            writer.write(b"zz" + SECRET.encode() + b"\r\n")
            status, _, data = await response(reader)
            # the pure-Python parser fails the body at once; the C parser leaves it hanging: 408
            assert (status, json.loads(data)["code"]) == (400 if parser == "py" else 408, "invalid-usage")
            assert SECRET.encode() not in data
        async with conn(port) as (reader, writer):
            writer.write(b"POST /test/echo HTTP/1.1\r\nHost: t\r\nContent-Length: 1000\r\n\r\nabc")
            await asyncio.sleep(0.1)
        await asyncio.sleep(0.2)
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR], caplog.text


# --- defect 7: slow heads, idle connections, the cap -------------------------------------

async def test_partial_head_is_closed_after_the_header_timeout(settings):
    async with live(settings, Limits(header_timeout=0.5)) as port:
        async with conn(port) as (reader, writer):
            start = time.monotonic()
            writer.write(b"GET /healthz HTTP/1.1\r\nHost: t\r\n")

            async def trickle() -> None:
                with contextlib.suppress(ConnectionError):
                    for _ in range(30):
                        await asyncio.sleep(0.1)
                        writer.write(b"X-Slow: 1\r\n")

            dripping = asyncio.create_task(trickle())
            try:
                assert await closed_within(reader, 2.0), "a trickled head kept the connection open"
                assert time.monotonic() - start < 1.0
            finally:
                dripping.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await dripping
        async with conn(port) as (reader, writer):  # silent after connect: same deadline
            start = time.monotonic()
            assert await closed_within(reader, 2.0)
            assert time.monotonic() - start < 1.0


async def test_a_stalled_tls_handshake_is_closed_after_the_header_timeout(settings, tmp_path):
    from tests.certs import self_signed

    cert, key, _, _ = self_signed(tmp_path)
    tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    tls.load_cert_chain(cert, key)
    async with live(settings, Limits(header_timeout=0.5), tls) as port:
        async with conn(port) as (reader, _):  # TCP only, no ClientHello
            start = time.monotonic()
            assert await closed_within(reader, 3.0)
            assert time.monotonic() - start < 1.5
        client = ssl.create_default_context(cafile=str(cert))
        url = f"https://127.0.0.1:{port}/healthz"  # and the listener does serve TLS
        async with aiohttp.ClientSession() as session, session.get(url, ssl=client) as resp:
            assert resp.status == 200


async def test_idle_keep_alive_outlives_the_header_timeout(settings):
    async with live(settings, Limits(header_timeout=0.3)) as port, conn(port) as (reader, writer):
        for _ in range(2):
            writer.write(GET_HEALTHZ)
            status, _, _ = await response(reader)
            assert status == 200
            await asyncio.sleep(0.8)  # idle between requests is keepalive_timeout's, not the head's


async def test_connection_cap_refuses_excess_and_evicts_idle_first(settings):
    cap = 5
    async with (
        live(settings, Limits(max_connections=cap, header_timeout=30)) as port,
        contextlib.AsyncExitStack() as stack,
    ):
        held = [await stack.enter_async_context(conn(port)) for _ in range(cap)]
        for _, writer in held:  # partial heads: busy, not evictable
            writer.write(b"GET /healthz HTTP/1.1\r\n")
        await asyncio.sleep(0.2)
        async with conn(port) as (reader, writer):
            writer.write(GET_HEALTHZ)
            try:
                status, _, data = await response(reader)
                assert status == 503 and json.loads(data)["message"].startswith("too many")
            except (asyncio.IncompleteReadError, ConnectionError):
                pass  # refused by a reset before the 503 could be read: also a refusal
            assert await closed_within(reader, 1.0)
        for reader, writer in held:  # the held ones are untouched
            writer.write(b"Host: t\r\n\r\n")
            assert (await response(reader))[0] == 200
        # now all five are idle keep-alive connections: a new one evicts one of them
        async with conn(port) as (reader, writer):
            writer.write(GET_HEALTHZ)
            assert (await response(reader))[0] == 200
        assert sum([await closed_within(r, 0.2) for r, _ in held]) == 1


@pytest.mark.timeout(60)
async def test_healthz_stays_fast_with_200_slow_connections_open(settings):
    async with live(settings, Limits(header_timeout=30)) as port, contextlib.AsyncExitStack() as stack:
        slow = [await stack.enter_async_context(conn(port)) for _ in range(200)]
        for i, (_, writer) in enumerate(slow):
            if i % 2:
                writer.write(b"GET /healthz HTTP/1.1\r\nHost: t\r\nX-Slow: ")  # a head, never finished
            else:
                writer.write(b"POST /test/echo HTTP/1.1\r\nHost: t\r\nContent-Length: 60000\r\n\r\nx")

        async def drip() -> None:
            with contextlib.suppress(ConnectionError):
                while True:
                    for _, writer in slow:
                        if not writer.is_closing():
                            writer.write(b"a")
                    await asyncio.sleep(0.5)

        dripping = asyncio.create_task(drip())
        try:
            await asyncio.sleep(0.3)
            times = []
            async with conn(port) as (reader, writer):
                for _ in range(10):
                    start = time.perf_counter()
                    writer.write(GET_HEALTHZ)
                    status, _, _ = await response(reader)
                    times.append(time.perf_counter() - start)
                    assert status == 200
            assert max(times) < 0.1, times
            assert statistics.median(times) < 0.05, times
        finally:
            dripping.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await dripping


# --- defect 8: credentials from malformed headers ----------------------------------------

SECRET = "s3cr3tT0KENabcdef0123456789"
TOKEN = b"Bearer " + SECRET.encode()
MALFORMED = {
    "trailing-cr": b"Authorization: " + TOKEN + b"\r\r\n",  # a token file with a Windows line ending
    "bare-cr": b"Authorization: " + TOKEN + b"\rX-Next: y\r\n",
    "control-char": b"Authorization: " + TOKEN + b"\x01\r\n",
    "nul": b"Authorization: " + TOKEN + b"\x00\r\n",
    "del": b"Authorization: " + TOKEN + b"\x7f\r\n",
    "folded": b"Authorization: Basic\r\n " + SECRET.encode() + b"\r\n",
    "over-long": b"Authorization: " + TOKEN + b"A" * 9000 + b"\r\n",
    "bad-name": b"Auth orization: " + TOKEN + b"\r\n",
    "basic-cr": b"Authorization: Basic " + SECRET.encode() + b"\r\r\n",
}


@pytest.mark.parametrize("parser", ["c", "py"])
async def test_malformed_headers_leak_no_credentials(settings, caplog, monkeypatch, parser):
    use_parser(monkeypatch, parser)
    caplog.set_level(logging.DEBUG)
    bodies: list[bytes] = []
    async with live(settings, Limits()) as port:
        for name, line in MALFORMED.items():
            async with conn(port) as (reader, writer):
                writer.write(b"GET /healthz HTTP/1.1\r\nHost: t\r\n" + line + b"\r\n")
                status, headers, data = await response(reader)
                assert status == 400, name
                assert headers["content-type"].startswith("application/json"), name
                assert json.loads(data)["code"] == "invalid-usage", name
                bodies.append(data)
        async with conn(port) as (reader, writer):  # the request line too
            writer.write(b"GET /healthz?t=" + SECRET.encode() + b"\x01 HTTP/1.1\r\nHost: t\r\n\r\n")
            status, _, data = await response(reader)
            assert status == 400
            bodies.append(data)
    assert not [b for b in bodies if SECRET.encode() in b]
    seen: list[str] = []
    for record in caplog.records:
        seen.append(record.getMessage())
        if record.exc_info:
            seen.append(logging.Formatter().formatException(record.exc_info))
        seen.append(record.exc_text or "")
    assert any("malformed request" in s for s in seen)  # the records were captured at all
    assert not [s for s in seen if SECRET in s]
    assert SECRET not in caplog.text


def test_the_filter_redacts_credentials_in_any_aiohttp_record():
    filt = logsafe.RedactingFilter()
    record = logging.LogRecord("aiohttp.server", logging.ERROR, __file__, 1, "header %s",
                               (f"Authorization: Basic {SECRET}",), None)
    assert filt.filter(record) and SECRET not in record.getMessage()
    try:
        raise ValueError(f"bad token Bearer {SECRET}")
    except ValueError:
        record = logging.LogRecord("aiohttp.web", logging.ERROR, __file__, 1, "oops", (), sys.exc_info())
    assert filt.filter(record) and SECRET not in (record.exc_text or "") and "ValueError" in (record.exc_text or "")
    # what aiohttp logs when lingering on a broken chunked body: raw bytes in the cause, no keyword
    try:
        try:
            raise aiohttp.http_exceptions.TransferEncodingError(f"zz{SECRET}")
        except aiohttp.http_exceptions.TransferEncodingError as exc:
            raise aiohttp.web_protocol.RequestPayloadError(str(exc)) from exc
    except aiohttp.web_protocol.RequestPayloadError:
        record = logging.LogRecord("aiohttp.server", logging.ERROR, __file__, 1, "Unhandled exception", (),
                                   sys.exc_info())
    assert filt.filter(record)
    assert logging.Formatter().format(record) == ("Unhandled exception: RequestPayloadError < TransferEncodingError"
                                                  " (malformed request, raw bytes withheld)")


def test_cli_has_the_edge_flags():
    from cnr_oci import cli

    args = cli.build_parser().parse_args(["serve", "--max-connections", "7", "--header-timeout", "2.5"])
    s = cli.settings_from(args, {})
    assert (s.max_connections, s.header_timeout) == (7, 2.5)
    assert Settings().max_connections == 1000 and Settings().header_timeout == 10.0



@pytest.mark.parametrize("path", ["/cnr/api/v1/packages/slow/body", "/cnr/api/v1/users/login"])
async def test_slow_push_and_login_bodies_get_408(make_client, registry, path):
    client = await make_client(Settings(upstream=registry.url, body_grace=1.0, body_min_rate=1024.0))
    reader, writer = await asyncio.open_connection(client.server.host, client.server.port)
    try:
        writer.write(f"POST {path} HTTP/1.1\r\nHost: t\r\nContent-Length: 1000\r\n\r\n{{".encode())
        start = time.monotonic()
        async with dripping(writer, b" ", 0.2):
            status, _, data = await response(reader, timeout=5)
            assert status == 408 and json.loads(data)["code"] == "invalid-usage"
            assert time.monotonic() - start < 3
    finally:
        writer.close()


@pytest.mark.parametrize("path", ["/cnr/api/v1/users/login", "/cnr/api/v1/packages"])
async def test_a_compressed_request_body_is_415_before_a_byte_of_it_is_read(settings, path):
    """The answer comes while the (gzip) body has not even been sent: nothing was inflated."""
    async with live(settings, Limits()) as port, conn(port) as (reader, writer):
        writer.write(f"POST {path} HTTP/1.1\r\nHost: t\r\nContent-Encoding: gzip\r\n"
                     f"Content-Length: {1 << 20}\r\n\r\n".encode() + b"\x1f\x8b")
        status, _, data = await response(reader)
        assert status == 415 and json.loads(data)["code"] == "invalid-usage"


def test_the_server_never_inflates_request_bodies(settings):
    """aiohttp inflates gzip/deflate bodies on the event loop, even unread ones being discarded."""
    runner = LimitedRunner(create_app(settings))
    assert runner._kwargs["auto_decompress"] is False
