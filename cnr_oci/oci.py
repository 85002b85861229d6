"""An async OCI distribution client; every request passes through ``_request``."""

from __future__ import annotations

import asyncio
import hashlib
import io
import json
import logging
from dataclasses import dataclass
from typing import Any, AsyncIterator, Mapping

import aiohttp
from yarl import URL

from cnr_oci.auth import IDENTITY, Credentials
from cnr_oci.challenge import Authenticator, Challenge, TokenRefused, TokenUnavailable, parse_challenge, scope_for
from cnr_oci.mapping import MANIFEST_ACCEPT
from cnr_oci.metrics import Metrics

log = logging.getLogger(__name__)

MAX_MANIFEST = 4 * 1024 * 1024  # distribution's manifest size limit
CHUNK = 256 * 1024
RETRY_STATUSES = frozenset({429, 502, 503, 504})
IDEMPOTENT = frozenset({"GET", "HEAD"})
STREAM_BODY = 64 * 1024  # larger bodies are sent from a BytesIO, in chunks


class RegistryError(Exception):
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


class RegistryUnavailable(RegistryError):
    """The registry is unreachable or answered 5xx."""


class InvalidResponse(RegistryError):
    """The registry answered something that is not what the spec says."""


class DigestMismatch(InvalidResponse):
    pass


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
    ) -> None:
        self._session = session
        self.base = URL(base_url.rstrip("/"))
        self._retries = retries
        self._backoff = backoff
        self._backoff_cap = backoff_cap
        self.auth = Authenticator(session)
        self.metrics = metrics or Metrics()

    def _url(self, path: str) -> URL:
        # encoded=True: repository names and digests are already URL-safe.
        return URL(str(self.base) + path, encoded=True)

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
        """The single choke point: authenticates as the caller, retries idempotent requests
        on 429/502/503/504 and connection errors, and translates errors.

        Returns an open response with an expected status; the caller releases it.

        Raises:
            RegistryError: a subclass naming what the registry said.
        """
        url = path_or_url if isinstance(path_or_url, URL) else self._url(path_or_url)
        what = what or f"{method} {url.path}"
        attempts = self._retries + 1 if method in IDEMPOTENT else 1
        for attempt in range(attempts):
            last = attempt == attempts - 1
            try:
                resp = await self._send(method, url, headers, params, data, what, authenticate)
            except (aiohttp.ClientConnectionError, asyncio.TimeoutError, OSError, TokenUnavailable) as exc:
                if last:
                    raise RegistryUnavailable(f"{what}: {type(exc).__name__}: {exc}") from exc
                await self._sleep(attempt)
                continue
            if resp.status in expect:
                return resp
            body = await resp.read() if method != "HEAD" else b""
            resp.release()
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
        """Send as the request's identity; answer one 401 challenge, then give up."""
        if not authenticate:
            resp = await self._session.request(method, url, headers=headers, params=params, data=data)
            self.metrics.upstream.labels(method, str(resp.status)).inc()
            return resp
        ident = IDENTITY.get()
        scope = scope_for(method, url.path)
        for attempt in range(2):
            sent = dict(headers or {})
            auth = self.auth.cached(ident, scope)
            if auth:
                sent["Authorization"] = auth
            body: Any = io.BytesIO(data) if data is not None and len(data) > STREAM_BODY else data
            resp = await self._session.request(method, url, headers=sent, params=params, data=body)
            self.metrics.upstream.labels(method, str(resp.status)).inc()
            if resp.status != 401:
                return resp
            challenge = resp.headers.get("WWW-Authenticate")
            text = (await resp.read())[:4096].decode("utf-8", "replace") if method != "HEAD" else ""
            resp.release()
            if attempt == 0:
                self.auth.forget(ident, scope)
                try:
                    answer = await self.auth.answer(challenge, ident, scope)
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
        """GET a manifest by tag or digest, checking the digest when it was asked for."""
        resp = await self._request(
            "GET", f"/v2/{repo}/manifests/{ref}", headers={"Accept": MANIFEST_ACCEPT}
        )
        async with resp:
            raw = await resp.content.read(MAX_MANIFEST + 1)
            media_type = resp.headers.get("Content-Type", "").split(";")[0].strip()
        if len(raw) > MAX_MANIFEST:
            raise InvalidResponse(f"manifest {repo}@{ref} is larger than 4 MiB")
        digest = sha256(raw)
        if ref.startswith("sha256:") and ref != digest:
            raise DigestMismatch(f"manifest {repo}@{ref} does not match its digest")
        try:
            doc = json.loads(raw)
        except ValueError as exc:
            raise InvalidResponse(f"manifest {repo}:{ref} is not JSON") from exc
        if not isinstance(doc, dict):
            raise InvalidResponse(f"manifest {repo}:{ref} is not a JSON object")
        return Manifest(digest, doc.get("mediaType") or media_type, raw, doc)

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
        """PUT a manifest; distribution requires an OCI Content-Type."""
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
        resp = await self._request("GET", f"/v2/{repo}/blobs/{digest}")
        async with resp:
            data = await resp.content.read(limit + 1)
        if len(data) > limit:
            raise InvalidResponse(f"blob {repo}@{digest} is larger than {limit} bytes")
        if sha256(data) != digest:
            raise DigestMismatch(f"blob {repo}@{digest} does not match its digest")
        return data

    async def open_blob(self, repo: str, digest: str) -> "BlobStream":
        """Open a blob for streaming; the stream checks the digest as it goes."""
        resp = await self._request("GET", f"/v2/{repo}/blobs/{digest}")
        return BlobStream(resp, digest)

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
            location: str | None = session.location
        else:
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
        return "uploaded"

    def _location(self, location: str) -> URL:
        """An upload Location, relative to the registry or absolute."""
        return self.base.join(URL(location)) if not location.startswith("http") else URL(location)

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
        query: dict[str, str] | None = params
        for _ in range(100_000):
            resp = await self._request("GET", url, params=query)
            async with resp:
                try:
                    doc = await resp.json(content_type=None)
                except ValueError as exc:
                    raise InvalidResponse(f"{path} did not answer JSON") from exc
                link = resp.links.get("next")
            items.extend(x for x in (doc or {}).get(key) or [] if isinstance(x, str))
            if not link:
                break
            nxt = URL(str(link.get("url", "")))
            url = self.base.join(nxt) if not nxt.is_absolute() else nxt
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
    receives a complete body with the wrong bytes.
    """

    def __init__(self, resp: aiohttp.ClientResponse, digest: str) -> None:
        self._resp = resp
        self.digest = digest
        length = resp.headers.get("Content-Length")
        self.size = int(length) if length and length.isdigit() else None

    async def chunks(self, size: int = CHUNK) -> AsyncIterator[bytes]:
        h = hashlib.sha256()
        held = b""
        try:
            async for chunk in self._resp.content.iter_chunked(size):
                if held:
                    yield held
                h.update(chunk)
                held = chunk
            if "sha256:" + h.hexdigest() != self.digest:
                raise DigestMismatch(f"blob {self.digest} served with other bytes")
            if held:
                yield held
        except (aiohttp.ClientPayloadError, aiohttp.ClientConnectionError) as exc:
            raise RegistryUnavailable(f"blob {self.digest}: transfer broken: {exc}") from exc

    def close(self) -> None:
        self._resp.release()
