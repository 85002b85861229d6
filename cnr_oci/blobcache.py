"""Small blobs in memory by digest, verified on the way in, served only where the registry said yes.

A blob is immutable under its digest, so its bytes may be shared by every caller and repository.
Who may read it is not: before cached bytes are served, the registry must have answered, within
``ttl`` seconds, a request for that blob in that repository as the calling identity (the GET that
filled the cache, or a ``HEAD``). A 404 or a refusal there is raised as the registry's error.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar

from cachetools import LRUCache, TTLCache

from cnr_oci import oci, upstream
from cnr_oci.auth import identity_key
from cnr_oci.blobs import BlobStream

T = TypeVar("T")
# Defaults of --blob-cache-size and --blob-cache-max.
DEFAULT_SIZE = 256 * 1024 * 1024
DEFAULT_MAX = 1024 * 1024
# Read permissions kept, each for the TTL.
ALLOWED_ENTRIES = 100_000
# Blobs larger than this are hashed in a worker thread when they enter the cache.
OFF_LOOP = 64 * 1024


async def once(inflight: dict[tuple[Any, ...], asyncio.Future[Any]], key: tuple[Any, ...],
               make: Callable[[], Awaitable[T]]) -> T:
    """Single flight: concurrent callers with one key share one computation (and its error)."""
    running = inflight.get(key)
    if running is None:
        running = asyncio.ensure_future(make())
        inflight[key] = running
        running.add_done_callback(lambda done: inflight.pop(key) if inflight.get(key) is done else None)
    result: T = await asyncio.shield(running)
    return result


class CachedBlob:
    """A blob held in memory, verified when it entered the cache; streamed like a BlobStream."""

    def __init__(self, digest: str, data: bytes) -> None:
        self.digest = digest
        self.data = data
        self.size: int | None = len(data)

    async def chunks(self, size: int = upstream.READ_CHUNK) -> AsyncIterator[bytes]:
        if len(self.data) <= size:
            yield self.data
            return
        view = memoryview(self.data)
        for start in range(0, len(view), size):
            yield bytes(view[start:start + size])

    def close(self) -> None:
        """Nothing to release."""


Blob = BlobStream | CachedBlob


class _Writes(TTLCache[str, int]):
    """The write count at each repository's last forget, for the TTL; ``floor``: the highest count
    evicted for room, standing in for the repositories it no longer holds."""

    floor = 0

    def popitem(self) -> tuple[str, int]:
        repo, count = super().popitem()
        self.floor = max(self.floor, count)
        return repo, count


class BlobCache:
    """Blobs of at most ``max_blob`` bytes, in an LRU of ``size`` bytes (0: no cache), and the
    (identity, repository, digest) reads the registry allowed, for ``ttl`` seconds."""

    def __init__(self, client: oci.OciClient, *, size: int = DEFAULT_SIZE, max_blob: int = DEFAULT_MAX,
                 ttl: float = 5.0) -> None:
        self.client = client
        self.max_blob = min(max_blob, size) if size > 0 else -1  # a blob larger than the cache: streamed
        self._bytes: LRUCache[str, bytes] = LRUCache(max(size, 1), getsizeof=len)
        # (identity, repo, digest) allowed, with the write count when the registry was asked.
        self._allowed: TTLCache[tuple[str, str, str], int] = TTLCache(ALLOWED_ENTRIES, max(ttl, 0.0))
        self.writes = 0
        # Kept past the TTL: a grant asked before a write may be stored a request's time after it.
        self._written = _Writes(ALLOWED_ENTRIES, max(ttl, 0.0) + 600.0)
        self._heads: dict[tuple[Any, ...], asyncio.Future[Any]] = {}
        self._gets: dict[tuple[str, str, str], asyncio.Future[bytes | None]] = {}

    @property
    def held(self) -> int:
        """Bytes held."""
        return int(self._bytes.currsize) if self.max_blob >= 0 else 0

    def __contains__(self, digest: str) -> bool:
        return digest in self._bytes

    def forget(self, repo: str, tag: str | None = None) -> None:
        """A write to the repository: read permissions in it are asked again (O(1): the grants
        asked before it are older than its count)."""
        self.writes += 1
        self._written[repo] = self.writes

    def grant(self, key: tuple[str, str, str], asked: int) -> None:
        """The registry let key's identity read in key's repository, asked at write count ``asked``."""
        self._allowed[key] = asked

    def allowed(self, key: tuple[str, str, str]) -> bool:
        asked = self._allowed.get(key)
        return asked is not None and asked >= self._written.get(key[1], self._written.floor)

    async def open(self, repo: str, digest: str) -> Blob:
        """The blob, from memory when it is there and the registry lets this identity read it in repo.

        Raises:
            NotFound, Denied, Unauthorized: what the registry answered for this identity.
        """
        key = (identity_key(), repo, digest)
        data = self._bytes.get(digest) if self.max_blob >= 0 else None
        if data is not None:
            if not self.allowed(key):
                self.grant(key, await once(self._heads, key, lambda: self._confirm(repo, digest)))
            return CachedBlob(digest, data)
        if self.max_blob < 0:
            return await self.client.open_blob(repo, digest)
        flight = self._gets.get(key)
        if flight is not None:  # another request of this identity is fetching it
            shared = await asyncio.shield(flight)
            if shared is not None:
                return CachedBlob(digest, shared)
            return await self.client.open_blob(repo, digest)  # too large to share, or that fetch failed
        return await self._fetch(key, repo, digest)

    async def _confirm(self, repo: str, digest: str) -> int:
        """The write count when the registry was asked, once it said yes."""
        asked = self.writes
        if not await self.client.blob_exists(repo, digest):
            raise upstream.NotFound(f"blob {repo}@{digest} not found", 404)
        return asked

    async def _fetch(self, key: tuple[str, str, str], repo: str, digest: str) -> Blob:
        """GET the blob as the caller; a small one is read whole, verified, kept and shared with
        the callers that asked meanwhile. Followers of a failed GET get its error."""
        flight: asyncio.Future[bytes | None] = asyncio.get_running_loop().create_future()
        flight.add_done_callback(lambda f: f.cancelled() or f.exception())  # no "never retrieved"
        self._gets[key] = flight
        data: bytes | None = None
        asked = self.writes
        try:
            stream = await self.client.open_blob(repo, digest)
            if stream.size is None or stream.size > self.max_blob:
                return stream
            try:
                data = b"".join([chunk async for chunk in stream.chunks()])
            finally:
                stream.close()
            await self._keep(digest, data)
            self.grant(key, asked)
            return CachedBlob(digest, data)
        except upstream.RegistryError as exc:
            flight.set_exception(exc)
            raise
        finally:
            self._gets.pop(key, None)
            if not flight.done():
                flight.set_result(data)

    async def _keep(self, digest: str, data: bytes) -> None:
        """Keep bytes proven to be the digest's (whatever the stream checked): a DigestMismatch if not."""
        if len(data) > OFF_LOOP:
            actual = await asyncio.to_thread(lambda: hashlib.sha256(data).hexdigest())
        else:
            actual = hashlib.sha256(data).hexdigest()
        if "sha256:" + actual != digest:
            raise upstream.DigestMismatch(f"blob {digest} served with other bytes")
        if len(data) <= self.max_blob:
            with contextlib.suppress(ValueError):  # larger than the whole budget
                self._bytes[digest] = data
