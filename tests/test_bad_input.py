"""Every bad input gets a 4xx in the CNR shape, and the registry is left unchanged."""

from __future__ import annotations

import base64
import gzip
import io
import json

import pytest
from yarl import URL

from tests import helpers
from tests.helpers import body, kpm

API = "/cnr/api/v1/packages"


def B64(data: bytes) -> str:
    return base64.b64encode(data).decode()


async def expect_error(client, registry, existing, method, path, status, code=None, **kw):
    ns, name = existing
    repo = f"{ns}/{name}"
    before = helpers.tags(registry.url, repo)
    catalog_before = helpers.catalog(registry.url)
    # encoded=True: send the path as a raw client would, %2E%2E and all, without normalising it.
    url = URL(str(client.make_url("")).rstrip("/") + path.format(pkg=repo), encoded=True)
    resp = await client.session.request(method, url, **kw)
    text = await resp.text()
    assert resp.status == status, text
    data = json.loads(text)
    assert set(data) >= {"code", "message", "details", "error"}
    assert data["error"]["code"] == data["code"]
    if code:
        assert data["code"] == code
    assert helpers.tags(registry.url, repo) == before
    assert helpers.catalog(registry.url) == catalog_before
    return data


BAD_NAMES = ["UPPER/app", "ns/App", "ns//app", "-ns/app", "ns/app-", "ns./app", "ns/_app",
             "%2E%2E/app", "ns/%2E%2E", "ns%2Fx/app", "a/b/c", "ns/" + "x" * 300, "n%C3%A9/app"]


# An empty segment or a third segment does not match any route: the router's 404.
ROUTED_BAD_NAMES = [n for n in BAD_NAMES if "//" not in n and n != "a/b/c"]


@pytest.mark.parametrize("name", ROUTED_BAD_NAMES)
async def test_bad_names_are_400_on_push(client, registry, existing, name):
    await expect_error(client, registry, existing, "POST", f"{API}/{name}", 400, "invalid-usage", json=body(kpm()))


async def test_name_with_an_empty_segment_is_404_on_push(client, registry, existing):
    await expect_error(client, registry, existing, "POST", f"{API}/ns//app", 404, "resource-not-found",
                       json=body(kpm()))


async def test_name_with_three_segments_is_405_on_push(client, registry, existing):
    # a/b/c reads as package a/b, release c: a GET-only route.
    await expect_error(client, registry, existing, "POST", f"{API}/a/b/c", 405, json=body(kpm()))


@pytest.mark.parametrize("name", ROUTED_BAD_NAMES)
async def test_bad_names_are_400_on_read(client, registry, existing, name):
    await expect_error(client, registry, existing, "GET", f"{API}/{name}/1.0.0/kpm/pull", 400, "invalid-usage")


@pytest.mark.parametrize("release", ["1.0", "v1.0.0", "01.0.0", "1.0.0-01", "1." * 150 + "0"])
async def test_bad_releases_are_422_on_push(client, registry, existing, release):
    await expect_error(client, registry, existing, "POST", API + "/{pkg}", 422, "invalid-release",
                       json=body(kpm(), release))


async def test_unparseable_version_query_is_422(client, registry, existing):
    await expect_error(client, registry, existing, "GET", API + "/{pkg}/abc/kpm", 422, "invalid-release")


async def test_release_as_a_number_is_422(client, registry, existing):
    await expect_error(client, registry, existing, "POST", API + "/{pkg}", 422, "invalid-release",
                       json={"blob": B64(kpm()), "release": 1, "media_type": "kpm"})


@pytest.mark.parametrize("media_type", ["../x", "", "m" * 200, "Kpm"])
async def test_bad_media_types_are_400_on_push(client, registry, existing, media_type):
    await expect_error(client, registry, existing, "POST", API + "/{pkg}", 400,
                       json=body(kpm(), "2.0.0", media_type))


@pytest.mark.parametrize("media_type", ["..%2Fx", "m" * 200])
async def test_bad_media_types_are_400_on_read(client, registry, existing, media_type):
    await expect_error(client, registry, existing, "GET", API + "/{pkg}/1.0.0/" + media_type, 400, "invalid-usage")


BAD_BLOBS = {
    "missing": None,
    "not-base64": "!!!not base64!!!",
    "not-gzip": B64(b"just some text"),
    "gzip-not-tar": B64(gzip.compress(b"not a tar archive at all" * 40)),
    "empty": "",
    "empty-tar": B64(helpers.tarball({})),
}


@pytest.mark.parametrize("case", list(BAD_BLOBS))
async def test_bad_blobs_are_400(client, registry, existing, case):
    payload = {"release": "2.0.0", "media_type": "kpm"}
    if BAD_BLOBS[case] is not None:
        payload["blob"] = BAD_BLOBS[case]
    data = await expect_error(client, registry, existing, "POST", API + "/{pkg}", 400, "invalid-usage", json=payload)
    assert "blob" in data["message"]


@pytest.mark.parametrize("raw", [b"not json", b"[1, 2]", b'"a string"', b"\xff\xfe"])
async def test_body_not_a_json_object_is_400(client, registry, existing, raw):
    await expect_error(client, registry, existing, "POST", API + "/{pkg}", 400, "invalid-usage",
                       data=raw, headers={"Content-Type": "application/json"})


async def test_body_over_the_limit_is_413(client, registry, existing, settings):
    big = body(kpm(extra=b"x" * 10), "2.0.0")
    big["metadata"] = {"pad": "x" * (settings.max_body_size + 1)}
    await expect_error(client, registry, existing, "POST", API + "/{pkg}", 413, "payload-too-large",
                       data=io.BytesIO(json.dumps(big).encode()), headers={"Content-Type": "application/json"})


async def test_chunked_body_over_the_limit_is_413(client, registry, existing, settings):
    async def gen():
        yield b'{"release": "2.0.0", "blob": "'
        for _ in range(settings.max_body_size // 65536 + 2):
            yield b"A" * 65536
        yield b'"}'

    await expect_error(client, registry, existing, "POST", API + "/{pkg}", 413, "payload-too-large", data=gen())


@pytest.mark.parametrize("digest", ["xyz", "a" * 63, "A" * 64, "g" * 64])
async def test_bad_digests_are_400(client, registry, existing, digest):
    await expect_error(client, registry, existing, "GET", API + "/{pkg}/blobs/sha256/" + digest, 400, "invalid-usage")


async def test_unknown_digest_is_404_package_not_found(client, registry, existing):
    await expect_error(client, registry, existing, "GET", API + "/{pkg}/blobs/sha256/" + "b" * 64, 404,
                       "package-not-found")


@pytest.mark.parametrize("release", ["1.0", "abc"])
async def test_delete_with_a_bad_release_is_422(client, registry, existing, release):
    await expect_error(client, registry, existing, "DELETE", API + "/{pkg}/" + release + "/kpm", 422, "invalid-release")


@pytest.mark.parametrize("param", ["limit=x", "offset=-1"])
async def test_bad_paging_is_422(client, registry, existing, param):
    await expect_error(client, registry, existing, "GET", API + "?" + param, 422, "invalid-parameters")


async def test_force_as_string_false_does_not_force(client, registry, existing):
    await expect_error(client, registry, existing, "POST", API + "/{pkg}", 409, "package-exists",
                       json=body(kpm(extra=b"other"), force="false"))
