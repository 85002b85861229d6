"""Blobs in transit: a streamed GET checked against its digest and rate, and an open upload session."""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import AsyncIterator
from dataclasses import dataclass

import aiohttp

from cnr_oci.transport import MIN_RATE, RATE_WINDOW
from cnr_oci.upstream import READ_CHUNK, DigestMismatch, RegistryUnavailable


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

    async def chunks(self, size: int = READ_CHUNK) -> AsyncIterator[bytes]:
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
        except (TimeoutError, aiohttp.ClientError, OSError) as exc:
            raise RegistryUnavailable(f"blob {self.digest}: transfer broken: {exc}") from exc

    def close(self) -> None:
        self._resp.release()
