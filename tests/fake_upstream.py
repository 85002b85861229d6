"""An in-process proxy in front of the real registry that injects the failures a real
registry cannot be made to show: failing writes, writes whose answer is lost, 503 bursts,
wrong blob bytes. It counts what it saw."""

from __future__ import annotations

import asyncio
import collections
import gzip
import io
import typing
from collections.abc import Callable

import aiohttp
import yarl
from aiohttp import web

SESSION = web.AppKey("session", aiohttp.ClientSession)
HOP = {"Host", "Content-Length", "Transfer-Encoding", "Connection"}
Rule = Callable[[web.Request], bool]


def make_proxy(target: str, fail: Rule = lambda r: False, corrupt_blobs: bool = False,
               lose_answer: Rule = lambda r: False, fail_status: int = 500,
               seen: collections.Counter[str] | None = None,
               reset_after: Rule = lambda r: False) -> web.Application:
    """fail: answer fail_status without forwarding; lose_answer: forward, then answer 502;
    reset_after: forward, then reset the connection (no answer at all)."""
    seen = seen if seen is not None else collections.Counter()

    async def session_ctx(app: web.Application):
        async with aiohttp.ClientSession(auto_decompress=False) as s:
            app[SESSION] = s
            yield

    async def handle(request: web.Request) -> web.StreamResponse:
        kind = "manifest" if "/manifests/" in request.path else "blob" if "/blobs/" in request.path else "other"
        seen[f"{request.method} {kind}"] += 1
        if fail(request):
            return web.json_response({"errors": [{"code": "UNAVAILABLE", "message": "injected"}]}, status=fail_status)
        headers = {k: v for k, v in request.headers.items() if k not in HOP}
        data = io.BytesIO(await request.read())
        async with request.app[SESSION].request(
            request.method, target + request.path_qs, headers=headers, data=data, allow_redirects=False
        ) as up:
            payload = await up.read()
            out = {k: v for k, v in up.headers.items() if k not in HOP}
            if reset_after(request):
                assert request.transport is not None
                request.transport.abort()
                raise ConnectionResetError("injected reset")
            if lose_answer(request):
                return web.json_response({"errors": [{"code": "UNKNOWN", "message": "answer lost"}]}, status=502)
            if corrupt_blobs and request.method == "GET" and "/blobs/" in request.path and payload:
                payload = bytes([payload[0] ^ 0xFF]) + payload[1:]
            resp = web.StreamResponse(status=up.status, headers=out)
            if payload:
                resp.content_length = len(payload)
            await resp.prepare(request)
            await resp.write(payload)
            await resp.write_eof()
            return resp

    app = web.Application()
    app.cleanup_ctx.append(session_ctx)
    app.router.add_route("*", "/{tail:.*}", handle)
    return app


# -- for tests/test_oci_limits.py ------------------------------------------------------------


async def _forward(request: web.Request, target: str) -> tuple[aiohttp.ClientResponse, bytes]:
    headers = {k: v for k, v in request.headers.items() if k not in HOP}
    async with request.app[SESSION].request(
        request.method, target + request.path_qs, headers=headers, data=io.BytesIO(await request.read()),
        allow_redirects=False,
    ) as up:
        return up, await up.read()


def _forwarding_app(handle: Callable[[web.Request], typing.Awaitable[web.StreamResponse]]) -> web.Application:
    async def session_ctx(app: web.Application):
        async with aiohttp.ClientSession(auto_decompress=False) as s:
            app[SESSION] = s
            yield

    app = web.Application()
    app.cleanup_ctx.append(session_ctx)
    app.router.add_route("*", "/{tail:.*}", handle)
    return app


def make_redirecting_proxy(target: str, foreign: Callable[[], str]) -> web.Application:
    """Forwards to target, but names another origin (``foreign()``) in every upload
    Location and adds a Link rel=next to it on the first page of tags and of the catalog."""

    async def handle(request: web.Request) -> web.StreamResponse:
        up, payload = await _forward(request, target)
        out = {k: v for k, v in up.headers.items() if k not in HOP}
        if "Location" in out and "/blobs/uploads/" in out["Location"]:
            loc = yarl.URL(out["Location"])
            out["Location"] = str(yarl.URL(foreign()).with_path(loc.raw_path, encoded=True)
                                  .with_query(loc.raw_query_string))
        paged = request.path.endswith("/tags/list") or request.path == "/v2/_catalog"
        if up.status == 200 and paged and "last" not in request.query:
            out["Link"] = f'<{foreign()}{request.path}?last=zzzz&n=1000>; rel="next"'
        return web.Response(status=up.status, headers=out, body=payload)

    return _forwarding_app(handle)


def make_recorder(target: str, seen: list[tuple[str, str, dict[str, str]]]) -> web.Application:
    """Records (method, path, headers) of every request, then forwards it to target."""

    async def handle(request: web.Request) -> web.StreamResponse:
        seen.append((request.method, request.path, dict(request.headers)))
        up, payload = await _forward(request, target)
        out = {k: v for k, v in up.headers.items() if k not in HOP}
        return web.Response(status=up.status, headers=out, body=payload)

    return _forwarding_app(handle)


def make_gzip_proxy(target: str, seen: collections.Counter[str] | None = None) -> web.Application:
    """A careless proxy: gzips every answer body when the client accepts gzip."""
    seen = seen if seen is not None else collections.Counter()

    async def handle(request: web.Request) -> web.StreamResponse:
        up, payload = await _forward(request, target)
        out = {k: v for k, v in up.headers.items() if k not in HOP}
        if payload and "gzip" in request.headers.get("Accept-Encoding", ""):
            payload = gzip.compress(payload)
            out["Content-Encoding"] = "gzip"
            seen["gzipped"] += 1
        seen["forwarded"] += 1
        return web.Response(status=up.status, headers=out, body=payload)

    return _forwarding_app(handle)


def make_trickle_proxy(target: str, rate: int = 500, step: float = 0.2) -> web.Application:
    """Forwards to target, but sends blob bodies at ``rate`` bytes/s."""

    async def handle(request: web.Request) -> web.StreamResponse:
        up, payload = await _forward(request, target)
        out = {k: v for k, v in up.headers.items() if k not in HOP}
        if not (request.method == "GET" and "/blobs/" in request.path and up.status == 200):
            return web.Response(status=up.status, headers=out, body=payload)
        resp = web.StreamResponse(status=200, headers=out)
        resp.content_length = len(payload)
        await resp.prepare(request)
        piece = max(1, int(rate * step))
        for i in range(0, len(payload), piece):
            await resp.write(payload[i:i + piece])
            await asyncio.sleep(step)
        await resp.write_eof()
        return resp

    return _forwarding_app(handle)


class RawServer:
    """A TCP server on 127.0.0.1 that reads a request head and writes what ``answer`` gives
    for it (raw bytes, then it closes), or never answers when ``answer`` gives None."""

    def __init__(self, answer: Callable[[str, str], bytes | None]) -> None:
        self.answer = answer
        self.requests: list[tuple[str, str]] = []
        self._server: asyncio.AbstractServer | None = None
        self._hung: list[asyncio.StreamWriter] = []

    async def start(self) -> str:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        port = self._server.sockets[0].getsockname()[1]
        return f"http://127.0.0.1:{port}"

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1")
                method, target = head.split(" ")[:2]
                length = next((int(line.split(":", 1)[1]) for line in head.split("\r\n")
                               if line.lower().startswith("content-length:")), 0)
                if length:
                    await reader.readexactly(length)
                self.requests.append((method, target))
                out = self.answer(method, target)
                if out is None:
                    self._hung.append(writer)
                    return
                writer.write(out)
                await writer.drain()
                writer.close()
                return
        except (asyncio.IncompleteReadError, ConnectionError):
            writer.close()

    async def close(self) -> None:
        for w in self._hung:
            w.close()
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()


def http_answer(status: int, body: bytes, content_type: str = "application/json",
                length: int | None = None, extra: str = "") -> bytes:
    """A raw HTTP/1.1 answer; ``length`` may claim more than ``body`` (a truncated body)."""
    n = len(body) if length is None else length
    return (f"HTTP/1.1 {status} X\r\nContent-Type: {content_type}\r\nContent-Length: {n}\r\n"
            f"Connection: close\r\n{extra}\r\n").encode() + body
