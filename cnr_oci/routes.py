"""The CNR API: one route table of thin handlers (parse, call the store, answer a wire shape)."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any, TypeVar

from aiohttp import web

from cnr_oci import __version__, appkeys, archive, bodies, errors, mapping, safejson, ui, wire
from cnr_oci.auth import identity_key
from cnr_oci.blobredirect import open_for_client
from cnr_oci.mapping import Package
from cnr_oci.store import Store
from cnr_oci.streaming import stream_blob

APPR_API_VERSION = "0.7.4"
CNR_API_VERSION = "0.2.0"
T = TypeVar("T")


def _store(request: web.Request) -> Store:
    return request.config_dict[appkeys.STORE]


def _package(request: web.Request) -> Package:
    prefix = request.config_dict[appkeys.SETTINGS].repository_prefix.strip("/")
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


def _json_bytes(body: bytes) -> web.Response:
    return web.Response(body=body, content_type="application/json")


async def _documents(data: Any) -> web.Response:
    """Listings and manifest objects, which carry stored metadata (up to the registry's 4 MiB a
    manifest, many at once): encoded in a worker thread, off the event loop."""
    return _json_bytes(await asyncio.to_thread(wire.encode, data))


async def _read_body(request: web.Request, limit: int) -> bytearray:
    """The body, bounded in size and in time (a slow body gets 408, see bodies.read_body)."""
    settings = request.config_dict[appkeys.SETTINGS]
    return await bodies.read_body(request, limit, min_rate=settings.body_min_rate, grace=settings.body_grace)


# -- E1, E2 -----------------------------------------------------------------------


async def version(request: web.Request) -> web.Response:
    return _json({"appr-api": APPR_API_VERSION, "cnr-api": CNR_API_VERSION, "cnr-oci": __version__})


async def index(request: web.Request) -> web.StreamResponse:
    """/ and /cnr: the package browser's home page for browsers, the discovery page for clients."""
    return await ui.index(request)


async def well_known(request: web.Request) -> web.Response:
    return _json({"version": "v1.0.0", "uri_prefix": f"{_base_url(request)}/cnr/"})


# -- E3 ---------------------------------------------------------------------------


async def login(request: web.Request) -> web.Response:
    limit = archive.MAX_SMALL_BODY
    body = safejson.load_json(await _read_body(request, limit), "body", max_bytes=limit)
    user = body.get("user") if isinstance(body, dict) else None
    if not (
        isinstance(user, dict)
        and isinstance(user.get("username"), str) and user["username"]
        and isinstance(user.get("password"), str)
    ):
        raise errors.InvalidUsage('login needs {"user": {"username": ..., "password": ...}}', {"field": "user"})
    creds = await _store(request).login(user["username"], user["password"])
    return _json({"token": request.config_dict[appkeys.TOKENS].issue(creds)})


# -- E5, E6 -----------------------------------------------------------------------


def _page(request: web.Request) -> tuple[int, int | None]:
    """Opt-in offset and limit; no CNR client sends them."""
    q = request.query
    try:
        offset = int(q.get("offset", "0"))
        limit = int(q["limit"]) if "limit" in q else None
    except ValueError as exc:
        raise errors.InvalidParameters("limit and offset must be integers") from exc
    if offset < 0 or (limit is not None and limit < 0):
        raise errors.InvalidParameters("limit and offset must not be negative")
    return offset, limit


async def list_packages(request: web.Request) -> web.StreamResponse:
    """E5, streamed in name order as summaries are known: the first byte does not wait for the last
    package. A failure before the first summary is a CNR error; after it, the connection is cut."""
    q, (offset, limit) = request.query, _page(request)
    found = _store(request).catalog.iter_summaries(
        namespace=q.get("namespace") or None, query=q.get("query") or None, media_type=_query_media_type(request)
    )
    page = _window(found, offset, limit)
    try:
        item = await anext(page, None)
        resp = web.StreamResponse(headers={"Content-Type": "application/json"})
        request[appkeys.STREAMING] = True
        await resp.prepare(request)
        head, parts, flushed = b"[", list[bytes](), time.monotonic()
        while item is not None:
            parts.append(json.dumps(wire.package_summary(item)).encode())
            item = await anext(page, None)
            # The first summary at once, then a write every 256 summaries or 50 ms: a warm listing
            # goes out in a few writes.
            if item is not None and (head == b"[" or len(parts) >= 256 or time.monotonic() - flushed > 0.05):
                await resp.write(head + b", ".join(parts))
                head, parts, flushed = b", ", [], time.monotonic()
        await resp.write(head + b", ".join(parts) + b"]")
        await resp.write_eof()
        return resp
    finally:
        await found.aclose()


async def _window(items: AsyncIterator[T], offset: int, limit: int | None) -> AsyncIterator[T]:
    """items[offset:offset + limit], without reading past the end of the window."""
    if limit == 0:
        return
    i = 0
    async for item in items:
        if i >= offset:
            yield item
            if limit is not None and i + 1 >= offset + limit:
                return
        i += 1


async def search(request: web.Request) -> web.Response:
    return _json(await _store(request).catalog.search(request.query.get("q", "")))


# -- E7 ---------------------------------------------------------------------------


async def push(request: web.Request) -> web.Response:
    pkg = _package(request)
    limit = request.config_dict[appkeys.SETTINGS].max_body_size
    if request.content_length is not None and request.content_length > limit:
        raise errors.PayloadTooLarge(f"the body exceeds the limit of {limit} bytes", {"limit": limit})
    write = _store(request).write
    # Who is calling, and may they push here? Known before a byte of the body is read.
    async with write.push_rights(pkg) as session, _push_slot(request):
        raw = await _read_body(request, limit)
        # JSON, base64 and gzip/tar checks of a large push are CPU-bound: keep them off the loop.
        inp = await asyncio.to_thread(archive.parse_push, raw, request.query.get("force"))
        del raw
        await write.push(pkg, inp, session)
    return _json({"status": "ok"})


@asynccontextmanager
async def _push_slot(request: web.Request) -> AsyncIterator[None]:
    """One of the few push bodies that may be in memory at once; 503 after a bounded wait."""
    slots = request.config_dict[appkeys.PUSH_SLOTS]
    wait = request.config_dict[appkeys.SETTINGS].push_queue_wait
    try:
        await asyncio.wait_for(slots.acquire(), wait)
    except TimeoutError:
        err = errors.ServerBusy(f"too many pushes in progress; retry in {int(wait)} s", {"retry_after": int(wait)})
        err.headers["Retry-After"] = str(int(wait))
        raise err from None
    try:
        yield
    finally:
        slots.release()


# -- E8, E9, E10, E11 -------------------------------------------------------------


async def _manifests_json(request: web.Request, pkg: Package, media_type: str | None, release: str | None) -> bytes:
    """E8 and E9 as JSON bytes. Identical listings asked at once by one identity are built and
    encoded once: with MiBs of metadata a release, each costs real memory and CPU."""
    store = _store(request)

    async def build() -> bytes:
        found = await store.manifests(pkg, media_type, release)
        return await asyncio.to_thread(wire.encode, [wire.manifest_object(pkg, e, d) for e, d in found])

    return await store.read.once(("manifests", identity_key(), store.read.repo(pkg), media_type, release), build)


async def list_manifests(request: web.Request) -> web.Response:
    return _json_bytes(await _manifests_json(request, _package(request), _query_media_type(request), None))


async def release_manifests(request: web.Request) -> web.Response:
    pkg = _package(request)  # the name is checked first, as on every route
    release = mapping.check_release(request.match_info["release"])
    return _json_bytes(await _manifests_json(request, pkg, None, release))


async def show(request: web.Request) -> web.Response:
    pkg = _package(request)
    e, d, channels = await _store(request).show(pkg, request.match_info["release"], _media_type(request))
    return await _documents(wire.shown(pkg, e, d, channels))


async def delete_release(request: web.Request) -> web.Response:
    pkg = _package(request)
    release = request.match_info["release"]
    await _store(request).write.delete(pkg, release, _media_type(request))
    return _json(wire.release_deleted(pkg, release))


# -- E12, E13 ---------------------------------------------------------------------


def _wants_json(request: web.Request) -> bool:
    return request.match_info.get("json") == "/json" or request.query.get("format") == "json"


async def pull(request: web.Request) -> web.StreamResponse:
    pkg = _package(request)
    read = _store(request).read
    entry = await read.resolve(pkg, request.match_info["release"], _media_type(request))
    if _wants_json(request):  # a JSON pull always streams: the blob goes inside the document
        fields = wire.pull_head(pkg, entry.release, entry.media_type)
        return await stream_blob(request, await read.open_blob(pkg, str(entry.layer["digest"])),
                                 mapping.filename(pkg, entry.release), fields)
    blob = await open_for_client(request, pkg, str(entry.layer["digest"]))
    if isinstance(blob, web.Response):
        return blob
    return await stream_blob(request, blob, mapping.filename(pkg, entry.release), None)


async def blob(request: web.Request) -> web.StreamResponse:
    pkg = _package(request)
    hexdigest = mapping.check_digest(request.match_info["digest"])
    filename = f"{pkg.file_stem}_{hexdigest[:8]}.tar.gz"
    if _wants_json(request):
        stream = await _store(request).read.open_blob(pkg, "sha256:" + hexdigest)
        return await stream_blob(request, stream, filename, wire.pull_head(pkg, hexdigest, None))
    found = await open_for_client(request, pkg, "sha256:" + hexdigest)
    if isinstance(found, web.Response):
        return found
    return await stream_blob(request, found, filename, None)


# -- E14 to E18: channels ----------------------------------------------------------


async def list_channels(request: web.Request) -> web.Response:
    return _json([wire.channel(c) for c in await _store(request).channels.listing(_package(request))])


async def show_channel(request: web.Request) -> web.Response:
    return _json(wire.channel(await _store(request).channels.show(_package(request), request.match_info["channel"])))


async def add_channel_release(request: web.Request) -> web.Response:
    m = request.match_info
    found = await _store(request).channels.add_release(_package(request), m["channel"], m["release"])
    return _json(wire.channel(found))


async def remove_channel_release(request: web.Request) -> web.Response:
    pkg, m = _package(request), request.match_info
    await _store(request).channels.remove_release(pkg, m["channel"], m["release"])
    return _json(wire.channel_release_removed(pkg, m["channel"], m["release"]))


async def delete_channel(request: web.Request) -> web.Response:
    pkg, name = _package(request), request.match_info["channel"]
    await _store(request).channels.delete(pkg, name)
    return _json(wire.channel_deleted(pkg, name))


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


def add_cnr_routes(app: web.Application) -> None:
    """The CNR table on one application, each path with and without a trailing slash."""
    app.router.add_get("/", index)
    for method, path, handler in ROUTES:
        app.router.add_route(method, path, handler)
        app.router.add_route(method, path + "/", handler)


def setup_routes(app: web.Application) -> None:
    """The CNR API under /cnr (a sub-application) and at the root (aiohttp takes no sub-app at /)."""
    cnr = web.Application()
    add_cnr_routes(cnr)
    # /cnr itself belongs to the sub-app too: the sub-app answers every path under its prefix, so a
    # POST /cnr beside a main-app GET /cnr would get the sub-app's 404 instead of 405.
    cnr.router.add_get("", index)
    app.add_subapp("/cnr", cnr)
    add_cnr_routes(app)
