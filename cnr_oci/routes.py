"""CNR route handlers: parse → validate → service → serialise."""

from __future__ import annotations

import asyncio
import base64
import html
import json
from contextlib import asynccontextmanager
from typing import Any, AsyncIterator

from aiohttp import web

from cnr_oci import __version__, appkeys, archive, bodies, errors, mapping
from cnr_oci.app import STREAMING
from cnr_oci.auth import IDENTITY, Credentials
from cnr_oci.mapping import Package
from cnr_oci.blobs import BlobStream
from cnr_oci.service import PackageService, encode_json

APPR_API_VERSION = "0.7.4"
CNR_API_VERSION = "0.2.0"
JSON_CHUNK = mapping.b64_chunk_size(1024 * 1024)


def _service(request: web.Request) -> PackageService:
    return request.app[appkeys.SERVICE]


def _package(request: web.Request) -> Package:
    prefix = request.app[appkeys.SETTINGS].repository_prefix.strip("/")
    return mapping.parse_package(request.match_info["ns"], request.match_info["name"], prefix)


def _media_type(request: web.Request, allow_any: bool = True) -> str:
    return mapping.normalize_media_type(request.match_info["media_type"], allow_any=allow_any)


def _query_media_type(request: web.Request) -> str | None:
    """The optional ?media_type= filter, shortened and checked."""
    value = request.query.get("media_type") or None
    return mapping.normalize_media_type(value) if value is not None else None


def _base_url(request: web.Request) -> str:
    return f"{request.scheme}://{request.host}"


def _json(data: Any, status: int = 200) -> web.Response:
    return web.json_response(data, status=status)


async def _documents(data: Any) -> web.Response:
    """Listings and manifest objects, which carry stored metadata (up to the registry's 4 MiB a
    manifest, many at once): encoded in a worker thread, off the event loop."""
    return _json_bytes(await asyncio.to_thread(encode_json, data))


def _json_bytes(body: bytes) -> web.Response:
    return web.Response(body=body, content_type="application/json")


# -- E1, E2 -----------------------------------------------------------------------


async def version(request: web.Request) -> web.Response:
    return _json({"appr-api": APPR_API_VERSION, "cnr-api": CNR_API_VERSION, "cnr-oci": __version__})


async def index(request: web.Request) -> web.Response:
    base = _base_url(request)
    content = f"{request.host}/{{name}} {base}/cnr/api/v1/packages/{{name}}/{{version}}/{{media_type}}/pull"
    page = (
        "<!DOCTYPE html><html><head><title>cnr-oci</title>"
        f'<meta name="appr-package" content="{html.escape(content)}">'
        "</head><body><h1>cnr-oci</h1><p>A CNR / appr app registry backed by an OCI registry.</p>"
        f'<p>API: <a href="{html.escape(base)}/cnr/api/v1/packages">{html.escape(base)}/cnr/api/v1/packages</a></p>'
        "</body></html>"
    )
    return web.Response(text=page, content_type="text/html")


async def well_known(request: web.Request) -> web.Response:
    return _json({"version": "v1.0.0", "uri_prefix": f"{_base_url(request)}/cnr/"})


async def healthz(request: web.Request) -> web.Response:
    return _json({"status": "ok"})


async def metrics(request: web.Request) -> web.Response:
    return web.Response(body=request.app[appkeys.METRICS].render(),
                        content_type="text/plain", charset="utf-8")


async def readyz(request: web.Request) -> web.Response:
    try:
        await request.app[appkeys.OCI].ping()
    except Exception as exc:  # any failure means "not ready"
        return _json({"status": "not ready", "reason": type(exc).__name__}, status=503)
    return _json({"status": "ready"})


# -- E3 ---------------------------------------------------------------------------


async def _json_body(request: web.Request) -> Any:
    """A small JSON body (login's), size and nesting bounded, so it is fine to parse on the loop."""
    limit = archive.MAX_SMALL_BODY
    return archive.load_json(await _read_body(request, limit), "body", max_bytes=limit)


async def _read_body(request: web.Request, limit: int) -> bytearray:
    """The body, bounded in size and in time (a slow body gets 408, see bodies.read_body)."""
    settings = request.app[appkeys.SETTINGS]
    return await bodies.read_body(request, limit, min_rate=settings.body_min_rate, grace=settings.body_grace)


async def login(request: web.Request) -> web.Response:
    body = await _json_body(request)
    user = body.get("user") if isinstance(body, dict) else None
    if not (
        isinstance(user, dict)
        and isinstance(user.get("username"), str) and user["username"]
        and isinstance(user.get("password"), str)
    ):
        raise errors.InvalidUsage(
            'login needs {"user": {"username": ..., "password": ...}}', {"field": "user"}
        )
    codec = request.app[appkeys.TOKENS]
    client = request.app[appkeys.OCI]
    if not await client.ping():
        # The registry asks nobody for credentials: the token carries none.
        return _json({"token": codec.issue(None)})
    creds = Credentials(user["username"], user["password"])
    token = IDENTITY.set(creds)
    try:
        await client.check_credentials()
    finally:
        IDENTITY.reset(token)
    return _json({"token": codec.issue(creds)})


# -- E5, E6 -----------------------------------------------------------------------


def _paging(request: web.Request, items: list[Any]) -> list[Any]:
    """Opt-in limit/offset; no CNR client sends them."""
    q = request.query
    try:
        offset = int(q.get("offset", "0"))
        limit = int(q["limit"]) if "limit" in q else None
    except ValueError as exc:
        raise errors.InvalidParameters("limit and offset must be integers") from exc
    if offset < 0 or (limit is not None and limit < 0):
        raise errors.InvalidParameters("limit and offset must not be negative")
    return items[offset : None if limit is None else offset + limit]


async def list_packages(request: web.Request) -> web.Response:
    q = request.query
    result = await _service(request).list_packages(
        namespace=q.get("namespace") or None, query=q.get("query") or None, media_type=_query_media_type(request)
    )
    return await _documents(_paging(request, result))


async def search(request: web.Request) -> web.Response:
    return _json(await _service(request).search(request.query.get("q", "")))


# -- E7 ---------------------------------------------------------------------------


async def push(request: web.Request) -> web.Response:
    pkg = _package(request)
    settings = request.app[appkeys.SETTINGS]
    limit = settings.max_body_size
    if request.content_length is not None and request.content_length > limit:
        raise errors.PayloadTooLarge(f"the body exceeds the limit of {limit} bytes", {"limit": limit})
    service = _service(request)
    # Who is calling, and may they push here? Known before a byte of the body is read.
    async with service.push_rights(pkg) as session, _push_slot(request):
        raw = await _read_body(request, limit)
        # JSON, base64 and gzip/tar checks of a large push are CPU-bound: keep them off the loop.
        inp = await asyncio.to_thread(archive.parse_push, raw, request.query.get("force"))
        del raw
        await service.push(pkg, inp, session)
    return _json({"status": "ok"})


@asynccontextmanager
async def _push_slot(request: web.Request) -> AsyncIterator[None]:
    """One of the few push bodies that may be in memory at once; 503 after a bounded wait."""
    slots = request.app[appkeys.PUSH_SLOTS]
    wait = request.app[appkeys.SETTINGS].push_queue_wait
    try:
        await asyncio.wait_for(slots.acquire(), wait)
    except asyncio.TimeoutError:
        err = errors.ServerBusy(f"too many pushes in progress; retry in {int(wait)} s", {"retry_after": int(wait)})
        err.headers["Retry-After"] = str(int(wait))
        raise err from None
    try:
        yield
    finally:
        slots.release()


# -- E8, E9, E10, E11 -------------------------------------------------------------


async def list_manifests(request: web.Request) -> web.Response:
    pkg = _package(request)
    return _json_bytes(await _service(request).list_manifests_json(pkg, _query_media_type(request)))


async def release_manifests(request: web.Request) -> web.Response:
    pkg = _package(request)
    release = mapping.check_release(request.match_info["release"])
    return _json_bytes(await _service(request).list_manifests_json(pkg, release=release))


async def show(request: web.Request) -> web.Response:
    pkg = _package(request)
    media_type = _media_type(request)
    return await _documents(await _service(request).show(pkg, request.match_info["release"], media_type))


async def delete_release(request: web.Request) -> web.Response:
    pkg = _package(request)
    media_type = _media_type(request)
    return _json(await _service(request).delete(pkg, request.match_info["release"], media_type))


# -- E12, E13 ---------------------------------------------------------------------


def _wants_json(request: web.Request) -> bool:
    return request.match_info.get("json") == "/json" or request.query.get("format") == "json"


async def _stream(
    request: web.Request, blob: BlobStream, filename: str, head: dict[str, Any] | None
) -> web.StreamResponse:
    """Pass the blob through; in JSON form, base64 it on the fly.

    Content-Length is always set, and the last chunk waits for the digest check,
    so a wrong or broken transfer is a short body, never a complete wrong one.
    """
    try:
        chunks = blob.chunks(JSON_CHUNK)
        first = await anext(chunks, b"")  # a failure here still gets a CNR error
        resp = web.StreamResponse()
        prefix = suffix = b""
        if head is None:
            resp.content_type = "application/x-gzip"
            resp.headers["Content-Disposition"] = filename
            if blob.size is not None:
                resp.content_length = blob.size
        else:
            resp.content_type = "application/json"
            prefix = (json.dumps({**head, "filename": filename})[:-1] + ', "blob": "').encode()
            suffix = b'"}'
            if blob.size is not None:
                resp.content_length = len(prefix) + 4 * ((blob.size + 2) // 3) + len(suffix)
        request[STREAMING] = True
        await resp.prepare(request)
        await resp.write(prefix)
        rest = b""
        piece: bytes | None = first
        while piece is not None:
            if head is None:
                await resp.write(piece)
            else:
                data = rest + piece
                cut = len(data) - len(data) % 3
                await resp.write(base64.b64encode(data[:cut]))
                rest = data[cut:]
            piece = await anext(chunks, None)
        await resp.write(base64.b64encode(rest) + suffix if head is not None else b"")
        await resp.write_eof()
        return resp
    finally:
        blob.close()


async def pull(request: web.Request) -> web.StreamResponse:
    pkg = _package(request)
    service = _service(request)
    entry = await service.resolve(pkg, request.match_info["release"], _media_type(request))
    blob = await service.open_blob(pkg, str(entry.layer["digest"]))
    head = None
    if _wants_json(request):
        head = {"package": pkg.full, "release": entry.release, "media_type": entry.media_type}
    return await _stream(request, blob, mapping.filename(pkg, entry.release), head)


async def blob(request: web.Request) -> web.StreamResponse:
    pkg = _package(request)
    hexdigest = mapping.check_digest(request.match_info["digest"])
    stream = await _service(request).open_blob(pkg, "sha256:" + hexdigest)
    head = {"package": pkg.full, "release": hexdigest} if _wants_json(request) else None
    return await _stream(request, stream, f"{pkg.file_stem}_{hexdigest[:8]}.tar.gz", head)


# -- E14 to E18: channels ----------------------------------------------------------


async def list_channels(request: web.Request) -> web.Response:
    return _json(await _service(request).channels(_package(request)))


async def show_channel(request: web.Request) -> web.Response:
    return _json(await _service(request).channel(_package(request), request.match_info["channel"]))


async def add_channel_release(request: web.Request) -> web.Response:
    m = request.match_info
    return _json(await _service(request).add_channel_release(_package(request), m["channel"], m["release"]))


async def remove_channel_release(request: web.Request) -> web.Response:
    m = request.match_info
    return _json(await _service(request).remove_channel_release(_package(request), m["channel"], m["release"]))


async def delete_channel(request: web.Request) -> web.Response:
    return _json(await _service(request).delete_channel(_package(request), request.match_info["channel"]))


# -- routing ----------------------------------------------------------------------

PKG = "/api/v1/packages/{ns}/{name}"
ROUTES: list[tuple[str, str, Any]] = [
    ("GET", "/version", version),
    ("GET", "/.well-known/app-registry-uri.json", well_known),
    ("POST", "/api/v1/users/login", login),
    ("GET", "/api/v1/packages", list_packages),
    ("GET", "/api/v1/packages/search", search),
    ("GET", PKG + "/blobs/sha256/{digest}{json:(/json)?}", blob),
    ("GET", PKG + "/{release}/{media_type}/pull{json:(/json)?}", pull),
    ("GET", PKG + "/channels", list_channels),
    ("GET", PKG + "/channels/{channel}", show_channel),
    ("POST", PKG + "/channels/{channel}/{release}", add_channel_release),
    ("DELETE", PKG + "/channels/{channel}/{release}", remove_channel_release),
    ("DELETE", PKG + "/channels/{channel}", delete_channel),
    ("GET", PKG, list_manifests),
    ("POST", PKG, push),
    ("GET", PKG + "/{release}", release_manifests),
    ("GET", PKG + "/{release}/{media_type}", show),
    ("DELETE", PKG + "/{release}/{media_type}", delete_release),
]


def setup_routes(app: web.Application) -> None:
    """Every route under /cnr and bare, with and without a trailing slash."""
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/", index)
    app.router.add_get("/cnr", index)
    app.router.add_get("/cnr/", index)
    for mount in ("/cnr", ""):
        for method, path, handler in ROUTES:
            app.router.add_route(method, mount + path, handler)
            app.router.add_route(method, mount + path + "/", handler)
