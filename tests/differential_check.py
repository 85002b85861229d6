"""The issue-10 refactor changed no answer: the old and the new tree, each served as users run it in
front of its own real registry, get the same requests and must answer the same.

Runs only when OLD_TREE names a checkout of the code before the refactor (b3e6fb7), e.g.
``git worktree add /tmp/old b3e6fb7 && OLD_TREE=/tmp/old pytest tests/differential_check.py``.
"""

from __future__ import annotations

import base64
import contextlib
import gzip
import json
import os
import re
import secrets
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from cnr_oci import layout
from cnr_oci.embedded import EmbeddedRegistry
from cnr_oci.routes import ROUTES
from tests import helpers
from tests.conftest import start_registry
from tests.differential import Pair, Server, Step, start_server
from tests.helpers import chart, kpm, sha, tarball

OLD_TREE = os.environ.get("OLD_TREE")
NEW_TREE = Path(__file__).resolve().parents[1]
if not OLD_TREE:
    # Not named test_*.py, so the suite never collects it (CI has no old tree); run it by name.
    pytest.skip("OLD_TREE (a checkout of the code before the refactor) is not set", allow_module_level=True)

RUN = secrets.token_hex(3)
MOUNTS = ("/cnr", "")
METHODS = ("GET", "HEAD", "PUT", "PATCH", "OPTIONS", "POST", "DELETE")  # writes last


def b64(data: bytes) -> str:
 Not collected at all (a skipped test fails in CI, see conftest.py): there is no old tree there.return base64.b64encode(data).decode()


def push(path: str, blob: bytes, release: str = "1.0.0", media_type: str = "kpm",
 Not collected at all (a skipped test fails in CI, see conftest.py): there is no old tree there.     headers: dict[str, str] | None = None, **more: object) -> Step:
 Not collected at all (a skipped test fails in CI, see conftest.py): there is no old tree there.return Step.json("POST", path, {"blob": b64(blob), "release": release, "media_type": media_type, **more},
 Not collected at all (a skipped test fails in CI, see conftest.py): there is no old tree there.                 headers=headers)


# Every blob pushed, so their digests survive normalisation (other sha256s are of dated documents).
BLOBS: dict[str, bytes] = {
 Not collected at all (a skipped test fails in CI, see conftest.py): there is no old tree there."kpm": kpm(), "kpm2": kpm(extra=b"2"), "kpm3": kpm(extra=b"3"), "kpm-other": kpm(extra=b"other"),
 Not collected at all (a skipped test fails in CI, see conftest.py): there is no old tree there."chart": chart("app"), "chart-mt": chart("mt"),
}
for _r in ("1.0.0", "1.1.0", "2.0.0", "2.0.0-rc.1"):
 Not collected at all (a skipped test fails in CI, see conftest.py): there is no old tree there.BLOBS["rel" + _r] = kpm(extra=_r.encode())
KNOWN = {sha(b) for b in BLOBS.values()}


def _pair(tmp: Path, name: str, *args: str, **registry_kwargs: object) -> Iterator[Pair]:
 Not collected at all (a skipped test fails in CI, see conftest.py): there is no old tree there.assert OLD_TREE
 Not collected at all (a skipped test fails in CI, see conftest.py): there is no old tree there.regs: list[EmbeddedRegistry] = []
 Not collected at all (a skipped test fails in CI, see conftest.py): there is no old tree there.servers: list[Server] = []
 Not collected at all (a skipped test fails in CI, see conftest.py): there is no old tree there.try:
 Not collected at all (a skipped test fails in CI, see conftest.py): there is no old tree there.    for tree, label in ((Path(OLD_TREE), "old"), (NEW_TREE, "new")):
 Not collected at all (a skipped test fails in CI, see conftest.py): there is no old tree there.        reg = start_registry(tmp / f"{name}-{label}-registry", **registry_kwargs)
 Not collected at all (a skipped test fails in CI, see conftest.py): there is no old tree there.        regs.append(reg)
 Not collected at all (a skipped test fails in CI, see conftest.py): there is no old tree there.        servers.append(start_server(tree, reg, tmp / f"{name}-{label}", *args))
 Not collected at all (a skipped test fails in CI, see conftest.py): there is no old tree there.    yield Pair(servers[0], servers[1], KNOWN)
 Not collected at all (a skipped test fails in CI, see conftest.py): there is no old tree there.finally:
 Not collected at all (a skipped test fails in CI, see conftest.py): there is no old tree there.    for s in servers:
 Not collected at all (a skipped test fails in CI, see conftest.py): there is no old tree there.        s.stop()
 Not collected at all (a skipped test fails in CI, see conftest.py): there is no old tree there.    for r in regs:
 Not collected at all (a skipped test fails in CI, see conftest.py): there is no old tree there.        r.stop()


# The defaults; and no caching, a repository prefix and CORS on.
VARIANTS = {"defaults": (), "ttl0-prefix-cors": ("--cache-ttl", "0", "--repository-prefix", "cnrp/x",
 Not collected at all (a skipped test fails in CI, see conftest.py): there is no old tree there.                                             "--cors-origin", "*")}


@pytest.fixture(scope="module", params=list(VARIANTS))
def pair(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pair]:
 Not collected at all (a skipped test fails in CI, see conftest.py): there is no old tree there.yield from _pair(tmp_path_factory.mktemp("diff"), request.param, *VARIANTS[request.param])


@pytest.fixture(scope="module")
def nodelete(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pair]:
 Not collected at all (a skipped test fails in CI, see conftest.py): there is no old tree there.yield from _pair(tmp_path_factory.mktemp("diff"), "nodelete", delete_enabled=False)


def check(pair: Pair) -> None:
 Not collected at all (a skipped test fails in CI, see conftest.py): there is no old tree there."""No difference since the last check (the pair is shared by the module's tests)."""
 Not collected at all (a skipped test fails in CI, see conftest.py): there is no old tree there.report, found = pair.report(), pair.diffs
 Not collected at all (a skipped test fails in CI, see conftest.py): there is no old tree there.if os.environ.get("DIFF_STATS"):
 Not collected at all (a skipped test fails in CI, see conftest.py): there is no old tree there.    print(f"{pair.count} requests, new answered {dict(sorted(pair.statuses.items()))}")
 Not collected at all (a skipped test fails in CI, see conftest.py): there is no old tree there.pair.diffs, pair.count, pair.statuses = [], 0, {}
 Not collected at all (a skipped test fails in CI, see conftest.py): there is no old tree there.assert not found, report


# -- routing --------------------------------------------------------------------------------------------


def concrete(path: str, ns: str, name: str, digest: str, json_suffix: str = "") -> str:
 Not collected at all (a skipped test fails in CI, see conftest.py): there is no old tree there.return (path.replace("{ns}", ns).replace("{name}", name).replace("{release}", "1.0.0")
 Not collected at all (a skipped test fails in CI, see conftest.py): there is no old tree there.        .replace("{media_type}", "kpm").replace("{channel}", "stable").replace("{digest}", digest)
 Not collected at all (a skipped test fails in CI, see conftest.py): there is no old tree there.        .replace("{json:(/json)?}", json_suffix))


def test_every_route_and_method_at_both_mounts(pair: Pair) -> None:
 Not collected at all (a skipped test fails in CI, see conftest.py): there is no old tree there.ns, name = f"mx{RUN}", "app"
 Not collected at all (a skipped test fails in CI, see conftest.py): there is no old tree there.for mount in MOUNTS:
 Not collected at all (a skipped test fails in CI, see conftest.py): there is no old tree there.    pair.run(push(f"{mount}/api/v1/packages/{ns}/{name}{mount.replace('/', '-')}", BLOBS["kpm"]))
 Not collected at all (a skipped test fails in CI, see conftest.py): there is no old tree there.    pair.run(Step("POST", f"{mount}/api/v1/packages/{ns}/{name}{mount.replace('/', '-')}/channels/stable/1.0.0"))
 Not collected at all (a skipped test fails in CI, see conftest.py): there is no old tree there.digest = sha(BLOBS["kpm"])
 Not collected at all (a skipped test fails in CI, see conftest.py): there is no old tree there.for method in METHODS:
 Not collected at all (a skipped test fails in CI, see conftest.py): there is no old tree there.    for mount in MOUNTS:
 Not collected at all (a skipped test fails in CI, see conftest.py): there is no old tree there.        for slash in ("", "/"):
 Not collected at all (a skipped test fails in CI, see conftest.py): there is no old tree there.            for _, path, _ in ROUTES:
 Not collected at all (a skipped test fails in CI, see conftest.py): there is no old tree there.                for suffix in (("", "/json") if "{json" in path else ("",)):
 Not collected at all (a skipped test fails in CI, see conftest.py): there is no old tree there.                    p = concrete(path, ns, name + mount.replace("/", "-"), digest, suffix)
 Not collected at all (a skipped test fails in CI, see conftest.py): there is no old tree there.                    pair.run(Step(method, mount + p + slash))
 Not collected at all (a skipped test fails in CI, see conftest.py): there is no old tree there.check(pair)


STATIC_PATHS = [
 Not collected at all (a skipped test fails in CI, see conftest.py): there is no old tree there."/", "/cnr", "/cnr/", "/cnrx", "/cnrx/api/v1/packages", "/cnr//api/v1/packages", "//api/v1/packages",
 Not collected at all (a skipped test fails in CI, see conftest.py): there is no old tree there."/cnr/healthz", "/cnr/metrics", "/cnr/readyz", "/healthz", "/healthz/", "/readyz", "/version", "/cnr/version",
 Not collected at all (a skipped test fails in CI, see conftest.py): there is no old tree there."/cnr/cnr/api/v1/packages", "/api/v1/packages/cnr/x", "/cnr/api/v1/packages/cnr/x", "/api/v1/packages/cnr",
 Not collected at all (a skipped test fails in CI, see conftest.py): there is no old tree there."/cnr/api/v1", "/api/v1", "/cnr/api/v1/packages//", "/.well-known/app-registry-uri.json",
 Not collected at all (a skipped test fails in CI, see conftest.py): there is no old tree there."/cnr/.well-known/app-registry-uri.json", "/CNR/api/v1/packages", "/cnr/api/v1/packages?x=%ZZ",
 Not collected at all (a skipped test fails in CI, see conftest.py): there is no old tree there."/cnr/api/v1/packages/%6Ds/app", "/cnr/api/v1/packages/ns%2Fx/app", "/cnr/api/v1/packages/n%C3%A9/app",
 Not collected at all (a skipped test fails in CI, see conftest.py): there is no old tree there."/cnr/api/v1/packages/%2E%2E/app/1.0.0/kpm/pull", "/cnr/api/v1/packages/ns/app/%31.0.0/kpm",
 Not collected at all (a skipped test fails in CI, see conftest.py): there is no old tree there."/cnr/api/v1/users/login", "/api/v1/users/login/", "/cnr%2Fapi/v1/packages", "/%63nr/api/v1/packages",
]


def test_static_and_odd_paths(pair: Pair) -> None:
 Not collected at all (a skipped test fails in CI, see conftest.py): there is no old tree there.for path in STATIC_PATHS:
 Not collected at all (a skipped test fails in CI, see conftest.py): there is no old tree there.    for method in ("GET", "HEAD", "OPTIONS", "POST", "DELETE", "PUT"):
 Not collected at all (a skipped test fails in CI, see conftest.py): there is no old tree there.        pair.run(Step(method, path))
 Not collected at all (a skipped test fails in CI, see conftest.py): there is no old tree there.pair.run(Step("OPTIONS", "*"))
 Not collected at all (a skipped test fails in CI, see conftest.py): there is no old tree there.cors = {"Origin": "http://example.com", "Access-Control-Request-Method": "DELETE"}
 Not collected at all (a skipped test fails in CI, see conftest.py): there is no old tree there.for path in ("/cnr", "/cnr/", "/cnr/api/v1/packages", "/api/v1/packages/a/b/1.0.0/kpm", "/nope", "/cnr/nope"):
 Not collected at all (a skipped test fails in CI, see conftest.py): there is no old tree there.    pair.run(Step("OPTIONS", path, headers=cors))
 Not collected at all (a skipped test fails in CI, see conftest.py): there is no old tree there.    pair.run(Step("GET", path, headers={"Origin": "http://example.com"}))
 Not collected at all (a skipped test fails in CI, see conftest.py): there is no old tree there.    pair.run(Step("POST", path, headers={"Origin": "http://example.com"}))
 Not collected at all (a skipped test fails in CI, see conftest.py): there is no old tree there.check(pair)


FUZZ_PIECES = ["", "cnr", "api", "v1", "packages", "search", "users", "login", "z" + RUN, "app", "1.0.0", "2.0.0",
 Not collected at all (a skipped test fails in CI, see conftest.py): there is no old tree there.           "kpm", "helm", "-", "pull", "json", "blobs", "sha256", sha(BLOBS["kpm"]), "channels", "stable",
 Not collected at all (a skipped test fails in CI, see conftest.py): there is no old tree there.           "%2F", "%2E%2E", "..", ".", ".well-known", "app-registry-uri.json", "version", "healthz", "metrics",
 Not collected at all (a skipped test fails in CI, see conftest.py): there is no old tree there.           "readyz", "%63nr", "CNR", "cnrx", "default", ">=1.0.0", "x" * 70]
FUZZ_QUERIES = ["", "?format=json", "?media_type=kpm", "?media_type=x%2F", "?limit=1", "?offset=1&limit=0", "?q=z",
 Not collected at all (a skipped test fails in CI, see conftest.py): there is no old tree there.            "?namespace=z" + RUN, "?force=true", "?%ZZ"]


FUZZ_VALUES = {
 Not collected at all (a skipped test fails in CI, see conftest.py): there is no old tree there."ns": ["z" + RUN, "Z" + RUN, "z" + RUN + "%2Fx", "%2E%2E", "-a", "n%C3%A9", ""],
 Not collected at all (a skipped test fails in CI, see conftest.py): there is no old tree there."name": ["app", "missing", "App", "a" * 300, "app.", "%61pp"],
 Not collected at all (a skipped test fails in CI, see conftest.py): there is no old tree there."release": ["1.0.0", "2.0.0", "1.0", "default", "%3E%3D1.0.0", "1.0.0-rc.1", "v1", "latest", "sha256:" + "a" * 64],
 Not collected at all (a skipped test fails in CI, see conftest.py): there is no old tree there."media_type": ["kpm", "helm", "-", "Kpm", "..%2Fx", "x" * 70, "docker-compose"],
 Not collected at all (a skipped test fails in CI, see conftest.py): there is no old tree there."channel": ["stable", "nope", "Bad", "a%20b", "c" * 200],
 Not collected at all (a skipped test fails in CI, see conftest.py): there is no old tree there."digest": [sha(BLOBS["kpm"]), "b" * 64, "A" * 64, "xyz"],
 Not collected at all (a skipped test fails in CI, see conftest.py): there is no old tree there."json": ["", "/json", "/json/", "/xml"],
}


def test_random_paths_and_methods(pair: Pair) -> None:
 Not collected at all (a skipped test fails in CI, see conftest.py): there is no old tree there."""Route paths with odd values, then a segment dropped, doubled or added, each method: a fixed set
 Not collected at all (a skipped test fails in CI, see conftest.py): there is no old tree there.(derandomized)."""
 Not collected at all (a skipped test fails in CI, see conftest.py): there is no old tree there.from hypothesis import HealthCheck, given, settings
 Not collected at all (a skipped test fails in CI, see conftest.py): there is no old tree there.from hypothesis import strategies as st

 Not collected at all (a skipped test fails in CI, see conftest.py): there is no old tree there.pair.run(push(f"/cnr/api/v1/packages/z{RUN}/app", BLOBS["kpm"]))
 Not collected at all (a skipped test fails in CI, see conftest.py): there is no old tree there.pair.run(Step("POST", f"/cnr/api/v1/packages/z{RUN}/app/channels/stable/1.0.0"))

 Not collected at all (a skipped test fails in CI, see conftest.py): there is no old tree there.@st.composite
 Not collected at all (a skipped test fails in CI, see conftest.py): there is no old tree there.def paths(draw: st.DrawFn) -> str:
 Not collected at all (a skipped test fails in CI, see conftest.py): there is no old tree there.    _, template, _ = draw(st.sampled_from(ROUTES))
 Not collected at all (a skipped test fails in CI, see conftest.py): there is no old tree there.    path = draw(st.sampled_from(MOUNTS)) + template
 Not collected at all (a skipped test fails in CI, see conftest.py): there is no old tree there.    for key, values in FUZZ_VALUES.items():
 Not collected at all (a skipped test fails in CI, see conftest.py): there is no old tree there.        pattern = "{json:(/json)?}" if key == "json" else "{" + key + "}"
 Not collected at all (a skipped test fails in CI, see conftest.py): there is no old tree there.        path = path.replace(pattern, draw(st.sampled_from(values)))
 Not collected at all (a skipped test fails in CI, see conftest.py): there is no old tree there.    parts = path.split("/")
 Not collected at all (a skipped test fails in CI, see conftest.py): there is no old tree there.    edit = draw(st.sampled_from(["none", "drop", "double", "insert", "slash"]))
 Not collected at all (a skipped test fails in CI, see conftest.py): there is no old tree there.    at = draw(st.integers(1, max(1, len(parts) - 1)))
 Not collected at all (a skipped test fails in CI, see conftest.py): there is no old tree there.    if edit == "drop" and len(parts) > 2:
 Not collected at all (a skipped test fails in CI, see conftest.py): there is no old tree there.        del parts[at]
 Not collected at all (a skipped test fails in CI, see conftest.py): there is no old tree there.    elif edit == "double":
 Not collected at all (a skipped test fails in CI, see conftest.py): there is no old tree there.        parts.insert(at, parts[min(at, len(parts) - 1)])
 Not collected at all (a skipped test fails in CI, see conftest.py): there is no old tree there.    elif edit == "insert":
 Not collected at all (a skipped test fails in CI, see conftest.py): there is no old tree there.        parts.insert(at, draw(st.sampled_from(FUZZ_PIECES)))
 Not collected at all (a skipped test fails in CI, see conftest.py): there is no old tree there.    elif edit == "slash":
 Not collected at all (a skipped test fails in CI, see conftest.py): there is no old tree there.        parts.insert(at, "")
 Not collected at all (a skipped test fails in CI, see conftest.py): there is no old tree there.    return "/".join(parts) + draw(st.sampled_from(["", "/"])) + draw(st.sampled_from(FUZZ_QUERIES))

 Not collected at all (a skipped test fails in CI, see conftest.py): there is no old tree there.# DIFF_FUZZ_EXAMPLES=5000 explores more, at random, for a run by hand.
 Not collected at all (a skipped test fails in CI, see conftest.py): there is no old tree there.wide = os.environ.get("DIFF_FUZZ_EXAMPLES")

 Not collected at all (a skipped test fails in CI, see conftest.py): there is no old tree there.@settings(max_examples=int(wide or 500), derandomize=not wide, database=None, deadline=None,
 Not collected at all (a skipped test fails in CI, see conftest.py): there is no old tree there.          suppress_health_check=list(HealthCheck))
 Not collected at all (a skipped test fails in CI, see conftest.py): there is no old tree there.@given(st.sampled_from(["GET", "GET", "GET", "HEAD", "POST", "DELETE", "PUT", "OPTIONS"]), paths())
 Not collected at all (a skipped test fails in CI, see conftest.py): there is no old tree there.def run(method: str, path: str) -> None:
 Not collected at all (a skipped test fails in CI, see conftest.py): there is no old tree there.    pair.run(Step(method, path))

 Not collected at all (a skipped test fails in CI, see conftest.py): there is no old tree there.run()
 Not collected at all (a skipped test fails in CI, see conftest.py): there is no old tree there.check(pair)


# -- pushes, reads, queries -----------------------------------------------------------------------------


def bad_pushes(path: str) -> list[Step]:
 Not collected at all (a skipped test fails in CI, see conftest.py): there is no old tree there."""The bad bodies of test_bad_input.py, and more."""
 Not collected at all (a skipped test fails in CI, see conftest.py): there is no old tree there.k = BLOBS["kpm"]
 Not collected at all (a skipped test fails in CI, see conftest.py): there is no old tree there.steps = [push(path, k, release) for release in ("1.0", "v1.0.0", "01.0.0", "1.0.0-01", "1." * 150 + "0")]
 Not collected at all (a skipped test fails in CI, see conftest.py): there is no old tree there.steps += [push(path, k, "2.0.0", mt) for mt in ("../x", "", "m" * 200, "Kpm", "-")]
 Not collected at all (a skipped test fails in CI, see conftest.py): there is no old tree there.steps.append(Step.json("POST", path, {"blob": b64(k), "release": 1, "media_type": "kpm"}))
 Not collected at all (a skipped test fails in CI, see conftest.py): there is no old tree there.blobs = {"not-base64": "!!!not base64!!!", "not-gzip": b64(b"just some text"),
 Not collected at all (a skipped test fails in CI, see conftest.py): there is no old tree there.         "gzip-not-tar": b64(gzip.compress(b"not a tar archive at all" * 40)), "empty": "",
 Not collected at all (a skipped test fails in CI, see conftest.py): there is no old tree there.         "empty-tar": b64(tarball({})), "number": 5}
 Not collected at all (a skipped test fails in CI, see conftest.py): there is no old tree there.steps += [Step.json("POST", path, {"release": "2.0.0", "media_type": "kpm"}, note="no blob")]
 Not collected at all (a skipped test fails in CI, see conftest.py): there is no old tree there.steps += [Step.json("POST", path, {"release": "2.0.0", "media_type": "kpm", "blob": v}, note=n)
 Not collected at all (a skipped test fails in CI, see conftest.py): there is no old tree there.          for n, v in blobs.items()]
 Not collected at all (a skipped test fails in CI, see conftest.py): there is no old tree there.for raw in (b"not json", b"[1, 2]", b'"a string"', b"\xff\xfe", b"", b"{}", b"null", b'{"a": NaN}',
 Not collected at all (a skipped test fails in CI, see conftest.py): there is no old tree there.            b"[" * 5000 + b"]" * 5000):
 Not collected at all (a skipped test fails in CI, see conftest.py): there is no old tree there.    steps.append(Step("POST", path, raw, {"Content-Type": "application/json"}, note=repr(raw[:20])))
 Not collected at all (a skipped test fails in CI, see conftest.py): there is no old tree there.steps.append(Step("POST", path, b"{}", {"Content-Type": "application/json", "Content-Encoding": "gzip"}))
 Not collected at all (a skipped test fails in CI, see conftest.py): there is no old tree there.steps.append(Step("POST", path, b"x" * 10, {"Content-Length": str(512 * 1024 * 1024)}, note="declared huge"))
 Not collected at all (a skipped test fails in CI, see conftest.py): there is no old tree there.steps.append(push(path, k, "2.0.0", metadata="not an object"))
 Not collected at all (a skipped test fails in CI, see conftest.py): there is no old tree there.steps.append(push(path, k, "2.0.0", metadata={"deep": json.loads("[" * 200 + "]" * 200)}))
 Not collected at all (a skipped test fails in CI, see conftest.py): there is no old tree there.steps.append(push(path, chart("wrong"), "2.0.0", "helm"))  # chart name differs from the package's
 Not collected at all (a skipped test fails in CI, see conftest.py): there is no old tree there.steps.append(push(path, k, "2.0.0", "helm"))  # a helm push that is no chart
 Not collected at all (a skipped test fails in CI, see conftest.py): there is no old tree there.steps.append(push(path, k, "1.0.0", force="false"))
 Not collected at all (a skipped test fails in CI, see conftest.py): there is no old tree there.steps.append(Step.json("POST", path + "?force=maybe", {"blob": b64(k), "release": "1.0.0", "media_type": "kpm"}))
 Not collected at all (a skipped test fails in CI, see conftest.py): there is no old tree there.return steps


def test_pushes_and_reads(pair: Pair) -> None:
 Not collected at all (a skipped test fails in CI, see conftest.py): there is no old tree there.ns = f"p{RUN}"
 Not collected at all (a skipped test fails in CI, see conftest.py): there is no old tree there.api = "/cnr/api/v1/packages"
 Not collected at all (a skipped test fails in CI, see conftest.py): there is no old tree there.app, mt = f"{api}/{ns}/app", f"{api}/{ns}/mt"
 Not collected at all (a skipped test fails in CI, see conftest.py): there is no old tree there.steps = [
 Not collected at all (a skipped test fails in CI, see conftest.py): there is no old tree there.    push(app, BLOBS["chart"], "1.0.0", "helm"),
 Not collected at all (a skipped test fails in CI, see conftest.py): there is no old tree there.    push(app, BLOBS["chart"], "1.0.0", "helm"),  # 409
 Not collected at all (a skipped test fails in CI, see conftest.py): there is no old tree there.    push(app, BLOBS["kpm"], "1.0.0", "kpm"),  # a second type: an index
 Not collected at all (a skipped test fails in CI, see conftest.py): there is no old tree there.    push(app, BLOBS["kpm-other"], "1.0.0", "kpm"),  # 409
 Not collected at all (a skipped test fails in CI, see conftest.py): there is no old tree there.    push(app, BLOBS["kpm-other"], "1.0.0", "kpm", force=True),
 Not collected at all (a skipped test fails in CI, see conftest.py): there is no old tree there.    push(app, BLOBS["kpm-other"], "1.0.0", "kpm", force="true"),
 Not collected at all (a skipped test fails in CI, see conftest.py): there is no old tree there.    push(app + "?force=true", BLOBS["kpm2"], "1.0.0", "kpm"),
 Not collected at all (a skipped test fails in CI, see conftest.py): there is no old tree there.    push(app, BLOBS["kpm3"], "1.0.0", "docker-compose"),
 Not collected at all (a skipped test fails in CI, see conftest.py): there is no old tree there.    push(app, BLOBS["rel2.0.0-rc.1"], "2.0.0-rc.1", "kpm", metadata={"a": [1, 2], "b": None}),
 Not collected at all (a skipped test fails in CI, see conftest.py): there is no old tree there.    push(app, BLOBS["rel1.1.0"], "1.1.0", "kpm"),
 Not collected at all (a skipped test fails in CI, see conftest.py): there is no old tree there.    push(mt, BLOBS["chart-mt"], "0.1.0", "helm"),
 Not collected at all (a skipped test fails in CI, see conftest.py): there is no old tree there.    push(mt + "/", BLOBS["kpm"], "0.1.0", "kpm"),
 Not collected at all (a skipped test fails in CI, see conftest.py): there is no old tree there.    push(f"/api/v1/packages/{ns}/root", BLOBS["kpm"], "3.0.0", "kpm"),
 Not collected at all (a skipped test fails in CI, see conftest.py): there is no old tree there.]
 Not collected at all (a skipped test fails in CI, see conftest.py): there is no old tree there.steps += bad_pushes(app)
 Not collected at all (a skipped test fails in CI, see conftest.py): there is no old tree there.for base in (app, mt, f"{api}/{ns}/missing", f"/api/v1/packages/{ns}/root"):
 Not collected at all (a skipped test fails in CI, see conftest.py): there is no old tree there.    steps += [Step("GET", base + s) for s in (
 Not collected at all (a skipped test fails in CI, see conftest.py): there is no old tree there.        "", "/", "?media_type=kpm", "?media_type=helm", "?media_type=Kpm", "?media_type=",
 Not collected at all (a skipped test fails in CI, see conftest.py): there is no old tree there.        "/1.0.0", "/1.1.0/", "/9.9.9", "/1.0", "/0.1.0", "/3.0.0", "/2.0.0-rc.1", "/latest",
 Not collected at all (a skipped test fails in CI, see conftest.py): there is no old tree there.        "/channels", "/channels/", "/channels/stable",
 Not collected at all (a skipped test fails in CI, see conftest.py): there is no old tree there.    )]
 Not collected at all (a skipped test fails in CI, see conftest.py): there is no old tree there.    for query in ("1.0.0", "1.1.0", ">=1.0.0", "^1.0.0", "~1.0", "latest", "default", "*", "2.0.0-rc.1",
 Not collected at all (a skipped test fails in CI, see conftest.py): there is no old tree there.                  ">=2.0.0-rc.0", "9.9.9", "abc", "1.0", "0.1.0", "3.0.0", "%3E%3D1.0.0", "1.0.0%20%7C%7C%202.0.0"):
 Not collected at all (a skipped test fails in CI, see conftest.py): there is no old tree there.        for mtype in ("kpm", "helm", "docker-compose", "-", "Kpm", "x" * 70, "..%2Fx"):
 Not collected at all (a skipped test fails in CI, see conftest.py): there is no old tree there.            steps.append(Step("GET", f"{base}/{query}/{mtype}"))
 Not collected at all (a skipped test fails in CI, see conftest.py): there is no old tree there.            steps.append(Step("GET", f"{base}/{query}/{mtype}/pull"))
 Not collected at all (a skipped test fails in CI, see conftest.py): there is no old tree there.        steps.append(Step("GET", f"{base}/{query}/kpm/pull/json"))
 Not collected at all (a skipped test fails in CI, see conftest.py): there is no old tree there.        steps.append(Step("GET", f"{base}/{query}/helm/pull?format=json"))
 Not collected at all (a skipped test fails in CI, see conftest.py): there is no old tree there.        steps.append(Step("GET", f"{base}/{query}/helm/pull/?format=xml"))
 Not collected at all (a skipped test fails in CI, see conftest.py): there is no old tree there.pair.run_all(steps)
 Not collected at all (a skipped test fails in CI, see conftest.py): there is no old tree there.check(pair)


def test_listing_and_search(pair: Pair) -> None:
 Not collected at all (a skipped test fails in CI, see conftest.py): there is no old tree there.ns = f"l{RUN}"
 Not collected at all (a skipped test fails in CI, see conftest.py): there is no old tree there.for i, name in enumerate(("alpha", "beta", "gamma")):
 Not collected at all (a skipped test fails in CI, see conftest.py): there is no old tree there.    pair.run(push(f"/cnr/api/v1/packages/{ns}/{name}", BLOBS["kpm"], f"1.{i}.0"))
 Not collected at all (a skipped test fails in CI, see conftest.py): there is no old tree there.pair.run(push(f"/cnr/api/v1/packages/{ns}/beta", BLOBS["chart"], "1.1.0", "helm"))
 Not collected at all (a skipped test fails in CI, see conftest.py): there is no old tree there.pair.run(push(f"/cnr/api/v1/packages/{ns}x/delta", BLOBS["kpm"]))
 Not collected at all (a skipped test fails in CI, see conftest.py): there is no old tree there.for mount in MOUNTS:
 Not collected at all (a skipped test fails in CI, see conftest.py): there is no old tree there.    api = f"{mount}/api/v1/packages"
 Not collected at all (a skipped test fails in CI, see conftest.py): there is no old tree there.    for q in ("", "?namespace=" + ns, "?namespace=" + ns + "x", "?namespace=nope", f"?query={ns}",
 Not collected at all (a skipped test fails in CI, see conftest.py): there is no old tree there.              "?query=BETA", "?query=", f"?namespace={ns}&media_type=helm", f"?namespace={ns}&media_type=kpm",
 Not collected at all (a skipped test fails in CI, see conftest.py): there is no old tree there.              "?media_type=..%2F", "?media_type=-", f"?namespace={ns}&limit=1", f"?namespace={ns}&limit=1&offset=1",
 Not collected at all (a skipped test fails in CI, see conftest.py): there is no old tree there.              f"?namespace={ns}&offset=5", "?limit=x", "?offset=-1", "?limit=-1", "?limit=1.5",
 Not collected at all (a skipped test fails in CI, see conftest.py): there is no old tree there.              f"?namespace={ns}&limit=0", f"?namespace={ns}&offset=99999999999999999999"):
 Not collected at all (a skipped test fails in CI, see conftest.py): there is no old tree there.        pair.run(Step("GET", api + q))
 Not collected at all (a skipped test fails in CI, see conftest.py): there is no old tree there.        pair.run(Step("GET", api + "/" + q))
 Not collected at all (a skipped test fails in CI, see conftest.py): there is no old tree there.    for q in ("", "?q=", f"?q={ns}", "?q=ALPHA", "?q=alpha", "?q=zzz", "?q=%2F", f"?q={ns}/beta", "?x=1"):
 Not collected at all (a skipped test fails in CI, see conftest.py): there is no old tree there.        pair.run(Step("GET", api + "/search" + q))
 Not collected at all (a skipped test fails in CI, see conftest.py): there is no old tree there.        pair.run(Step("GET", api + "/search/" + q))
 Not collected at all (a skipped test fails in CI, see conftest.py): there is no old tree there.check(pair)


# -- channels and deletes -------------------------------------------------------------------------------


def test_channels(pair: Pair) -> None:
 Not collected at all (a skipped test fails in CI, see conftest.py): there is no old tree there.pkg = f"/cnr/api/v1/packages/c{RUN}/app"
 Not collected at all (a skipped test fails in CI, see conftest.py): there is no old tree there.for r in ("1.0.0", "1.1.0", "2.0.0"):
 Not collected at all (a skipped test fails in CI, see conftest.py): there is no old tree there.    pair.run(push(pkg, BLOBS["rel" + r], r))
 Not collected at all (a skipped test fails in CI, see conftest.py): there is no old tree there.steps = [
 Not collected at all (a skipped test fails in CI, see conftest.py): there is no old tree there.    Step("GET", pkg + "/channels"),
 Not collected at all (a skipped test fails in CI, see conftest.py): there is no old tree there.    Step("POST", pkg + "/channels/stable/1.0.0"),
 Not collected at all (a skipped test fails in CI, see conftest.py): there is no old tree there.    Step("POST", pkg + "/channels/stable/1.1.0/"),
 Not collected at all (a skipped test fails in CI, see conftest.py): there is no old tree there.    Step("POST", pkg + "/channels/stable/1.0.0"),
 Not collected at all (a skipped test fails in CI, see conftest.py): there is no old tree there.    Step("POST", pkg + "/channels/beta/2.0.0"),
 Not collected at all (a skipped test fails in CI, see conftest.py): there is no old tree there.    Step("POST", pkg + "/channels/stable/9.9.9"),
 Not collected at all (a skipped test fails in CI, see conftest.py): there is no old tree there.    Step("POST", pkg + "/channels/stable/1.0"),
 Not collected at all (a skipped test fails in CI, see conftest.py): there is no old tree there.    Step("POST", pkg + "/channels/bad%20name/1.0.0"),
 Not collected at all (a skipped test fails in CI, see conftest.py): there is no old tree there.    Step("POST", pkg + "/channels/Stable/1.0.0"),
 Not collected at all (a skipped test fails in CI, see conftest.py): there is no old tree there.    Step("POST", pkg + "/channels/" + "c" * 200 + "/1.0.0"),
 Not collected at all (a skipped test fails in CI, see conftest.py): there is no old tree there.    Step("POST", f"/cnr/api/v1/packages/c{RUN}/missing/channels/stable/1.0.0"),
 Not collected at all (a skipped test fails in CI, see conftest.py): there is no old tree there.    Step("GET", pkg + "/channels/"),
 Not collected at all (a skipped test fails in CI, see conftest.py): there is no old tree there.    Step("GET", pkg + "/channels/stable"),
 Not collected at all (a skipped test fails in CI, see conftest.py): there is no old tree there.    Step("GET", pkg + "/channels/nope"),
 Not collected at all (a skipped test fails in CI, see conftest.py): there is no old tree there.    Step("GET", pkg + "/channels/bad%20name"),
 Not collected at all (a skipped test fails in CI, see conftest.py): there is no old tree there.    Step("GET", f"/cnr/api/v1/packages/c{RUN}/missing/channels"),
 Not collected at all (a skipped test fails in CI, see conftest.py): there is no old tree there.    Step("GET", f"/cnr/api/v1/packages/c{RUN}/missing/channels/stable"),
 Not collected at all (a skipped test fails in CI, see conftest.py): there is no old tree there.    Step("GET", pkg + "/1.0.0/kpm"),  # E10 names the channels it is current in
 Not collected at all (a skipped test fails in CI, see conftest.py): there is no old tree there.    Step("GET", pkg + "/2.0.0/kpm"),
 Not collected at all (a skipped test fails in CI, see conftest.py): there is no old tree there.    Step("DELETE", pkg + "/channels/stable/2.0.0"),  # not in the channel
 Not collected at all (a skipped test fails in CI, see conftest.py): there is no old tree there.    Step("DELETE", pkg + "/channels/stable/1.0.0"),  # the current one
 Not collected at all (a skipped test fails in CI, see conftest.py): there is no old tree there.    Step("GET", pkg + "/channels/stable"),
 Not collected at all (a skipped test fails in CI, see conftest.py): there is no old tree there.    Step("DELETE", pkg + "/channels/stable/1.0"),
 Not collected at all (a skipped test fails in CI, see conftest.py): there is no old tree there.    Step("DELETE", pkg + "/channels/nope/1.0.0"),
 Not collected at all (a skipped test fails in CI, see conftest.py): there is no old tree there.    Step("DELETE", pkg + "/channels/stable/1.1.0"),  # the last one: the channel goes
 Not collected at all (a skipped test fails in CI, see conftest.py): there is no old tree there.    Step("GET", pkg + "/channels/stable"),
 Not collected at all (a skipped test fails in CI, see conftest.py): there is no old tree there.    Step("GET", pkg + "/channels"),
 Not collected at all (a skipped test fails in CI, see conftest.py): there is no old tree there.    Step("DELETE", pkg + "/channels/beta"),
 Not collected at all (a skipped test fails in CI, see conftest.py): there is no old tree there.    Step("DELETE", pkg + "/channels/beta"),
 Not collected at all (a skipped test fails in CI, see conftest.py): there is no old tree there.    Step("DELETE", pkg + "/channels/bad%20name"),
 Not collected at all (a skipped test fails in CI, see conftest.py): there is no old tree there.    Step("POST", pkg + "/channels/gone/2.0.0"),
 Not collected at all (a skipped test fails in CI, see conftest.py): there is no old tree there.    Step("POST", pkg + "/channels/gone/1.1.0"),
 Not collected at all (a skipped test fails in CI, see conftest.py): there is no old tree there.    Step("DELETE", pkg + "/2.0.0/kpm"),  # the release leaves the channel
 Not collected at all (a skipped test fails in CI, see conftest.py): there is no old tree there.    Step("GET", pkg + "/channels/gone"),
 Not collected at all (a skipped test fails in CI, see conftest.py): there is no old tree there.    Step("GET", pkg + "/1.1.0/kpm"),
 Not collected at all (a skipped test fails in CI, see conftest.py): there is no old tree there.    Step("DELETE", pkg + "/1.1.0/kpm"),  # the channel's last release: the channel goes
 Not collected at all (a skipped test fails in CI, see conftest.py): there is no old tree there.    Step("GET", pkg + "/channels/gone"),
 Not collected at all (a skipped test fails in CI, see conftest.py): there is no old tree there.    Step("GET", pkg + "/channels"),
 Not collected at all (a skipped test fails in CI, see conftest.py): there is no old tree there.]
 Not collected at all (a skipped test fails in CI, see conftest.py): there is no old tree there.pair.run_all(steps)
 Not collected at all (a skipped test fails in CI, see conftest.py): there is no old tree there.check(pair)


def test_deletes(pair: Pair) -> None:
 Not collected at all (a skipped test fails in CI, see conftest.py): there is no old tree there.ns = f"d{RUN}"
 Not collected at all (a skipped test fails in CI, see conftest.py): there is no old tree there.pkg = f"/cnr/api/v1/packages/{ns}/app"
 Not collected at all (a skipped test fails in CI, see conftest.py): there is no old tree there.pair.run(push(pkg, BLOBS["chart"], "1.0.0", "helm"))
 Not collected at all (a skipped test fails in CI, see conftest.py): there is no old tree there.pair.run(push(pkg, BLOBS["kpm"], "1.0.0", "kpm"))
 Not collected at all (a skipped test fails in CI, see conftest.py): there is no old tree there.pair.run(push(pkg, BLOBS["rel2.0.0"], "2.0.0", "kpm"))
 Not collected at all (a skipped test fails in CI, see conftest.py): there is no old tree there.steps = [
 Not collected at all (a skipped test fails in CI, see conftest.py): there is no old tree there.    Step("DELETE", pkg + "/9.9.9/kpm"),  # a missing release
 Not collected at all (a skipped test fails in CI, see conftest.py): there is no old tree there.    Step("DELETE", pkg + "/1.0.0/docker-compose"),  # a type the release lacks
 Not collected at all (a skipped test fails in CI, see conftest.py): there is no old tree there.    Step("DELETE", pkg + "/1.0.0/-"),  # two types: name one
 Not collected at all (a skipped test fails in CI, see conftest.py): there is no old tree there.    Step("DELETE", pkg + "/1.0/kpm"),
 Not collected at all (a skipped test fails in CI, see conftest.py): there is no old tree there.    Step("DELETE", pkg + "/abc/kpm"),
 Not collected at all (a skipped test fails in CI, see conftest.py): there is no old tree there.    Step("DELETE", pkg + "/1.0.0/..%2Fx"),
 Not collected at all (a skipped test fails in CI, see conftest.py): there is no old tree there.    Step("DELETE", pkg + "/1.0.0/kpm"),  # the index keeps helm
 Not collected at all (a skipped test fails in CI, see conftest.py): there is no old tree there.    Step("GET", pkg + "/1.0.0"),
 Not collected at all (a skipped test fails in CI, see conftest.py): there is no old tree there.    Step("GET", pkg + "/1.0.0/-"),
 Not collected at all (a skipped test fails in CI, see conftest.py): there is no old tree there.    Step("DELETE", pkg + "/1.0.0/kpm"),
 Not collected at all (a skipped test fails in CI, see conftest.py): there is no old tree there.    Step("DELETE", pkg + "/1.0.0/-"),  # the one left
 Not collected at all (a skipped test fails in CI, see conftest.py): there is no old tree there.    Step("GET", pkg + "/1.0.0"),
 Not collected at all (a skipped test fails in CI, see conftest.py): there is no old tree there.    Step("GET", pkg),
 Not collected at all (a skipped test fails in CI, see conftest.py): there is no old tree there.    Step("DELETE", pkg + "/2.0.0/kpm/"),
 Not collected at all (a skipped test fails in CI, see conftest.py): there is no old tree there.    Step("GET", pkg),  # no release left
 Not collected at all (a skipped test fails in CI, see conftest.py): there is no old tree there.    Step("GET", f"/cnr/api/v1/packages?namespace={ns}"),
 Not collected at all (a skipped test fails in CI, see conftest.py): there is no old tree there.    Step("DELETE", f"/cnr/api/v1/packages/{ns}/never/1.0.0/kpm"),
 Not collected at all (a skipped test fails in CI, see conftest.py): there is no old tree there.]
 Not collected at all (a skipped test fails in CI, see conftest.py): there is no old tree there.pair.run_all(steps)
 Not collected at all (a skipped test fails in CI, see conftest.py): there is no old tree there.check(pair)


# -- login and blobs ------------------------------------------------------------------------------------


def test_login(pair: Pair) -> None:
 Not collected at all (a skipped test fails in CI, see conftest.py): there is no old tree there.for path in ("/cnr/api/v1/users/login", "/api/v1/users/login", "/cnr/api/v1/users/login/"):
 Not collected at all (a skipped test fails in CI, see conftest.py): there is no old tree there.    for doc in ({"user": {"username": "a", "password": "b"}}, {"user": {"username": "", "password": "b"}},
 Not collected at all (a skipped test fails in CI, see conftest.py): there is no old tree there.                {"user": {"username": "a"}}, {"user": "x"}, {}, [], {"user": {"username": 1, "password": "b"}}):
 Not collected at all (a skipped test fails in CI, see conftest.py): there is no old tree there.        pair.run(Step.json("POST", path, doc))
 Not collected at all (a skipped test fails in CI, see conftest.py): there is no old tree there.    pair.run(Step("POST", path, b"not json", {"Content-Type": "application/json"}))
 Not collected at all (a skipped test fails in CI, see conftest.py): there is no old tree there.    pair.run(Step("POST", path, b"x" * (70 * 1024), {"Content-Type": "application/json"}))
 Not collected at all (a skipped test fails in CI, see conftest.py): there is no old tree there.    pair.run(Step("GET", path))
 Not collected at all (a skipped test fails in CI, see conftest.py): there is no old tree there.# A login token (open registry: it carries no credentials) is accepted, a forged one is not.
 Not collected at all (a skipped test fails in CI, see conftest.py): there is no old tree there.a, b = pair.run(Step.json("POST", "/cnr/api/v1/users/login", {"user": {"username": "a", "password": "b"}}))
 Not collected at all (a skipped test fails in CI, see conftest.py): there is no old tree there.for server, answer in ((pair.old, a), (pair.new, b)):
 Not collected at all (a skipped test fails in CI, see conftest.py): there is no old tree there.    token = json.loads(answer.body)["token"]
 Not collected at all (a skipped test fails in CI, see conftest.py): there is no old tree there.    assert token
 Not collected at all (a skipped test fails in CI, see conftest.py): there is no old tree there.    del server
 Not collected at all (a skipped test fails in CI, see conftest.py): there is no old tree there.for auth in ("Basic " + b64(b"a:b"), "Bearer x", "garbage", "Basic !!!", "Basic " + b64(b"nocolon")):
 Not collected at all (a skipped test fails in CI, see conftest.py): there is no old tree there.    pair.run(Step("GET", "/cnr/api/v1/packages/search?q=x", headers={"Authorization": auth}))
 Not collected at all (a skipped test fails in CI, see conftest.py): there is no old tree there.check(pair)


def test_blobs(pair: Pair) -> None:
 Not collected at all (a skipped test fails in CI, see conftest.py): there is no old tree there.pkg = f"/cnr/api/v1/packages/b{RUN}/app"
 Not collected at all (a skipped test fails in CI, see conftest.py): there is no old tree there.pair.run(push(pkg, BLOBS["kpm"]))
 Not collected at all (a skipped test fails in CI, see conftest.py): there is no old tree there.present = sha(BLOBS["kpm"])
 Not collected at all (a skipped test fails in CI, see conftest.py): there is no old tree there.for digest in (present, "b" * 64, "xyz", "a" * 63, "A" * 64, "g" * 64, "sha256:" + present):
 Not collected at all (a skipped test fails in CI, see conftest.py): there is no old tree there.    for suffix in ("", "/", "/json", "/json/", "?format=json"):
 Not collected at all (a skipped test fails in CI, see conftest.py): there is no old tree there.        pair.run(Step("GET", f"{pkg}/blobs/sha256/{digest}{suffix}"))
 Not collected at all (a skipped test fails in CI, see conftest.py): there is no old tree there.        pair.run(Step("GET", f"/cnr/api/v1/packages/b{RUN}/missing/blobs/sha256/{digest}{suffix}"))
 Not collected at all (a skipped test fails in CI, see conftest.py): there is no old tree there.check(pair)


# -- what the registry refuses --------------------------------------------------------------------------


def _delete_blob(server: Server, repo: str, digest: str) -> None:
 Not collected at all (a skipped test fails in CI, see conftest.py): there is no old tree there.req = urllib.request.Request(f"{server.registry.url}/v2/{repo}/blobs/sha256:{digest}", method="DELETE")
 Not collected at all (a skipped test fails in CI, see conftest.py): there is no old tree there.urllib.request.urlopen(req).close()


def test_a_release_whose_blob_is_gone(pair: Pair) -> None:
 Not collected at all (a skipped test fails in CI, see conftest.py): there is no old tree there."""NotFound from the blob read of a pull: package-not-found, naming the blob as before."""
 Not collected at all (a skipped test fails in CI, see conftest.py): there is no old tree there.repo = f"g{RUN}/app"
 Not collected at all (a skipped test fails in CI, see conftest.py): there is no old tree there.pkg = f"/cnr/api/v1/packages/{repo}"
 Not collected at all (a skipped test fails in CI, see conftest.py): there is no old tree there.pair.run(push(pkg, BLOBS["kpm3"]))
 Not collected at all (a skipped test fails in CI, see conftest.py): there is no old tree there.for server in (pair.old, pair.new):
 Not collected at all (a skipped test fails in CI, see conftest.py): there is no old tree there.    _delete_blob(server, server.repo(repo), sha(BLOBS["kpm3"]))
 Not collected at all (a skipped test fails in CI, see conftest.py): there is no old tree there.for suffix in ("/1.0.0/kpm/pull", "/1.0.0/kpm/pull/json", "/1.0.0/-/pull", "/blobs/sha256/" + sha(BLOBS["kpm3"])):
 Not collected at all (a skipped test fails in CI, see conftest.py): there is no old tree there.    pair.run(Step("GET", pkg + suffix))
 Not collected at all (a skipped test fails in CI, see conftest.py): there is no old tree there.check(pair)


def test_a_registry_that_refuses_deletes(nodelete: Pair) -> None:
 Not collected at all (a skipped test fails in CI, see conftest.py): there is no old tree there.repo = f"n{RUN}/app"
 Not collected at all (a skipped test fails in CI, see conftest.py): there is no old tree there.pkg = f"/cnr/api/v1/packages/{repo}"
 Not collected at all (a skipped test fails in CI, see conftest.py): there is no old tree there.nodelete.run(push(pkg, BLOBS["chart"], "1.0.0", "helm"))
 Not collected at all (a skipped test fails in CI, see conftest.py): there is no old tree there.nodelete.run(push(pkg, BLOBS["kpm"], "1.0.0", "kpm"))
 Not collected at all (a skipped test fails in CI, see conftest.py): there is no old tree there.nodelete.run(push(pkg, BLOBS["rel2.0.0"], "2.0.0", "kpm"))
 Not collected at all (a skipped test fails in CI, see conftest.py): there is no old tree there.steps = [
 Not collected at all (a skipped test fails in CI, see conftest.py): there is no old tree there.    Step("POST", pkg + "/channels/stable/1.0.0"),
 Not collected at all (a skipped test fails in CI, see conftest.py): there is no old tree there.    Step("POST", pkg + "/channels/stable/2.0.0"),
 Not collected at all (a skipped test fails in CI, see conftest.py): there is no old tree there.    Step("POST", pkg + "/channels/one/2.0.0"),
 Not collected at all (a skipped test fails in CI, see conftest.py): there is no old tree there.    Step("DELETE", pkg + "/2.0.0/kpm"),  # a single manifest: refused
 Not collected at all (a skipped test fails in CI, see conftest.py): there is no old tree there.    Step("DELETE", pkg + "/1.0.0/kpm"),  # an index entry: a rewrite, no delete
 Not collected at all (a skipped test fails in CI, see conftest.py): there is no old tree there.    Step("GET", pkg + "/1.0.0"),
 Not collected at all (a skipped test fails in CI, see conftest.py): there is no old tree there.    Step("DELETE", pkg + "/channels/stable/2.0.0"),  # a rewrite
 Not collected at all (a skipped test fails in CI, see conftest.py): there is no old tree there.    Step("DELETE", pkg + "/channels/stable/1.0.0"),  # the last one: a delete, refused
 Not collected at all (a skipped test fails in CI, see conftest.py): there is no old tree there.    Step("DELETE", pkg + "/channels/one"),  # refused
 Not collected at all (a skipped test fails in CI, see conftest.py): there is no old tree there.    Step("DELETE", pkg + "/channels/stable"),  # refused
 Not collected at all (a skipped test fails in CI, see conftest.py): there is no old tree there.    Step("GET", pkg + "/channels"),
 Not collected at all (a skipped test fails in CI, see conftest.py): there is no old tree there.]
 Not collected at all (a skipped test fails in CI, see conftest.py): there is no old tree there.nodelete.run_all(steps)
 Not collected at all (a skipped test fails in CI, see conftest.py): there is no old tree there.check(nodelete)


@pytest.mark.xfail(strict=True, reason="known difference: when E11's release is gone and dropping it from a channel "
 Not collected at all (a skipped test fails in CI, see conftest.py): there is no old tree there.               "deletes that channel, a refusal names the release since the split; before, the channel")
def test_a_channel_naming_a_release_that_is_gone_on_a_registry_that_refuses_deletes(nodelete: Pair) -> None:
 Not collected at all (a skipped test fails in CI, see conftest.py): there is no old tree there."""A delete of a missing release drops it from channels: that channel delete is refused."""
 Not collected at all (a skipped test fails in CI, see conftest.py): there is no old tree there.repo = f"m{RUN}/app"
 Not collected at all (a skipped test fails in CI, see conftest.py): there is no old tree there.pkg = f"/cnr/api/v1/packages/{repo}"
 Not collected at all (a skipped test fails in CI, see conftest.py): there is no old tree there.nodelete.run(push(pkg, BLOBS["rel1.0.0"], "1.0.0"))
 Not collected at all (a skipped test fails in CI, see conftest.py): there is no old tree there.for server in (nodelete.old, nodelete.new):
 Not collected at all (a skipped test fails in CI, see conftest.py): there is no old tree there.    url, where = server.registry.url, server.repo(repo)
 Not collected at all (a skipped test fails in CI, see conftest.py): there is no old tree there.    config = json.dumps({"current": "9.9.9", "name": "ghost", "releases": ["9.9.9"]},
 Not collected at all (a skipped test fails in CI, see conftest.py): there is no old tree there.                        separators=(",", ":"), sort_keys=True).encode()
 Not collected at all (a skipped test fails in CI, see conftest.py): there is no old tree there.    helpers.put_blob(url, where, config)
 Not collected at all (a skipped test fails in CI, see conftest.py): there is no old tree there.    helpers.put_blob(url, where, b"{}")
 Not collected at all (a skipped test fails in CI, see conftest.py): there is no old tree there.    helpers.put_manifest(url, where, "channel-ghost", {
 Not collected at all (a skipped test fails in CI, see conftest.py): there is no old tree there.        "schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
 Not collected at all (a skipped test fails in CI, see conftest.py): there is no old tree there.        "artifactType": layout.CHANNEL_ARTIFACT,
 Not collected at all (a skipped test fails in CI, see conftest.py): there is no old tree there.        "config": helpers.descriptor(layout.CHANNEL_CONFIG, config),
 Not collected at all (a skipped test fails in CI, see conftest.py): there is no old tree there.        "layers": [helpers.descriptor(layout.EMPTY_MEDIA_TYPE, b"{}")]})
 Not collected at all (a skipped test fails in CI, see conftest.py): there is no old tree there.nodelete.run(Step("GET", pkg + "/channels"))
 Not collected at all (a skipped test fails in CI, see conftest.py): there is no old tree there.nodelete.run(Step("DELETE", pkg + "/9.9.9/kpm"))
 Not collected at all (a skipped test fails in CI, see conftest.py): there is no old tree there.check(nodelete)


# -- content other tools wrote, or broke --------------------------------------------------------------------


def _foreign(server: Server, package: str) -> None:
 Not collected at all (a skipped test fails in CI, see conftest.py): there is no old tree there."""Releases and channels written behind cnr-oci's back, some broken."""
 Not collected at all (a skipped test fails in CI, see conftest.py): there is no old tree there.url, repo = server.registry.url, server.repo(package)

 Not collected at all (a skipped test fails in CI, see conftest.py): there is no old tree there.def artifact(tag: str, config: bytes, config_type: str, layer: bytes, layer_type: str,
 Not collected at all (a skipped test fails in CI, see conftest.py): there is no old tree there.             annotations: dict[str, str] | None = None) -> str:
 Not collected at all (a skipped test fails in CI, see conftest.py): there is no old tree there.    helpers.put_blob(url, repo, config)
 Not collected at all (a skipped test fails in CI, see conftest.py): there is no old tree there.    helpers.put_blob(url, repo, layer)
 Not collected at all (a skipped test fails in CI, see conftest.py): there is no old tree there.    doc = {"schemaVersion": 2, "mediaType": layout.OCI_MANIFEST,
 Not collected at all (a skipped test fails in CI, see conftest.py): there is no old tree there.           "config": helpers.descriptor(config_type, config),
 Not collected at all (a skipped test fails in CI, see conftest.py): there is no old tree there.           "layers": [helpers.descriptor(layer_type, layer)]}
 Not collected at all (a skipped test fails in CI, see conftest.py): there is no old tree there.    if annotations:
 Not collected at all (a skipped test fails in CI, see conftest.py): there is no old tree there.        doc["annotations"] = annotations
 Not collected at all (a skipped test fails in CI, see conftest.py): there is no old tree there.    return helpers.put_manifest(url, repo, tag, doc)

 Not collected at all (a skipped test fails in CI, see conftest.py): there is no old tree there.kpm_layer = layout.layer_media_type("kpm")
 Not collected at all (a skipped test fails in CI, see conftest.py): there is no old tree there.artifact("5.0.0", json.dumps({"package": "NOT VALID"}).encode(), layout.CNR_CONFIG, BLOBS["kpm"], kpm_layer)
 Not collected at all (a skipped test fails in CI, see conftest.py): there is no old tree there.artifact("5.1.0", b"not json", layout.CNR_CONFIG, BLOBS["kpm"], kpm_layer)
 Not collected at all (a skipped test fails in CI, see conftest.py): there is no old tree there.artifact("5.2.0", b'{"architecture": "amd64", "os": "linux"}', "application/vnd.oci.image.config.v1+json",
 Not collected at all (a skipped test fails in CI, see conftest.py): there is no old tree there.         b"layer", "application/vnd.oci.image.layer.v1.tar+gzip")
 Not collected at all (a skipped test fails in CI, see conftest.py): there is no old tree there.artifact("5.3.0", b'{"architecture": "arm64", "os": "linux"}', "application/vnd.oci.image.config.v1+json",
 Not collected at all (a skipped test fails in CI, see conftest.py): there is no old tree there.         b"layer2", "application/vnd.oci.image.layer.v1.tar+gzip")
 Not collected at all (a skipped test fails in CI, see conftest.py): there is no old tree there.artifact("5.4.0", b"{}", layout.HELM_CONFIG, BLOBS["chart"], layout.HELM_LAYER,
 Not collected at all (a skipped test fails in CI, see conftest.py): there is no old tree there.         {layout.ANN_METADATA: "not json", layout.ANN_CREATED: "yesterday"})
 Not collected at all (a skipped test fails in CI, see conftest.py): there is no old tree there.artifact("5.5.0", b"{}", layout.HELM_CONFIG, BLOBS["chart"], layout.HELM_LAYER,
 Not collected at all (a skipped test fails in CI, see conftest.py): there is no old tree there.         {layout.ANN_METADATA: '{"a": 1}', layout.ANN_CREATED: "2020-01-02T03:04:05Z"})
 Not collected at all (a skipped test fails in CI, see conftest.py): there is no old tree there.artifact("not-semver", b"{}", layout.HELM_CONFIG, BLOBS["chart"], layout.HELM_LAYER)
 Not collected at all (a skipped test fails in CI, see conftest.py): there is no old tree there.# Another tool tags release 1.0.0's manifest (the same bytes) as latest.
 Not collected at all (a skipped test fails in CI, see conftest.py): there is no old tree there.raw = urllib.request.urlopen(urllib.request.Request(
 Not collected at all (a skipped test fails in CI, see conftest.py): there is no old tree there.    f"{url}/v2/{repo}/manifests/1.0.0", headers={"Accept": layout.OCI_MANIFEST})).read()
 Not collected at all (a skipped test fails in CI, see conftest.py): there is no old tree there.urllib.request.urlopen(urllib.request.Request(f"{url}/v2/{repo}/manifests/latest", data=raw, method="PUT",
 Not collected at all (a skipped test fails in CI, see conftest.py): there is no old tree there.                                              headers={"Content-Type": layout.OCI_MANIFEST})).close()


def _broken_channel(server: Server, package: str) -> None:
 Not collected at all (a skipped test fails in CI, see conftest.py): there is no old tree there.url, repo = server.registry.url, server.repo(package)
 Not collected at all (a skipped test fails in CI, see conftest.py): there is no old tree there.config = b'{"name": 5}'
 Not collected at all (a skipped test fails in CI, see conftest.py): there is no old tree there.helpers.put_blob(url, repo, config)
 Not collected at all (a skipped test fails in CI, see conftest.py): there is no old tree there.helpers.put_blob(url, repo, b"{}")
 Not collected at all (a skipped test fails in CI, see conftest.py): there is no old tree there.helpers.put_manifest(url, repo, "channel-bad", {
 Not collected at all (a skipped test fails in CI, see conftest.py): there is no old tree there.    "schemaVersion": 2, "mediaType": layout.OCI_MANIFEST,
 Not collected at all (a skipped test fails in CI, see conftest.py): there is no old tree there.    "config": helpers.descriptor(layout.CHANNEL_CONFIG, config),
 Not collected at all (a skipped test fails in CI, see conftest.py): there is no old tree there.    "layers": [helpers.descriptor(layout.EMPTY_MEDIA_TYPE, b"{}")]})


def test_foreign_and_broken_content(pair: Pair) -> None:
 Not collected at all (a skipped test fails in CI, see conftest.py): there is no old tree there.package = f"f{RUN}/app"
 Not collected at all (a skipped test fails in CI, see conftest.py): there is no old tree there.pkg = f"/cnr/api/v1/packages/{package}"
 Not collected at all (a skipped test fails in CI, see conftest.py): there is no old tree there.for r in ("1.0.0", "1.1.0"):
 Not collected at all (a skipped test fails in CI, see conftest.py): there is no old tree there.    pair.run(push(pkg, BLOBS["rel" + r], r))
 Not collected at all (a skipped test fails in CI, see conftest.py): there is no old tree there.for server in (pair.old, pair.new):
 Not collected at all (a skipped test fails in CI, see conftest.py): there is no old tree there.    _foreign(server, package)
 Not collected at all (a skipped test fails in CI, see conftest.py): there is no old tree there.pair.run(push(pkg, BLOBS["kpm"], "5.3.0", "kpm"))  # next to an image: an index
 Not collected at all (a skipped test fails in CI, see conftest.py): there is no old tree there.# Several releases are broken: which one a listing names depends on which read fails first.
 Not collected at all (a skipped test fails in CI, see conftest.py): there is no old tree there.steps = [Step("GET", pkg, loose=True), Step("GET", pkg + "?media_type=helm"),
 Not collected at all (a skipped test fails in CI, see conftest.py): there is no old tree there.         Step("GET", f"/cnr/api/v1/packages?namespace=f{RUN}"),
 Not collected at all (a skipped test fails in CI, see conftest.py): there is no old tree there.         Step("GET", "/cnr/api/v1/packages/search?q=" + f"f{RUN}"), Step("GET", pkg + "/channels"),
 Not collected at all (a skipped test fails in CI, see conftest.py): there is no old tree there.         Step("GET", pkg + "/channels/bad")]
 Not collected at all (a skipped test fails in CI, see conftest.py): there is no old tree there.for r in ("1.0.0", "5.0.0", "5.1.0", "5.2.0", "5.3.0", "5.4.0", "5.5.0", "not-semver"):
 Not collected at all (a skipped test fails in CI, see conftest.py): there is no old tree there.    steps += [Step("GET", f"{pkg}/{r}")]
 Not collected at all (a skipped test fails in CI, see conftest.py): there is no old tree there.    for mt in ("kpm", "helm", "-"):
 Not collected at all (a skipped test fails in CI, see conftest.py): there is no old tree there.        steps += [Step("GET", f"{pkg}/{r}/{mt}"), Step("GET", f"{pkg}/{r}/{mt}/pull")]
 Not collected at all (a skipped test fails in CI, see conftest.py): there is no old tree there.steps += [
 Not collected at all (a skipped test fails in CI, see conftest.py): there is no old tree there.    Step("POST", pkg + "/channels/stable/5.2.0"),  # an image only: no package release
 Not collected at all (a skipped test fails in CI, see conftest.py): there is no old tree there.    Step("POST", pkg + "/channels/stable/5.3.0"),
 Not collected at all (a skipped test fails in CI, see conftest.py): there is no old tree there.    Step("POST", pkg + "/channels/stable/5.0.0"),
 Not collected at all (a skipped test fails in CI, see conftest.py): there is no old tree there.    Step("GET", pkg + "/5.3.0/kpm"),
 Not collected at all (a skipped test fails in CI, see conftest.py): there is no old tree there.    Step("DELETE", pkg + "/1.0.0/kpm"),  # also tagged latest: 409
 Not collected at all (a skipped test fails in CI, see conftest.py): there is no old tree there.    Step("DELETE", pkg + "/5.2.0/-"),
 Not collected at all (a skipped test fails in CI, see conftest.py): there is no old tree there.    Step("DELETE", pkg + "/5.3.0/kpm"),  # the image stays
 Not collected at all (a skipped test fails in CI, see conftest.py): there is no old tree there.    Step("GET", pkg + "/5.3.0"),
 Not collected at all (a skipped test fails in CI, see conftest.py): there is no old tree there.    Step("DELETE", pkg + "/5.0.0/kpm"),
 Not collected at all (a skipped test fails in CI, see conftest.py): there is no old tree there.]
 Not collected at all (a skipped test fails in CI, see conftest.py): there is no old tree there.pair.run_all(steps)
 Not collected at all (a skipped test fails in CI, see conftest.py): there is no old tree there.for server in (pair.old, pair.new):
 Not collected at all (a skipped test fails in CI, see conftest.py): there is no old tree there.    _broken_channel(server, package)
 Not collected at all (a skipped test fails in CI, see conftest.py): there is no old tree there.pair.run(push(pkg, BLOBS["kpm2"], "9.0.0"))  # a write through cnr-oci: no cached read predates channel-bad
 Not collected at all (a skipped test fails in CI, see conftest.py): there is no old tree there.pair.run_all([
 Not collected at all (a skipped test fails in CI, see conftest.py): there is no old tree there.    Step("GET", pkg + "/channels"), Step("GET", pkg + "/channels/bad"), Step("GET", pkg + "/1.1.0/kpm"),
 Not collected at all (a skipped test fails in CI, see conftest.py): there is no old tree there.    Step("DELETE", pkg + "/1.1.0/kpm"),  # the channels are read after the delete: channel-bad is broken
 Not collected at all (a skipped test fails in CI, see conftest.py): there is no old tree there.    Step("GET", pkg, loose=True),
 Not collected at all (a skipped test fails in CI, see conftest.py): there is no old tree there.    Step("DELETE", pkg + "/channels/bad"),
 Not collected at all (a skipped test fails in CI, see conftest.py): there is no old tree there.    Step("GET", pkg + "/channels"),
 Not collected at all (a skipped test fails in CI, see conftest.py): there is no old tree there.])
 Not collected at all (a skipped test fails in CI, see conftest.py): there is no old tree there.check(pair)


# -- identities: a token registry with per-repository rights, an htpasswd registry ----------------------------

TOKEN_USERS = {"alice": "alice-pw-1", "admin": "admin-pw-2", "carol": "carol-pw-3", "nocat": "nocat-pw-4"}
TOKEN_ACL = {
 Not collected at all (a skipped test fails in CI, see conftest.py): there is no old tree there."alice": {"a*/*": {"pull", "push"}, "b*/*": {"pull"}},
 Not collected at all (a skipped test fails in CI, see conftest.py): there is no old tree there."admin": {"*": {"pull", "push", "delete"}},
 Not collected at all (a skipped test fails in CI, see conftest.py): there is no old tree there."carol": {},
 Not collected at all (a skipped test fails in CI, see conftest.py): there is no old tree there."nocat": {"*": {"pull", "push", "delete"}},
}


def basic(user: str, password: str) -> dict[str, str]:
 Not collected at all (a skipped test fails in CI, see conftest.py): there is no old tree there.return {"Authorization": "Basic " + b64(f"{user}:{password}".encode())}


@pytest.fixture(scope="module")
def tokenpair(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pair]:
 Not collected at all (a skipped test fails in CI, see conftest.py): there is no old tree there.from tests.certs import self_signed
 Not collected at all (a skipped test fails in CI, see conftest.py): there is no old tree there.from tests.differential import ThreadedApp
 Not collected at all (a skipped test fails in CI, see conftest.py): there is no old tree there.from tests.token_server import TokenServer, token_config

 Not collected at all (a skipped test fails in CI, see conftest.py): there is no old tree there.class NoCatalogFor(TokenServer):
 Not collected at all (a skipped test fails in CI, see conftest.py): there is no old tree there.    """nocat may do anything but list the catalog."""

 Not collected at all (a skipped test fails in CI, see conftest.py): there is no old tree there.    def _granted(self, user: str | None, scope: str) -> dict[str, object] | None:
 Not collected at all (a skipped test fails in CI, see conftest.py): there is no old tree there.        return None if user == "nocat" and scope.startswith("registry:") else super()._granted(user, scope)

 Not collected at all (a skipped test fails in CI, see conftest.py): there is no old tree there.root = tmp_path_factory.mktemp("diff-token")
 Not collected at all (a skipped test fails in CI, see conftest.py): there is no old tree there.cert_path, _, key, cert = self_signed(root / "certs", "token-signer")
 Not collected at all (a skipped test fails in CI, see conftest.py): there is no old tree there.from cnr_oci.embedded import free_port

 Not collected at all (a skipped test fails in CI, see conftest.py): there is no old tree there.port = free_port()
 Not collected at all (a skipped test fails in CI, see conftest.py): there is no old tree there.tokens = ThreadedApp(NoCatalogFor(key, cert, TOKEN_USERS, TOKEN_ACL).app(), port)
 Not collected at all (a skipped test fails in CI, see conftest.py): there is no old tree there.try:
 Not collected at all (a skipped test fails in CI, see conftest.py): there is no old tree there.    yield from _pair(root, "token", extra_config=token_config(f"http://127.0.0.1:{port}/token", str(cert_path)))
 Not collected at all (a skipped test fails in CI, see conftest.py): there is no old tree there.finally:
 Not collected at all (a skipped test fails in CI, see conftest.py): there is no old tree there.    tokens.stop()


def test_token_registry_rights(tokenpair: Pair) -> None:
 Not collected at all (a skipped test fails in CI, see conftest.py): there is no old tree there.a, b, c = f"a{RUN}/x", f"b{RUN}/y", f"c{RUN}/z"
 Not collected at all (a skipped test fails in CI, see conftest.py): there is no old tree there.api = "/cnr/api/v1/packages"
 Not collected at all (a skipped test fails in CI, see conftest.py): there is no old tree there.admin = basic("admin", TOKEN_USERS["admin"])
 Not collected at all (a skipped test fails in CI, see conftest.py): there is no old tree there.for repo in (a, b, c):
 Not collected at all (a skipped test fails in CI, see conftest.py): there is no old tree there.    tokenpair.run(Step.json("POST", f"{api}/{repo}", {"blob": b64(BLOBS["kpm"]), "release": "1.0.0",
 Not collected at all (a skipped test fails in CI, see conftest.py): there is no old tree there.                                                      "media_type": "kpm"}, headers=admin))
 Not collected at all (a skipped test fails in CI, see conftest.py): there is no old tree there.    tokenpair.run(Step("POST", f"{api}/{repo}/channels/stable/1.0.0", headers=admin))
 Not collected at all (a skipped test fails in CI, see conftest.py): there is no old tree there.logins = {}
 Not collected at all (a skipped test fails in CI, see conftest.py): there is no old tree there.for user in ("alice", "carol", "nocat"):
 Not collected at all (a skipped test fails in CI, see conftest.py): there is no old tree there.    tokenpair.run(Step.json("POST", "/cnr/api/v1/users/login", {"user": {"username": user, "password": "wrong"}}))
 Not collected at all (a skipped test fails in CI, see conftest.py): there is no old tree there.    old, new = tokenpair.run(Step.json("POST", "/cnr/api/v1/users/login",
 Not collected at all (a skipped test fails in CI, see conftest.py): there is no old tree there.                                       {"user": {"username": user, "password": TOKEN_USERS[user]}}))
 Not collected at all (a skipped test fails in CI, see conftest.py): there is no old tree there.    logins[user] = (json.loads(old.body)["token"], json.loads(new.body)["token"])
 Not collected at all (a skipped test fails in CI, see conftest.py): there is no old tree there.identities: dict[str, dict[str, str]] = {
 Not collected at all (a skipped test fails in CI, see conftest.py): there is no old tree there.    "anonymous": {}, "alice": basic("alice", TOKEN_USERS["alice"]), "alice-wrong": basic("alice", "nope"),
 Not collected at all (a skipped test fails in CI, see conftest.py): there is no old tree there.    "carol": basic("carol", TOKEN_USERS["carol"]), "nocat": basic("nocat", TOKEN_USERS["nocat"]),
 Not collected at all (a skipped test fails in CI, see conftest.py): there is no old tree there.    "forged": {"Authorization": "forged.token.value"},
 Not collected at all (a skipped test fails in CI, see conftest.py): there is no old tree there.}
 Not collected at all (a skipped test fails in CI, see conftest.py): there is no old tree there.for who, headers in identities.items():
 Not collected at all (a skipped test fails in CI, see conftest.py): there is no old tree there.    for repo in (a, b, c):
 Not collected at all (a skipped test fails in CI, see conftest.py): there is no old tree there.        for path in ("", "/1.0.0", "/1.0.0/kpm", "/1.0.0/kpm/pull", "/channels", "/channels/stable",
 Not collected at all (a skipped test fails in CI, see conftest.py): there is no old tree there.                     "/blobs/sha256/" + sha(BLOBS["kpm"]), "/blobs/sha256/" + "b" * 64):
 Not collected at all (a skipped test fails in CI, see conftest.py): there is no old tree there.            tokenpair.run(Step("GET", f"{api}/{repo}{path}", headers=headers, note=who))
 Not collected at all (a skipped test fails in CI, see conftest.py): there is no old tree there.    for q in ("", f"?namespace=a{RUN}", f"?query={RUN}"):
 Not collected at all (a skipped test fails in CI, see conftest.py): there is no old tree there.        tokenpair.run(Step("GET", api + q, headers=headers, note=who))
 Not collected at all (a skipped test fails in CI, see conftest.py): there is no old tree there.    tokenpair.run(Step("GET", f"{api}/search?q={RUN}", headers=headers, note=who))
 Not collected at all (a skipped test fails in CI, see conftest.py): there is no old tree there.# What each identity is told, beyond "the same as before": a few answers pinned.
 Not collected at all (a skipped test fails in CI, see conftest.py): there is no old tree there._, listed = tokenpair.run(Step("GET", api, headers=identities["nocat"]))
 Not collected at all (a skipped test fails in CI, see conftest.py): there is no old tree there.assert listed.status == 403 and json.loads(listed.body)["details"] == {"scopes": ["catalog"]}
 Not collected at all (a skipped test fails in CI, see conftest.py): there is no old tree there._, listed = tokenpair.run(Step("GET", f"{api}/search?q={RUN}", headers=identities["alice"]))
 Not collected at all (a skipped test fails in CI, see conftest.py): there is no old tree there.assert json.loads(listed.body) == [a, b]
 Not collected at all (a skipped test fails in CI, see conftest.py): there is no old tree there.alice = identities["alice"]
 Not collected at all (a skipped test fails in CI, see conftest.py): there is no old tree there._, refused = tokenpair.run(Step("DELETE", f"{api}/{a}/1.0.0/kpm", headers=alice))
 Not collected at all (a skipped test fails in CI, see conftest.py): there is no old tree there.assert refused.status == 403 and json.loads(refused.body)["details"] == {"package": a, "scopes": ["delete"]}
 Not collected at all (a skipped test fails in CI, see conftest.py): there is no old tree there.for who, headers in (("alice", alice), ("carol", identities["carol"]), ("anonymous", {})):
 Not collected at all (a skipped test fails in CI, see conftest.py): there is no old tree there.    for repo in (a, b):
 Not collected at all (a skipped test fails in CI, see conftest.py): there is no old tree there.        tokenpair.run(Step.json("POST", f"{api}/{repo}", {"blob": b64(BLOBS["kpm2"]), "release": "2.0.0",
 Not collected at all (a skipped test fails in CI, see conftest.py): there is no old tree there.                                                          "media_type": "kpm"}, headers=headers, note=who))
 Not collected at all (a skipped test fails in CI, see conftest.py): there is no old tree there.        tokenpair.run(Step("POST", f"{api}/{repo}/channels/beta/1.0.0", headers=headers, note=who))
 Not collected at all (a skipped test fails in CI, see conftest.py): there is no old tree there.        tokenpair.run(Step("DELETE", f"{api}/{repo}/channels/stable/1.0.0", headers=headers, note=who))
 Not collected at all (a skipped test fails in CI, see conftest.py): there is no old tree there.        tokenpair.run(Step("DELETE", f"{api}/{repo}/channels/stable", headers=headers, note=who))
 Not collected at all (a skipped test fails in CI, see conftest.py): there is no old tree there.        tokenpair.run(Step("DELETE", f"{api}/{repo}/1.0.0/kpm", headers=headers, note=who))
 Not collected at all (a skipped test fails in CI, see conftest.py): there is no old tree there.# Each server's login token acts as the user it names.
 Not collected at all (a skipped test fails in CI, see conftest.py): there is no old tree there.for user, (old_token, new_token) in logins.items():
 Not collected at all (a skipped test fails in CI, see conftest.py): there is no old tree there.    split = ({"Authorization": old_token}, {"Authorization": new_token})
 Not collected at all (a skipped test fails in CI, see conftest.py): there is no old tree there.    for repo in (a, b, c):
 Not collected at all (a skipped test fails in CI, see conftest.py): there is no old tree there.        tokenpair.run(Step("GET", f"{api}/{repo}/1.0.0/kpm/pull", split=split, note=user + " token"))
 Not collected at all (a skipped test fails in CI, see conftest.py): there is no old tree there.        tokenpair.run(Step("DELETE", f"{api}/{repo}/channels/stable", split=split, note=user + " token"))
 Not collected at all (a skipped test fails in CI, see conftest.py): there is no old tree there.    tokenpair.run(Step("GET", api, split=split, note=user + " token"))
 Not collected at all (a skipped test fails in CI, see conftest.py): there is no old tree there.tokenpair.run(Step("DELETE", f"{api}/{c}/1.0.0/kpm", headers=admin))
 Not collected at all (a skipped test fails in CI, see conftest.py): there is no old tree there.check(tokenpair)


HT_USERS = {"alice": "alice-pw-1", "bob": "bob-pw-2"}


@pytest.fixture(scope="module")
def htpair(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pair]:
 Not collected at all (a skipped test fails in CI, see conftest.py): there is no old tree there."""An htpasswd registry: every user may do anything, so caches are per identity but show the same."""
 Not collected at all (a skipped test fails in CI, see conftest.py): there is no old tree there.import bcrypt

 Not collected at all (a skipped test fails in CI, see conftest.py): there is no old tree there.root = tmp_path_factory.mktemp("diff-ht")
 Not collected at all (a skipped test fails in CI, see conftest.py): there is no old tree there.lines = [f"{u}:{bcrypt.hashpw(p.encode(), bcrypt.gensalt(rounds=4)).decode()}" for u, p in HT_USERS.items()]
 Not collected at all (a skipped test fails in CI, see conftest.py): there is no old tree there.(root / "htpasswd").write_text("\n".join(lines) + "\n")
 Not collected at all (a skipped test fails in CI, see conftest.py): there is no old tree there.# bob is also cnr-oci's own (service) user, standing in for callers without credentials on reads.
 Not collected at all (a skipped test fails in CI, see conftest.py): there is no old tree there.auth = f"auth:\n  htpasswd:\n    realm: test\n    path: {root / 'htpasswd'}\n"
 Not collected at all (a skipped test fails in CI, see conftest.py): there is no old tree there.yield from _pair(root, "ht", "--registry-username", "bob", "--registry-password", HT_USERS["bob"],
 Not collected at all (a skipped test fails in CI, see conftest.py): there is no old tree there.                 "--anonymous-read", extra_config=auth)


def test_a_write_by_one_identity_is_seen_at_once_by_another_on_every_route(htpair: Pair) -> None:
 Not collected at all (a skipped test fails in CI, see conftest.py): there is no old tree there."""Caches are per identity (default TTL): bob's writes, through either mount, reach alice's next reads."""
 Not collected at all (a skipped test fails in CI, see conftest.py): there is no old tree there.alice, bob = basic("alice", HT_USERS["alice"]), basic("bob", HT_USERS["bob"])
 Not collected at all (a skipped test fails in CI, see conftest.py): there is no old tree there.ns = f"w{RUN}"
 Not collected at all (a skipped test fails in CI, see conftest.py): there is no old tree there.cnr, root = f"/cnr/api/v1/packages/{ns}/app", f"/api/v1/packages/{ns}/app"

 Not collected at all (a skipped test fails in CI, see conftest.py): there is no old tree there.def reads(note: str) -> list[tuple[int, bytes]]:
 Not collected at all (a skipped test fails in CI, see conftest.py): there is no old tree there.    out = []
 Not collected at all (a skipped test fails in CI, see conftest.py): there is no old tree there.    for path in (f"/cnr/api/v1/packages?namespace={ns}", f"/api/v1/packages/search?q={ns}", cnr, cnr + "/1.1.0",
 Not collected at all (a skipped test fails in CI, see conftest.py): there is no old tree there.                 cnr + "/1.1.0/kpm", cnr + "/default/kpm/pull", cnr + "/channels", cnr + "/channels/stable",
 Not collected at all (a skipped test fails in CI, see conftest.py): there is no old tree there.                 cnr + "/1.0.0/kpm", root + "/default/kpm/pull/json"):
 Not collected at all (a skipped test fails in CI, see conftest.py): there is no old tree there.        _, b = htpair.run(Step("GET", path, headers=alice, note=note))
 Not collected at all (a skipped test fails in CI, see conftest.py): there is no old tree there.        out.append((b.status, b.body))
 Not collected at all (a skipped test fails in CI, see conftest.py): there is no old tree there.    return out

 Not collected at all (a skipped test fails in CI, see conftest.py): there is no old tree there.htpair.run(push(cnr, BLOBS["rel1.0.0"], "1.0.0", headers=bob))
 Not collected at all (a skipped test fails in CI, see conftest.py): there is no old tree there.before = reads("alice, cached")
 Not collected at all (a skipped test fails in CI, see conftest.py): there is no old tree there.htpair.run(push(root, BLOBS["rel1.1.0"], "1.1.0", headers=bob))
 Not collected at all (a skipped test fails in CI, see conftest.py): there is no old tree there.after_push = reads("after bob's push")
 Not collected at all (a skipped test fails in CI, see conftest.py): there is no old tree there.assert after_push[1][0] == 200 and after_push[3][0] == 200 and after_push[5] == (200, BLOBS["rel1.1.0"])
 Not collected at all (a skipped test fails in CI, see conftest.py): there is no old tree there.assert json.loads(after_push[0][1])[0]["releases"] == ["1.1.0", "1.0.0"], after_push[0]
 Not collected at all (a skipped test fails in CI, see conftest.py): there is no old tree there.htpair.run(Step("POST", root + "/channels/stable/1.1.0", headers=bob))
 Not collected at all (a skipped test fails in CI, see conftest.py): there is no old tree there.after_channel = reads("after bob's channel")
 Not collected at all (a skipped test fails in CI, see conftest.py): there is no old tree there.assert json.loads(after_channel[7][1])["current"] == "1.1.0"
 Not collected at all (a skipped test fails in CI, see conftest.py): there is no old tree there.assert json.loads(after_channel[4][1])["channels"] == ["stable"]
 Not collected at all (a skipped test fails in CI, see conftest.py): there is no old tree there.htpair.run(Step("DELETE", cnr + "/1.1.0/kpm", headers=bob))
 Not collected at all (a skipped test fails in CI, see conftest.py): there is no old tree there.after_delete = reads("after bob's delete")
 Not collected at all (a skipped test fails in CI, see conftest.py): there is no old tree there.assert after_delete[3][0] == 404 and after_delete[5] == (200, BLOBS["rel1.0.0"])
 Not collected at all (a skipped test fails in CI, see conftest.py): there is no old tree there.assert after_delete[7][0] == 404, after_delete[7]  # the release left the channel, the channel went
 Not collected at all (a skipped test fails in CI, see conftest.py): there is no old tree there.assert json.loads(after_delete[0][1])[0]["releases"] == ["1.0.0"]
 Not collected at all (a skipped test fails in CI, see conftest.py): there is no old tree there.del before
 Not collected at all (a skipped test fails in CI, see conftest.py): there is no old tree there.# A new package appears at once in the listing and search alice has cached.
 Not collected at all (a skipped test fails in CI, see conftest.py): there is no old tree there.htpair.run(push(f"/cnr/api/v1/packages/{ns}/app2", BLOBS["kpm"], headers=bob))
 Not collected at all (a skipped test fails in CI, see conftest.py): there is no old tree there._, listed = htpair.run(Step("GET", f"/cnr/api/v1/packages?namespace={ns}", headers=alice))
 Not collected at all (a skipped test fails in CI, see conftest.py): there is no old tree there.assert [p["name"] for p in json.loads(listed.body)] == [f"{ns}/app", f"{ns}/app2"]
 Not collected at all (a skipped test fails in CI, see conftest.py): there is no old tree there._, found = htpair.run(Step("GET", f"/api/v1/packages/search?q={ns}", headers=alice))
 Not collected at all (a skipped test fails in CI, see conftest.py): there is no old tree there.assert json.loads(found.body) == [f"{ns}/app", f"{ns}/app2"]
 Not collected at all (a skipped test fails in CI, see conftest.py): there is no old tree there.for who in (alice, bob, {}, basic("alice", "wrong"), basic("nobody", "x")):
 Not collected at all (a skipped test fails in CI, see conftest.py): there is no old tree there.    htpair.run(Step("GET", cnr + "/1.0.0/kpm/pull", headers=who))
 Not collected at all (a skipped test fails in CI, see conftest.py): there is no old tree there.    htpair.run(Step("GET", f"/api/v1/packages/search?q={ns}", headers=who))
 Not collected at all (a skipped test fails in CI, see conftest.py): there is no old tree there.    htpair.run(Step("GET", cnr, headers=who))
 Not collected at all (a skipped test fails in CI, see conftest.py): there is no old tree there.    htpair.run(Step("GET", "/cnr/api/v1/packages", headers=who))
 Not collected at all (a skipped test fails in CI, see conftest.py): there is no old tree there.    htpair.run(push(cnr, BLOBS["kpm"], "3.0.0", headers=who))
 Not collected at all (a skipped test fails in CI, see conftest.py): there is no old tree there.    htpair.run(Step("DELETE", cnr + "/3.0.0/kpm", headers=who))
 Not collected at all (a skipped test fails in CI, see conftest.py): there is no old tree there.    htpair.run(Step.json("POST", "/cnr/api/v1/users/login",
 Not collected at all (a skipped test fails in CI, see conftest.py): there is no old tree there.                         {"user": {"username": "alice", "password": who.get("Authorization", "")[-4:]}}))
 Not collected at all (a skipped test fails in CI, see conftest.py): there is no old tree there.check(htpair)


@contextlib.contextmanager
def read_only(pair: Pair) -> Iterator[None]:
 Not collected at all (a skipped test fails in CI, see conftest.py): there is no old tree there."""Both registries restarted in distribution's read-only mode (405 to every write), then back."""
 Not collected at all (a skipped test fails in CI, see conftest.py): there is no old tree there.from cnr_oci import embedded

 Not collected at all (a skipped test fails in CI, see conftest.py): there is no old tree there.writable = embedded.CONFIG
 Not collected at all (a skipped test fails in CI, see conftest.py): there is no old tree there.embedded.CONFIG = writable.replace("  maintenance:\n", "  maintenance:\n    readonly:\n      enabled: true\n")
 Not collected at all (a skipped test fails in CI, see conftest.py): there is no old tree there.try:
 Not collected at all (a skipped test fails in CI, see conftest.py): there is no old tree there.    for server in (pair.old, pair.new):
 Not collected at all (a skipped test fails in CI, see conftest.py): there is no old tree there.        server.registry.restart()
 Not collected at all (a skipped test fails in CI, see conftest.py): there is no old tree there.    yield
 Not collected at all (a skipped test fails in CI, see conftest.py): there is no old tree there.finally:
 Not collected at all (a skipped test fails in CI, see conftest.py): there is no old tree there.    embedded.CONFIG = writable
 Not collected at all (a skipped test fails in CI, see conftest.py): there is no old tree there.    for server in (pair.old, pair.new):
 Not collected at all (a skipped test fails in CI, see conftest.py): there is no old tree there.        server.registry.restart()


def _read_only_package(pair: Pair, name: str) -> str:
 Not collected at all (a skipped test fails in CI, see conftest.py): there is no old tree there.pkg = f"/cnr/api/v1/packages/{name}{RUN}/app"
 Not collected at all (a skipped test fails in CI, see conftest.py): there is no old tree there.pair.run(push(pkg, BLOBS["chart"], "1.0.0", "helm"))
 Not collected at all (a skipped test fails in CI, see conftest.py): there is no old tree there.pair.run(push(pkg, BLOBS["kpm"], "1.0.0", "kpm"))
 Not collected at all (a skipped test fails in CI, see conftest.py): there is no old tree there.pair.run(push(pkg, BLOBS["rel2.0.0"], "2.0.0", "kpm"))
 Not collected at all (a skipped test fails in CI, see conftest.py): there is no old tree there.for r in ("1.0.0", "2.0.0"):
 Not collected at all (a skipped test fails in CI, see conftest.py): there is no old tree there.    pair.run(Step("POST", f"{pkg}/channels/stable/{r}"))
 Not collected at all (a skipped test fails in CI, see conftest.py): there is no old tree there.pair.run(Step("POST", f"{pkg}/channels/one/2.0.0"))
 Not collected at all (a skipped test fails in CI, see conftest.py): there is no old tree there.return pkg


def test_a_read_only_registry(pair: Pair) -> None:
 Not collected at all (a skipped test fails in CI, see conftest.py): there is no old tree there."""distribution in read-only mode answers 405 to every write: cnr-oci passes the refusal on."""
 Not collected at all (a skipped test fails in CI, see conftest.py): there is no old tree there.pkg = _read_only_package(pair, "r")
 Not collected at all (a skipped test fails in CI, see conftest.py): there is no old tree there.with read_only(pair):
 Not collected at all (a skipped test fails in CI, see conftest.py): there is no old tree there.    pair.run_all([
 Not collected at all (a skipped test fails in CI, see conftest.py): there is no old tree there.        Step("GET", pkg), Step("GET", pkg + "/channels"),
 Not collected at all (a skipped test fails in CI, see conftest.py): there is no old tree there.        push(pkg, BLOBS["rel1.1.0"], "1.1.0"),
 Not collected at all (a skipped test fails in CI, see conftest.py): there is no old tree there.        Step("POST", pkg + "/channels/stable/1.0.0"),
 Not collected at all (a skipped test fails in CI, see conftest.py): there is no old tree there.        Step("DELETE", pkg + "/channels/one/2.0.0"),  # the last: a delete, refused
 Not collected at all (a skipped test fails in CI, see conftest.py): there is no old tree there.        Step("DELETE", pkg + "/channels/one"),
 Not collected at all (a skipped test fails in CI, see conftest.py): there is no old tree there.        Step("DELETE", pkg + "/1.0.0/kpm"),  # an index entry: a rewrite of the release tag, refused
 Not collected at all (a skipped test fails in CI, see conftest.py): there is no old tree there.        Step("DELETE", pkg + "/2.0.0/kpm"),
 Not collected at all (a skipped test fails in CI, see conftest.py): there is no old tree there.        Step("GET", pkg + "/1.0.0"), Step("GET", pkg + "/channels"),
 Not collected at all (a skipped test fails in CI, see conftest.py): there is no old tree there.    ])
 Not collected at all (a skipped test fails in CI, see conftest.py): there is no old tree there.check(pair)


@pytest.mark.xfail(strict=True, reason="known difference: a refused channel rewrite (PUT) on a delete route reads "
 Not collected at all (a skipped test fails in CI, see conftest.py): there is no old tree there.               "'the registry refuses deletion' with details since the split; before, 'registry: PUT ...' and {}")
def test_a_channel_rewrite_refused_by_a_read_only_registry(pair: Pair) -> None:
 Not collected at all (a skipped test fails in CI, see conftest.py): there is no old tree there.pkg = _read_only_package(pair, "q")
 Not collected at all (a skipped test fails in CI, see conftest.py): there is no old tree there.with read_only(pair):
 Not collected at all (a skipped test fails in CI, see conftest.py): there is no old tree there.    pair.run(Step("DELETE", pkg + "/channels/stable/2.0.0"))  # not the last: a rewrite (PUT), refused
 Not collected at all (a skipped test fails in CI, see conftest.py): there is no old tree there.check(pair)


# -- metrics ------------------------------------------------------------------------------------------------

LABELS = re.compile(r"^(cnr_oci_request_seconds_count|cnr_oci_upstream_requests_total)\{(.*)\} ", re.M)


@pytest.mark.parametrize("pair", ["defaults"], indirect=True)
def test_a_registry_that_is_down(pair: Pair) -> None:
 Not collected at all (a skipped test fails in CI, see conftest.py): there is no old tree there."""Each request retries for a while (about 2 s): a few, on one variant."""
 Not collected at all (a skipped test fails in CI, see conftest.py): there is no old tree there.pkg = f"/cnr/api/v1/packages/u{RUN}/app"
 Not collected at all (a skipped test fails in CI, see conftest.py): there is no old tree there.pair.run(push(pkg, BLOBS["kpm"]))
 Not collected at all (a skipped test fails in CI, see conftest.py): there is no old tree there.for server in (pair.old, pair.new):
 Not collected at all (a skipped test fails in CI, see conftest.py): there is no old tree there.    server.registry.stop()
 Not collected at all (a skipped test fails in CI, see conftest.py): there is no old tree there.try:
 Not collected at all (a skipped test fails in CI, see conftest.py): there is no old tree there.    pair.run_all([Step("GET", pkg + "/1.0.0/kpm/pull"), Step("GET", "/cnr/api/v1/packages"),
 Not collected at all (a skipped test fails in CI, see conftest.py): there is no old tree there.                  Step("GET", "/readyz"), Step("GET", "/healthz"), Step("DELETE", pkg + "/1.0.0/kpm"),
 Not collected at all (a skipped test fails in CI, see conftest.py): there is no old tree there.                  Step.json("POST", "/cnr/api/v1/users/login", {"user": {"username": "a", "password": "b"}})])
 Not collected at all (a skipped test fails in CI, see conftest.py): there is no old tree there.finally:
 Not collected at all (a skipped test fails in CI, see conftest.py): there is no old tree there.    for server in (pair.old, pair.new):
 Not collected at all (a skipped test fails in CI, see conftest.py): there is no old tree there.        server.registry.start()
 Not collected at all (a skipped test fails in CI, see conftest.py): there is no old tree there.pair.run(Step("GET", pkg))
 Not collected at all (a skipped test fails in CI, see conftest.py): there is no old tree there.check(pair)


def test_metrics_label_sets_match_after_the_same_traffic(pair: Pair) -> None:
 Not collected at all (a skipped test fails in CI, see conftest.py): there is no old tree there."""Last in the module: every request above went to both servers."""
 Not collected at all (a skipped test fails in CI, see conftest.py): there is no old tree there.def labels(server: Server) -> set[str]:
 Not collected at all (a skipped test fails in CI, see conftest.py): there is no old tree there.    from tests.differential import call

 Not collected at all (a skipped test fails in CI, see conftest.py): there is no old tree there.    return set(LABELS.findall(call(server, "GET", "/metrics").body.decode()))

 Not collected at all (a skipped test fails in CI, see conftest.py): there is no old tree there.old, new = labels(pair.old), labels(pair.new)
 Not collected at all (a skipped test fails in CI, see conftest.py): there is no old tree there.assert old == new, f"only old: {sorted(old - new)}\nonly new: {sorted(new - old)}"
