"""Hostile push bodies through the app, against the real registry: each is a 4xx in the CNR shape,
answered without a long stall, and the registry is left unchanged."""

from __future__ import annotations

import base64
import dataclasses
import io
import json
import time

import pytest

from cnr_oci import archive, safejson, tarscan
from tests import helpers
from tests import test_archive as bombs
from tests.helpers import unique
from tests.test_bad_input import API, expect_error

LOGIN = "/cnr/api/v1/users/login"


def B64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def push_json(blob: bytes, media_type: str = "helm") -> dict[str, str]:
    return {"blob": B64(blob), "release": "2.0.0", "media_type": media_type}


def as_data(doc: dict[str, str]) -> dict[str, object]:
    """A large JSON body as a stream (aiohttp warns on large raw bodies)."""
    return {"data": io.BytesIO(json.dumps(doc).encode()), "headers": {"Content-Type": "application/json"}}


def helm_chart(name: str, chart_yaml: str) -> bytes:
    return bombs.chart_tgz(name, chart_yaml)


async def hostile(client, registry, existing, status, code, seconds=3.0, **kw):
    """POST to the existing package; assert status/code, the registry unchanged, and the time taken."""
    start = time.perf_counter()
    data = await expect_error(client, registry, existing, "POST", API + "/{pkg}", status, code, **kw)
    assert time.perf_counter() - start < seconds
    return data


@pytest.mark.parametrize("media_type", ["helm", "kpm"])
async def test_a_1_gib_pax_header_push_is_400(client, registry, existing, media_type):
    data = await hostile(client, registry, existing, 400, "invalid-usage",
                         **as_data(push_json(bombs.pax_bomb(), media_type)))
    assert "extended header" in data["message"]
    assert data["details"]["limit"] == tarscan.MAX_EXTENDED_HEADER


async def test_a_gnu_long_name_bomb_push_is_400(client, registry, existing):
    data = await hostile(client, registry, existing, 400, "invalid-usage", **as_data(push_json(bombs.longname_bomb())))
    assert "extended header" in data["message"]


async def test_a_million_member_chart_push_is_400(make_client, settings, registry, existing):
    big = await make_client(dataclasses.replace(settings, max_body_size=16 * 1024 * 1024))
    data = await hostile(big, registry, existing, 400, "invalid-usage", **as_data(push_json(bombs.many_members())))
    assert str(tarscan.MAX_MEMBERS) in data["message"]


@pytest.mark.parametrize("levels", [8, 9])
async def test_a_yaml_alias_bomb_push_is_400_and_writes_nothing(client, registry, levels):
    ns, _ = unique()
    chart = helm_chart("demo", bombs.alias_bomb(levels))
    # The package does not exist yet: the push must not create it.
    data = await hostile(client, registry, (ns, "demo"), 400, "invalid-usage", json=push_json(chart))
    assert "aliases" in data["message"]


@pytest.mark.parametrize("field,value", [("sources", "5"), ("sources", "{a: 1}"), ("annotations", "[a, b]"),
                                         ("annotations", "a string"), ("maintainers", "5")])
async def test_chart_yaml_with_wrong_field_types_is_400_naming_the_field(client, registry, field, value):
    ns, _ = unique()
    chart = helm_chart("demo", f"apiVersion: v2\nname: demo\nversion: 2.0.0\n{field}: {value}\n")
    data = await hostile(client, registry, (ns, "demo"), 400, "invalid-usage", json=push_json(chart))
    assert field in data["message"]


async def test_a_5001_digit_chart_version_is_400(client, registry):
    ns, _ = unique()
    chart = helm_chart("demo", "apiVersion: v2\nname: demo\nversion: " + "9" * 5001 + "\n")
    await hostile(client, registry, (ns, "demo"), 400, "invalid-usage", json=push_json(chart))


@pytest.mark.parametrize("case", ["sparse-0.1-map-not-integers", "sparse-1.0-truncated-map"])
async def test_crafted_sparse_headers_are_no_5xx(client, registry, case):
    """No Chart.yaml can be read from them: not a chart, stored as it came (no crash, no 500)."""
    blob = bombs.gz(bombs.CRAFTED[case] + bytes(1024))
    pkg = "/".join(unique())
    resp = await client.post(f"{API}/{pkg}", json=push_json(blob))
    assert resp.status == 200, await resp.text()
    assert await (await client.get(f"{API}/{pkg}/2.0.0/helm/pull")).read() == blob


async def test_deeply_nested_json_push_is_400(client, registry, existing):
    raw = b"[" * 100_000 + b"]" * 100_000
    data = await hostile(client, registry, existing, 400, "invalid-usage", data=raw,
                         headers={"Content-Type": "application/json"})
    assert str(safejson.MAX_DEPTH) in data["message"]


async def test_deeply_nested_metadata_is_400(client, registry, existing):
    raw = json.dumps(push_json(bombs.helpers.kpm(), "kpm")).encode()[:-1] + b', "metadata": {"a": '
    raw += b"[" * 100 + b"]" * 100 + b"}}"
    data = await hostile(client, registry, existing, 400, "invalid-usage", data=raw,
                         headers={"Content-Type": "application/json"})
    assert str(safejson.MAX_DEPTH) in data["message"]


# 30,000 levels: past the recursion limit, under the login body limit.
@pytest.mark.parametrize("depth", [safejson.MAX_DEPTH + 1, 30_000])
async def test_deeply_nested_json_login_is_400(client, depth):
    resp = await client.post(LOGIN, data=b"[" * depth + b"]" * depth, headers={"Content-Type": "application/json"})
    data = await resp.json()
    assert resp.status == 400 and data["code"] == "invalid-usage" and data["error"]["code"] == "invalid-usage"
    assert str(safejson.MAX_DEPTH) in data["message"]


async def test_an_oversized_login_body_is_413(client):
    pad = "x" * (archive.MAX_SMALL_BODY + 1)
    resp = await client.post(LOGIN, json={"user": {"username": "a", "password": pad}})
    data = await resp.json()
    assert resp.status == 413 and data["code"] == "payload-too-large"


async def test_an_ordinary_login_still_works(client):
    resp = await client.post(LOGIN, json={"user": {"username": "a", "password": "b"}})
    assert resp.status == 200 and "token" in await resp.json()


# -- found by the attack on the client-facing changes ------------------------------------------------


def _chart_with(name: str, extra_yaml: str) -> bytes:
    text = f"apiVersion: v2\nname: {name}\nversion: 0.1.0\n{extra_yaml}"
    return helpers.tarball({f"{name if '/' not in name else 'x'}/Chart.yaml": text.encode()})


async def test_a_chart_cannot_set_cnr_metadata_through_its_annotations(client):
    pkg = "/".join(unique())
    deep = "[" * 30_000 + "]" * 30_000
    tgz = _chart_with(pkg.split("/")[1], f'annotations:\n  vnd.cnr.package.metadata: "{deep}"\n  other: "x"\n')
    resp = await client.post(f"{API}/{pkg}", json={**push_json(tgz), "metadata": None})
    assert resp.status == 200, await resp.text()
    shown = await client.get(f"{API}/{pkg}/2.0.0/helm")
    assert shown.status == 200 and (await shown.json())["metadata"] is None
    assert (await client.get(f"{API}/{pkg}")).status == 200


@pytest.mark.parametrize("name", ['"../../etc/evil"', '"a/b"', '"."', '".."', '"a\\u0000b"', '"a\\nb"'])
async def test_a_chart_name_that_is_no_plain_file_name_is_400(client, registry, existing, name):
    blob = helpers.tarball({"x/Chart.yaml": f"apiVersion: v2\nname: {name}\nversion: 0.1.0\n".encode()})
    data = await hostile(client, registry, existing, 400, "invalid-usage", json=push_json(blob))
    assert "name" in data["message"]
