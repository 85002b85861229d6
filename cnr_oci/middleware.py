"""Middleware: request ids and the access line, metrics, the CNR error envelope, refused encodings,
the caller's identity, CORS."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable

from aiohttp import web
from aiohttp.typedefs import Middleware

from cnr_oci import accesslog, appkeys, errors, requestctx, translate, uisession, upstream, wire
from cnr_oci.auth import IDENTITY, parse_authorization

log = logging.getLogger(__name__)
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

CHALLENGE = {"WWW-Authenticate": 'Basic realm="cnr-oci"'}


@web.middleware
async def request_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """The outermost: the request's id (an acceptable incoming X-Request-ID, else a new one) and its
    context for the access line; aiohttp's access logger (accesslog.AccessLog) writes that line when
    the response is complete, this middleware when the request ends without one (a stream aborted
    after its headers, a client gone)."""
    ctx = requestctx.RequestContext(requestctx.accept_id(request.headers.get(requestctx.HEADER)))
    resource = request.match_info.route.resource
    ctx.route = resource.canonical if resource is not None else None
    request[accesslog.REQUEST_KEY] = ctx
    token = requestctx.CURRENT.set(ctx)
    try:
        return await handler(request)
    except web.HTTPException:
        raise
    except BaseException as exc:
        if ctx.status is not None or isinstance(exc, asyncio.CancelledError):
            # 499: the client went away before an answer (nginx's code for it).
            accesslog.write(request, ctx.status or 499, request.writer.output_size,
                            time.perf_counter() - ctx.started)
        raise
    finally:
        requestctx.CURRENT.reset(token)


async def send_request_id(request: web.Request, response: web.StreamResponse) -> None:
    """on_response_prepare: every answer names its request id; the status is noted for the log."""
    ctx = request.get(accesslog.REQUEST_KEY)
    if isinstance(ctx, requestctx.RequestContext):
        response.headers[requestctx.HEADER] = ctx.id
        ctx.status = response.status


@web.middleware
async def error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Every 4xx/5xx, the router's own included, in the CNR envelope."""
    try:
        return await handler(request)
    except Exception as exc:
        if request.get(appkeys.STREAMING):
            # Headers are gone: abort the connection, never finish a wrong body.
            log.warning("aborting stream for %s %s: %s", request.method, request.path, exc)
            raise
        if isinstance(exc, upstream.RegistryError):
            route = request.match_info.route
            cnr = translate.to_cnr(exc, getattr(route.handler, "__name__", None), request.match_info)
            # A refusal (401, 403, 404) is the caller's business, and anyone can cause one: INFO,
            # so an anonymous caller cannot flood the log at WARNING.
            log.log(logging.WARNING if cnr.status >= 500 else logging.INFO,
                    "registry error on %s %s: %s; upstream said: %.300s", request.method, request.path, exc, exc.body)
            exc = cnr
        if isinstance(exc, errors.CnrError):
            return wire.render(exc, {**(CHALLENGE if exc.status == 401 else {}), **exc.headers})
        if isinstance(exc, web.HTTPException):
            if exc.status < 400:
                raise
            err = translate.http_to_cnr(exc.status, exc.reason or exc.text or "")
            return wire.render(err, {k: v for k, v in exc.headers.items() if k == "Allow"})
        ctx = requestctx.CURRENT.get()
        request_id = ctx.id if ctx is not None else requestctx.accept_id(None)
        log.exception("unexpected error, request id %s, on %s %s", request_id, request.method, request.path)
        return wire.render(errors.InternalError(f"internal error (request id {request_id})",
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
        request.config_dict[appkeys.METRICS].requests.labels(request.method, route, str(status)).observe(
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
        ident = parse_authorization(request.headers.get("Authorization"), request.config_dict[appkeys.TOKENS])
        if "Authorization" not in request.headers and uisession.cookie_applies(request):
            ident = uisession.cookie_identity(request, request.config_dict[appkeys.TOKENS])
        ctx = requestctx.CURRENT.get()
        if ctx is not None and ident is not None:
            ctx.user = ident.username  # the caller's own name, for the access line (never the service user)
    if ident is None and appkeys.SERVICE_CREDENTIALS in request.config_dict:
        settings = request.config_dict[appkeys.SETTINGS]
        reading = request.method in ("GET", "HEAD")
        if (reading and settings.anonymous_read) or (not reading and settings.service_write):
            ident = request.config_dict[appkeys.SERVICE_CREDENTIALS]
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
