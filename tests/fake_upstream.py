"""An in-process proxy in front of the real registry that injects the failures a real
registry cannot be made to show: failing writes, writes whose answer is lost, 503 bursts,
wrong blob bytes. It counts what it saw."""

from __future__ import annotations

import collections
import io
from typing import Callable

import aiohttp
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
