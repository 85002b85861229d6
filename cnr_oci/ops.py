"""Operational routes, apart from the CNR API: liveness, readiness and Prometheus metrics."""

from __future__ import annotations

from aiohttp import web

from cnr_oci import appkeys


async def healthz(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


async def readyz(request: web.Request) -> web.Response:
    try:
        await request.config_dict[appkeys.OCI].ping()
    except Exception as exc:  # any failure means "not ready"
        return web.json_response({"status": "not ready", "reason": type(exc).__name__}, status=503)
    return web.json_response({"status": "ready"})


async def metrics(request: web.Request) -> web.Response:
    return web.Response(body=request.config_dict[appkeys.METRICS].render(), content_type="text/plain",
                        charset="utf-8")


def setup_ops_routes(app: web.Application) -> None:
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", metrics)
