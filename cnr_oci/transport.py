"""Requests to one registry: authentication as the caller, retries, deadlines and metrics."""

from __future__ import annotations

import asyncio
import io
import logging
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path
from typing import Any, TypeVar

import aiohttp
from yarl import URL

from cnr_oci import requestctx
from cnr_oci.auth import IDENTITY
from cnr_oci.challenge import Authenticator, TokenRefused, parse_challenge, scope_for
from cnr_oci.metrics import Metrics
from cnr_oci.upstream import (
    BROKEN,
    MAX_MANIFEST,
    InvalidResponse,
    RegistryUnavailable,
    ResponseTooLarge,
    Unauthorized,
    auth_refusal,
    broken,
    error_for_status,
    origin,
    read_error_body,
)

log = logging.getLogger(__name__)

DEADLINE = 10.0  # seconds for one registry call, its retries included
MIN_RATE = 16 * 1024  # bytes/s a blob stream must keep up, measured over RATE_WINDOW
RATE_WINDOW = 10.0
T = TypeVar("T")
RETRY_STATUSES = frozenset({429, 502, 503, 504})
IDEMPOTENT = frozenset({"GET", "HEAD"})
STREAM_BODY = 64 * 1024  # larger bodies are sent from a BytesIO, in chunks


async def _keep_open(resp: aiohttp.ClientResponse) -> aiohttp.ClientResponse:
    return resp


# A request body: bytes, or a local file (a spooled blob), sent in chunks and re-read for a resend.
Body = bytes | Path


def body_size(data: Body) -> int:
    return data.stat().st_size if isinstance(data, Path) else len(data)


def _payload(data: Body | None) -> Any:
    """What aiohttp sends: large bodies in chunks, from a fresh reader for every attempt."""
    if isinstance(data, Path):
        return data.open("rb")
    return io.BytesIO(data) if data is not None and len(data) > STREAM_BODY else data


class Transport:
    """The session to one registry; every request passes through ``_call``."""

    def __init__(
        self,
        session: aiohttp.ClientSession,
        base_url: str,
        *,
        retries: int = 3,
        backoff: float = 0.2,
        backoff_cap: float = 2.0,
        metrics: Metrics | None = None,
        deadline: float | None = DEADLINE,
        min_rate: int = MIN_RATE,
        rate_window: float = RATE_WINDOW,
        max_manifest: int = MAX_MANIFEST,
    ) -> None:
        self._session = session
        self.base = URL(base_url.rstrip("/"))
        self._origin = origin(self.base)
        self._retries = retries
        self._backoff = backoff
        self._backoff_cap = backoff_cap
        self.deadline = deadline if deadline and deadline > 0 else None
        self.min_rate = max(0, min_rate)
        self.rate_window = rate_window
        self.max_manifest = max_manifest  # the cap on a manifest read or written
        self.auth = Authenticator(session)
        self.metrics = metrics or Metrics()

    def _url(self, path: str) -> URL:
        # encoded=True: repository names and digests are already URL-safe.
        return URL(str(self.base) + path, encoded=True)

    def _location(self, location: str) -> URL:
        """An upload Location, relative to the registry or absolute."""
        try:
            return self.base.join(URL(location)) if not location.startswith("http") else URL(location)
        except ValueError as exc:
            raise InvalidResponse(f"blob upload answered a bad Location: {location[:200]!r}") from exc

    def _allowance(self, size: int) -> float:
        """Extra seconds to move ``size`` bytes at the minimum rate."""
        return size / self.min_rate if self.min_rate else 0.0

    async def _request(
        self,
        method: str,
        path_or_url: str | URL,
        *,
        expect: tuple[int, ...] = (200,),
        headers: Mapping[str, str] | None = None,
        params: Mapping[str, str] | None = None,
        data: Body | None = None,
        what: str = "",
        authenticate: bool = True,
        redirects: bool = True,
    ) -> aiohttp.ClientResponse:
        """An open response with an expected status; the caller releases it (see ``_call``).
        ``redirects=False``: a redirect is answered as it came (expect its status)."""
        return await self._call(method, path_or_url, _keep_open, expect=expect, headers=headers,
                                params=params, data=data, what=what, authenticate=authenticate,
                                redirects=redirects)

    async def _call(
        self,
        method: str,
        path_or_url: str | URL,
        reader: Callable[[aiohttp.ClientResponse], Awaitable[T]],
        *,
        expect: tuple[int, ...] = (200,),
        headers: Mapping[str, str] | None = None,
        params: Mapping[str, str] | None = None,
        data: Body | None = None,
        what: str = "",
        authenticate: bool = True,
        body_limit: int = 0,
        redirects: bool = True,
    ) -> T:
        """The single choke point: authenticates as the caller, retries idempotent requests
        on 429/502/503/504, connection errors and broken answers, and translates errors.

        ``reader`` turns an expected answer into the result, inside the retries; one that
        reads the body says how much it may read (``body_limit``). The whole call, retries
        included, has ``deadline`` seconds, plus the time to move its body at ``min_rate``.

        Raises:
            RegistryError: a subclass naming what the registry said.
        """
        url = path_or_url if isinstance(path_or_url, URL) else self._url(path_or_url)
        what = what or f"{method} {url.path}"
        deadline = self.deadline
        if deadline is not None and data:
            deadline += self._allowance(body_size(data))
        timer = asyncio.timeout(deadline)
        try:
            async with timer:
                return await self._attempts(method, url, reader, expect, headers, params, data, what,
                                            authenticate, body_limit, timer, redirects)
        except TimeoutError as exc:
            if timer.expired():
                raise RegistryUnavailable(f"{what}: no answer within {deadline:g} s") from exc
            raise

    async def _attempts(
        self, method: str, url: URL, reader: Callable[[aiohttp.ClientResponse], Awaitable[T]],
        expect: tuple[int, ...], headers: Mapping[str, str] | None, params: Mapping[str, str] | None,
        data: Body | None, what: str, authenticate: bool, body_limit: int, timer: asyncio.Timeout,
        redirects: bool = True,
    ) -> T:
        attempts = self._retries + 1 if method in IDEMPOTENT else 1
        for attempt in range(attempts):
            last = attempt == attempts - 1
            try:
                resp = await self._send(method, url, headers, params, data, what, authenticate, redirects)
                if resp.status in expect:
                    length = resp.headers.get("Content-Length", "")
                    when = timer.when()
                    if body_limit and when is not None and length.isdigit():
                        # A big answer may take its time, at no less than the minimum rate.
                        timer.reschedule(when + self._allowance(min(int(length), body_limit)))
                    try:
                        return await reader(resp)
                    except BaseException:
                        resp.release()
                        raise
                body = await read_error_body(resp) if method != "HEAD" else b""
                resp.release()
            except ResponseTooLarge:
                raise
            except BROKEN as exc:
                if last:
                    raise broken(exc, what) from exc
                log.info("%s failed (%s), retrying", what, type(exc).__name__)
                await self._sleep(attempt)
                continue
            if resp.status in RETRY_STATUSES and not last:
                log.info("registry answered %s to %s, retrying", resp.status, what)
                await self._sleep(attempt)
                continue
            raise error_for_status(resp.status, body, what, method)
        raise AssertionError("unreachable")

    async def _send(
        self, method: str, url: URL, headers: Mapping[str, str] | None,
        params: Mapping[str, str] | None, data: Body | None, what: str, authenticate: bool = True,
        redirects: bool = True,
    ) -> aiohttp.ClientResponse:
        """Send as the request's identity; answer one 401 challenge, then give up.

        Credentials go only to the upstream's own origin: an upload Location or a Link
        that names another host gets the request without them, and its challenges unanswered.
        """
        body: Any = _payload(data)
        if authenticate and origin(url) != self._origin:
            log.info("%s: %s is not the registry's origin; sending no credentials", what, url.origin())
            authenticate = False
        if not authenticate:
            resp = await self._session.request(method, url, headers=_with_request_id(headers), params=params,
                                               data=body, allow_redirects=redirects)
            self.metrics.upstream.labels(method, str(resp.status)).inc()
            return resp
        ident = IDENTITY.get()
        scope = scope_for(method, url.path)
        for attempt in range(2):
            sent = _with_request_id(headers)
            auth = self.auth.cached(ident, scope)
            if auth:
                sent["Authorization"] = auth
            if attempt:
                body = _payload(data)
            resp = await self._session.request(method, url, headers=sent, params=params, data=body,
                                               allow_redirects=redirects)
            self.metrics.upstream.labels(method, str(resp.status)).inc()
            if resp.status != 401:
                return resp
            challenge = resp.headers.get("WWW-Authenticate")
            text = (await read_error_body(resp, 4096)).decode("utf-8", "replace") if method != "HEAD" else ""
            resp.release()
            if attempt == 0:
                if auth:  # only a token we sent was refused; another may be a concurrent fetch's
                    self.auth.forget(ident, scope)
                try:
                    answer = await self.auth.answer(challenge, ident, scope, refused=auth)
                except TokenRefused as exc:
                    raise Unauthorized(f"{what}: {exc}", 401) from exc
                if answer is not None:
                    continue
            raise auth_refusal(parse_challenge(challenge), ident, method, what, text)
        raise AssertionError("unreachable")

    async def _sleep(self, attempt: int) -> None:
        await asyncio.sleep(min(self._backoff_cap, self._backoff * (2**attempt)))


def _with_request_id(headers: Mapping[str, str] | None) -> dict[str, str]:
    """The headers of one registry request, counted for the current CNR request and carrying its
    X-Request-ID (the registry's logs and ours then name the same request)."""
    sent = dict(headers or {})
    request_id = requestctx.upstream_call()
    if request_id is not None:
        sent[requestctx.HEADER] = request_id
    return sent
