"""A CNR API server read as a migration source (appr, Quay's /cnr, cnr-server, another cnr-oci)."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import zlib
from collections.abc import AsyncIterator, Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

import aiohttp

from cnr_oci import errors, mapping, safejson
from cnr_oci.transport import MIN_RATE, RATE_WINDOW

# A source's JSON answers (listings, manifest lists) are read whole, up to this.
MAX_LISTING = 64 * 1024 * 1024
CHUNK = 1024 * 1024
# A blob is spooled up to this many bytes (--max-blob-size): a source that never ends a body must not
# fill the disk. appr read every push whole into memory, so its blobs are far smaller.
MAX_BLOB = 1024 * 1024 * 1024
# appr's digest is of the gunzipped tar; checking it inflates a blob at most this far: 100 MiB (helm's
# MaxDecompressedChartSize) plus 100 times the blob. Real packages, text in tar, compress 5 to 20 times;
# a gzip bomb (deflate reaches 1032 times) costs at most 100 times its own bytes of inflating and hashing
# (about 4 s a MiB here), and only when the blob's own digest is not the one advertised.
MAX_TAR_FLOOR = 100 * 1024 * 1024
MAX_TAR_RATIO = 100


class SourceError(errors.CnrOciError):
    """The source answered an error, garbage, or nothing."""

    def __init__(self, message: str, status: int = 0) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class SourceRelease:
    """One (release, media type) as the source lists it."""

    package: str
    release: str
    media_type: str
    digest: str  # "sha256:<hex>", as the source advertises it
    size: int | None
    metadata: Any
    created_at: Any


@dataclass(frozen=True)
class Fetched:
    """A blob spooled to a local file, with the digests a source may have advertised for it."""

    path: Path
    size: int
    gzip_digest: str  # of the bytes as served (the .tar.gz)
    tar_digest: str | None  # of the gunzipped bytes (appr's digest); None if they are not gzip


def _sha256(path: Path) -> str:
    """sha256 of a file, read in chunks (run in a thread)."""
    h = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(CHUNK):
            h.update(chunk)
    return "sha256:" + h.hexdigest()


def _tar_digest(path: Path, limit: int) -> str | None:
    """sha256 of a file's gunzipped content (members concatenated); None when it is not whole gzip
    data or expands past ``limit`` bytes. Inflated in bounded steps, so a bomb never materialises
    and costs at most ``limit`` bytes of inflating and hashing (run in a thread)."""
    tar = hashlib.sha256()
    z: Any = zlib.decompressobj(wbits=16 + zlib.MAX_WBITS)
    inflated = 0
    with path.open("rb") as f:
        while chunk := f.read(CHUNK):
            data, more = chunk, False
            while data or more:
                try:
                    out = z.decompress(data, CHUNK)
                except zlib.error:
                    return None
                inflated += len(out)
                if inflated > limit:
                    return None
                tar.update(out)
                if z.eof:  # what follows the member, if anything, is the next gzip member
                    data, more = z.unused_data, False
                    if data:
                        z = zlib.decompressobj(wbits=16 + zlib.MAX_WBITS)
                else:  # input held back by the output limit, or output still pending
                    data, more = z.unconsumed_tail, len(out) == CHUNK
    return "sha256:" + tar.hexdigest() if z.eof else None


def tar_limit(size: int) -> int:
    """How far a blob of ``size`` bytes is gunzipped to check a digest of its tar."""
    return MAX_TAR_FLOOR + MAX_TAR_RATIO * size


def scrub(text: str, secrets: Iterable[str]) -> str:
    """``text`` with every secret value replaced by <redacted>, longest first."""
    for secret in sorted(secrets, key=len, reverse=True):
        text = text.replace(secret, "<redacted>")
    return text


class CnrSource:
    """Reads packages, releases, channels and blobs through the CNR API alone."""

    def __init__(self, session: aiohttp.ClientSession, url: str, prefix: str = "/cnr", *,
                 min_rate: int = MIN_RATE, window: float = RATE_WINDOW) -> None:
        self.session = session
        self.min_rate = min_rate  # bytes/s a body must keep up, measured over window seconds
        self.window = window
        self.base = url.rstrip("/") + ("/" + prefix.strip("/") if prefix.strip("/") else "")
        self.headers: dict[str, str] = {}
        self.on_progress: Callable[[], None] = lambda: None  # called as a large blob arrives
        # The credentials' values: a source may echo them in an error, so whatever prints or logs
        # the source's words passes them through scrub().
        self.secrets: set[str] = set()

    def _secret(self, *values: str) -> None:
        for value in values:
            if value:
                self.secrets |= {value, json.dumps(value)[1:-1]}  # as given, and as a JSON echo shows it

    def use_token(self, token: str) -> None:
        """appr's and cnr-oci's tokens go as they are in Authorization; Quay's as "Bearer ..." too."""
        self._secret(token)
        self.headers["Authorization"] = token

    def use_basic(self, user: str, password: str) -> None:
        encoded = base64.b64encode(f"{user}:{password}".encode()).decode()
        self._secret(password, encoded)
        self.headers["Authorization"] = "Basic " + encoded

    async def login(self, user: str, password: str) -> None:
        """E3: a token for these credentials, used from then on."""
        self._secret(password)
        body = {"user": {"username": user, "password": password}}
        doc = await self._json("POST", "/api/v1/users/login", json=body)
        token = doc.get("token") if isinstance(doc, dict) else None
        if not isinstance(token, str) or not token:
            raise SourceError("the source's login answered no token")
        self.use_token(token)

    def _url(self, path: str) -> str:
        return self.base + path

    async def _json(self, method: str, path: str, **kwargs: Any) -> Any:
        try:
            async with self.session.request(method, self._url(path), headers=self.headers, **kwargs) as resp:
                if resp.status >= 400:
                    text = (await resp.content.read(300)).decode("utf-8", "replace")
                    raise SourceError(f"{method} {path}: the source answered {resp.status}: {text}", resp.status)
                raw = await self._read_up_to(resp, path, MAX_LISTING + 1)
        except (TimeoutError, aiohttp.ClientError, OSError) as exc:
            raise SourceError(f"{method} {path}: {type(exc).__name__}: {exc}") from exc
        if len(raw) > MAX_LISTING:
            raise SourceError(f"{method} {path}: the answer is larger than {MAX_LISTING} bytes")
        try:
            return safejson.load_json(raw, "answer")
        except errors.CnrError as exc:
            raise SourceError(f"{method} {path}: {exc.message}") from exc

    async def _read_up_to(self, resp: aiohttp.ClientResponse, path: str, limit: int) -> bytes:
        """The body, or its first ``limit`` bytes, at the minimum rate (StreamReader.read(n) alone
        answers with what has arrived so far: for anything larger than a packet, only the start)."""
        parts: list[bytes] = []
        total = 0
        async for chunk in self._pieces(resp, path):
            parts.append(chunk[: limit - total])
            total += len(parts[-1])
            if total >= limit:
                break
        return b"".join(parts)

    async def packages(self, namespace: str | None = None) -> list[str]:
        """E5: the names ("ns/name") the source lists, in one namespace or all."""
        doc = await self._json("GET", "/api/v1/packages", params={"namespace": namespace} if namespace else None)
        if not isinstance(doc, list):
            raise SourceError("the source's package list is not a JSON list")
        names = [p.get("name") for p in doc if isinstance(p, dict)]
        return sorted({n for n in names if isinstance(n, str) and n.count("/") == 1})

    async def releases(self, package: str) -> list[SourceRelease]:
        """E8: every (release, media type) of a package, with digest, metadata and created_at."""
        doc = await self._json("GET", f"/api/v1/packages/{package}")
        if not isinstance(doc, list):
            raise SourceError(f"the source's manifest list of {package} is not a JSON list")
        out = []
        for m in doc:
            content = m.get("content") if isinstance(m, dict) else None
            if not isinstance(content, dict) or not isinstance(m.get("release"), str):
                raise SourceError(f"a manifest of {package} has no release or content")
            digest = str(content.get("digest") or "").removeprefix("sha256:")
            media_type = mapping.long_media_type_name(str(m.get("mediaType"))) or str(m.get("mediaType"))
            size = content.get("size")
            out.append(SourceRelease(package, m["release"], media_type, "sha256:" + digest,
                                     size if isinstance(size, int) else None, m.get("metadata"), m.get("created_at")))
        return out

    async def channels(self, package: str) -> list[dict[str, Any]]:
        """E14: the package's channels, each as {"name": str, "current": str | None, "releases": [str]}
        whatever shapes the source gave them (releases that are not strings are dropped)."""
        doc = await self._json("GET", f"/api/v1/packages/{package}/channels")
        if not isinstance(doc, list):
            raise SourceError(f"the source's channel list of {package} is not a JSON list")
        out = []
        for c in doc:
            if isinstance(c, dict) and isinstance(c.get("name"), str):
                releases = c.get("releases")
                current = c.get("current")
                out.append({"name": c["name"], "current": current if isinstance(current, str) else None,
                            "releases": [r for r in releases if isinstance(r, str)] if isinstance(releases, list)
                            else []})
        return out

    async def fetch(self, rel: SourceRelease, dest: Path, max_size: int = MAX_BLOB) -> Fetched:
        """The blob, by the digest the source advertises (E13), else by release (E12), spooled to
        ``dest`` as it arrives; never held whole, never more than ``max_size`` bytes. It is
        gunzipped (within tar_limit) only when the advertised digest is not of the bytes as served.

        Raises:
            SourceError: an error answer, a broken or too slow transfer, or a blob over max_size.
        """
        hexd = rel.digest.removeprefix("sha256:")
        paths = [f"/api/v1/packages/{rel.package}/blobs/sha256/{hexd}",
                 f"/api/v1/packages/{rel.package}/{quote(rel.release, safe='')}/{rel.media_type}/pull"]
        last: SourceError | None = None
        for path in paths:
            try:
                size = await self._download(path, dest, max_size)
            except SourceError as exc:
                if exc.status != 404:
                    raise
                last = exc
                continue
            gz = await asyncio.to_thread(_sha256, dest)
            tar = None if gz == rel.digest else await asyncio.to_thread(_tar_digest, dest, tar_limit(size))
            return Fetched(dest, size, gz, tar)
        assert last is not None
        raise last

    async def _download(self, path: str, dest: Path, max_size: int) -> int:
        size = 0
        try:
            async with self.session.get(self._url(path), headers=self.headers) as resp:
                if resp.status >= 400:
                    text = (await resp.content.read(300)).decode("utf-8", "replace")
                    raise SourceError(f"GET {path}: the source answered {resp.status}: {text}", resp.status)
                if (resp.content_length or 0) > max_size:
                    raise SourceError(f"GET {path}: the blob is {resp.content_length} bytes, over the limit of "
                                      f"{max_size} (--max-blob-size)")
                with dest.open("wb") as out:
                    async for chunk in self._pieces(resp, path):
                        size += len(chunk)
                        if size > max_size:
                            raise SourceError(f"GET {path}: the blob is over the limit of {max_size} bytes "
                                              "(--max-blob-size); the rest was not read")
                        out.write(chunk)
                        if size > CHUNK:
                            self.on_progress()
        except (TimeoutError, aiohttp.ClientError, OSError) as exc:
            raise SourceError(f"GET {path}: {type(exc).__name__}: {exc}") from exc
        return size

    async def _pieces(self, resp: aiohttp.ClientResponse, path: str) -> AsyncIterator[bytes]:
        """The body as it arrives; cut off when fewer than ``min_rate`` bytes a second arrive over
        ``window`` seconds (a slow drip would hold a transfer slot for ever)."""
        loop = asyncio.get_running_loop()
        start, got = loop.time(), 0
        while True:
            try:
                async with asyncio.timeout(max(0.0, start + self.window - loop.time())):
                    chunk = await resp.content.read(CHUNK)
            except TimeoutError:
                chunk = None
            if chunk == b"":
                return
            if chunk is not None:
                got += len(chunk)
                yield chunk
            if loop.time() - start >= self.window:
                if got < self.min_rate * self.window:
                    raise SourceError(f"GET {path}: the source sent {got} bytes in {loop.time() - start:.1f} s, "
                                      f"under the minimum of {self.min_rate} bytes/s")
                start, got = loop.time(), 0
