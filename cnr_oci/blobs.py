"""Blobs in transit: a streamed GET checked against its digest and rate, and an open upload session."""

from __future__ import annotations

import asyncio
import collections
import contextlib
import ctypes
import hashlib
import os
import sys
import threading
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import aiohttp

from cnr_oci.transport import MIN_RATE, RATE_WINDOW
from cnr_oci.upstream import READ_CHUNK, DigestMismatch, RegistryUnavailable

# Blobs at least this large are hashed in a worker thread, overlapping with the loop's I/O
# (hashlib releases the GIL); smaller ones on the loop. README, Performance, "Large blobs".
THREAD_MIN = 4 * 1024 * 1024
THREAD_BATCH = 1024 * 1024  # bytes handed to the thread at once: fewer hand-offs of the GIL
THREAD_LAG = 4 * 1024 * 1024  # bytes the thread may be behind before the stream waits for it
HASHER_NICE = 19  # the hashing threads' nice value


def _lower_priority() -> None:
    """A hashing thread yields the CPU to the event loop when both want it: without this, small
    requests beside two large downloads waited 8.1 ms (p50) instead of 7.1 on 2 busy cores.
    Linux only, where a nice value belongs to a thread."""
    if sys.platform == "linux":
        with contextlib.suppress(OSError):
            os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), HASHER_NICE)


_HASHERS = ThreadPoolExecutor(4, thread_name_prefix="blob-sha256", initializer=_lower_priority)
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # glibc's mallopt parameters
_allocator_tuned = False


def tune_allocator() -> None:
    """Keep blob pieces on glibc's heap and its top mapped (once per process; a no-op elsewhere).

    The loop receives a blob in 256 KiB pieces. Held a little longer, while a thread hashes
    them, they made glibc return and re-map heap pages: 96 page faults a MiB instead of 7, which
    ate most of the thread's gain. An mmap threshold of 4 MiB and a trim threshold of 32 MiB
    (at most 32 MiB of free heap kept) end that.
    """
    global _allocator_tuned
    if _allocator_tuned:
        return
    _allocator_tuned = True
    with contextlib.suppress(OSError, AttributeError):
        mallopt = ctypes.CDLL(None).mallopt
        mallopt(_M_MMAP_THRESHOLD, 4 * 1024 * 1024)
        mallopt(_M_TRIM_THRESHOLD, 32 * 1024 * 1024)


class ThreadedSha256:
    """sha256 of a stream computed in order by a worker thread while the caller goes on.

    Pieces are batched (THREAD_BATCH) and queued; a worker drains the queue and returns when
    it is empty, so a slow stream never holds a thread. ``feed`` waits only when the worker is
    more than THREAD_LAG bytes behind, which bounds the memory held.
    """

    def __init__(self) -> None:
        tune_allocator()
        self._h = hashlib.sha256()
        self._loop = asyncio.get_running_loop()
        self._lock = threading.Lock()
        self._queue: collections.deque[list[bytes]] = collections.deque()
        self._batch: list[bytes] = []
        self._batched = 0
        self._lag = 0
        self._running = False
        self._caught_up: asyncio.Future[None] | None = None

    async def feed(self, piece: bytes) -> None:
        self._batch.append(piece)
        self._batched += len(piece)
        if self._batched >= THREAD_BATCH:
            await self._submit()

    async def hexdigest(self) -> str:
        """The digest, once every piece fed is hashed."""
        if self._batch:
            await self._submit()
        with self._lock:
            waiter = self._waiter() if self._running else None
        if waiter is not None:
            await waiter
        return self._h.hexdigest()

    def _waiter(self) -> asyncio.Future[None]:
        if self._caught_up is None:
            self._caught_up = self._loop.create_future()
        return self._caught_up

    async def _submit(self) -> None:
        batch, size = self._batch, self._batched
        self._batch, self._batched = [], 0
        with self._lock:
            self._queue.append(batch)
            self._lag += size
            start, self._running = not self._running, True
            waiter = self._waiter() if self._lag > THREAD_LAG else None
        if start:
            _HASHERS.submit(self._drain)
        if waiter is not None:
            await waiter

    def _drain(self) -> None:
        """In the worker: hash queued batches in order until none is left."""
        while True:
            with self._lock:
                if not self._queue:
                    self._running = False
                    waiter, self._caught_up = self._caught_up, None
                    break
                batch = self._queue.popleft()
            for piece in batch:
                self._h.update(piece)
            with self._lock:
                self._lag -= sum(map(len, batch))
        if waiter is not None:
            self._loop.call_soon_threadsafe(_wake, waiter)


def _wake(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_result(None)


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
        self._threaded = THREAD_MIN > 0 and (self.size or 0) >= THREAD_MIN

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

    async def chunks(self, size: int = READ_CHUNK) -> AsyncIterator[bytes]:
        """The body in pieces of at most ``size``; the last one only once the digest is proven.

        Large blobs (THREAD_MIN) are hashed in a worker thread while the next piece is read
        and the previous one is written.
        """
        threaded = ThreadedSha256() if self._threaded else None
        h = hashlib.sha256()
        held = b""
        try:
            async for chunk in self._pieces(size):
                if held:
                    yield held
                if threaded is not None:
                    await threaded.feed(chunk)
                else:
                    h.update(chunk)
                held = chunk
            hexdigest = await threaded.hexdigest() if threaded is not None else h.hexdigest()
            if "sha256:" + hexdigest != self.digest:
                raise DigestMismatch(f"blob {self.digest} served with other bytes")
            if held:
                yield held
        except (TimeoutError, aiohttp.ClientError, OSError) as exc:
            raise RegistryUnavailable(f"blob {self.digest}: transfer broken: {exc}") from exc

    def close(self) -> None:
        self._resp.release()
