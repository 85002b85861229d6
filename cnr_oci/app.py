"""The aiohttp application: factory, set-up of each concern, middleware."""

from __future__ import annotations

import asyncio
import logging
import ssl
import time
import uuid
from pathlib import Path
from typing import Any, AsyncIterator, Awaitable, Callable

import aiohttp
from aiohttp import web
from aiohttp.typedefs import Middleware

from cnr_oci import appkeys, errors, upstream
from cnr_oci.auth import IDENTITY, TokenCodec, load_secret, parse_authorization, service_credentials
from cnr_oci.embedded import EmbeddedRegistry, has_users, htpasswd_path
from cnr_oci.oci import OciClient
from cnr_oci.locks import PackageLocks
from cnr_oci.metrics import Metrics
from cnr_oci.service import PackageService
from cnr_oci.settings import Settings

log = logging.getLogger(__name__)
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
STREAMING = web.RequestKey("streaming", bool)
READ_BUFSIZE = 4 * 1024 * 1024

# Registry errors become CNR errors here, and only here.
_REGISTRY_TO_CNR: list[tuple[type[upstream.RegistryError], type[errors.CnrError]]] = [
    (upstream.Unauthorized, errors.Unauthorized),
    (upstream.Denied, errors.Forbidden),
    (upstream.NotFound, errors.ResourceNotFound),
    (upstream.UnsupportedOperation, errors.Unsupported),
    (upstream.TooLarge, errors.PayloadTooLarge),
    (upstream.TooManyRequests, errors.UpstreamUnavailable),
    (upstream.RegistryUnavailable, errors.UpstreamUnavailable),
    (upstream.InvalidResponse, errors.UpstreamBadGateway),
    (upstream.RegistryError, errors.UpstreamBadGateway),
]
_HTTP_TO_CNR = {
    404: errors.ResourceNotFound,
    405: errors.MethodNotAllowed,
    413: errors.PayloadTooLarge,
}


def registry_to_cnr(exc: upstream.RegistryError, request: web.Request) -> errors.CnrError:
    for source, target in _REGISTRY_TO_CNR:
        if isinstance(exc, source):
            details: dict[str, object] = {}
            if isinstance(exc, upstream.Denied):
                m = request.match_info
                details = {"package": f"{m['ns']}/{m['name']}" if "ns" in m else None, "scopes": exc.scopes}
            return target(f"registry: {exc}", details)
    raise AssertionError("unreachable")


CHALLENGE = {"WWW-Authenticate": 'Basic realm="cnr-oci"'}


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
        if isinstance(exc, upstream.RegistryError):
            cnr = registry_to_cnr(exc, request)
            # A refusal (401, 403, 404) is the caller's business, and anyone can cause one: INFO,
            # so an anonymous caller cannot flood the log at WARNING.
            log.log(logging.WARNING if cnr.status >= 500 else logging.INFO,
                    "registry error on %s %s: %s; upstream said: %.300s", request.method, request.path, exc, exc.body)
            exc = cnr
        if isinstance(exc, errors.CnrError):
            return errors.render(exc, {**(CHALLENGE if exc.status == 401 else {}), **exc.headers})
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


@web.middleware
async def metrics_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Latency by route template, never by raw path (bounded label values)."""
    start = time.perf_counter()
    status = 500
    try:
        resp = await handler(request)
        status = resp.status
        return resp
    finally:
        info = request.match_info.route.resource
        route = info.canonical if info is not None else "unmatched"
        request.app[appkeys.METRICS].requests.labels(request.method, route, str(status)).observe(
            time.perf_counter() - start)


@web.middleware
async def encoding_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Request bodies are JSON as sent: a Content-Encoding (gzip, deflate, br) is refused with 415
    before anything is read, so no one makes the server inflate a bomb."""
    encoding = request.headers.get("Content-Encoding", "identity").strip().lower()
    if encoding not in ("", "identity"):
        err = errors.UnsupportedMediaType("compressed request bodies are not accepted; send the body "
                                          "without Content-Encoding", {"content_encoding": encoding[:40]})
        err.headers["Connection"] = "close"
        raise err
    return await handler(request)


@web.middleware
async def auth_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """The caller's identity, for every registry request this CNR request makes.

    Without credentials, cnr-oci's own service credentials stand in only where the operator
    allowed it: reads with --anonymous-read, writes with --service-write.
    """
    ident = None
    if request.path not in LOGIN_PATHS:
        ident = parse_authorization(request.headers.get("Authorization"), request.app[appkeys.TOKENS])
    if ident is None and appkeys.SERVICE_CREDENTIALS in request.app:
        settings = request.app[appkeys.SETTINGS]
        reading = request.method in ("GET", "HEAD")
        if (reading and settings.anonymous_read) or (not reading and settings.service_write):
            ident = request.app[appkeys.SERVICE_CREDENTIALS]
    token = IDENTITY.set(ident)
    try:
        return await handler(request)
    finally:
        IDENTITY.reset(token)


LOGIN_PATHS = frozenset(p + s for p in ("/cnr/api/v1/users/login", "/api/v1/users/login") for s in ("", "/"))


def cors_middleware(origins: tuple[str, ...]) -> Middleware:
    """CORS for the configured origins only (off by default)."""
    allow_all = "*" in origins

    @web.middleware
    async def cors(request: web.Request, handler: Handler) -> web.StreamResponse:
        origin = request.headers.get("Origin")
        allowed = origin is not None and (allow_all or origin in origins)
        if allowed and request.method == "OPTIONS" and "Access-Control-Request-Method" in request.headers:
            resp: web.StreamResponse = web.Response(status=204)
        else:
            resp = await handler(request)
        if allowed and origin is not None:
            resp.headers["Access-Control-Allow-Origin"] = "*" if allow_all else origin
            resp.headers["Access-Control-Allow-Headers"] = "Authorization, Content-Type"
            resp.headers["Access-Control-Allow-Methods"] = "GET, POST, DELETE, OPTIONS"
            resp.headers["Vary"] = "Origin"
        return resp

    return cors


def _ssl_context(settings: Settings) -> ssl.SSLContext | bool:
    if settings.tls_insecure:
        return False
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
    users = htpasswd_path(settings.data_dir)
    reg = EmbeddedRegistry(settings.data_dir, binary=settings.registry_binary,
                           htpasswd=users if has_users(users) else None)
    await asyncio.to_thread(reg.start)
    log.info("embedded docker-registry on %s, storage in %s, %s", reg.url, reg.root / "registry",
             f"users from {users}" if reg.htpasswd else "open to anyone who reaches cnr-oci")
    app[appkeys.EMBEDDED] = reg
    app[appkeys.UPSTREAM] = reg.url
    watcher = asyncio.create_task(_close_when_users_appear(reg, users)) if reg.htpasswd is None else None
    try:
        yield
    finally:
        if watcher is not None:
            watcher.cancel()
            await asyncio.gather(watcher, return_exceptions=True)
        await asyncio.to_thread(reg.stop)


async def _close_when_users_appear(reg: EmbeddedRegistry, users: Path, interval: float = 1.0) -> None:
    """An open embedded registry is closed as soon as ``cnr-oci user add`` creates its first user:
    distribution reads its auth section only at start, so it is restarted (same port) with it."""
    while not await asyncio.to_thread(has_users, users):
        await asyncio.sleep(interval)
    reg.htpasswd = users
    await asyncio.to_thread(reg.restart)
    log.warning("users appeared in %s: the embedded registry now requires credentials", users)


async def client_ctx(app: web.Application) -> AsyncIterator[None]:
    """One ClientSession (one connection pool) per app; closed by whoever made it."""
    settings = app[appkeys.SETTINGS]
    timeout = aiohttp.ClientTimeout(
        total=None, connect=settings.connect_timeout, sock_read=settings.read_timeout
    )
    connector = aiohttp.TCPConnector(limit=100, ssl=_ssl_context(settings))
    # A deep read buffer keeps the upstream flowing while a chunk is written downstream.
    # Bodies are taken as sent (digests are over them), so ask for no compression.
    async with aiohttp.ClientSession(timeout=timeout, connector=connector, auto_decompress=False,
                                     cookie_jar=aiohttp.DummyCookieJar(),
                                     headers={"Accept-Encoding": "identity"},
                                     read_bufsize=READ_BUFSIZE) as session:
        app[appkeys.SESSION] = session
        client = OciClient(session, app[appkeys.UPSTREAM], metrics=app[appkeys.METRICS],
                           deadline=settings.upstream_timeout, min_rate=settings.upstream_min_rate,
                           rate_window=settings.upstream_rate_window)
        app[appkeys.OCI] = client
        creds = await asyncio.to_thread(
            service_credentials, settings.registry_username, settings.registry_password,
            settings.docker_config, client.base.host_port_subcomponent or "",
        )
        if creds is not None:
            app[appkeys.SERVICE_CREDENTIALS] = creds
        elif settings.anonymous_read or settings.service_write:
            log.warning("--anonymous-read and --service-write do nothing without service credentials "
                        "(--registry-username or --docker-config)")
        redis: Any = None
        if settings.redis_url:
            from redis.asyncio import from_url

            redis = from_url(settings.redis_url)
        service = PackageService(
            client, settings.repository_prefix, cache_ttl=settings.cache_ttl, locks=PackageLocks(redis)
        )
        app[appkeys.SERVICE] = service
        settler = asyncio.create_task(_settle_forever(service))
        try:
            yield
        finally:
            settler.cancel()
            await asyncio.gather(settler, return_exceptions=True)
            if redis is not None:
                await redis.aclose()


async def _settle_forever(service: PackageService, interval: float = 1.0) -> None:
    """Roll back in-doubt tag writes once the registry answers again."""
    while True:
        await asyncio.sleep(interval)
        if service.in_doubt:
            await service.settle()


def create_app(settings: Settings) -> web.Application:
    """Build the cnr-oci application from settings (no argv, no environment)."""
    from cnr_oci import logsafe, routes

    logsafe.install_log_filter()  # no raw request bytes or credentials in aiohttp's logs
    middlewares: list[Middleware] = []
    if settings.cors_origins:
        middlewares.append(cors_middleware(settings.cors_origins))
    middlewares += [metrics_middleware, error_middleware, encoding_middleware, auth_middleware]
    app = web.Application(middlewares=middlewares, client_max_size=settings.max_body_size)
    app[appkeys.SETTINGS] = settings
    app[appkeys.METRICS] = Metrics()
    # Push bodies in memory at once (each up to max_body_size, about 3x that while decoded).
    app[appkeys.PUSH_SLOTS] = asyncio.Semaphore(settings.max_concurrent_pushes)
    app[appkeys.TOKENS] = TokenCodec(load_secret(settings.token_secret, settings.data_dir), settings.token_ttl)
    app.cleanup_ctx.append(registry_ctx)
    app.cleanup_ctx.append(client_ctx)
    routes.setup_routes(app)
    return app
