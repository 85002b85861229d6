"""An in-process proxy in front of the real registry that can inject failures a real
registry cannot be made to show (a failing manifest PUT, wrong blob bytes)."""

from __future__ import annotations

import io
from typing import Callable

import aiohttp
from aiohttp import web

SESSION = web.AppKey("session", aiohttp.ClientSession)

HOP = {"Host", "Content-Length", "Transfer-Encoding", "Connection"}


def make_proxy(target: str, fail: Callable[[web.Request], bool] = lambda r: False,
               corrupt_blobs: bool = False) -> web.Application:
    async def session_ctx(app: web.Application):
        async with aiohttp.ClientSession(auto_decompress=False) as s:
            app[SESSION] = s
            yield

    async def handle(request: web.Request) -> web.StreamResponse:
        if fail(request):
            return web.json_response({"errors": [{"code": "UNKNOWN", "message": "injected"}]}, status=500)
        headers = {k: v for k, v in request.headers.items() if k not in HOP}
        data = io.BytesIO(await request.read())
        async with request.app[SESSION].request(
            request.method, target + request.path_qs, headers=headers, data=data, allow_redirects=False
        ) as up:
            payload = await up.read()
            out = {k: v for k, v in up.headers.items() if k not in HOP}
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
