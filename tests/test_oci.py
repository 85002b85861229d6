"""The async OCI client against a real docker-registry."""

from __future__ import annotations

import json

import aiohttp
import pytest

from cnr_oci import blobs, layout, oci, upstream
from cnr_oci.embedded import free_port
from cnr_oci.layout import OCI_MANIFEST
from tests.helpers import unique


@pytest.fixture
async def client(registry):
    async with aiohttp.ClientSession() as session:
        yield oci.OciClient(session, registry.url, retries=1, backoff=0.01)


def repo():
    return "/".join(unique())


def small_manifest(config: bytes, layer: bytes, note: str = "") -> bytes:
    doc = {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": {"mediaType": "application/vnd.oci.empty.v1+json", "digest": layout.sha256(config),
                   "size": len(config)},
        "layers": [{"mediaType": "application/octet-stream", "digest": layout.sha256(layer), "size": len(layer)}],
        "annotations": {"note": note},
    }
    return json.dumps(doc).encode()


async def put_artifact(client, r, tag, layer=b"layer-bytes", note=""):
    config = b"{}"
    await client.upload_blob(r, layout.sha256(config), config)
    await client.upload_blob(r, layout.sha256(layer), layer)
    raw = small_manifest(config, layer, note)
    return raw, await client.put_manifest(r, tag, raw, OCI_MANIFEST)


async def test_manifest_put_get_head_delete(client):
    r = repo()
    raw, digest = await put_artifact(client, r, "1.0.0")
    assert digest == layout.sha256(raw)
    m = await client.get_manifest(r, "1.0.0")
    assert m.raw == raw and m.digest == digest and m.media_type == OCI_MANIFEST
    assert (await client.get_manifest(r, digest)).raw == raw
    assert await client.head_manifest(r, "1.0.0") == digest
    await client.delete_manifest(r, digest)
    assert await client.head_manifest(r, "1.0.0") is None
    with pytest.raises(upstream.ManifestUnknown):
        await client.get_manifest(r, "1.0.0")


async def test_blob_upload_is_skipped_when_present_and_mounted_across_repositories(client):
    a, b = repo(), repo()
    data = b"shared blob " + a.encode()
    assert await client.upload_blob(a, layout.sha256(data), data) == "uploaded"
    assert await client.upload_blob(a, layout.sha256(data), data) == "exists"
    assert await client.upload_blob(b, layout.sha256(data), data, mount_from=a) == "mounted"
    assert await client.blob_exists(b, layout.sha256(data))


async def test_blob_stream_yields_the_bytes_and_checks_the_digest(client):
    r = repo()
    data = bytes(range(256)) * 4000
    await client.upload_blob(r, layout.sha256(data), data)
    stream = await client.open_blob(r, layout.sha256(data))
    try:
        got = b"".join([c async for c in stream.chunks(1000)])
    finally:
        stream.close()
    assert got == data and stream.size == len(data)


async def test_unknown_blob_raises_blob_unknown(client):
    r = repo()
    await put_artifact(client, r, "1.0.0")
    with pytest.raises(upstream.NotFound):
        await client.open_blob(r, "sha256:" + "0" * 64)


async def test_tags_and_unknown_repository(client):
    r = repo()
    await put_artifact(client, r, "1.0.0", note="a")
    await put_artifact(client, r, "latest", note="b")
    assert sorted(await client.tags(r)) == ["1.0.0", "latest"]
    with pytest.raises(upstream.NameUnknown):
        await client.tags(repo())


async def test_catalog_follows_pagination(client):
    ns = unique()[0]
    for i in range(5):
        await put_artifact(client, f"{ns}/p{i}", "1.0.0")
    repos = await client.catalog(page_size=2)
    assert [f"{ns}/p{i}" for i in range(5)] == [x for x in repos if x.startswith(ns + "/")]
    assert len(repos) == len(set(repos))


async def test_manifest_put_without_a_valid_manifest_is_a_typed_error(client):
    with pytest.raises(upstream.BadRequest):
        await client.put_manifest(repo(), "1.0.0", b'{"schemaVersion": 2}', OCI_MANIFEST)


async def test_connection_refused_is_registry_unavailable():
    async with aiohttp.ClientSession() as session:
        c = oci.OciClient(session, f"http://127.0.0.1:{free_port()}", retries=2, backoff=0.01)
        with pytest.raises(upstream.RegistryUnavailable):
            await c.tags("a/b")


async def test_an_upload_session_the_registry_purged_is_replaced(client, registry):
    r = repo()
    session = await client.open_upload(r)
    gone = blobs.UploadSession(r, session.location)
    await client.cancel_upload(session)  # as distribution's upload purging would
    data = b"blob after a long wait"
    assert await client.upload_blob(r, layout.sha256(data), data, session=gone) == "uploaded"
    assert gone.used
    assert await client.blob_exists(r, layout.sha256(data))


def test_the_manifest_cache_is_bounded_by_bytes_and_keeps_nothing_larger_than_itself():
    from cachetools import LRUCache

    from cnr_oci.readmodel import _keep

    cache: LRUCache[str, str] = LRUCache(100, getsizeof=len)
    for i in range(5):
        _keep(cache, f"k{i}", "x" * 30)
    assert len(cache) == 3 and cache.currsize == 90 and "k0" not in cache and "k4" in cache
    _keep(cache, "huge", "x" * 101)  # larger than the whole budget: not kept, nothing evicted for it
    assert "huge" not in cache and len(cache) == 3
