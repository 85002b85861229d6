"""The aiohttp application: factory, set-up of each concern, middleware."""

from __future__ import annotations

import asyncio
import logging
import ssl
import uuid
from typing import AsyncIterator, Awaitable, Callable

import aiohttp
from aiohttp import web

from cnr_oci import appkeys, errors, oci
from cnr_oci.embedded import EmbeddedRegistry
from cnr_oci.oci import OciClient
from cnr_oci.service import PackageService
from cnr_oci.settings import Settings

log = logging.getLogger(__name__)
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
STREAMING = web.RequestKey("streaming", bool)

# Registry errors become CNR errors here, and only here.
_REGISTRY_TO_CNR: list[tuple[type[oci.RegistryError], type[errors.CnrError]]] = [
    (oci.Unauthorized, errors.Unauthorized),
    (oci.Denied, errors.Forbidden),
    (oci.NotFound, errors.ResourceNotFound),
    (oci.UnsupportedOperation, errors.Unsupported),
    (oci.TooManyRequests, errors.UpstreamUnavailable),
    (oci.RegistryUnavailable, errors.UpstreamUnavailable),
    (oci.InvalidResponse, errors.UpstreamBadGateway),
    (oci.RegistryError, errors.UpstreamBadGateway),
]
_HTTP_TO_CNR = {
    404: errors.ResourceNotFound,
    405: errors.MethodNotAllowed,
    413: errors.PayloadTooLarge,
}


def registry_to_cnr(exc: oci.RegistryError) -> errors.CnrError:
    for source, target in _REGISTRY_TO_CNR:
        if isinstance(exc, source):
            return target(f"registry: {exc}")
    raise AssertionError("unreachable")


@web.middleware
async def error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Every 4xx/5xx, the router's own included, in the CNR envelope."""
    try:
        return await handler(request)
    except Exception as exc:
        if request.get(STREAMING):
            # Headers are gone: abort the connection, never finish a wrong body.
            log.warning("aborting stream for %s %s: %s", request.method, request.path, exc)
            raise
        if isinstance(exc, errors.CnrError):
            return errors.render(exc)
        if isinstance(exc, oci.RegistryError):
            log.warning("registry error on %s %s: %s; upstream said: %.300s",
                        request.method, request.path, exc, exc.body)
            return errors.render(registry_to_cnr(exc))
        if isinstance(exc, web.HTTPException):
            if exc.status < 400:
                raise
            cls = _HTTP_TO_CNR.get(exc.status, errors.InvalidUsage)
            err = cls(exc.reason or exc.text or "error")
            err.status = exc.status
            return errors.render(err, {k: v for k, v in exc.headers.items() if k == "Allow"})
        request_id = uuid.uuid4().hex[:12]
        log.exception("unexpected error, request id %s, on %s %s", request_id, request.method, request.path)
        return errors.render(errors.InternalError(f"internal error (request id {request_id})",
                                                  {"request_id": request_id}))


def _ssl_context(settings: Settings) -> ssl.SSLContext | bool:
    if settings.ca_file:
        return ssl.create_default_context(cafile=settings.ca_file)
    return True


async def registry_ctx(app: web.Application) -> AsyncIterator[None]:
    """Start the embedded docker-registry when no upstream is given."""
    settings = app[appkeys.SETTINGS]
    if settings.upstream:
        app[appkeys.UPSTREAM] = settings.upstream
        yield
        return
    reg = EmbeddedRegistry(settings.data_dir, binary=settings.registry_binary)
    await asyncio.to_thread(reg.start)
    log.info("embedded docker-registry on %s, storage in %s", reg.url, reg.root / "registry")
    app[appkeys.EMBEDDED] = reg
    app[appkeys.UPSTREAM] = reg.url
    try:
        yield
    finally:
        await asyncio.to_thread(reg.stop)


async def client_ctx(app: web.Application) -> AsyncIterator[None]:
    """One ClientSession (one connection pool) per app; closed by whoever made it."""
    settings = app[appkeys.SETTINGS]
    timeout = aiohttp.ClientTimeout(
        total=None, connect=settings.connect_timeout, sock_read=settings.read_timeout
    )
    connector = aiohttp.TCPConnector(limit=100, ssl=_ssl_context(settings))
    async with aiohttp.ClientSession(timeout=timeout, connector=connector, auto_decompress=False) as session:
        app[appkeys.SESSION] = session
        client = OciClient(session, app[appkeys.UPSTREAM])
        app[appkeys.OCI] = client
        app[appkeys.SERVICE] = PackageService(
            client, settings.repository_prefix, tag_ttl=settings.tag_ttl
        )
        yield


def create_app(settings: Settings) -> web.Application:
    """Build the cnr-oci application from settings (no argv, no environment)."""
    from cnr_oci import routes

    app = web.Application(
        middlewares=[error_middleware], client_max_size=settings.max_body_size
    )
    app[appkeys.SETTINGS] = settings
    app.cleanup_ctx.append(registry_ctx)
    app.cleanup_ctx.append(client_ctx)
    routes.setup_routes(app)
    return app
