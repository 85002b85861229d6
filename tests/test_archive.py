"""archive.py and tarscan.py under hostile input, without a network: bombs answer 4xx fast and small;
real archives (GNU tar, Python's tarfile, helm package) still parse."""

from __future__ import annotations

import base64
import functools
import io
import json
import shutil
import struct
import subprocess
import tarfile
import time
import tracemalloc
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from cnr_oci import archive, errors, helm, safejson, tarscan
from cnr_oci.mapping import Package
from tests import helpers

HELM = Path("/work/main/.tools/helm")
MiB = 1024 * 1024
GiB = 1024 * MiB


# -- builders -------------------------------------------------------------------------------------------


def header(name: str, size: int = 0, kind: bytes = tarfile.REGTYPE, fmt: int = tarfile.GNU_FORMAT) -> bytes:
    """One 512-byte tar header block, as tarfile writes it."""
    info = tarfile.TarInfo(name)
    info.size = size
    info.type = kind
    return info.tobuf(fmt)


def with_checksum(block: bytes) -> bytes:
    """Recompute a (tampered) header's checksum."""
    block = block[:148] + b" " * 8 + block[156:]
    return block[:148] + b"%06o\0 " % sum(block) + block[156:]


def padded(data: bytes) -> bytes:
    return data + bytes(-len(data) % 512)


def gzip_frame(deflated: bytes, crc: int, size: int) -> bytes:
    return b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\xff" + deflated + struct.pack("<II", crc, size & 0xFFFFFFFF)


@functools.cache
def sparse_gzip(prefix: bytes, fill: bytes, count: int, suffix: bytes = b"") -> bytes:
    """gzip of prefix + fill * count + suffix, built without ever holding fill * count: after a full flush
    deflate restarts, so every flushed block of the same input is the same bytes and can be repeated."""
    co = zlib.compressobj(9, zlib.DEFLATED, -15)
    head = co.compress(prefix) + co.flush(zlib.Z_FULL_FLUSH)
    block = co.compress(fill) + co.flush(zlib.Z_FULL_FLUSH)
    assert co.compress(fill) + co.flush(zlib.Z_FULL_FLUSH) == block
    tail = co.compress(suffix) + co.flush()
    crc = zlib.crc32(prefix)
    for _ in range(count):
        crc = zlib.crc32(fill, crc)
    crc = zlib.crc32(suffix, crc)
    # The repeated block was emitted twice above (once checked); repeat it count times in all.
    return gzip_frame(head + block * count + tail, crc, len(prefix) + len(fill) * count + len(suffix))


def gz(data: bytes) -> bytes:
    co = zlib.compressobj(9, zlib.DEFLATED, 31)
    return co.compress(data) + co.flush()


def tar_of(*members: tuple[str, bytes], fmt: int = tarfile.GNU_FORMAT) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=fmt) as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def chart_tgz(name: str, chart_yaml: str | bytes) -> bytes:
    text = chart_yaml.encode() if isinstance(chart_yaml, str) else chart_yaml
    return gz(tar_of((f"{name}/Chart.yaml", text), (f"{name}/values.yaml", b"a: 1\n")))


def push_body(blob: bytes, media_type: str = "helm", **more: Any) -> bytes:
    return json.dumps(helpers.body(blob, "1.0.0", media_type, **more)).encode()


PKG = Package("ns", "demo")


def measured(fn: Callable[[], Any]) -> tuple[Any, float, int]:
    """(result or raised exception, seconds, peak bytes allocated by Python) of fn(): timed on one run
    and traced on a second, since tracemalloc slows Python down several times."""
    def call() -> Any:
        try:
            return fn()
        except Exception as exc:  # the caller asserts on it
            return exc

    start = time.perf_counter()
    result = call()
    elapsed = time.perf_counter() - start
    tracemalloc.start()
    try:
        call()
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    return result, elapsed, peak


def refused(fn: Callable[[], Any], cls: type[errors.CnrError] = errors.InvalidUsage,
            seconds: float = 1.0, peak: int = 50 * MiB) -> errors.CnrError:
    """fn raises cls (a 4xx), in under `seconds`, allocating under `peak`."""
    result, elapsed, used = measured(fn)
    assert isinstance(result, cls), repr(result)
    assert 400 <= result.status < 500
    assert elapsed < seconds, f"{elapsed:.2f} s"
    assert used < peak, f"{used / MiB:.1f} MiB"
    return result


def inspect(blob: bytes, media_type: str = "helm") -> Callable[[], Any]:
    return lambda: archive.inspect_tarball(blob, media_type)


# -- defect 5: tar header bombs ---------------------------------------------------------------------------


def pax_bomb() -> bytes:
    """A 1 GiB pax record block ('x'), as a ~1 MB gzip."""
    return sparse_gzip(header("././@PaxHeader", GiB, tarfile.XHDTYPE, tarfile.USTAR_FORMAT), bytes(MiB), 1024)


def longname_bomb() -> bytes:
    """A 512 MiB GNU long name ('L'), as a ~0.5 MB gzip."""
    return sparse_gzip(header("././@LongLink", 512 * MiB, tarfile.GNUTYPE_LONGNAME), b"a" * MiB, 512)


def many_members(count: int = 1_000_000) -> bytes:
    """count empty members (all named demo/x), as a ~1 MB gzip."""
    return sparse_gzip(b"", header("demo/x") * 64, count // 64, bytes(1024))


@pytest.mark.parametrize("media_type", ["helm", "kpm"])
def test_a_1_gib_pax_header_is_refused_fast_and_small(media_type):
    blob = pax_bomb()
    assert len(blob) < 1.5 * MiB
    err = refused(inspect(blob, media_type))
    assert "extended header" in err.message and str(tarscan.MAX_EXTENDED_HEADER) in err.message
    assert err.details["limit"] == tarscan.MAX_EXTENDED_HEADER


@pytest.mark.parametrize("media_type", ["helm", "kpm"])
def test_a_512_mib_gnu_long_name_is_refused_fast_and_small(media_type):
    blob = longname_bomb()
    assert len(blob) < MiB
    err = refused(inspect(blob, media_type))
    assert "extended header" in err.message


def test_a_million_empty_members_are_refused_for_helm_fast_and_small():
    blob = many_members()
    err = refused(inspect(blob))
    assert str(tarscan.MAX_MEMBERS) in err.message and err.details["limit"] == tarscan.MAX_MEMBERS


def test_a_million_empty_members_are_not_walked_for_other_media_types():
    # The server never unpacks a kpm: proving gzip + a valid first header is enough, and cheap.
    result, elapsed, used = measured(inspect(many_members(), "kpm"))
    assert result is None and elapsed < 0.5 and used < 5 * MiB


def test_a_chart_yaml_after_the_member_limit_is_refused():
    members = [(f"demo/f{i}", b"") for i in range(tarscan.MAX_MEMBERS)] + [("demo/Chart.yaml", b"name: demo\n")]
    err = refused(inspect(gz(tar_of(*members))))
    assert str(tarscan.MAX_MEMBERS) in err.message


def test_expansion_beyond_helms_chart_limit_is_refused_before_inflating_it():
    # A member declaring 2 GiB, then the zeros: refused on the header, nothing inflated.
    blob = sparse_gzip(header("demo/big", 2 * GiB), bytes(MiB), 64)
    err = refused(inspect(blob), seconds=0.2)
    assert str(tarscan.MAX_EXPANDED) in err.message


def test_a_gzip_bomb_under_small_headers_stops_at_the_expansion_limit():
    # 400 members of 1 MiB each, each header honest: the scan stops at 100 MiB inflated, not 400.
    member = header("demo/f", MiB) + bytes(MiB)
    blob = sparse_gzip(b"", member, 400)
    assert len(blob) < MiB
    err = refused(inspect(blob), seconds=2.0)
    assert str(tarscan.MAX_EXPANDED) in err.message


def test_helms_limit_is_100_mib():
    assert tarscan.MAX_EXPANDED == 100 * MiB


def test_a_chart_yaml_over_1_mib_is_refused():
    text = b"name: demo\ndescription: " + b"x" * (archive.MAX_CHART_YAML) + b"\n"
    err = refused(inspect(chart_tgz("demo", text)))
    assert "Chart.yaml" in err.message and str(archive.MAX_CHART_YAML) in err.message


def test_a_run_of_extended_headers_is_refused():
    pax = padded(b"20 comment=xxxxxxxx\n")
    ext = header("././@PaxHeader", len(b"20 comment=xxxxxxxx\n"), tarfile.XHDTYPE, tarfile.USTAR_FORMAT) + pax
    blob = gz(ext * 1000 + bytes(1024))
    err = refused(inspect(blob))
    assert str(tarscan.MAX_EXTENDED_RUN) in err.message


# -- defect 16a: crafted tar headers ----------------------------------------------------------------------


def pax_member(records: dict[str, str], name: str, data: bytes) -> bytes:
    body = b""
    for key, value in records.items():
        rec = f" {key}={value}\n"
        n = len(rec) + len(str(len(rec)))
        n = len(rec) + len(str(n))
        body += f"{n}{rec}".encode()
    return (header("././@PaxHeader", len(body), tarfile.XHDTYPE, tarfile.USTAR_FORMAT) + padded(body)
            + header(name, len(data), fmt=tarfile.USTAR_FORMAT) + padded(data))


CRAFTED = {
    # tarfile: int() of the map -> ValueError
    "sparse-0.1-map-not-integers": pax_member({"GNU.sparse.map": "a,b", "GNU.sparse.size": "10"}, "demo/s", b""),
    # tarfile: reads the 1.0 map from the data; none there -> IndexError / ValueError
    "sparse-1.0-truncated-map": pax_member(
        {"GNU.sparse.major": "1", "GNU.sparse.minor": "0", "GNU.sparse.realsize": "10"}, "demo/s", b"x"),
    "sparse-1.0-map-not-integers": pax_member(
        {"GNU.sparse.major": "1", "GNU.sparse.minor": "0", "GNU.sparse.realsize": "10"}, "demo/s",
        b"zz\nqq\n"),
    # an old GNU sparse header ('S') whose map fields are not numbers
    "gnu-S-map-not-octal": with_checksum(
        (lambda b: b[:386] + b"notoctal9999" * 2 + b[410:])(header("demo/s", 0, tarfile.GNUTYPE_SPARSE))),
    # an old GNU sparse header that says an extension block follows, and the archive ends
    "gnu-S-truncated-extension": with_checksum(
        (lambda b: b[:482] + b"\x01" + b[483:])(header("demo/s", 0, tarfile.GNUTYPE_SPARSE))),
    "size-not-octal": with_checksum((lambda b: b[:124] + b"99999999999\0" + b[136:])(header("demo/x"))),
    "negative-base-256-size": with_checksum((lambda b: b[:124] + b"\xff" * 12 + b[136:])(header("demo/x"))),
    "bad-pax-record": (header("././@PaxHeader", 9, tarfile.XHDTYPE, tarfile.USTAR_FORMAT)
                       + padded(b"99 path=x") + header("demo/x")),
    "pax-size-not-a-number": pax_member({"size": "12abc"}, "demo/x", b""),
    "bad-checksum": header("demo/x")[:148] + b"0000000\0" + header("demo/x")[156:],
    "truncated-header": header("demo/x")[:300],
    "truncated-data": header("demo/x", 5000) + b"abc",
}


@pytest.mark.parametrize("case", list(CRAFTED))
@pytest.mark.parametrize("media_type", ["helm", "kpm"])
def test_crafted_tar_headers_never_crash(case, media_type):
    # Without a Chart.yaml after them: a 400, or (helm) not a chart, stored as it came; no other error.
    result, elapsed, used = measured(inspect(gz(CRAFTED[case] + bytes(1024)), media_type))
    assert result is None or (isinstance(result, errors.InvalidUsage) and result.status == 400), repr(result)
    assert elapsed < 1.0 and used < 50 * MiB


@pytest.mark.parametrize("case", [c for c in CRAFTED if c.startswith("sparse") or c.startswith("gnu-S-map")])
def test_a_sparse_member_is_skipped_and_the_chart_yaml_after_it_found(case):
    blob = gz(CRAFTED[case] + tar_of(("demo/Chart.yaml", b"apiVersion: v2\nname: demo\nversion: 1.0.0\n")))
    assert archive.inspect_tarball(blob, "helm")["name"] == "demo"


def test_a_sparse_chart_yaml_is_not_read_as_one():
    blob = gz(pax_member({"GNU.sparse.map": "0,5", "GNU.sparse.size": "5"}, "demo/Chart.yaml", b"name: demo\n"))
    assert archive.inspect_tarball(blob, "helm") is None  # not a chart


def test_a_helm_tarball_without_chart_yaml_is_not_a_chart():
    """operator-courier pushes operator bundles as media type helm: accepted, stored as they came."""
    assert archive.inspect_tarball(gz(tar_of(("bundle/bundle.yaml", b"data: {}\n"))), "helm") is None


def test_a_chart_named_unlike_its_package_is_accepted():
    chart = archive.inspect_tarball(gz(tar_of(("other/Chart.yaml", b"apiVersion: v2\nname: other\nversion: 1.0.0\n"))),
                                    "helm")
    assert chart is not None and chart["name"] == "other"


def test_a_header_checksummed_with_signed_bytes_is_read():
    # Old writers summed the header as signed chars; tarfile and Go accept both sums.
    block = bytearray(header("demo/\xe9", 0, fmt=tarfile.USTAR_FORMAT))
    block[148:156] = b" " * 8
    block[148:156] = b"%06o\0 " % sum(b - 256 if b > 127 else b for b in block)
    blob = gz(bytes(block) + bytes(1024))
    assert scan_names(blob) == python_names(blob) == ["demo/\xe9".encode()]


@pytest.mark.parametrize("blob,message", [
    (b"plain text", "not gzip"),
    (gz(b"not a tar archive at all" * 40), "not a gzipped tar"),
    (gz(bytes(10240)), "empty tar"),
    (gz(b""), "empty tar"),
    (gz(tar_of(("demo/Chart.yaml", b"name: demo\n")))[:-30], "truncated"),
    (b"\x1f\x8b" + b"garbage" * 10, "bad gzip"),
])
def test_todays_messages_for_bad_blobs_stay(blob, message):
    err = refused(inspect(blob))
    assert err.status == 400 and message in err.message


# -- defect 6 and 16a: Chart.yaml -------------------------------------------------------------------------


def alias_bomb(levels: int) -> str:
    lines = ["apiVersion: v2", "name: demo", "version: 1.0.0",
             'a0: &a0 ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    for i in range(1, levels):
        refs = ",".join([f"*a{i - 1}"] * 9)
        lines.append(f"a{i}: &a{i} [{refs}]")
    lines.append(f"keywords: *a{levels - 1}")
    return "\n".join(lines) + "\n"


@pytest.mark.parametrize("levels", [8, 9])
def test_a_yaml_alias_bomb_is_refused_fast_and_small(levels):
    text = alias_bomb(levels)
    assert len(text) < 600
    err = refused(inspect(chart_tgz("demo", text)), seconds=0.5, peak=5 * MiB)
    assert "Chart.yaml uses YAML aliases" in err.message


def test_any_alias_is_refused():
    text = "apiVersion: v2\nname: &n demo\nversion: 1.0.0\ndescription: *n\n"
    assert "aliases" in refused(inspect(chart_tgz("demo", text))).message


@pytest.mark.parametrize("depth", [safejson.MAX_DEPTH, 200, 5000])
def test_deeply_nested_chart_yaml_is_refused(depth):
    # The top-level mapping is one level: MAX_DEPTH more is one too many. (libyaml stops at 1000 itself.)
    text = "name: demo\nversion: 1.0.0\nannotations: " + "[" * depth + "]" * depth + "\n"
    err = refused(inspect(chart_tgz("demo", text)))
    assert str(safejson.MAX_DEPTH) in err.message or "maximum nesting depth" in err.message


def test_a_chart_yaml_with_too_many_nodes_is_refused():
    text = "name: demo\nversion: 1.0.0\nx: [" + "1," * archive.MAX_YAML_EVENTS + "1]\n"
    err = refused(inspect(chart_tgz("demo", text)))
    assert str(archive.MAX_YAML_EVENTS) in err.message


@pytest.mark.parametrize("field,value", [
    ("sources", "5"),
    ("sources", "{a: 1}"),
    ("keywords", "[[1, 2]]"),
    ("annotations", "[a, b]"),
    ("annotations", "just a string"),
    ("annotations", "{a: [1]}"),
    ("maintainers", "5"),
    ("maintainers", "[5]"),
    ("maintainers", "[~]"),
    ("maintainers", "[{name: [x]}]"),
    ("dependencies", "{a: 1}"),
    ("dependencies", "[{name: x, tags: 5}]"),
    ("deprecated", "maybe"),
    ("description", "{a: 1}"),
    ("home", "[x]"),
])
def test_chart_yaml_field_types_are_checked(field, value):
    text = f"apiVersion: v2\nname: demo\nversion: 1.0.0\n{field}: {value}\n"
    err = refused(inspect(chart_tgz("demo", text)))
    assert err.status == 400 and field in err.message
    assert err.details["chart_field"].split(".")[0] == field


def test_a_5001_digit_version_is_400():
    err = refused(inspect(chart_tgz("demo", "apiVersion: v2\nname: demo\nversion: " + "9" * 5001 + "\n")))
    assert "version" in err.message or "digits" in err.message


@pytest.mark.parametrize("value", [".nan", ".inf", "-.inf"])
def test_values_json_cannot_carry_are_400(value):
    text = f"apiVersion: v2\nname: demo\nversion: 1.0.0\ndependencies: [{{name: x, import-values: [{value}]}}]\n"
    err = refused(inspect(chart_tgz("demo", text)))
    assert "JSON" in err.message


# -- defect 16a: deep JSON --------------------------------------------------------------------------------


@pytest.mark.parametrize("depth", [safejson.MAX_DEPTH + 1, 100_000])
def test_deeply_nested_json_push_body_is_400(depth):
    raw = b"[" * depth + b"]" * depth
    err = refused(lambda: archive.parse_push(raw, None))
    assert str(safejson.MAX_DEPTH) in err.message


def test_deeply_nested_metadata_is_400():
    body = helpers.body(helpers.kpm(), "1.0.0")
    raw = json.dumps(body).encode()[:-1] + b', "metadata": {"a": ' + b"[" * 70 + b"]" * 70 + b"}}"
    err = refused(lambda: archive.parse_push(raw, None))
    assert str(safejson.MAX_DEPTH) in err.message


def test_metadata_at_the_depth_limit_is_kept():
    meta: Any = {}
    node = meta
    for _ in range(safejson.MAX_DEPTH - 2):  # the body is one level, metadata the rest
        node["a"] = {}
        node = node["a"]
    raw = json.dumps({**helpers.body(helpers.kpm(), "1.0.0"), "metadata": meta}).encode()
    assert archive.parse_push(raw, None).metadata == meta


def test_load_json_is_bounded_in_size():
    err = refused(lambda: safejson.load_json(b" " * 100 + b"{}", max_bytes=64), errors.PayloadTooLarge)
    assert err.status == 413


# -- positive oracles: real archives ----------------------------------------------------------------------

CHART_YAML = b"apiVersion: v2\nname: {name}\nversion: 0.1.0\ndescription: oracle\n"
LONG = "d" * 60 + "/" + "e" * 70 + "/" + "f" * 120  # > 100 chars, and one component > 100


def scan_names(blob: bytes) -> list[bytes]:
    return [m.name for m in tarscan.TarScanner(blob)]


def python_names(blob: bytes) -> list[bytes]:
    with tarfile.open(fileobj=io.BytesIO(blob), mode="r:gz") as tar:
        return [m.name.encode("utf-8", "surrogateescape") for m in tar]


@pytest.mark.parametrize("fmt", ["gnu", "pax", "ustar", "posix", "oldgnu"])
def test_gnu_tar_archives_are_scanned_like_tarfile_reads_them(tmp_path, fmt):
    name = "c" * 40
    root = tmp_path / "src"
    files = [f"{name}/{LONG}" if fmt not in ("ustar",) else f"{name}/{'p' * 90}/{'q' * 60}",
             f"{name}/templates/x.yaml", f"{name}/Chart.yaml"]
    for rel in files:
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(CHART_YAML.replace(b"{name}", name.encode()) if rel.endswith("Chart.yaml")
                                 else b"x: 1\n" * 100)
    out = tmp_path / "c.tgz"
    subprocess.run(["tar", f"--format={fmt}", "-czf", str(out), "-C", str(root), *files], check=True)
    blob = out.read_bytes()
    assert scan_names(blob) == python_names(blob)
    assert len(files[0]) > 100
    assert files[0].encode() in scan_names(blob)
    chart = archive.inspect_tarball(blob, "helm")
    assert chart is not None and chart["name"] == name
    raw = push_body(blob)
    assert archive.parse_push(raw, None).chart == chart


def test_gnu_tar_with_a_chart_dir_name_over_100_chars(tmp_path):
    name = "n" * 110
    (tmp_path / name).mkdir()
    (tmp_path / name / "Chart.yaml").write_bytes(CHART_YAML.replace(b"{name}", name.encode()))
    for fmt in ("gnu", "pax"):
        out = tmp_path / f"{fmt}.tgz"
        subprocess.run(["tar", f"--format={fmt}", "-czf", str(out), "-C", str(tmp_path), name], check=True)
        chart = archive.inspect_tarball(out.read_bytes(), "helm")
        assert chart is not None and chart["name"] == name


@pytest.mark.parametrize("fmt", [tarfile.GNU_FORMAT, tarfile.PAX_FORMAT, tarfile.USTAR_FORMAT])
def test_python_tarfile_archives_are_scanned_like_tarfile_reads_them(fmt):
    name = "demo"
    long = f"{name}/{'p' * 90}/{'q' * 60}" if fmt == tarfile.USTAR_FORMAT else f"{name}/{LONG}"
    blob = gz(tar_of((long, b"x" * 700), (f"{name}/é-ünïcode.txt", b""), (f"{name}/Chart.yaml",
                     CHART_YAML.replace(b"{name}", b"demo")), fmt=fmt))
    assert scan_names(blob) == python_names(blob)
    assert archive.inspect_tarball(blob, "helm")["description"] == "oracle"


def test_multi_member_gzip_is_read_through():
    tar = tar_of(("demo/values.yaml", b"a: 1\n" * 300), ("demo/Chart.yaml", CHART_YAML.replace(b"{name}", b"demo")))
    blob = gz(tar[:700]) + gz(tar[700:])
    assert archive.inspect_tarball(blob, "helm")["name"] == "demo"


@pytest.fixture(scope="module")
def helm_package(tmp_path_factory) -> bytes:
    if not HELM.exists() and not shutil.which("helm"):
        pytest.skip("no helm binary")
    helm = str(HELM) if HELM.exists() else "helm"
    work = tmp_path_factory.mktemp("helm")
    env = {"HOME": str(work), "HELM_CACHE_HOME": str(work / "c"), "HELM_CONFIG_HOME": str(work / "g"),
           "HELM_DATA_HOME": str(work / "d"), "PATH": "/usr/bin:/bin"}
    subprocess.run([helm, "create", "demo"], cwd=work, check=True, env=env, capture_output=True)
    subprocess.run([helm, "package", "demo"], cwd=work, check=True, env=env, capture_output=True)
    return next(work.glob("demo-*.tgz")).read_bytes()


def test_helm_package_output_is_accepted(helm_package):
    assert scan_names(helm_package) == python_names(helm_package)
    inp = archive.parse_push(push_body(helm_package), None)
    assert inp.chart is not None and inp.chart["name"] == "demo" and inp.chart["version"] == "0.1.0"
    assert json.loads(helm.helm_config(inp.chart))["apiVersion"] == "v2"


def test_helper_builders_are_accepted():
    assert archive.inspect_tarball(helpers.chart("demo"), "helm")["name"] == "demo"
    assert archive.inspect_tarball(helpers.kpm(), "kpm") is None
    assert base64.b64decode(helpers.body(helpers.kpm())["blob"]) == helpers.kpm()
