"""Nothing lost: failed pushes leave no tag, wrong bytes are never served whole."""

from __future__ import annotations

import asyncio
import io
import json
import os

import aiohttp
import pytest

from cnr_oci.settings import Settings
from tests import helpers
from tests.fake_upstream import make_proxy
from tests.helpers import body, kpm, unique

API = "/cnr/api/v1/packages"


async def test_push_whose_manifest_put_fails_leaves_no_tag(aiohttp_server, make_client, registry):
    proxy = await aiohttp_server(make_proxy(
        registry.url, fail=lambda r: r.method == "PUT" and "/manifests/" in r.path))
    client = await make_client(Settings(upstream=str(proxy.make_url("")).rstrip("/")))
    repo = "/".join(unique())
    resp = await client.post(f"{API}/{repo}", json=body(kpm()))
    data = await resp.json()
    assert resp.status == 503 and data["code"] == "upstream-unavailable"
    assert helpers.tags(registry.url, repo) == []
    resp = await client.get(f"{API}/{repo}/1.0.0/kpm")
    assert resp.status == 404


async def test_blob_with_wrong_bytes_is_502_when_nothing_was_sent(aiohttp_server, make_client, client, registry):
    repo = "/".join(unique())
    blob = kpm()
    assert (await client.post(f"{API}/{repo}", json=body(blob))).status == 200
    proxy = await aiohttp_server(make_proxy(registry.url, corrupt_blobs=True))
    bad = await make_client(Settings(upstream=str(proxy.make_url("")).rstrip("/")))
    for url in (f"{API}/{repo}/blobs/sha256/{helpers.sha(blob)}", f"{API}/{repo}/1.0.0/kpm/pull"):
        resp = await bad.get(url)
        assert resp.status == 502 and (await resp.json())["code"] == "upstream-unavailable"


async def test_large_blob_with_wrong_bytes_is_never_served_complete(aiohttp_server, make_client, client, registry):
    repo = "/".join(unique())
    blob = kpm(extra=os.urandom(2 * 1024 * 1024))  # several chunks: headers go out before the check
    payload = io.BytesIO(json.dumps(body(blob)).encode())
    assert (await client.post(f"{API}/{repo}", data=payload)).status == 200
    proxy = await aiohttp_server(make_proxy(registry.url, corrupt_blobs=True))
    bad = await make_client(Settings(upstream=str(proxy.make_url("")).rstrip("/")))
    resp = await bad.get(f"{API}/{repo}/blobs/sha256/{helpers.sha(blob)}")
    assert resp.status == 200 and resp.content_length == len(blob)  # headers went out before the check
    got = bytearray()
    with pytest.raises(aiohttp.ClientPayloadError):
        async for chunk in resp.content.iter_any():
            got += chunk
    assert 0 < len(got) < len(blob)  # a short body, never a complete wrong one


async def test_concurrent_pushes_of_one_release_have_one_winner(client, registry):
    repo = "/".join(unique())
    blobs = [kpm(extra=str(i).encode()) for i in range(20)]
    resps = await asyncio.gather(*(client.post(f"{API}/{repo}", json=body(b)) for b in blobs))
    statuses = [r.status for r in resps]
    assert statuses.count(200) == 1 and statuses.count(409) == 19
    winner = blobs[statuses.index(200)]
    assert await (await client.get(f"{API}/{repo}/1.0.0/kpm/pull")).read() == winner


async def test_registry_down_gives_503_then_recovers_without_restart(make_client, own_registry):
    client = await make_client(Settings(upstream=own_registry.url, connect_timeout=1, cache_ttl=0))
    repo = "/".join(unique())
    blob = kpm()
    assert (await client.post(f"{API}/{repo}", json=body(blob))).status == 200
    own_registry.stop()
    for method, url in (("GET", f"{API}/{repo}/1.0.0/kpm/pull"), ("GET", API), ("DELETE", f"{API}/{repo}/1.0.0/kpm")):
        resp = await client.request(method, url)
        assert resp.status == 503 and (await resp.json())["code"] == "upstream-unavailable"
    assert (await client.get("/readyz")).status == 503
    assert (await client.get("/healthz")).status == 200
    own_registry.start()
    assert (await client.get("/readyz")).status == 200
    assert await (await client.get(f"{API}/{repo}/1.0.0/kpm/pull")).read() == blob
