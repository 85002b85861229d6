"""Blobs flow through: memory does not grow with blob size."""

from __future__ import annotations

import gc
import hashlib
import os

import psutil

from tests import helpers
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
