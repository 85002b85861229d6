"""An async OCI distribution client; every request passes through ``_request``."""

from __future__ import annotations

import asyncio
import hashlib
import io
import json
import logging
from dataclasses import dataclass
from typing import Any, AsyncIterator, Awaitable, Callable, Mapping, TypeVar

import aiohttp
from yarl import URL

from cnr_oci.auth import IDENTITY, Credentials
from cnr_oci.errors import CnrOciError
from cnr_oci.challenge import Authenticator, Challenge, TokenRefused, TokenUnavailable, parse_challenge, scope_for
from cnr_oci.mapping import MANIFEST_ACCEPT
from cnr_oci.metrics import Metrics

log = logging.getLogger(__name__)

MAX_MANIFEST = 4 * 1024 * 1024  # distribution's manifest size limit
MAX_LIST = 16 * 1024 * 1024  # one page of tags or of the catalog
ERROR_BODY = 64 * 1024  # what is kept of an error answer
OFF_LOOP = 256 * 1024  # larger bodies are hashed and parsed in a thread
CHUNK = 256 * 1024
DEADLINE = 10.0  # seconds for one registry call, its retries included
MIN_RATE = 16 * 1024  # bytes/s a blob stream must keep up, measured over RATE_WINDOW
RATE_WINDOW = 10.0
T = TypeVar("T")
RETRY_STATUSES = frozenset({429, 502, 503, 504})
IDEMPOTENT = frozenset({"GET", "HEAD"})
STREAM_BODY = 64 * 1024  # larger bodies are sent from a BytesIO, in chunks


class RegistryError(CnrOciError):
    """Base of every error the registry client raises; keeps the upstream body for the log."""

    def __init__(self, message: str, status: int = 0, code: str = "", body: str = "") -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.body = body


class NotFound(RegistryError):
    pass


class ManifestUnknown(NotFound):
    pass


class BlobUnknown(NotFound):
    pass


class NameUnknown(NotFound):
    pass


class Unauthorized(RegistryError):
    pass


class Denied(RegistryError):
    """The credentials are good but do not allow this action; ``scopes`` names what is missing."""

    def __init__(self, message: str, status: int = 0, code: str = "", body: str = "",
                 scopes: list[str] | None = None) -> None:
        super().__init__(message, status, code, body)
        self.scopes = scopes or []


class TooManyRequests(RegistryError):
    pass


class UnsupportedOperation(RegistryError):
    """405 or UNSUPPORTED: e.g. deletes disabled on the registry."""


class BadRequest(RegistryError):
    """The registry refused what we sent (4xx not covered above)."""


class TooLarge(BadRequest):
    """The registry refused what we sent as too large (413, or distribution 2.8's
    400 MANIFEST_INVALID "http: request body too large" for a manifest over 4 MiB)."""


class RegistryUnavailable(RegistryError):
    """The registry is unreachable or answered 5xx."""


class InvalidResponse(RegistryError):
    """The registry answered something that is not what the spec says."""


class DigestMismatch(InvalidResponse):
    pass


class ResponseTooLarge(InvalidResponse):
    """The registry answered more than the cap for what was asked (not retried)."""


_BY_CODE: dict[str, type[RegistryError]] = {
    "MANIFEST_UNKNOWN": ManifestUnknown,
    "BLOB_UNKNOWN": BlobUnknown,
    "NAME_UNKNOWN": NameUnknown,
    "UNAUTHORIZED": Unauthorized,
    "DENIED": Denied,
    "TOOMANYREQUESTS": TooManyRequests,
    "UNSUPPORTED": UnsupportedOperation,
}
_BY_STATUS: dict[int, type[RegistryError]] = {
    401: Unauthorized,
    403: Denied,
    404: NotFound,
    405: UnsupportedOperation,
    429: TooManyRequests,
}


def _action(method: str) -> str:
    return {"GET": "pull", "HEAD": "pull", "DELETE": "delete"}.get(method, "push")


def _translate(status: int, body: bytes, what: str, method: str = "GET") -> RegistryError:
    text = body[:4096].decode("utf-8", "replace")
    code = ""
    try:
        errs = json.loads(text).get("errors") or []
        code = str(errs[0].get("code", "")) if errs else ""
    except (ValueError, AttributeError, IndexError):
        pass
    if status >= 500:
        cls: type[RegistryError] = RegistryUnavailable
    elif status == 413 or (code in ("MANIFEST_INVALID", "SIZE_INVALID") and "too large" in text):
        return TooLarge(f"{what}: the registry refuses it as too large ({status} {code})".replace(" )", ")"),
                        status, code, text)
    else:
        cls = _BY_CODE.get(code) or _BY_STATUS.get(status) or BadRequest
    if cls is Denied:
        return Denied(f"{what}: registry answered {status} {code}".rstrip(), status, code, text, [_action(method)])
    return cls(f"{what}: registry answered {status} {code}".rstrip(), status, code, text)


def _refused(ch: Challenge | None, ident: Credentials | None, method: str, what: str, body: str) -> RegistryError:
    """A final 401: with credentials and too little scope it is a denial (403), else 401."""
    action = _action(method)
    if ident is not None and ch is not None and ch.params.get("error") == "insufficient_scope":
        return Denied(f"{what}: the credentials do not allow {action}", 401, "DENIED", body, [action])
    if ident is None:
        return Unauthorized(f"{what}: the registry requires credentials", 401, "UNAUTHORIZED", body)
    return Unauthorized(f"{what}: the registry refused the credentials", 401, "UNAUTHORIZED", body)


@dataclass(frozen=True)
class Manifest:
    digest: str
    media_type: str
    raw: bytes
    doc: dict[str, Any]


def sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def origin(url: URL) -> tuple[str, str, int | None]:
    """(scheme, host, port), the default port filled in: what credentials are bound to."""
    return url.scheme.lower(), (url.host or "").lower(), url.port


async def read_capped(resp: aiohttp.ClientResponse, limit: int, what: str) -> bytes:
    """The whole body, to its end (``content.read(n)`` returns only what has arrived).

    Raises:
        ResponseTooLarge: the body is longer than ``limit``.
    """
    length = resp.headers.get("Content-Length", "")
    if length.isdigit() and int(length) > limit:
        raise ResponseTooLarge(f"{what} is larger than {limit} bytes")
    parts: list[bytes] = []
    total = 0
    async for chunk in resp.content.iter_chunked(CHUNK):
        total += len(chunk)
        if total > limit:
            raise ResponseTooLarge(f"{what} is larger than {limit} bytes")
        parts.append(chunk)
    return b"".join(parts)


async def _read_some(resp: aiohttp.ClientResponse, limit: int = ERROR_BODY) -> bytes:
    """Up to ``limit`` bytes of an error answer; a broken body gives what arrived."""
    parts: list[bytes] = []
    total = 0
    try:
        async for chunk in resp.content.iter_chunked(CHUNK):
            parts.append(chunk[: limit - total])
            total += len(parts[-1])
            if total >= limit:
                break
    except (aiohttp.ClientError, asyncio.TimeoutError, OSError):
        pass
    return b"".join(parts)


async def _off_loop(fn: Callable[[bytes], T], data: bytes) -> T:
    """Hash or parse a large body in a thread, a small one in place."""
    if len(data) > OFF_LOOP:
        return await asyncio.to_thread(fn, data)
    return fn(data)


def _parse_manifest(raw: bytes) -> tuple[str, Any]:
    try:
        return sha256(raw), json.loads(raw)
    except ValueError:
        return sha256(raw), None


def _parse_json(raw: bytes) -> tuple[bool, Any]:
    try:
        return True, json.loads(raw)
    except ValueError:
        return False, None


# Failures of one attempt that a retry may cure: connection trouble, timeouts, truncated or
# malformed answers (aiohttp.ClientPayloadError, ClientResponseError from the parser, ...).
_BROKEN = (aiohttp.ClientError, asyncio.TimeoutError, OSError, TokenUnavailable, InvalidResponse)


def _broken(exc: BaseException, what: str) -> RegistryError:
    """The error for an attempt that failed without a usable answer."""
    if isinstance(exc, RegistryError):
        return exc
    if isinstance(exc, (aiohttp.ClientConnectionError, asyncio.TimeoutError, OSError, TokenUnavailable)):
        return RegistryUnavailable(f"{what}: {type(exc).__name__}: {exc}")
    # A truncated body, a malformed status line or header, a bad chunk: the answer was garbage.
    return InvalidResponse(f"{what}: broken answer: {type(exc).__name__}: {exc}")


async def _keep_open(resp: aiohttp.ClientResponse) -> aiohttp.ClientResponse:
    return resp


class OciClient:
    """Speaks the OCI distribution API to one registry."""

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
        self.max_manifest = max_manifest
        self.auth = Authenticator(session)
        self.metrics = metrics or Metrics()

    def _url(self, path: str) -> URL:
        # encoded=True: repository names and digests are already URL-safe.
        return URL(str(self.base) + path, encoded=True)

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
        data: bytes | None = None,
        what: str = "",
        authenticate: bool = True,
    ) -> aiohttp.ClientResponse:
        """An open response with an expected status; the caller releases it (see ``_call``)."""
        return await self._call(method, path_or_url, _keep_open, expect=expect, headers=headers,
                                params=params, data=data, what=what, authenticate=authenticate)

    async def _call(
        self,
        method: str,
        path_or_url: str | URL,
        reader: Callable[[aiohttp.ClientResponse], Awaitable[T]],
        *,
        expect: tuple[int, ...] = (200,),
        headers: Mapping[str, str] | None = None,
        params: Mapping[str, str] | None = None,
        data: bytes | None = None,
        what: str = "",
        authenticate: bool = True,
        body_limit: int = 0,
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
            deadline += self._allowance(len(data))
        timer = asyncio.timeout(deadline)
        try:
            async with timer:
                return await self._attempts(method, url, reader, expect, headers, params, data, what,
                                            authenticate, body_limit, timer)
        except TimeoutError as exc:
            if timer.expired():
                raise RegistryUnavailable(f"{what}: no answer within {deadline:g} s") from exc
            raise

    async def _attempts(
        self, method: str, url: URL, reader: Callable[[aiohttp.ClientResponse], Awaitable[T]],
        expect: tuple[int, ...], headers: Mapping[str, str] | None, params: Mapping[str, str] | None,
        data: bytes | None, what: str, authenticate: bool, body_limit: int, timer: asyncio.Timeout,
    ) -> T:
        attempts = self._retries + 1 if method in IDEMPOTENT else 1
        for attempt in range(attempts):
            last = attempt == attempts - 1
            try:
                resp = await self._send(method, url, headers, params, data, what, authenticate)
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
                body = await _read_some(resp) if method != "HEAD" else b""
                resp.release()
            except ResponseTooLarge:
                raise
            except _BROKEN as exc:
                if last:
                    raise _broken(exc, what) from exc
                log.info("%s failed (%s), retrying", what, type(exc).__name__)
                await self._sleep(attempt)
                continue
            if resp.status in RETRY_STATUSES and not last:
                log.info("registry answered %s to %s, retrying", resp.status, what)
                await self._sleep(attempt)
                continue
            raise _translate(resp.status, body, what, method)
        raise AssertionError("unreachable")

    async def _send(
        self, method: str, url: URL, headers: Mapping[str, str] | None,
        params: Mapping[str, str] | None, data: bytes | None, what: str, authenticate: bool = True,
    ) -> aiohttp.ClientResponse:
        """Send as the request's identity; answer one 401 challenge, then give up.

        Credentials go only to the upstream's own origin: an upload Location or a Link
        that names another host gets the request without them, and its challenges unanswered.
        """
        body: Any = io.BytesIO(data) if data is not None and len(data) > STREAM_BODY else data
        if authenticate and origin(url) != self._origin:
            log.info("%s: %s is not the registry's origin; sending no credentials", what, url.origin())
            authenticate = False
        if not authenticate:
            resp = await self._session.request(method, url, headers=headers, params=params, data=body)
            self.metrics.upstream.labels(method, str(resp.status)).inc()
            return resp
        ident = IDENTITY.get()
        scope = scope_for(method, url.path)
        for attempt in range(2):
            sent = dict(headers or {})
            auth = self.auth.cached(ident, scope)
            if auth:
                sent["Authorization"] = auth
            if attempt:
                body = io.BytesIO(data) if data is not None and len(data) > STREAM_BODY else data
            resp = await self._session.request(method, url, headers=sent, params=params, data=body)
            self.metrics.upstream.labels(method, str(resp.status)).inc()
            if resp.status != 401:
                return resp
            challenge = resp.headers.get("WWW-Authenticate")
            text = (await _read_some(resp, 4096)).decode("utf-8", "replace") if method != "HEAD" else ""
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
            raise _refused(parse_challenge(challenge), ident, method, what, text)
        raise AssertionError("unreachable")

    async def _sleep(self, attempt: int) -> None:
        await asyncio.sleep(min(self._backoff_cap, self._backoff * (2**attempt)))

    async def ping(self) -> bool:
        """Whether the registry answers; True when it asks for credentials (401)."""
        resp = await self._request("GET", "/v2/", expect=(200, 401), authenticate=False)
        resp.release()
        return resp.status == 401

    async def check_credentials(self) -> None:
        """GET /v2/ as the current identity.

        Raises:
            Unauthorized: the registry (or its token endpoint) refuses the credentials.
        """
        resp = await self._request("GET", "/v2/")
        resp.release()

    # -- manifests -------------------------------------------------------------

    async def get_manifest(self, repo: str, ref: str) -> Manifest:
        """GET a manifest by tag or digest, read whole (up to the cap) and checked.

        Raises:
            ResponseTooLarge: the registry answers more than ``max_manifest`` bytes.
            DigestMismatch: asked by digest, answered other bytes.
            InvalidResponse: not a JSON object.
        """
        what = f"manifest {repo}:{ref}"

        async def read(resp: aiohttp.ClientResponse) -> Manifest:
            async with resp:
                raw = await read_capped(resp, self.max_manifest, what)
                media_type = resp.headers.get("Content-Type", "").split(";")[0].strip()
            digest, doc = await _off_loop(_parse_manifest, raw)
            if ref.startswith("sha256:") and ref != digest:
                raise DigestMismatch(f"manifest {repo}@{ref} does not match its digest")
            if doc is None:
                raise InvalidResponse(f"{what} is not JSON")
            if not isinstance(doc, dict):
                raise InvalidResponse(f"{what} is not a JSON object")
            return Manifest(digest, doc.get("mediaType") or media_type, raw, doc)

        return await self._call("GET", f"/v2/{repo}/manifests/{ref}", read,
                                headers={"Accept": MANIFEST_ACCEPT}, body_limit=self.max_manifest)

    async def head_manifest(self, repo: str, ref: str) -> str | None:
        """The digest a tag points to, or None when there is no such tag."""
        try:
            resp = await self._request(
                "HEAD", f"/v2/{repo}/manifests/{ref}", headers={"Accept": MANIFEST_ACCEPT}
            )
        except NotFound:
            return None
        resp.release()
        return resp.headers.get("Docker-Content-Digest")

    async def put_manifest(self, repo: str, ref: str, raw: bytes, media_type: str) -> str:
        """PUT a manifest; distribution requires an OCI Content-Type.

        Raises:
            TooLarge: the manifest is over the cap (nothing is sent), or the registry says so.
        """
        if len(raw) > self.max_manifest:
            raise TooLarge(f"manifest {repo}:{ref} is {len(raw)} bytes; the registry takes at most "
                           f"{self.max_manifest}", 413)
        resp = await self._request(
            "PUT",
            f"/v2/{repo}/manifests/{ref}",
            expect=(201,),
            headers={"Content-Type": media_type},
            data=raw,
        )
        resp.release()
        return resp.headers.get("Docker-Content-Digest") or sha256(raw)

    async def delete_manifest(self, repo: str, digest: str) -> None:
        resp = await self._request("DELETE", f"/v2/{repo}/manifests/{digest}", expect=(202, 200))
        resp.release()

    # -- blobs -----------------------------------------------------------------

    async def blob_exists(self, repo: str, digest: str) -> bool:
        try:
            resp = await self._request("HEAD", f"/v2/{repo}/blobs/{digest}")
        except NotFound:
            return False
        resp.release()
        return True

    async def get_small_blob(self, repo: str, digest: str, limit: int = MAX_MANIFEST) -> bytes:
        """A config-sized blob, read whole and checked against its digest."""
        what = f"blob {repo}@{digest}"

        async def read(resp: aiohttp.ClientResponse) -> bytes:
            async with resp:
                data = await read_capped(resp, limit, what)
            if await _off_loop(sha256, data) != digest:
                raise DigestMismatch(f"{what} does not match its digest")
            return data

        return await self._call("GET", f"/v2/{repo}/blobs/{digest}", read, body_limit=limit)

    async def open_blob(self, repo: str, digest: str) -> "BlobStream":
        """Open a blob for streaming; the stream checks the digest and the rate as it goes."""
        resp = await self._request("GET", f"/v2/{repo}/blobs/{digest}")
        return BlobStream(resp, digest, self.min_rate, self.rate_window)

    async def upload_blob(
        self, repo: str, digest: str, data: bytes, mount_from: str | None = None,
        session: "UploadSession | None" = None,
    ) -> str:
        """Upload unless present: HEAD, then mount or POST + PUT ?digest= (monolithic).
        An open, unused session of this repository is used instead of a new POST.

        Returns:
            "exists", "mounted" or "uploaded".
        """
        if await self.blob_exists(repo, digest):
            return "exists"
        if session is not None and not session.used and session.location and not mount_from:
            session.used = True
            try:
                await self._put_blob(repo, digest, data, session.location)
                return "uploaded"
            except NotFound:  # the registry purged the session meanwhile (a very slow body)
                log.info("upload session in %s expired; opening another", repo)
        params = {"mount": digest, "from": mount_from} if mount_from else None
        resp = await self._request(
            "POST", f"/v2/{repo}/blobs/uploads/", expect=(201, 202), params=params
        )
        resp.release()
        if resp.status == 201:
            return "mounted"
        location = resp.headers.get("Location")
        if not location:
            raise InvalidResponse("blob upload answered no Location")
        await self._put_blob(repo, digest, data, location)
        return "uploaded"

    async def _put_blob(self, repo: str, digest: str, data: bytes, location: str) -> None:
        """Finish an upload session in one PUT ?digest= (distribution has no monolithic POST)."""
        url = self._location(location).update_query({"digest": digest})
        resp = await self._request(
            "PUT",
            url,
            expect=(201, 204),
            headers={"Content-Type": "application/octet-stream"},
            data=data,
            what=f"PUT blob {repo}@{digest}",
        )
        resp.release()

    def _location(self, location: str) -> URL:
        """An upload Location, relative to the registry or absolute."""
        try:
            return self.base.join(URL(location)) if not location.startswith("http") else URL(location)
        except ValueError as exc:
            raise InvalidResponse(f"blob upload answered a bad Location: {location[:200]!r}") from exc

    async def open_upload(self, repo: str) -> "UploadSession":
        """Open an upload session as the current identity. Opening one needs push rights, so
        this proves them before any content is read or sent.

        Raises:
            Unauthorized: no or bad credentials where the registry needs them.
            Denied: the credentials may not push to repo.
        """
        resp = await self._request("POST", f"/v2/{repo}/blobs/uploads/", expect=(202,))
        resp.release()
        return UploadSession(repo, resp.headers.get("Location"))

    async def cancel_upload(self, session: "UploadSession") -> None:
        """Cancel an unused upload session (DELETE), so nothing is left behind."""
        if session.used or not session.location:
            return
        session.used = True
        try:
            done = await self._request("DELETE", self._location(session.location), expect=(200, 202, 204, 404),
                                       what=f"cancel an unused upload in {session.repo}")
            done.release()
        except RegistryError as exc:  # an abandoned session is purged by the registry later
            log.info("%s", exc)

    # -- listing ---------------------------------------------------------------

    async def _paged(self, path: str, key: str, params: dict[str, str]) -> list[str]:
        """Follow RFC 5988 Link rel=next pages; the spec lets a server return fewer than n."""
        items: list[str] = []
        url: URL | str = path

        async def read(resp: aiohttp.ClientResponse) -> tuple[list[Any], str]:
            async with resp:
                raw = await read_capped(resp, MAX_LIST, f"{path} page")
                nxt = resp.links.get("next")
                link = str(nxt.get("url", "")) if nxt else ""
            ok, doc = await _off_loop(_parse_json, raw)
            if not ok:
                raise InvalidResponse(f"{path} did not answer JSON")
            page = doc.get(key) if isinstance(doc, dict) else doc
            if page is None:
                page = []
            if not isinstance(doc, dict) or not isinstance(page, list):
                raise InvalidResponse(f"{path} did not answer an object with a {key!r} list")
            return page, link

        query: dict[str, str] | None = params
        for _ in range(100_000):
            page, link = await self._call("GET", url, read, params=query, body_limit=MAX_LIST)
            items.extend(x for x in page if isinstance(x, str))
            if not link:
                break
            try:
                nxt = URL(link)
                url = self.base.join(nxt) if not nxt.is_absolute() else nxt
            except ValueError as exc:
                raise InvalidResponse(f"{path}: a bad Link: {link[:200]!r}") from exc
            query = None
        return items

    async def tags(self, repo: str) -> list[str]:
        return await self._paged(f"/v2/{repo}/tags/list", "tags", {})

    async def catalog(self, page_size: int = 1000) -> list[str]:
        """Every repository; distribution caps a catalog page at 1000."""
        return await self._paged("/v2/_catalog", "repositories", {"n": str(page_size)})


@dataclass
class UploadSession:
    """An open blob upload: used once by upload_blob, or cancelled."""

    repo: str
    location: str | None
    used: bool = False


class BlobStream:
    """An open blob GET whose chunks are checked against the digest.

    The last chunk is held back until the digest is proven, so a client never
    receives a complete body with the wrong bytes. An upstream that sends fewer than
    ``min_rate`` bytes a second over ``window`` seconds of waiting is cut off (the time
    our own client takes to accept a chunk does not count).
    """

    def __init__(self, resp: aiohttp.ClientResponse, digest: str, min_rate: int = MIN_RATE,
                 window: float = RATE_WINDOW) -> None:
        self._resp = resp
        self.digest = digest
        self.min_rate = min_rate
        self.window = window
        length = resp.headers.get("Content-Length")
        self.size = int(length) if length and length.isdigit() else None

    async def _pieces(self, size: int) -> AsyncIterator[bytes]:
        """The body as it arrives, cut off when it is slower than the minimum rate."""
        content = self._resp.content
        if not self.min_rate or self.window <= 0:
            async for piece in content.iter_chunked(size):
                yield piece
            return
        loop = asyncio.get_running_loop()
        waited, got = 0.0, 0
        while True:
            start = loop.time()
            chunk: bytes | None = None
            try:
                async with asyncio.timeout(max(0.0, self.window - waited)):
                    chunk = await content.read(size)
            except TimeoutError:
                pass
            waited += loop.time() - start
            if chunk is not None:
                if not chunk:
                    return
                got += len(chunk)
                yield chunk
            if waited >= self.window:
                if got < self.min_rate * self.window:
                    raise RegistryUnavailable(
                        f"blob {self.digest}: the registry sent {got} bytes in {waited:.1f} s, "
                        f"under the minimum of {self.min_rate} bytes/s")
                waited, got = 0.0, 0

    async def chunks(self, size: int = CHUNK) -> AsyncIterator[bytes]:
        h = hashlib.sha256()
        held = b""
        try:
            async for chunk in self._pieces(size):
                if held:
                    yield held
                h.update(chunk)
                held = chunk
            if "sha256:" + h.hexdigest() != self.digest:
                raise DigestMismatch(f"blob {self.digest} served with other bytes")
            if held:
                yield held
        except (aiohttp.ClientError, asyncio.TimeoutError, OSError) as exc:
            raise RegistryUnavailable(f"blob {self.digest}: transfer broken: {exc}") from exc

    def close(self) -> None:
        self._resp.release()
