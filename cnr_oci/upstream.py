"""What the registry answers: its errors, manifests, and reading its bodies."""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import Callable
from typing import Any, TypeVar

import aiohttp
from yarl import URL

from cnr_oci.auth import Credentials
from cnr_oci.challenge import Challenge, TokenUnavailable
from cnr_oci.errors import CnrOciError
from cnr_oci.layout import sha256

MAX_MANIFEST = 4 * 1024 * 1024  # distribution's manifest size limit
ERROR_BODY = 64 * 1024  # what is kept of an error answer
OFF_LOOP = 256 * 1024  # larger bodies are hashed and parsed in a thread
READ_CHUNK = 256 * 1024  # what one read of a registry body asks for
T = TypeVar("T")


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


class InvalidDocument(InvalidResponse):
    """A document the registry holds (a config, a channel, a manifest an index names) that cnr-oci
    cannot read: another tool wrote or removed it. The message names it."""


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


def error_for_status(status: int, body: bytes, what: str, method: str = "GET") -> RegistryError:
    """The RegistryError for an unexpected status, named by the body's error code where it has one."""
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


def auth_refusal(ch: Challenge | None, ident: Credentials | None, method: str, what: str, body: str) -> RegistryError:
    """A final 401: with credentials and too little scope it is a denial (403), else 401."""
    action = _action(method)
    if ident is not None and ch is not None and ch.params.get("error") == "insufficient_scope":
        return Denied(f"{what}: the credentials do not allow {action}", 401, "DENIED", body, [action])
    if ident is None:
        return Unauthorized(f"{what}: the registry requires credentials", 401, "UNAUTHORIZED", body)
    return Unauthorized(f"{what}: the registry refused the credentials", 401, "UNAUTHORIZED", body)


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
    async for chunk in resp.content.iter_chunked(READ_CHUNK):
        total += len(chunk)
        if total > limit:
            raise ResponseTooLarge(f"{what} is larger than {limit} bytes")
        parts.append(chunk)
    return b"".join(parts)


async def read_error_body(resp: aiohttp.ClientResponse, limit: int = ERROR_BODY) -> bytes:
    """Up to ``limit`` bytes of an error answer; a broken body gives what arrived."""
    parts: list[bytes] = []
    total = 0
    try:
        async for chunk in resp.content.iter_chunked(READ_CHUNK):
            parts.append(chunk[: limit - total])
            total += len(parts[-1])
            if total >= limit:
                break
    except (TimeoutError, aiohttp.ClientError, OSError):
        pass
    return b"".join(parts)


async def off_loop(fn: Callable[[bytes], T], data: bytes) -> T:
    """Hash or parse a large body in a thread, a small one in place."""
    if len(data) > OFF_LOOP:
        return await asyncio.to_thread(fn, data)
    return fn(data)


def parse_manifest(raw: bytes) -> tuple[str, Any]:
    """(digest, the parsed JSON or None)."""
    try:
        return sha256(raw), json.loads(raw)
    except ValueError:
        return sha256(raw), None


def parse_json(raw: bytes) -> tuple[bool, Any]:
    """(whether it is JSON, the parsed JSON)."""
    try:
        return True, json.loads(raw)
    except ValueError:
        return False, None


# Failures of one attempt that a retry may cure: connection trouble, timeouts, truncated or
# malformed answers (aiohttp.ClientPayloadError, ClientResponseError from the parser, ...).
BROKEN = (aiohttp.ClientError, asyncio.TimeoutError, OSError, TokenUnavailable, InvalidResponse)


# A URL's query in an error's text: a redirect target's may be a presigned URL's signature.
_QUERY = re.compile(r"(://[^\s'\"?#]*)\?[^\s'\"#]*")


def broken(exc: BaseException, what: str) -> RegistryError:
    """The error for an attempt that failed without a usable answer (URLs in it without their query:
    aiohttp names the URL it was at, which may be a presigned storage URL, a capability)."""
    if isinstance(exc, RegistryError):
        return exc
    text = _QUERY.sub(r"\1?<query withheld>", str(exc))
    if isinstance(exc, (aiohttp.ClientConnectionError, asyncio.TimeoutError, OSError, TokenUnavailable)):
        return RegistryUnavailable(f"{what}: {type(exc).__name__}: {text}")
    # A truncated body, a malformed status line or header, a bad chunk: the answer was garbage.
    return InvalidResponse(f"{what}: broken answer: {type(exc).__name__}: {text}")
