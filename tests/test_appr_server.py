"""What `cnr-oci migrate --from URL` (issue 11) may rely on when it reads the real appr 0.7.4 server, and
appr's quirks, each pinned down as a test against the real server (tests/appr_server.py), filled through
its own API (tests/appr_fill.py)."""

from __future__ import annotations

import base64
import datetime as dt
import gzip
import hashlib
import io
import json
import re
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from tests.appr_fill import MIB, Expected, file_sha256, fill, get_json, helm_chart, push, request
from tests.appr_server import ApprServer
from tests.helpers import tarball, unique

E8_KEYS = {"content", "created_at", "mediaType", "metadata", "package", "release"}
CONTENT_KEYS = {"digest", "mediaType", "size", "urls"}
CREATED_AT = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d{6})?$")  # datetime.utcnow().isoformat()


@pytest.fixture(scope="module")
def filled(appr_server: ApprServer) -> Expected:
    """One namespace filled without the big blob (test_big_blob has it)."""
    return fill(appr_server.url, unique("mig")[0], big=0)


def status_json(url: str, method: str, path: str, body: Any = None) -> tuple[int, str, Any]:
    status, headers, data = request(url, method, path, None if body is None else json.dumps(body).encode())
    ctype = headers.get("content-type", "")
    return status, ctype, json.loads(data) if ctype == "application/json" else data


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def test_fill_holds_what_it_says(filled: Expected) -> None:
    ns = filled.namespace
    assert set(filled.packages) == {f"{ns}/webapp", f"{ns}/stack", f"{ns}/compose"}
    webapp, stack, compose = (filled.packages[f"{ns}/{n}"] for n in ("webapp", "stack", "compose"))
    assert webapp.releases == {"1.0.0-rc.1", "1.0.0", "1.0.0+build.5", "1.1.0"}
    assert stack.media_types("0.2.0") == {"kpm", "docker-compose"}
    assert compose.manifests["1.0.0", "docker-compose"].sha256 == compose.manifests["1.0.1", "docker-compose"].sha256
    assert {c.name: (set(c.releases), c.current) for c in webapp.channels.values()} == {
        "stable": ({"1.0.0", "1.1.0"}, "1.1.0"), "beta": ({"1.1.0", "1.0.0-rc.1"}, "1.0.0-rc.1")}
    assert webapp.manifests["1.0.0-rc.1", "helm"].metadata is None
    assert webapp.manifests["1.1.0", "helm"].metadata["maintainers"][0]["name"] == "Ann"


def test_listing_e5_shape_and_no_pagination(filled: Expected) -> None:
    """E5: one entry per package of the namespace, releases highest first (prereleases included), default the
    highest, the PACKAGE's created_at (its first push); no pagination: limit/page are ignored."""
    url, ns = filled.url, filled.namespace
    listed = get_json(url, f"/packages?namespace={ns}")
    assert {p["name"] for p in listed} == set(filled.packages)
    for entry in listed:
        assert set(entry) == {"created_at", "default", "manifests", "name", "releases", "visibility"}
        assert entry["visibility"] == "public"
        assert CREATED_AT.match(entry["created_at"]), entry["created_at"]
        pkg = filled.packages[entry["name"]]
        assert entry["created_at"] == pkg.created_at
        first = min(m.created_at for m in pkg.manifests.values())
        assert first <= entry["created_at"]  # written just after the first manifest
        assert entry["default"] == entry["releases"][0]
    webapp = next(p for p in listed if p["name"] == f"{ns}/webapp")
    # semantic_version 2.10's order: a +build release sorts BELOW the same release without it.
    assert webapp["releases"] == ["1.1.0", "1.0.0", "1.0.0+build.5", "1.0.0-rc.1"]
    assert get_json(url, f"/packages?namespace={ns}&limit=1&page=2") == listed
    assert {p["name"] for p in get_json(url, "/packages")} >= set(filled.packages)  # every namespace
    assert get_json(url, "/packages?namespace=no-such-ns") == []
    kpm_only = get_json(url, f"/packages?namespace={ns}&media_type=kpm")
    assert [(p["name"], p["releases"], p["manifests"]) for p in kpm_only] == [
        (f"{ns}/stack", ["0.2.0", "0.1.0"], ["kpm"])]


def test_listing_manifests_are_only_the_default_releases(appr_server: ApprServer) -> None:
    """E5's `manifests` are the media types of the default (highest) release only, and a prerelease can be the
    default: the migration must read every release's media types from E8."""
    url = appr_server.url
    ns, name = unique("e5")
    push(url, f"{ns}/{name}", "1.0.0", "kpm", tarball({"a": b"1"}))
    push(url, f"{ns}/{name}", "1.0.0", "helm", tarball({"a": b"2"}))
    push(url, f"{ns}/{name}", "2.0.0-rc.1", "helm", tarball({"a": b"3"}))
    [entry] = get_json(url, f"/packages?namespace={ns}")
    assert (entry["default"], entry["manifests"]) == ("2.0.0-rc.1", ["helm"])
    assert {(m["release"], m["mediaType"]) for m in get_json(url, f"/packages/{ns}/{name}")} == {
        ("1.0.0", "application/vnd.appr.package-manifest.kpm.v0.json"),
        ("1.0.0", "application/vnd.appr.package-manifest.helm.v0.json"),
        ("2.0.0-rc.1", "application/vnd.appr.package-manifest.helm.v0.json")}


def test_manifests_list_e8_shape(filled: Expected) -> None:
    """E8: one dict per (release, media type), no channels; metadata as pushed (null when none); content.size
    is the .tar.gz's; mediaType is the manifest's long form, content.mediaType the tarball's. Not sorted."""
    url = filled.url
    for pkg in filled.packages.values():
        answer = get_json(url, f"/packages/{pkg.name}")
        assert len(answer) == len(pkg.manifests)
        for m in answer:
            assert set(m) == E8_KEYS and set(m["content"]) == CONTENT_KEYS, m
            short = m["mediaType"].removeprefix("application/vnd.appr.package-manifest.").removesuffix(".v0.json")
            want = pkg.manifests[m["release"], short]
            assert m["mediaType"] == f"application/vnd.appr.package-manifest.{short}.v0.json"
            assert m["content"] == {"digest": want.digest, "size": want.size, "urls": [],
                                    "mediaType": f"application/vnd.appr.package.{short}.v0.tar+gzip"}
            assert m["package"] == pkg.name
            assert m["metadata"] == want.metadata
            assert CREATED_AT.match(m["created_at"]) and m["created_at"] == want.created_at
            assert dt.datetime.fromisoformat(m["created_at"]).tzinfo is None  # naive UTC
    stack = filled.packages[f"{filled.namespace}/stack"]
    only = get_json(url, f"/packages/{stack.name}?media_type=docker-compose")
    assert [(m["release"], m["content"]["digest"]) for m in only] == [
        ("0.2.0", stack.manifests["0.2.0", "docker-compose"].digest)]
    per_release = get_json(url, f"/packages/{stack.name}/0.2.0")  # the manifests of one release
    assert {m["content"]["mediaType"] for m in per_release} == {
        "application/vnd.appr.package.kpm.v0.tar+gzip", "application/vnd.appr.package.docker-compose.v0.tar+gzip"}


def test_show_e10_shape_and_its_channels(filled: Expected) -> None:
    """E10 = the E8 dict plus `channels`: only the channels whose CURRENT is this release (not every channel
    holding it). The release in the URL is a version query."""
    url, ns = filled.url, filled.namespace
    webapp = filled.packages[f"{ns}/webapp"]
    show = get_json(url, f"/packages/{ns}/webapp/1.1.0/helm")
    assert set(show) == E8_KEYS | {"channels"}
    assert show["channels"] == ["stable"]  # beta holds 1.1.0 too, but its current is the rc
    assert get_json(url, f"/packages/{ns}/webapp/1.0.0-rc.1/helm")["channels"] == ["beta"]
    assert get_json(url, f"/packages/{ns}/webapp/1.0.0/helm")["channels"] == []  # in stable, not its current
    for (release, media_type), want in webapp.manifests.items():
        got = get_json(url, f"/packages/{ns}/webapp/{release}/{media_type}")
        assert (got["release"], got["content"]["digest"], got["created_at"]) == (release, want.digest, want.created_at)
    assert get_json(url, f"/packages/{ns}/webapp/>=1.0.1/helm")["release"] == "1.1.0"
    assert get_json(url, f"/packages/{ns}/webapp/1.0.0/helm")["release"] == "1.0.0"  # not the +build one


def test_digest_is_sha256_of_the_gunzipped_tar(filled: Expected) -> None:
    """content.digest is the sha256 of the gunzipped tar (appr/pack.py), never the .tar.gz's."""
    for pkg in filled.packages.values():
        for m in pkg.manifests.values():
            assert m.data is not None
            assert m.digest == hashlib.sha256(gzip.decompress(m.data)).hexdigest() == m.tar_sha256
            assert m.digest != hashlib.sha256(m.data).hexdigest() == m.sha256


def test_pull_answers_the_original_bytes(filled: Expected) -> None:
    """pull: 200 application/x-gzip, the pushed .tar.gz byte for byte, Content-Disposition a bare file name;
    /pull/json and ?format=json give it base64 in JSON."""
    url = filled.url
    for pkg in filled.packages.values():
        for (release, media_type), m in pkg.manifests.items():
            status, headers, data = request(url, "GET", f"/packages/{pkg.name}/{release}/{media_type}/pull")
            assert status == 200 and data == m.data
            assert headers["content-type"] == "application/x-gzip"
            assert headers["content-disposition"] == f"{pkg.name.replace('/', '_')}_{release}.tar.gz"
    name = f"{filled.namespace}/stack"
    want = filled.packages[name].manifests["0.1.0", "kpm"]
    for path in (f"/packages/{name}/0.1.0/kpm/pull/json", f"/packages/{name}/0.1.0/kpm/pull?format=json"):
        doc = get_json(url, path)
        assert set(doc) == {"blob", "filename", "media_type", "package", "release"}
        assert base64.b64decode(doc["blob"]) == want.data and doc["release"] == "0.1.0"


def test_blobs_by_appr_digest(filled: Expected) -> None:
    """/blobs/sha256/<content.digest> answers the .tar.gz; the .tar.gz's own sha256 is not an address."""
    url = filled.url
    name = f"{filled.namespace}/webapp"
    m = filled.packages[name].manifests["1.1.0", "helm"]
    status, headers, data = request(url, "GET", f"/packages/{name}/blobs/sha256/{m.digest}")
    assert (status, data, headers["content-type"]) == (200, m.data, "application/x-gzip")
    assert headers["content-disposition"] == f"{name.replace('/', '_')}_{m.digest[:8]}.tar.gz"
    assert base64.b64decode(get_json(url, f"/packages/{name}/blobs/sha256/{m.digest}/json")["blob"]) == m.data
    status, _, err = status_json(url, "GET", f"/packages/{name}/blobs/sha256/{m.sha256}")
    assert (status, err["code"]) == (404, "package-not-found")


def test_channels_shape(filled: Expected) -> None:
    """channels: [{name, current, releases}], releases highest first, current the release added LAST."""
    url, ns = filled.url, filled.namespace
    listed = get_json(url, f"/packages/{ns}/webapp/channels")
    assert sorted(listed, key=lambda c: c["name"]) == [
        {"name": "beta", "current": "1.0.0-rc.1", "releases": ["1.1.0", "1.0.0-rc.1"]},
        {"name": "stable", "current": "1.1.0", "releases": ["1.1.0", "1.0.0"]}]
    assert get_json(url, f"/packages/{ns}/webapp/channels/beta") == {
        "name": "beta", "current": "1.0.0-rc.1", "releases": ["1.1.0", "1.0.0-rc.1"]}
    assert get_json(url, f"/packages/{ns}/stack/channels") == []
    status, _, err = status_json(url, "GET", f"/packages/{ns}/webapp/channels/nope")
    # appr puts the channel's name where the package's belongs (raise_channel_not_found(channel)).
    assert (status, err["code"], err["details"]) == (404, "channel-not-found", {"package": "nope"})
    status, _, err = status_json(url, "GET", f"/packages/{ns}/no-such/channels")
    assert (status, err["code"]) == (404, "package-not-found")


def test_build_release_is_accepted_in_channels_too(appr_server: ApprServer) -> None:
    url = appr_server.url
    ns, name = unique("bld")
    push(url, f"{ns}/{name}", "1.0.0+build.5", "helm", helm_chart(name, "1.0.0+build.5"))
    status, _, chan = status_json(url, "POST", f"/packages/{ns}/{name}/channels/stable/1.0.0+build.5")
    assert (status, chan) == (200, {"name": "stable", "current": "1.0.0+build.5", "releases": ["1.0.0+build.5"]})
    status, _, data = request(url, "GET", f"/packages/{ns}/{name}/1.0.0+build.5/helm/pull")
    assert status == 200 and data == helm_chart(name, "1.0.0+build.5")


def test_same_tar_in_another_gzip_overwrites_the_stored_blob(appr_server: ApprServer) -> None:
    """Blobs are stored per package under the gunzipped tar's sha256: a later push of the same tar in other
    gzip bytes replaces what an earlier release pulls, while its E8 still advertises the earlier size."""
    url = appr_server.url
    ns, name = unique("dup")
    first = tarball({"x/Chart.yaml": b"name: x\n"})  # gzip without a file name, mtime 0
    buf = io.BytesIO()
    with gzip.GzipFile(filename="other.tar", fileobj=buf, mode="wb", mtime=7) as gz:
        gz.write(gzip.decompress(first))
    second = buf.getvalue()
    assert second != first and gzip.decompress(second) == gzip.decompress(first) and len(second) != len(first)
    push(url, f"{ns}/{name}", "1.0.0", "helm", first)
    push(url, f"{ns}/{name}", "2.0.0", "helm", second)
    _, _, pulled = request(url, "GET", f"/packages/{ns}/{name}/1.0.0/helm/pull")
    assert pulled == second
    assert get_json(url, f"/packages/{ns}/{name}/1.0.0/helm")["content"]["size"] == len(first) != len(pulled)


def test_media_types_are_free_form(appr_server: ApprServer) -> None:
    """appr accepts any media type name; none given is "kpm"; a manifest media type is cut to its short name."""
    url = appr_server.url
    ns, name = unique("mt")
    blob = tarball({"f": b"x"})
    push(url, f"{ns}/{name}", "1.0.0", "x-made-up", blob)
    body = {"blob": b64(blob), "release": "2.0.0"}  # no media_type
    assert status_json(url, "POST", f"/packages/{ns}/{name}", body)[0] == 200
    push(url, f"{ns}/{name}", "3.0.0", "application/vnd.appr.package-manifest.helm.v0.json", blob)
    got = {(m["release"], m["content"]["mediaType"]) for m in get_json(url, f"/packages/{ns}/{name}")}
    assert got == {("1.0.0", "application/vnd.appr.package.x-made-up.v0.tar+gzip"),
                   ("2.0.0", "application/vnd.appr.package.kpm.v0.tar+gzip"),
                   ("3.0.0", "application/vnd.appr.package.helm.v0.tar+gzip")}
    status, _, data = request(url, "GET", f"/packages/{ns}/{name}/1.0.0/x-made-up/pull")
    assert (status, data) == (200, blob)


def test_errors_appr_gives(appr_server: ApprServer) -> None:
    """Its 4xx come as {"code", "message", "details"}; bad push bodies and a bad search regex are 500s
    (text/plain), which the migration must not mistake for a registry outage."""
    url = appr_server.url
    ns, name = unique("err")
    pkg = f"/packages/{ns}/{name}"
    blob = tarball({"f": b"x"})
    push(url, f"{ns}/{name}", "1.0.0", "kpm", blob)
    push(url, f"{ns}/{name}", "1.0.0", "helm", tarball({"f": b"y"}))

    def code(method: str, path: str, body: Any = None) -> tuple[int, str]:
        status, ctype, doc = status_json(url, method, path, body)
        if ctype != "application/json":
            return status, ctype
        if status < 400:
            return status, ""
        assert set(doc) == {"code", "message", "details"}, doc
        return status, doc["code"]

    assert code("POST", pkg, {"blob": b64(blob), "release": "1.0.0", "media_type": "kpm"}) == (409, "package-exists")
    assert code("POST", pkg + "?force=true", {"blob": b64(blob), "release": "1.0.0", "media_type": "kpm"})[0] == 200
    assert code("POST", pkg, {"blob": b64(blob), "release": "abc"}) == (422, "invalid-release")
    assert code("GET", f"{pkg}/foo/kpm") == (422, "invalid-release")
    assert code("GET", f"{pkg}/9.9.9/kpm") == (404, "package-release-not-found")
    assert code("GET", f"{pkg}/1.0.0/nope") == (404, "package-not-found")
    assert code("GET", f"/packages/{ns}/nope") == (404, "package-not-found")
    assert code("GET", f"{pkg}/1.0.0/-/pull") == (400, "invalid-usage")  # two media types: say which
    assert code("POST", f"{pkg}/channels/stable/9.9.9") == (404, "package-release-not-found")
    assert code("POST", pkg, {"blob": "!!not base64", "release": "2.0.0"}) == (500, "text/plain")
    assert code("POST", pkg, {"blob": b64(b"not gzip"), "release": "2.0.0"}) == (500, "text/plain")
    assert code("POST", pkg, {"blob": b64(blob)}) == (500, "text/plain")  # no release
    assert code("POST", pkg, {"release": "2.0.0"}) == (500, "text/plain")  # no blob
    assert code("GET", "/packages/search?q=(") == (500, "text/plain")  # an unescaped regex
    assert get_json(url, f"/packages/search?q={ns}") == [f"{ns}/{name}"]
    # Only under /cnr, and no login (nor any auth) at all.
    with pytest.raises(urllib.error.HTTPError) as exc:
        urllib.request.urlopen(f"{url}/api/v1/packages", timeout=10)
    exc.value.close()
    assert exc.value.code == 404
    assert code("POST", "/users/login", {"user": {"username": "a", "password": "b"}})[0] == 404


def test_big_blob(appr_server: ApprServer, tmp_path: Path) -> None:
    """A whole fill with a 50 MiB .tar.gz (random, so it does not compress), pushed streamed from a file:
    pull answers it byte for byte, and its digest is still the gunzipped tar's."""
    ns = unique("big")[0]
    start = time.monotonic()
    exp = fill(appr_server.url, ns, workdir=tmp_path)
    took = time.monotonic() - start
    m = exp.packages[f"{ns}/big"].manifests["1.0.0", "helm"]
    assert m.path is not None and m.size > 50 * MIB and m.data is None
    assert m.digest == m.tar_sha256 != m.sha256 == file_sha256(m.path)
    status, headers, data = request(appr_server.url, "GET", f"/packages/{ns}/big/1.0.0/helm/pull")
    assert status == 200 and int(headers["content-length"]) == m.size
    assert hashlib.sha256(data).hexdigest() == m.sha256
    print(f"fill with a {m.size / MIB:.1f} MiB blob: {took:.1f} s")
