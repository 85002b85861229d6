"""/openapi.json and /api-docs: the OpenAPI document and Swagger UI, from the swagger-ui-bundle package's
assets (no CDN). Root only, like the operational routes."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

from aiohttp import web

from cnr_oci import openapi

# The Swagger UI files the page loads; nothing else of the package's directory is served.
ASSETS = {"swagger-ui.css": "text/css", "swagger-ui-bundle.js": "text/javascript",
          "favicon-32x32.png": "image/png", "favicon-16x16.png": "image/png"}
PAGE = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>cnr-oci API reference</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<link rel="icon" type="image/png" href="/api-docs/favicon-32x32.png">
<link rel="stylesheet" href="/api-docs/swagger-ui.css"></head>
<body><main id="swagger-ui"><h1>cnr-oci API reference</h1>
<noscript><p>This page needs JavaScript. The document itself: <a href="/openapi.json">/openapi.json</a>.</p></noscript>
</main>
<script src="/api-docs/swagger-ui-bundle.js"></script>
<script>window.ui = SwaggerUIBundle({url: "/openapi.json", dom_id: "#swagger-ui", deepLinking: true});</script>
</body></html>
"""


def _assets_dir() -> Path:
    import swagger_ui_bundle  # type: ignore[import-untyped]

    return Path(str(swagger_ui_bundle.swagger_ui_path))


async def openapi_json(request: web.Request) -> web.Response:
    body = await asyncio.to_thread(lambda: json.dumps(openapi.document()).encode())
    return web.Response(body=body, content_type="application/json", headers={"Cache-Control": "no-cache"})


async def api_docs(request: web.Request) -> web.Response:
    return web.Response(text=PAGE, content_type="text/html", headers={"Cache-Control": "no-cache"})


async def api_docs_asset(request: web.Request) -> web.StreamResponse:
    name = request.match_info["file"]
    if name not in ASSETS:
        raise web.HTTPNotFound(reason="no such asset")
    return web.FileResponse(_assets_dir() / name, headers={"Content-Type": ASSETS[name],
                                                            "Cache-Control": "public, max-age=86400"})


def setup_apidocs_routes(app: web.Application) -> None:
    app.router.add_get("/openapi.json", openapi_json)
    app.router.add_get("/api-docs", api_docs)
    app.router.add_get("/api-docs/{file}", api_docs_asset)
