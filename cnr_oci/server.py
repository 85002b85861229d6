"""The HTTP server edge: a head deadline, a connection cap, and error bodies that never quote the request.

What aiohttp 3.14 does by itself (read in web_protocol.RequestHandler):

- A request body has no deadline at all: once the head is parsed the handler awaits
  ``request.content`` for as long as the client trickles bytes. ``bodies.read_body`` bounds it.
- A partial request line or head is only cut by the keep-alive timer (``keepalive_timeout``,
  75 s under ``run_app``, 3630 s for a bare ``RequestHandler``), started at connect and after
  each response; bytes arriving do not extend it, but nothing shorter exists.
- There is no cap on open connections.
- A head it cannot parse is logged at ERROR with the exception, whose text quotes the raw
  line (both the C parser and the pure-Python one), and the 400 body echoes it: a token
  with a stray ``\\r`` ends up in the log and in the response.

``LimitedHandler`` adds a head deadline and a connection cap and answers malformed
requests with a generic CNR error; ``logsafe.RedactingFilter`` keeps raw request bytes and
credentials out of aiohttp's log records. ``run`` serves an app with all of it (cli.main).
"""

from __future__ import annotations

import asyncio
import json
import logging
import resource
import ssl
from collections.abc import Callable
from contextlib import suppress
from dataclasses import dataclass
from typing import Any

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError
from aiohttp.web_request import BaseRequest

from cnr_oci import accesslog, wire
from cnr_oci.logsafe import install_log_filter

log = logging.getLogger(__name__)

# Connections, per process. 1000 open connections cost ~1000 descriptors and tens of MB
# at most; the process also needs descriptors for the upstream pool (100) and files, so
# ``run`` raises the soft RLIMIT_NOFILE to fit when the hard limit allows.
MAX_CONNECTIONS = 1000
# A client's request head (line + headers) arrives in one or two packets; 10 s is generous
# for a slow link and caps what a slowloris can hold. Also the TLS handshake deadline.
HEADER_TIMEOUT = 10.0
# Seconds a connection whose request body was refused half-way stays open, dropping input, after the
# answer: so that the client can read the answer before the close.
LINGER = 2.0
# Idle keep-alive stays aiohttp's run_app default: longer than the 60 s idle timeout of
# common proxies/load balancers in front (nginx, AWS ALB), so they never reuse a connection
# we are closing. Idle connections are cheap, and the first to go when the cap is reached.
KEEPALIVE_TIMEOUT = 75.0


@dataclass(frozen=True)
class Limits:
    """Per-process connection limits (see the constants above for the reasoning)."""

    max_connections: int = MAX_CONNECTIONS
    header_timeout: float = HEADER_TIMEOUT
    keepalive_timeout: float = KEEPALIVE_TIMEOUT


# --- error bodies ------------------------------------------------------------------------


def _cnr_error(status: int, message: str) -> bytes:
    code = "payload-too-large" if status == 413 else "invalid-usage" if status < 500 else "internal-error"
    return json.dumps(wire.error_body(code, message, {})).encode()


_BUSY = _cnr_error(503, "too many open connections, retry later")
_BUSY_RESPONSE = (b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\n"
                  b"Retry-After: 1\r\nConnection: close\r\nContent-Length: %d\r\n\r\n" % len(_BUSY)) + _BUSY


# --- connections -------------------------------------------------------------------------


class LimitedHandler(web.RequestHandler):
    """aiohttp's per-connection protocol with a head deadline, a place under the cap, and
    generic error bodies."""

    def __init__(self, manager: LimitedServer, *, limits: Limits, **kwargs: Any) -> None:
        super().__init__(manager, **kwargs)
        self._limits = limits
        self._owner = manager
        self._head_timer: asyncio.TimerHandle | None = None
        self._refused = False
        self._discarding = False  # lingering after a refused body: what arrives is dropped

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        server = self._owner
        if len(server.open) >= self._limits.max_connections and not server.evict_idle():
            self._refused = True
            server.note_refusal()
            assert isinstance(transport, asyncio.WriteTransport)
            transport.write(_BUSY_RESPONSE)
            transport.close()
            return
        super().connection_made(transport)
        server.open.add(self)
        self._arm_head_timer()  # the first request head is due within header_timeout of connect

    def connection_lost(self, exc: BaseException | None) -> None:
        self._cancel_head_timer()
        self._owner.open.discard(self)
        if not self._refused:
            super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self._refused or self._discarding:
            return
        heads = self._request_count
        super().data_received(data)
        if self._request_count != heads:
            self._cancel_head_timer()  # a head is complete
        elif data and self.waiting_for_head():
            self._arm_head_timer()  # the first bytes of the next head start its clock

    def linger_on_close(self, seconds: float = LINGER) -> None:
        """When the response to a body we stopped reading (a 408) is done, send FIN and drop what
        still arrives for ``seconds`` before closing: closing with unread bytes makes the kernel
        send a reset, which can destroy the response before the client reads it (nginx's
        lingering_close). Bounded: the connection is closed after ``seconds`` whatever arrives."""
        found = self.transport
        if found is None or not found.can_write_eof():  # TLS cannot half-close: close at once, as before
            return
        real: asyncio.Transport = found
        handler = self

        class Lingering:
            def __getattr__(self, name: str) -> Any:
                return getattr(real, name)

            def close(self) -> None:
                if real.is_closing():
                    return
                handler._discarding = True
                try:
                    real.write_eof()  # after the response's bytes: the client reads them, then EOF
                except (OSError, RuntimeError):
                    real.close()
                    return
                asyncio.get_running_loop().call_later(seconds, real.close)

        self.transport = Lingering()  # type: ignore[assignment]

    def waiting_for_head(self) -> bool:
        """Between requests: no request is being handled and none is queued."""
        return self._waiter is not None and not self._waiter.done() and not self._messages

    def idle(self) -> bool:
        """Kept alive between requests, with no partial head: safe to close."""
        return self.waiting_for_head() and self._head_timer is None

    def _arm_head_timer(self) -> None:
        if self._head_timer is None and self._limits.header_timeout > 0:
            self._head_timer = self._loop.call_later(self._limits.header_timeout, self._head_timeout)

    def _cancel_head_timer(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _head_timeout(self) -> None:
        self._head_timer = None
        if self._waiter is None or self._messages:
            return  # a request is being handled: not ours to cut
        log.debug("closing a connection: no complete request head within %g s", self._limits.header_timeout)
        self.force_close()

    def handle_error(self, request: BaseRequest, status: int = 500, exc: BaseException | None = None,
                     message: str | None = None) -> web.StreamResponse:
        """A CNR-shaped error that never quotes the request; parse errors logged by class name."""
        if isinstance(exc, HttpProcessingError):
            self.logger.info("malformed request from %s: %s (status %d)", request.remote,
                             type(exc).__name__, status)
            text = f"malformed HTTP request ({type(exc).__name__})"
        else:
            self.log_exception("Error handling request from %s", request.remote, exc_info=exc)
            text = "internal error" if status >= 500 else "bad request"
        if request.writer.output_size > 0:
            raise ConnectionError("Response is sent already, cannot send another response")
        resp = web.Response(status=status, body=_cnr_error(status, text), content_type="application/json")
        resp.force_close()
        return resp


class LimitedServer(web.Server):
    """aiohttp's connection factory, making LimitedHandlers and counting them."""

    def __init__(self, handler: Any, *, limits: Limits, loop: asyncio.AbstractEventLoop,
                 request_factory: Any = None, handler_cancellation: bool = False, **kwargs: Any) -> None:
        super().__init__(handler, request_factory=request_factory, handler_cancellation=handler_cancellation,
                         loop=loop, **kwargs)
        self.limits = limits
        self.open: set[LimitedHandler] = set()
        self._event_loop = loop
        self._handler_kwargs = kwargs
        self.refused = 0
        self._warned_at = float("-inf")

    def __call__(self) -> LimitedHandler:
        return LimitedHandler(self, loop=self._event_loop, limits=self.limits, **self._handler_kwargs)

    def note_refusal(self) -> None:
        """Count a refused connection; warn at most every 10 s (an attack must not flood the log)."""
        self.refused += 1
        now = self._event_loop.time()
        if now - self._warned_at >= 10.0:
            self._warned_at = now
            log.warning("at the connection cap (%d, --max-connections): %d connection(s) refused so far",
                        self.limits.max_connections, self.refused)

    def evict_idle(self) -> bool:
        """Close one idle keep-alive connection to make room; False if none is idle."""
        for handler in self.open:
            if handler.idle():
                self.open.discard(handler)
                handler.force_close()
                return True
        return False


class LimitedRunner(web.AppRunner):
    """An AppRunner whose server is a LimitedServer."""

    def __init__(self, app: web.Application, *, limits: Limits = Limits(), **kwargs: Any) -> None:
        kwargs.setdefault("keepalive_timeout", limits.keepalive_timeout)
        # aiohttp would inflate a gzip/deflate request body on the event loop as it arrives, before
        # any handler runs, and inflate the unread rest while discarding it: a 1 MB anonymous body
        # cost 1.5 s of loop time. Bodies are taken as sent; encoded ones get 415 (app middleware).
        kwargs.setdefault("auto_decompress", False)
        kwargs.setdefault("access_log_class", accesslog.AccessLog)  # one line per request, ids and all
        super().__init__(app, **kwargs)
        self.limits = limits

    async def _make_server(self) -> web.Server:
        base = await super()._make_server()  # starts the app, as AppRunner does
        return LimitedServer(base.request_handler, limits=self.limits, loop=asyncio.get_running_loop(),
                             request_factory=base.request_factory,
                             handler_cancellation=base.handler_cancellation, **base._kwargs)


class LimitedSite(web.TCPSite):
    """A TCPSite whose TLS handshake has the head deadline (asyncio's default is 60 s)."""

    async def start(self) -> None:
        runner = self._runner
        if not isinstance(runner, LimitedRunner) or self._ssl_context is None:
            await super().start()
            return
        runner._reg_site(self)
        server = runner.server
        assert server is not None
        self._server = await asyncio.get_running_loop().create_server(
            server, self._host, self._port, ssl=self._ssl_context, backlog=self._backlog,
            reuse_address=self._reuse_address, reuse_port=self._reuse_port,
            ssl_handshake_timeout=runner.limits.header_timeout or None)
        self._bound_port = self._server.sockets[0].getsockname()[1] if self._server.sockets else self._port


def raise_fd_limit(wanted: int) -> None:
    """Raise the soft RLIMIT_NOFILE towards ``wanted`` (up to the hard limit); warn if short."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < wanted:
        target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
        with suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        if soft < wanted:
            log.warning("open-file limit %d is below the %d that --max-connections needs", soft, wanted)


async def _serve(app: web.Application, host: str, port: int, ssl_context: ssl.SSLContext | None,
                 limits: Limits, announce: Callable[[str], None], reuse_port: bool) -> None:
    runner = LimitedRunner(app, limits=limits, handle_signals=True)
    await runner.setup()
    try:
        site = LimitedSite(runner, host, port, ssl_context=ssl_context, reuse_port=reuse_port or None)
        await site.start()
        announce(f"======== Running on {site.name} ========")
        while True:
            await asyncio.sleep(3600)
    finally:
        await runner.cleanup()


def run(app: web.Application, *, host: str, port: int, ssl_context: ssl.SSLContext | None = None,
        limits: Limits = Limits(), announce: Callable[[str], None] = print, reuse_port: bool = False) -> None:
    """web.run_app with the limits: serve until SIGINT/SIGTERM, then clean up the app.
    ``reuse_port``: SO_REUSEPORT, so that several processes (--workers) share the port."""
    install_log_filter()
    raise_fd_limit(limits.max_connections + 256)  # + upstream pool, registry, files
    loop = asyncio.new_event_loop()
    main = loop.create_task(_serve(app, host, port, ssl_context, limits, announce, reuse_port))
    try:
        asyncio.set_event_loop(loop)
        loop.run_until_complete(main)
    except (web.GracefulExit, KeyboardInterrupt):
        pass
    finally:
        try:
            if not main.done():
                main.cancel()
                with suppress(asyncio.CancelledError):
                    loop.run_until_complete(main)
        finally:
            rest = asyncio.all_tasks(loop)
            for task in rest:
                task.cancel()
            loop.run_until_complete(asyncio.gather(*rest, return_exceptions=True))
            loop.run_until_complete(loop.shutdown_asyncgens())
            asyncio.set_event_loop(None)
            loop.close()


def tls_listener(cert: str | None, key: str | None) -> ssl.SSLContext | None:
    """The server's TLS context from --tls-cert/--tls-key (None: plain HTTP).

    Raises:
        ValueError: only one of the two is given.
        OSError, ssl.SSLError: they cannot be loaded.
    """
    if bool(cert) != bool(key):
        raise ValueError("--tls-cert and --tls-key go together")
    if not cert:
        return None
    listener = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    listener.load_cert_chain(cert, key)
    return listener
