"""Blobs flow through: memory does not grow with blob size."""

from __future__ import annotations

import gc
import hashlib
import os
import random
import threading
import time
from typing import ClassVar

import aiohttp
import psutil
import pytest

from cnr_oci import blobs
from cnr_oci.settings import Settings
from tests import helpers
from tests.fake_upstream import make_proxy
from tests.helpers import body, kpm, unique

API = "/cnr/api/v1/packages"
SIZE = 96 * 1024 * 1024


async def test_streaming_a_large_blob_keeps_memory_flat(client, registry):
    """A 96 MiB blob put straight into the registry streams through E13 raw and as JSON."""
    repo = "/".join(unique())
    assert (await client.post(f"{API}/{repo}", json=body(kpm()))).status == 200
    data = os.urandom(SIZE)
    digest = hashlib.sha256(data).hexdigest()
    helpers.put_blob(registry.url, repo, data)
    del data
    gc.collect()
    proc = psutil.Process()
    for url in (f"{API}/{repo}/blobs/sha256/{digest}", f"{API}/{repo}/blobs/sha256/{digest}?format=json"):
        before = proc.memory_info().rss
        peak = before
        resp = await client.get(url)
        assert resp.status == 200
        h = hashlib.sha256()
        n = 0
        async for chunk in resp.content.iter_chunked(1 << 20):
            n += len(chunk)
            if "json" not in url:
                h.update(chunk)
            peak = max(peak, proc.memory_info().rss)
        if "json" not in url:
            assert n == SIZE and h.hexdigest() == digest
        else:
            assert n == resp.content_length
        assert peak - before < 30 * 1024 * 1024, f"RSS grew by {(peak - before) >> 20} MiB"


class _SpyHasher(blobs.ThreadedSha256):
    """Records the threads that hashed, so a test can tell the worker did the work."""

    threads: ClassVar[set[str]] = set()
    nice: ClassVar[set[int]] = set()

    def _drain(self) -> None:
        _SpyHasher.threads.add(threading.current_thread().name)
        _SpyHasher.nice.add(os.getpriority(os.PRIO_PROCESS, threading.get_native_id()))
        super()._drain()


async def test_a_large_blob_is_hashed_off_the_loop_and_served_whole(client, registry, monkeypatch):
    """A blob of THREAD_MIN or more is hashed by a worker thread, at the lowest CPU priority so the
    event loop comes first; the bytes come out whole and right."""
    monkeypatch.setattr(blobs, "ThreadedSha256", _SpyHasher)
    _SpyHasher.threads.clear()
    _SpyHasher.nice.clear()
    repo = "/".join(unique())
    assert (await client.post(f"{API}/{repo}", json=body(kpm()))).status == 200
    data = os.urandom(blobs.THREAD_MIN + 12345)
    helpers.put_blob(registry.url, repo, data)
    resp = await client.get(f"{API}/{repo}/blobs/sha256/{hashlib.sha256(data).hexdigest()}")
    assert resp.status == 200 and await resp.read() == data
    assert _SpyHasher.threads and all(t.startswith("blob-sha256") for t in _SpyHasher.threads)
    assert _SpyHasher.nice == {blobs.HASHER_NICE}


async def test_a_large_blob_with_wrong_bytes_hashed_off_the_loop_is_never_served_complete(
        aiohttp_server, make_client, client, registry, monkeypatch):
    """The worker thread's digest still gates the last piece: a corrupted large blob is a short body."""
    monkeypatch.setattr(blobs, "ThreadedSha256", _SpyHasher)
    _SpyHasher.threads.clear()
    repo = "/".join(unique())
    assert (await client.post(f"{API}/{repo}", json=body(kpm()))).status == 200
    data = os.urandom(blobs.THREAD_MIN + 12345)
    helpers.put_blob(registry.url, repo, data)
    proxy = await aiohttp_server(make_proxy(registry.url, corrupt_blobs=True))
    bad = await make_client(Settings(upstream=str(proxy.make_url("")).rstrip("/")))
    resp = await bad.get(f"{API}/{repo}/blobs/sha256/{hashlib.sha256(data).hexdigest()}")
    assert resp.status == 200 and resp.content_length == len(data)
    got = bytearray()
    with pytest.raises(aiohttp.ClientPayloadError):
        async for chunk in resp.content.iter_any():
            got += chunk
    assert 0 < len(got) < len(data)
    assert _SpyHasher.threads


class _SlowSha:
    """sha256 that takes its time, so the worker falls behind the stream; notes the most it was behind."""

    def __init__(self, hasher: blobs.ThreadedSha256) -> None:
        self.h = hashlib.sha256()
        self.hasher = hasher
        self.worst = 0

    def update(self, data: bytes) -> None:
        self.worst = max(self.worst, self.hasher._lag)
        time.sleep(0.002)
        self.h.update(data)

    def hexdigest(self) -> str:
        return self.h.hexdigest()


async def test_threaded_sha256_hashes_in_order_and_bounds_how_far_it_lags(monkeypatch):
    """Pieces of any size give hashlib's digest; the stream waits rather than queue more than the lag."""
    monkeypatch.setattr(blobs, "THREAD_BATCH", 3000)
    monkeypatch.setattr(blobs, "THREAD_LAG", 20000)
    rng = random.Random(7)
    pieces = [rng.randbytes(rng.randint(1, 5000)) for _ in range(300)]
    hasher = blobs.ThreadedSha256()
    slow = hasher._h = _SlowSha(hasher)
    for piece in pieces:
        await hasher.feed(piece)
    assert await hasher.hexdigest() == hashlib.sha256(b"".join(pieces)).hexdigest()
    assert 20000 < slow.worst <= 20000 + 3000 + 5000  # it fell behind, and no further than a batch past the lag
