"""The OCI client under hostile and real-sized conditions: whole reads of manifests and
configs up to the registry's cap, credentials only for the upstream's own origin, deadlines
and a minimum blob rate, malformed answers, no compression, a bounded token cache."""

from __future__ import annotations

import asyncio
import base64
import collections
import dataclasses
import io
import json
import os
import time
from types import SimpleNamespace

import aiohttp
import pytest

from cnr_oci import appkeys, oci, upstream
from cnr_oci.auth import IDENTITY, Credentials
from cnr_oci.challenge import Authenticator
from cnr_oci.embedded import free_port
from cnr_oci.settings import Settings
from tests import helpers
from tests.certs import self_signed
from tests.conftest import start_htpasswd_registry, start_registry
from tests.fake_upstream import (
    RawServer,
    http_answer,
    make_gzip_proxy,
    make_recorder,
    make_redirecting_proxy,
    make_trickle_proxy,
)
from tests.helpers import body, chart, kpm, unique
from tests.token_server import TokenServer, token_config

API = "/cnr/api/v1/packages"
MiB = 1024 * 1024


def url_of(server) -> str:
    return str(server.make_url("")).rstrip("/")


async def post(client, url, doc):
    """POST JSON from a BytesIO (aiohttp warns about large raw bodies)."""
    data = io.BytesIO(json.dumps(doc).encode())
    return await client.post(url, data=data, headers={"Content-Type": "application/json"})


# -- defect 1: manifests and configs are read whole, up to the registry's cap ----------------

# For helm the metadata is a manifest annotation (JSON inside JSON: quotes are escaped once
# more); for kpm it is in the config blob. "cap" leaves a few KiB for the rest of the document.
SIZES = {"0": 0, "60K": 60_000, "300K": 300_000, "cap": upstream.MAX_MANIFEST - 8 * 1024}


@pytest.mark.timeout(120)
@pytest.mark.parametrize("media_type", ["helm", "kpm"])
@pytest.mark.parametrize("size", list(SIZES))
async def test_large_metadata_round_trips(make_client, settings, media_type, size):
    settings = dataclasses.replace(settings, max_body_size=32 * MiB, cache_ttl=0)
    client = await make_client(settings)
    ns, name = unique()
    pkg = f"{ns}/{name}"
    blob = chart(name) if media_type == "helm" else kpm()
    metadata = {"pad": "x" * SIZES[size]} if SIZES[size] else None
    resp = await post(client, f"{API}/{pkg}", body(blob, media_type=media_type, metadata=metadata))
    assert resp.status == 200, (await resp.text())[:300]
    for _ in range(20):  # a fresh app each time: nothing is served from its caches
        fresh = await make_client(settings)
        resp = await fresh.get(f"{API}/{pkg}/1.0.0/{media_type}")
        assert resp.status == 200, (await resp.text())[:300]
        assert (await resp.json())["metadata"] == metadata
        await fresh.close()
    assert await (await client.get(f"{API}/{pkg}/1.0.0/{media_type}/pull")).read() == blob
    listed = await (await client.get(API, params={"namespace": ns})).json()
    assert [p["name"] for p in listed] == [pkg]
    releases = await (await client.get(f"{API}/{pkg}")).json()
    assert [r["metadata"] for r in releases] == [metadata]
    assert (await client.delete(f"{API}/{pkg}/1.0.0/{media_type}")).status == 200
    assert (await client.get(f"{API}/{pkg}/1.0.0/{media_type}")).status == 404


async def test_a_manifest_over_the_cap_is_413(make_client, settings):
    client = await make_client(dataclasses.replace(settings, max_body_size=32 * MiB))
    pkg = "/".join(unique())
    name = pkg.split("/")[1]
    resp = await post(client, f"{API}/{pkg}", body(chart(name), media_type="helm",
                                                  metadata={"pad": "x" * (upstream.MAX_MANIFEST + 1)}))
    data = await resp.json()
    assert resp.status == 413 and data["code"] == "payload-too-large", data
    assert "manifest" in data["message"]
    assert (await client.get(f"{API}/{pkg}")).status == 404


@pytest.mark.parametrize("media_type", ["helm", "kpm"])
async def test_a_package_whose_manifest_or_config_would_pass_the_cap_is_413_before_any_upload(
        make_client, settings, registry, media_type):
    client = await make_client(dataclasses.replace(settings, max_body_size=32 * MiB))
    pkg = "/".join(unique())
    blob = chart(pkg.split("/")[1]) if media_type == "helm" else kpm()
    resp = await post(client, f"{API}/{pkg}", body(blob, media_type=media_type,
                                                  metadata={"pad": "x" * (upstream.MAX_MANIFEST + 1)}))
    data = await resp.json()
    assert resp.status == 413 and data["code"] == "payload-too-large", data
    assert ("config" if media_type == "kpm" else "manifest") in data["message"]
    assert helpers.tags(registry.url, pkg) == []
    assert helpers._get(f"{registry.url}/v2/{pkg}/blobs/sha256:{helpers.sha(blob)}")[0] == 404


async def test_the_registrys_own_refusal_of_a_large_manifest_is_413(make_client, settings, registry):
    """distribution 2.8.2 answers 400 MANIFEST_INVALID "http: request body too large"."""
    client = await make_client(dataclasses.replace(settings, max_body_size=32 * MiB))
    client.app[appkeys.OCI].max_manifest = 8 * MiB  # let it through to the registry
    pkg = "/".join(unique())
    resp = await post(client, f"{API}/{pkg}", body(chart(pkg.split("/")[1]), media_type="helm",
                                                  metadata={"pad": "x" * (upstream.MAX_MANIFEST + 1)}))
    data = await resp.json()
    assert resp.status == 413 and data["code"] == "payload-too-large", data
    assert "too large" in data["message"] and "MANIFEST_INVALID" in data["message"]


# -- defect 9: credentials only for the upstream's own origin ---------------------------------

USERS = {"alice": "alice-pw-1"}


@pytest.fixture(scope="module")
def htpasswd_registry(tmp_path_factory):
    reg = start_htpasswd_registry(tmp_path_factory.mktemp("htpasswd-limits"), USERS)
    yield reg
    reg.stop()


def alice() -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"alice:{USERS['alice']}".encode()).decode()}


async def test_credentials_never_go_to_another_origin(aiohttp_server, make_client, htpasswd_registry):
    """The upload Location and the Link rel=next name another port; it sees no Authorization."""
    seen: list[tuple[str, str, dict[str, str]]] = []
    foreign = await aiohttp_server(make_recorder(htpasswd_registry.url, seen))
    proxy = await aiohttp_server(make_redirecting_proxy(htpasswd_registry.url, lambda: url_of(foreign)))
    client = await make_client(Settings(upstream=url_of(proxy)))
    direct = await make_client(Settings(upstream=htpasswd_registry.url))
    ns, name = unique()
    assert (await direct.post(f"{API}/{ns}/{name}", json=body(kpm()), headers=alice())).status == 200
    pushed = await client.post(f"{API}/{ns}/{name}", json=body(kpm(), "2.0.0"), headers=alice())
    await client.get(API, headers=alice())  # the catalog: its next page is on the foreign origin
    await client.get(f"{API}/{ns}/{name}", headers=alice())  # the tags: likewise
    paths = [p for _, p, _ in seen]
    assert any("/blobs/uploads/" in p for p in paths), paths
    assert "/v2/_catalog" in paths and f"/v2/{ns}/{name}/tags/list" in paths, paths
    assert all("Authorization" not in h for _, _, h in seen), [(m, p) for m, p, h in seen if "Authorization" in h]
    # Without credentials the registry refuses the upload there, so the push fails.
    assert pushed.status == 401, await pushed.text()


# -- defect 15: deadlines and a minimum blob rate ----------------------------------------------


async def test_a_registry_that_never_answers_gives_503_within_the_deadline(make_client):
    server = RawServer(lambda method, target: None)  # accepts, reads, never answers
    url = await server.start()
    try:
        client = await make_client(Settings(upstream=url, upstream_timeout=1.5, read_timeout=5))
        start = time.monotonic()
        resp = await client.get(f"{API}/{'/'.join(unique())}/1.0.0/kpm")
        elapsed = time.monotonic() - start
        data = await resp.json()
        assert resp.status == 503 and data["code"] == "upstream-unavailable", data
        assert elapsed < 3, elapsed  # the deadline holds for the call, retries included
        assert "1.5 s" in data["message"]
    finally:
        await server.close()


async def test_a_trickling_blob_is_cut_off(aiohttp_server, make_client, client, registry):
    repo = "/".join(unique())
    blob = kpm(extra=os.urandom(64 * 1024))
    assert (await client.post(f"{API}/{repo}", json=body(blob))).status == 200
    proxy = await aiohttp_server(make_trickle_proxy(registry.url, rate=2000, step=0.1))
    # Streamed, not through the blob cache (which reads a small blob whole before answering: a 503 then).
    slow = await make_client(Settings(upstream=url_of(proxy), upstream_min_rate=8192, upstream_rate_window=1,
                                      blob_cache_size=0))
    start = time.monotonic()
    resp = await slow.get(f"{API}/{repo}/1.0.0/kpm/pull")
    assert resp.status == 200  # headers went out before the stream slowed down
    got = bytearray()
    with pytest.raises(aiohttp.ClientPayloadError):
        async with asyncio.timeout(15):  # at 2 KB/s the whole blob would take 33 s
            async for chunk in resp.content.iter_any():
                got += chunk
    assert len(got) < len(blob) and time.monotonic() - start < 5


async def test_a_slow_reader_downstream_is_not_blamed_on_the_registry(make_client, client, registry):
    """Time our own client takes to accept a chunk does not count against the registry."""
    repo = "/".join(unique())
    blob = kpm(extra=os.urandom(2 * 1024 * 1024))
    assert (await post(client, f"{API}/{repo}", body(blob))).status == 200
    picky = await make_client(dataclasses.replace(client.app[appkeys.SETTINGS], upstream_min_rate=1024 * 1024,
                                                  upstream_rate_window=0.5))
    resp = await picky.get(f"{API}/{repo}/1.0.0/kpm/pull")
    got = bytearray()
    async for chunk in resp.content.iter_chunked(256 * 1024):
        got += chunk
        await asyncio.sleep(0.2)
    assert bytes(got) == blob


# -- defect 16b: broken answers are 502/503, retried when idempotent --------------------------

TAGS = http_answer(200, b'{"name":"x","tags":["1.0.0"]}')


@pytest.mark.parametrize("kind", ["truncated", "garbage", "disconnect", "bad-header"])
async def test_a_broken_manifest_answer_is_retried_then_502_or_503(make_client, kind):
    broken = {
        "truncated": http_answer(200, b'{"schemaVersion":', length=500),
        "garbage": b"HELLO THERE\r\n\r\n",
        "disconnect": b"",
        "bad-header": b"HTTP/1.1 200 OK\r\nContent-Length: banana\r\n\r\n{}",
    }[kind]
    server = RawServer(lambda method, target: TAGS if target.endswith("/tags/list") else broken)
    url = await server.start()
    try:
        client = await make_client(Settings(upstream=url, cache_ttl=0))
        resp = await client.get(f"{API}/{'/'.join(unique())}/1.0.0/kpm")
        data = await resp.json()
        assert resp.status in (502, 503) and data["code"] == "upstream-unavailable", (resp.status, data)
        # 1 + 3 retries (aiohttp itself retries a dropped connection of an idempotent request once)
        assert sum(1 for _, t in server.requests if "/manifests/" in t) in (4, 8), server.requests
    finally:
        await server.close()


@pytest.mark.parametrize("answer", [b"[]", b'"tags"', b'{"tags": "1.0.0", "repositories": "x"}', b"null", b"{"])
async def test_a_tags_or_catalog_answer_that_is_no_object_is_502(make_client, answer):
    server = RawServer(lambda method, target: http_answer(200, answer))
    url = await server.start()
    try:
        client = await make_client(Settings(upstream=url, cache_ttl=0))
        for path in (f"{API}/{'/'.join(unique())}", API):
            resp = await client.get(path)
            data = await resp.json()
            assert resp.status == 502 and data["code"] == "upstream-unavailable", (path, resp.status, data)
    finally:
        await server.close()


# -- defect 17: no compression from the upstream ---------------------------------------------


async def test_everything_works_through_a_gzipping_proxy(aiohttp_server, make_client, registry):
    seen: collections.Counter[str] = collections.Counter()
    proxy = await aiohttp_server(make_gzip_proxy(registry.url, seen))
    client = await make_client(Settings(upstream=url_of(proxy), cache_ttl=0))
    ns, name = unique()
    blob = chart(name)
    resp = await client.post(f"{API}/{ns}/{name}", json=body(blob, media_type="helm", metadata={"a": 1}))
    assert resp.status == 200, await resp.text()
    resp = await client.get(f"{API}/{ns}/{name}/1.0.0/helm")
    assert resp.status == 200 and (await resp.json())["metadata"] == {"a": 1}
    assert [p["name"] for p in await (await client.get(API, params={"namespace": ns})).json()] == [f"{ns}/{name}"]
    assert await (await client.get(f"{API}/{ns}/{name}/1.0.0/helm/pull")).read() == blob
    assert seen["forwarded"] > 5 and seen["gzipped"] == 0


# -- defect 19: a bounded token cache, one fetch for N concurrent requests --------------------

TOKEN_USERS = {f"u{i}": f"pw{i}" for i in range(40)}


@pytest.fixture(scope="module")
def token_env(tmp_path_factory):
    root = tmp_path_factory.mktemp("token-limits")
    cert_path, _, key, cert = self_signed(root / "certs", "token-signer")
    port = free_port()
    reg = start_registry(root, extra_config=token_config(f"http://127.0.0.1:{port}/token", str(cert_path)))
    yield SimpleNamespace(registry=reg, port=port, key=key, cert=cert)
    reg.stop()


@pytest.fixture
async def tokens(aiohttp_server, token_env):
    server = TokenServer(token_env.key, token_env.cert, TOKEN_USERS, {u: {"*": {"pull"}} for u in TOKEN_USERS})
    await aiohttp_server(server.app(), port=token_env.port)
    return server


async def test_concurrent_requests_of_one_identity_fetch_one_token(token_env, tokens):
    async with aiohttp.ClientSession() as session:
        client = oci.OciClient(session, token_env.registry.url)
        repo = "/".join(unique())
        token = IDENTITY.set(Credentials("u1", TOKEN_USERS["u1"]))
        try:
            results = await asyncio.gather(*(client.tags(repo) for _ in range(20)), return_exceptions=True)
        finally:
            IDENTITY.reset(token)
    assert all(isinstance(r, upstream.NotFound) for r in results), results
    assert len(tokens.requests) == 1, tokens.requests


async def test_the_token_cache_is_bounded(token_env, tokens):
    async with aiohttp.ClientSession() as session:
        client = oci.OciClient(session, token_env.registry.url)
        client.auth = Authenticator(session, max_entries=8)
        for user, password in TOKEN_USERS.items():
            token = IDENTITY.set(Credentials(user, password))
            try:
                with pytest.raises(upstream.NotFound):
                    await client.tags("/".join(unique()))
            finally:
                IDENTITY.reset(token)
        assert len(tokens.requests) == len(TOKEN_USERS)
        held_tokens, held_locks, _ = client.auth.sizes
        assert held_tokens <= 8 and held_locks == 0
