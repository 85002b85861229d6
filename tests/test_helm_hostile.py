"""Hostile input to the helm repository and ChartMuseum API routes (issue 12)."""

from __future__ import annotations

import asyncio
import secrets

import pytest

from cnr_oci import errors
from cnr_oci.cmapi import parse_upload
from tests import helpers
from tests.test_helm_repo import chart, push

CM = "/helm/api"


def ns_() -> str:
    return "hh" + secrets.token_hex(3)


def test_a_boundary_outside_latin1_is_400_not_500():
    with pytest.raises(errors.InvalidUsage):
        parse_upload("multipart/form-data; boundary=b\u20ac", "--b\u20ac\r\n".encode() + b"x", False)


async def test_delete_removes_the_release_holding_that_chart_version_not_the_tag_of_that_name(client, registry):
    # A CNR package whose release names differ from its charts' versions (appr allowed it).
    ns = ns_()
    await push(client, ns, "web", chart("web", "1.0.0"), "2.0.0")
    await push(client, ns, "web", chart("web", "3.0.0"), "1.0.0")
    resp = await client.delete(f"{CM}/{ns}/charts/web/1.0.0")
    # Chart web 1.0.0 lives in release 2.0.0: that one goes; release 1.0.0,
    # holding chart web 3.0.0, must stay.
    assert resp.status == 200, await resp.text()
    assert helpers.tags(registry.url, f"{ns}/web") == ["1.0.0"]


async def test_odd_inputs_on_every_route_are_4xx(client):
    ns = ns_()
    await push(client, ns, "web", chart("web", "1.0.0"), "1.0.0")
    paths = [
        ("GET", f"/helm/{'A' * 300}/index.yaml"), ("GET", "/helm/..%2F/index.yaml"),
        ("GET", f"/helm/{ns}/charts/{'a' * 5000}.tgz"), ("GET", f"/helm/{ns}/charts/%00.tgz"),
        ("GET", f"{CM}/{ns}/charts?offset=1e3"), ("GET", f"{CM}/{ns}/charts?limit={'9' * 5000}"),
        ("GET", f"{CM}/{ns}/charts?offset={10 ** 30}"), ("GET", f"{CM}/{ns}/charts/web/{'9' * 3000}"),
        ("GET", f"{CM}/{ns}/charts/%FF"), ("DELETE", f"{CM}/{ns}/charts/Web/1.0.0"),
        ("DELETE", f"{CM}/{ns}/charts/web/{'1' * 300}"), ("DELETE", f"{CM}/{ns}/charts/web/latest"),
        ("GET", f"{CM}/{'x' * 400}/charts"),
    ]
    for method, path in paths:
        resp = await client.request(method, path)
        assert resp.status < 500, (method, path, resp.status, await resp.text())


async def test_hostile_upload_bodies_are_4xx(client, registry):
    ns = ns_()
    good = chart("web", "1.0.0")
    bomb = helpers.tarball({"web/Chart.yaml": b"name: web\nversion: 1.0.0\nkeywords: [" + b"a," * 200000 + b"a]\n"})
    deep = helpers.tarball({"web/Chart.yaml": b"name: web\nversion: 1.0.0\nx: " + b"[" * 5000 + b"]" * 5000})
    bad_name = chart("Bad_Name", "1.0.0")
    dotted = chart("web.", "1.0.0")
    no_ver = helpers.tarball({"web/Chart.yaml": b"name: web\n"})
    list_yaml = helpers.tarball({"web/Chart.yaml": b"- a\n- b\n"})
    long_name = chart("a" * 300, "1.0.0")
    bodies: list[tuple[str, bytes]] = [
        ("application/gzip", bomb), ("application/gzip", deep), ("application/gzip", bad_name),
        ("application/gzip", dotted), ("application/gzip", no_ver), ("application/gzip", list_yaml),
        ("application/gzip", long_name), ("application/gzip", b""),
        ("multipart/form-data; boundary=B", b"--B\r\nContent-Disposition: form-data; name=chart\r\n\r\n" + good),
        ("multipart/form-data; boundary=B", b"--B\r\n" + b"X: y\r\n" * 5000 + b"\r\n" + good + b"\r\n--B--"),
        ("multipart/form-data; boundary=B", b"--B\r\nContent-Disposition: form-data; name=\"chart\"\r\n"
         b"Content-Type: multipart/mixed; boundary=C\r\n\r\n--C\r\n\r\n" + good + b"\r\n--C--\r\n--B--"),
        ("multipart/form-data; boundary=B", b"--B\r\nContent-Disposition: \xff\xfe\r\n\r\nx\r\n--B--"),
        ("multipart/form-data; boundary=B", b"--B\r\nContent-Disposition: form-data; name=\"chart\"\r\n\r\n"
         b"not gzip\r\n--B--"),
        ("multipart/form-data; boundary=", b"----\r\n"),
        ("multipart/form-data; boundary=\"\"", b"--\r\n\r\n--"),
        ("multipart/form-data", b""),
    ]
    for ctype, body in bodies:
        resp = await client.post(f"{CM}/{ns}/charts", data=body, headers={"Content-Type": ctype})
        assert 400 <= resp.status < 500, (ctype, body[:60], resp.status, await resp.text())


async def test_a_chart_name_that_is_not_a_string_is_400_not_stored_out_of_the_index(client, registry):
    # helm's chart.Metadata.Name is a string: `name: 123` is no chart helm loads, and the index leaves it out.
    ns = ns_()
    blob = helpers.tarball({"web/Chart.yaml": b"name: 123\nversion: 1.0.0\n"})
    resp = await client.post(f"{CM}/{ns}/charts", data=blob, headers={"Content-Type": "application/gzip"})
    assert resp.status == 400 and "name" in (await resp.json())["error"]
    assert helpers.tags(registry.url, f"{ns}/123") == []


async def test_an_anonymous_caller_gets_no_private_index_etag_or_304(make_client, htpasswd_registry):
    from cnr_oci.settings import Settings
    from tests.test_auth import basic

    client = await make_client(Settings(upstream=htpasswd_registry.url))
    ns = ns_()
    resp = await client.post(f"{CM}/{ns}/charts", data=chart("web", "1.0.0"), headers=basic("alice"))
    assert resp.status == 201
    private = await client.get(f"/helm/{ns}/index.yaml", headers=basic("alice"))
    assert private.status == 200 and b"web" in await private.read()
    etag = private.headers["ETag"]
    for headers in ({}, {"If-None-Match": etag}, basic("alice", "wrong") | {"If-None-Match": etag}):
        resp = await client.get(f"/helm/{ns}/index.yaml", headers=headers)
        body = await resp.read()
        assert resp.status != 304 and resp.headers.get("ETag") != etag and b"web" not in body, (headers, resp.status)
        for path in (f"{CM}/{ns}/charts", f"{CM}/{ns}/charts/web", f"/helm/{ns}/charts/web-1.0.0.tgz"):
            resp = await client.get(path, headers=headers)
            assert resp.status in (401, 404) or b"web" not in await resp.read(), (path, headers, resp.status)
    # The cached index reaches alice again, not the anonymous one.
    again = await client.get(f"/helm/{ns}/index.yaml", headers=basic("alice") | {"If-None-Match": etag})
    assert again.status == 304


async def test_odd_semver_uploads_store_whole_or_refuse(client, registry):
    ns = ns_()
    for version in ("1.0.0+build.1", "1.0.0-" + "a" * 130, "01.0.0", "1.0.0-rc.01", "1.0.0-" + "9" * 30):
        resp = await client.post(f"{CM}/{ns}/charts", data=chart("web", version),
                                 headers={"Content-Type": "application/gzip"})
        text = await resp.text()
        assert resp.status in (201, 400), (version, resp.status, text)
        if resp.status == 201:
            got = await client.get(f"{CM}/{ns}/charts/web/{version}")
            assert got.status == 200, (version, got.status, await got.text())
            blob = await client.get(f"/helm/{ns}/charts/web-{version}.tgz")
            assert blob.status == 200 and await blob.read() == chart("web", version), version
            assert (await client.delete(f"{CM}/{ns}/charts/web/{version}")).status == 200, version


def test_a_multipart_upload_is_split_without_copying_the_body():
    import os
    import tracemalloc

    from cnr_oci.cmapi import _form_parts

    size = 8 << 20
    body = bytearray(b'--B\r\nContent-Disposition: form-data; name="chart"\r\n\r\n' + os.urandom(size) + b"\r\n--B--")
    tracemalloc.start()
    try:
        parts = _form_parts("multipart/form-data; boundary=B", body)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert len(parts["chart"]) == size
    assert peak < 1.2 * size  # the kept part, once (was 3x: bytes(body), the section, the part)


async def test_an_upload_of_a_chart_version_another_package_holds_is_409_not_stored_unseen(client, registry):
    # Package <ns>/database holds chart web 1.0.0 (a CNR push): the index lists that one. An upload of web
    # 1.0.0 to <ns>/web would be stored and never be seen (the index keeps the first by package name).
    ns = ns_()
    await push(client, ns, "database", chart("web", "1.0.0"), "1.0.0")
    for query in ("", "?force"):
        resp = await client.post(f"{CM}/{ns}/charts{query}", data=chart("web", "1.0.0", "keywords: [new]\n"),
                                 headers={"Content-Type": "application/gzip"})
        body = await resp.json()
        assert resp.status == 409 and f"{ns}/database" in body["error"], (query, resp.status, body)
    assert helpers.tags(registry.url, f"{ns}/web") == []


async def test_a_lone_surrogate_in_chart_yaml_or_a_config_is_a_400_or_ufffd_never_a_500(client, registry):
    """YAML's "\\ud800" escape is refused by the chart checks (400, on CNR and ChartMuseum's API); a config
    another tool wrote with JSON's "\\ud800" is listed with U+FFFD (helm's YAML parser refuses a surrogate
    escape, which would break the whole index)."""
    import yaml

    from tests.test_interop import push_like_helm

    ns = ns_()
    text = b'apiVersion: v2\nname: sur\nversion: 1.0.0\ndescription: "a\\ud800b"\n'
    blob = helpers.tarball({"sur/Chart.yaml": text})
    resp = await client.post(f"/cnr/api/v1/packages/{ns}/sur", json=helpers.body(blob, "1.0.0", "helm"))
    assert resp.status == 400, await resp.text()
    assert (await client.post(f"{CM}/{ns}/charts", data=blob)).status == 400
    config = b'{"apiVersion":"v2","name":"sur","version":"1.0.0","description":"a\\ud800b"}'
    push_like_helm(registry.url, f"{ns}/sur", "1.0.0", blob, config)
    body = await (await client.get(f"/helm/{ns}/index.yaml")).read()
    assert b"\\ud800" not in body
    assert yaml.safe_load(body)["entries"]["sur"][0]["description"] == "a\ufffdb"


async def test_configs_another_tool_wrote_with_loose_types_or_long_keys_leave_the_index_readable_by_helm(
        client, registry, helm):
    """helm loads index.yaml strictly: one entry with `appVersion: 1.1`, a bool annotation, a maintainer's
    unknown key, or a key over YAML's 1,024-character limit made the whole namespace's index unreadable
    (helm repo add failed). Entries carry helm's field types, and long keys YAML's explicit `? ` form."""
    import json

    import yaml

    from tests.test_interop import push_like_helm

    ns = ns_()
    await push(client, ns, "ok", chart("ok", "1.0.0"), "1.0.0")
    odd = {
        "num": {"appVersion": 1.1, "description": 5, "home": True, "keywords": [1, None, "x"]},
        "ann": {"annotations": {"b": True, "n": 7}},
        "extra": {"maintainers": [{"name": "a", "x": "y"}], "dependencies": [{"name": "d", "zzz": 1}]},
        "longkey": {"annotations": {"k" * 3000: "v", "\u2028" * 400: "w"}},
        "n" * 1500: {},
    }
    for name, fields in odd.items():
        config = {"apiVersion": "v2", "name": name, "version": "1.0.0"} | fields
        push_like_helm(registry.url, f"{ns}/{name[:50]}", "1.0.0", chart("x", "1.0.0"), json.dumps(config).encode())
    entries = yaml.safe_load(await (await client.get(f"/helm/{ns}/index.yaml")).read())["entries"]
    assert sorted(entries) == sorted([*odd, "ok"])
    assert entries["num"][0]["appVersion"] == "1.1" and entries["num"][0]["keywords"] == ["1", "", "x"]
    assert entries["ann"][0]["annotations"] == {"b": "true", "n": "7"}
    assert entries["extra"][0]["maintainers"] == [{"name": "a"}]
    assert entries["longkey"][0]["annotations"] == {"k" * 3000: "v", "\u2028" * 400: "w"}
    alias = "l" + secrets.token_hex(2)
    await asyncio.to_thread(helm, "repo", "add", alias, str(client.make_url(f"/helm/{ns}")))
    out = await asyncio.to_thread(helm, "search", "repo", f"{alias}/", "-o", "json")
    found = {c["name"] for c in json.loads(out.splitlines()[0])}
    assert {f"{alias}/ok", f"{alias}/num", f"{alias}/ann", f"{alias}/extra", f"{alias}/longkey"} <= found


async def test_a_chart_deleted_while_an_index_is_being_built_is_gone_from_the_next_index(make_client, registry):
    """An index build that read a package's tags before a delete finished must not be handed to, or cached
    for, requests that come after the delete (they would list the deleted chart for --cache-ttl)."""
    import yaml

    from cnr_oci import appkeys
    from cnr_oci.settings import Settings

    client = await make_client(Settings(upstream=registry.url, cache_ttl=300))
    ns = ns_()
    for version in ("1.0.0", "1.1.0"):
        await push(client, ns, "web", chart("web", version), version)
    store = client.app[appkeys.STORE]
    store.read.forget(f"{ns}/web")
    real_manifest, entered, release = store.read.manifest, asyncio.Event(), asyncio.Event()

    async def slow_manifest(repo, ref, *a, **kw):
        got = await real_manifest(repo, ref, *a, **kw)
        if ref == "1.1.0" and not entered.is_set():  # the index build's read of the release to delete
            entered.set()
            await release.wait()
        return got

    store.read.manifest = slow_manifest
    building = asyncio.ensure_future(client.get(f"/helm/{ns}/index.yaml"))
    await asyncio.wait_for(entered.wait(), 5)
    # Through CNR (the ChartMuseum delete looks the chart up in the index, so it would wait for this build).
    deleted = await client.delete(f"/cnr/api/v1/packages/{ns}/web/1.1.0/helm")
    assert deleted.status == 200, await deleted.text()
    after = asyncio.ensure_future(client.get(f"/helm/{ns}/index.yaml"))
    await asyncio.sleep(0.05)
    release.set()
    await (await building).read()
    for resp in (await after, await client.get(f"/helm/{ns}/index.yaml")):
        versions = [e["version"] for e in yaml.safe_load(await resp.read())["entries"]["web"]]
        assert versions == ["1.0.0"], versions


def fake_prov(name: str, version: str, tgz: bytes, nl: bytes = b"\n") -> bytes:
    """A clear-signed-looking .prov that signs tgz (cnr-oci checks the form and the digest, not the signature)."""
    import hashlib

    lines = [b"-----BEGIN PGP SIGNED MESSAGE-----", b"Hash: SHA512", b"", b"apiVersion: v2",
             f"name: {name}".encode(), f"version: {version}".encode(), b"", b"...", b"files:",
             f"  {name}-{version}.tgz: sha256:{hashlib.sha256(tgz).hexdigest()}".encode(),
             b"-----BEGIN PGP SIGNATURE-----", b"", b"c2ln", b"-----END PGP SIGNATURE-----"]
    return nl.join(lines) + nl


async def test_a_chart_in_a_release_that_also_holds_a_kpm_is_in_the_index_and_takes_a_prov_keeping_the_kpm(
        client, registry):
    """A release holding a chart and another media type is an OCI index: its chart was left out of
    index.yaml (so helm could not find it, and a .prov for it was 404)."""
    import yaml

    ns = ns_()
    tgz, kpm = chart("web", "1.0.0"), helpers.kpm()
    await push(client, ns, "web", tgz, "1.0.0")
    resp = await client.post(f"/cnr/api/v1/packages/{ns}/web", json=helpers.body(kpm, "1.0.0", "kpm"))
    assert resp.status == 200, await resp.text()
    entries = yaml.safe_load(await (await client.get(f"/helm/{ns}/index.yaml")).read())["entries"]
    assert [e["version"] for e in entries.get("web", [])] == ["1.0.0"]
    assert await (await client.get(f"/helm/{ns}/charts/web-1.0.0.tgz")).read() == tgz
    prov = fake_prov("web", "1.0.0", tgz, b"\r\n")  # CRLF, as a file edited on Windows
    resp = await client.post(f"{CM}/{ns}/prov", data=prov)
    assert resp.status == 201, await resp.text()
    got = await client.get(f"/helm/{ns}/charts/web-1.0.0.tgz.prov")
    assert got.status == 200 and await got.read() == prov
    for media_type, blob in (("kpm", kpm), ("helm", tgz)):
        pulled = await client.get(f"/cnr/api/v1/packages/{ns}/web/1.0.0/{media_type}/pull")
        assert pulled.status == 200 and await pulled.read() == blob, media_type


async def test_a_prov_for_a_chart_another_tool_pushed_as_a_docker_manifest_is_201_not_502(make_client, registry):
    """The chart's manifest is Docker schema 2 (mediaType in the document); written back with a provenance
    layer under the OCI content type, the registry refused it (MANIFEST_INVALID, a 502)."""
    import json

    from cnr_oci.settings import Settings

    client = await make_client(Settings(upstream=registry.url, cache_ttl=0))
    ns = ns_()
    tgz, config = chart("dock", "1.0.0"), json.dumps({"apiVersion": "v2", "name": "dock", "version": "1.0.0"}).encode()
    docker = "application/vnd.docker.distribution.manifest.v2+json"
    for blob in (tgz, config):
        helpers.put_blob(registry.url, f"{ns}/dock", blob)
    helpers.put_manifest(registry.url, f"{ns}/dock", "1.0.0", {
        "schemaVersion": 2, "mediaType": docker,
        "config": helpers.descriptor("application/vnd.cncf.helm.config.v1+json", config),
        "layers": [helpers.descriptor("application/vnd.cncf.helm.chart.content.v1.tar+gzip", tgz)]}, docker)
    prov = fake_prov("dock", "1.0.0", tgz)
    resp = await client.post(f"{CM}/{ns}/prov", data=prov)
    assert resp.status == 201, await resp.text()
    assert await (await client.get(f"/helm/{ns}/charts/dock-1.0.0.tgz.prov")).read() == prov
    assert await (await client.get(f"/helm/{ns}/charts/dock-1.0.0.tgz")).read() == tgz


async def test_a_chart_another_tool_pushes_to_a_new_package_shows_within_the_cache_ttl(make_client, registry):
    """The index lived --cache-ttl from when its packages were read, but the catalog it listed them from
    could already be almost --cache-ttl old: a new package stayed out for up to twice the TTL."""
    import json
    import time

    import yaml

    from cnr_oci.settings import Settings
    from tests.test_interop import push_like_helm

    ttl = 1.0
    client = await make_client(Settings(upstream=registry.url, cache_ttl=ttl))
    ns = ns_()
    await push(client, ns, "old", chart("old", "1.0.0"), "1.0.0")
    await (await client.get(f"/helm/{ns_()}/index.yaml")).read()  # the catalog, read now and cached
    pushed = time.monotonic()
    push_like_helm(registry.url, f"{ns}/new", "1.0.0", chart("new", "1.0.0"),
                   json.dumps({"apiVersion": "v2", "name": "new", "version": "1.0.0"}).encode())
    await asyncio.sleep(0.4)
    await (await client.get(f"/helm/{ns}/index.yaml")).read()  # built now, from that catalog
    await asyncio.sleep(max(0.0, pushed + ttl + 0.15 - time.monotonic()))
    entries = yaml.safe_load(await (await client.get(f"/helm/{ns}/index.yaml")).read())["entries"]
    assert sorted(entries) == ["new", "old"]
