"""The classic helm repository routes: /helm/<namespace>/index.yaml and its chart files."""

from __future__ import annotations

from aiohttp import web

from cnr_oci import appkeys, mapping
from cnr_oci.blobredirect import open_for_client
from cnr_oci.helmrepo import HelmRepository
from cnr_oci.streaming import stream_blob

HELM_PREFIX = "/helm"


def _repo(request: web.Request) -> HelmRepository:
    return request.config_dict[appkeys.STORE].helm


def _namespace(request: web.Request) -> str:
    """The namespace, checked as a CNR namespace (an OCI path component)."""
    return mapping.parse_package(request.match_info["ns"], "x").namespace


async def helm_index(request: web.Request) -> web.Response:
    """index.yaml: per caller (what the registry lets them read), ETag / 304, gzip when accepted."""
    index = await _repo(request).index(_namespace(request))
    headers = {"ETag": index.etag, "Cache-Control": "private, no-cache", "Vary": "Authorization, Accept-Encoding"}
    if index.etag in [t.strip() for t in request.headers.get("If-None-Match", "").split(",")]:
        return web.Response(status=304, headers=headers)
    if "gzip" in request.headers.get("Accept-Encoding", "").lower():
        headers["Content-Encoding"] = "gzip"
        return web.Response(body=index.gzipped, headers=headers, content_type="application/x-yaml")
    return web.Response(body=index.body, headers=headers, content_type="application/x-yaml")


async def helm_chart(request: web.Request) -> web.StreamResponse:
    """A chart file the index names, or its .prov, streamed from the registry and checked against its digest."""
    namespace = _namespace(request)
    filename = request.match_info["file"]
    package, digest = await _repo(request).chart(namespace, filename)
    blob = await open_for_client(request, package, digest)
    if isinstance(blob, web.Response):
        return blob
    # A .prov as ChartMuseum sends it (pkg/repo ProvenanceFileContentType).
    kind = "application/pgp-signature" if filename.endswith(".prov") else "application/x-gzip"
    return await stream_blob(request, blob, filename, None, kind)


def setup_helm_routes(app: web.Application) -> None:
    app.router.add_get(HELM_PREFIX + "/{ns}/index.yaml", helm_index)
    app.router.add_get(HELM_PREFIX + "/{ns}/charts/{file}", helm_chart)
