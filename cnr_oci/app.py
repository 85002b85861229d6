"""The aiohttp application: its factory, and the set-up and tear-down of the registry and its client."""

from __future__ import annotations

import asyncio
import logging
import os
import ssl
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web
from aiohttp.typedefs import Middleware
from prometheus_client import Gauge

from cnr_oci import apidocs, appkeys, cmapi, helmroutes, logsafe, middleware, ops, routes, uiauth
from cnr_oci.auth import Credentials, TokenCodec, load_secret, service_credentials
from cnr_oci.embedded import EmbeddedRegistry, has_users, htpasswd_path
from cnr_oci.invalidation import Invalidation
from cnr_oci.locks import PackageLocks
from cnr_oci.metrics import Metrics
from cnr_oci.oci import OciClient
from cnr_oci.settings import Settings
from cnr_oci.store import Store

log = logging.getLogger(__name__)
# A deep read buffer keeps the upstream flowing while a chunk is written downstream.
READ_BUFSIZE = 4 * 1024 * 1024


def _ssl_context(settings: Settings) -> ssl.SSLContext | bool:
    if settings.tls_insecure:
        return False
    if settings.ca_file:
        return ssl.create_default_context(cafile=settings.ca_file)
    return True


async def registry_ctx(app: web.Application) -> AsyncIterator[None]:
    """Start the embedded docker-registry when no upstream is given."""
    async with upstream_of(app[appkeys.SETTINGS]) as url:
        app[appkeys.UPSTREAM] = url
        yield


async def start_embedded(settings: Settings) -> EmbeddedRegistry:
    """The embedded docker-registry under --data-dir, started (with its users, when there are any)."""
    users = htpasswd_path(settings.data_dir)
    reg = EmbeddedRegistry(settings.data_dir, binary=settings.registry_binary,
                           htpasswd=users if has_users(users) else None)
    await asyncio.to_thread(reg.start)
    return reg


@asynccontextmanager
async def upstream_of(settings: Settings) -> AsyncIterator[str]:
    """The registry's URL: --upstream, or an embedded docker-registry started here and stopped on exit
    (once per server: the parent of --workers starts it for every worker)."""
    if settings.upstream:
        yield settings.upstream
        return
    reg = await start_embedded(settings)
    users = htpasswd_path(settings.data_dir)
    log.info("embedded docker-registry on %s, storage in %s, %s", reg.url, reg.root / "registry",
             f"users from {users}" if reg.htpasswd else "open to anyone who reaches cnr-oci")
    watcher = asyncio.create_task(_close_when_users_appear(reg, users)) if reg.htpasswd is None else None
    try:
        yield reg.url
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


@dataclass
class Backend:
    """The store over one registry, and cnr-oci's own credentials for it (None: none given)."""

    store: Store
    service_credentials: Credentials | None


@asynccontextmanager
async def open_backend(settings: Settings, upstream: str, metrics: Metrics) -> AsyncIterator[Backend]:
    """One ClientSession (one connection pool), the OCI client, the store and its locks, for the
    server and for `cnr-oci migrate` alike; closed on exit."""
    timeout = aiohttp.ClientTimeout(
        total=None, connect=settings.connect_timeout, sock_read=settings.read_timeout
    )
    connector = aiohttp.TCPConnector(limit=100, ssl=_ssl_context(settings))
    # Bodies are taken as sent (digests are over them), so ask for no compression.
    async with aiohttp.ClientSession(timeout=timeout, connector=connector, auto_decompress=False,
                                     cookie_jar=aiohttp.DummyCookieJar(),
                                     headers={"Accept-Encoding": "identity"},
                                     read_bufsize=READ_BUFSIZE) as session:
        client = OciClient(session, upstream, metrics=metrics,
                           deadline=settings.upstream_timeout, min_rate=settings.upstream_min_rate,
                           rate_window=settings.upstream_rate_window)
        creds = await asyncio.to_thread(
            service_credentials, settings.registry_username, settings.registry_password,
            settings.docker_config, client.base.host_port_subcomponent or "",
        )
        redis: Any = None
        bus: Any = None
        if settings.redis_url:
            from redis.asyncio import from_url
            from redis.asyncio.retry import Retry
            from redis.backoff import NoBackoff
            from redis.exceptions import ConnectionError as RedisConnectionError

            # A pooled connection left dead by a Redis restart fails its next command: that command is
            # sent once more on a fresh connection (else the first lock or publish after an outage failed).
            again = {"retry": Retry(NoBackoff(), 1), "retry_on_error": [RedisConnectionError]}
            redis = from_url(settings.redis_url, **again)
            # Pub/sub on a pool of its own: a subscriber connection broken by an outage, back in a
            # shared pool, failed the first lock taken after Redis returned.
            bus = from_url(settings.redis_url, socket_keepalive=True, **again)
        invalidation: Invalidation | None = None
        try:
            store = Store(client, settings.repository_prefix, cache_ttl=settings.cache_ttl,
                          locks=PackageLocks(redis), blob_cache_size=settings.blob_cache_size,
                          blob_cache_max=settings.blob_cache_max)
            if bus is not None:  # other replicas' writes drop our caches, ours drop theirs
                invalidation = Invalidation(bus, store.read)
                await invalidation.start()
            yield Backend(store, creds)
        finally:
            if invalidation is not None:
                await invalidation.close()
            for conn in (bus, redis):
                if conn is not None:
                    await conn.aclose()


async def client_ctx(app: web.Application) -> AsyncIterator[None]:
    """The backend of the server, and the task that settles tag writes of unknown outcome."""
    settings = app[appkeys.SETTINGS]
    async with open_backend(settings, app[appkeys.UPSTREAM], app[appkeys.METRICS]) as backend:
        app[appkeys.OCI] = backend.store.client
        app[appkeys.STORE] = backend.store
        if backend.service_credentials is not None:
            app[appkeys.SERVICE_CREDENTIALS] = backend.service_credentials
        elif settings.anonymous_read or settings.service_write:
            log.warning("--anonymous-read and --service-write do nothing without service credentials "
                        "(--registry-username or --docker-config)")
        settler = asyncio.create_task(_settle_forever(backend.store))
        try:
            yield
        finally:
            settler.cancel()
            await asyncio.gather(settler, return_exceptions=True)


async def _settle_forever(store: Store, interval: float = 1.0) -> None:
    """Roll back in-doubt tag writes once the registry answers again."""
    while True:
        await asyncio.sleep(interval)
        if store.write.in_doubt:
            await store.write.settle()


def create_app(settings: Settings) -> web.Application:
    """Build the cnr-oci application from settings (no argv, no environment)."""
    logsafe.install_log_filter()  # no raw request bytes or credentials in aiohttp's logs
    middlewares: list[Middleware] = [middleware.request_middleware]
    if settings.cors_origins:
        middlewares.append(middleware.cors_middleware(settings.cors_origins))
    middlewares += [middleware.metrics_middleware, middleware.error_middleware, middleware.encoding_middleware,
                    middleware.auth_middleware]
    app = web.Application(middlewares=middlewares, client_max_size=settings.max_body_size)
    app.on_response_prepare.append(middleware.send_request_id)
    app[appkeys.SETTINGS] = settings
    app[appkeys.METRICS] = Metrics()
    # Each --workers process has metrics of its own: say which one answered the scrape.
    Gauge("cnr_oci_process_id", "Process id of the server process that answered",
          registry=app[appkeys.METRICS].registry).set(os.getpid())
    # Push bodies in memory at once (each up to max_body_size, about 3x that while decoded).
    app[appkeys.PUSH_SLOTS] = asyncio.Semaphore(settings.max_concurrent_pushes)
    app[appkeys.TOKENS] = TokenCodec(load_secret(settings.token_secret, settings.data_dir), settings.token_ttl)
    app.cleanup_ctx.append(registry_ctx)
    app.cleanup_ctx.append(client_ctx)
    ops.setup_ops_routes(app)
    apidocs.setup_apidocs_routes(app)
    routes.setup_routes(app)
    helmroutes.setup_helm_routes(app)
    cmapi.setup_cm_routes(app)
    uiauth.setup_ui(app)
    return app
