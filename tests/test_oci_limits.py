"""The OCI client under hostile and real-sized conditions: whole reads of manifests and
configs up to the registry's cap, credentials only for the upstream's own origin, deadlines
and a minimum blob rate, malformed answers, no compression, a bounded token cache."""

from __future__ import annotations

import dataclasses
import io
import json

import pytest

from cnr_oci import appkeys, oci
from cnr_oci.settings import Settings
from tests.helpers import body, chart, kpm, unique

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
SIZES = {"0": 0, "60K": 60_000, "300K": 300_000, "cap": oci.MAX_MANIFEST - 8 * 1024}


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
                                                  metadata={"pad": "x" * (oci.MAX_MANIFEST + 1)}))
    data = await resp.json()
    assert resp.status == 413 and data["code"] == "payload-too-large", data
    assert "manifest" in data["message"]
    assert (await client.get(f"{API}/{pkg}")).status == 404


async def test_the_registrys_own_refusal_of_a_large_manifest_is_413(make_client, settings, registry):
    """distribution 2.8.2 answers 400 MANIFEST_INVALID "http: request body too large"."""
    client = await make_client(dataclasses.replace(settings, max_body_size=32 * MiB))
    client.app[appkeys.OCI].max_manifest = 8 * MiB  # let it through to the registry
    pkg = "/".join(unique())
    resp = await post(client, f"{API}/{pkg}", body(chart(pkg.split("/")[1]), media_type="helm",
                                                  metadata={"pad": "x" * (oci.MAX_MANIFEST + 1)}))
    data = await resp.json()
    assert resp.status == 413 and data["code"] == "payload-too-large", data
    assert "too large" in data["message"] and "MANIFEST_INVALID" in data["message"]
