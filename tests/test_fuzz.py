"""Property-based fuzzing of every route: random paths, queries and bodies.

No input may cause a 5xx or a crash, every error is in the CNR shape, and the registry
stays consistent: every tag written is a release or a channel that resolves.
"""

from __future__ import annotations

import asyncio
import base64
import http.client
import json
import re
import threading
import urllib.parse

import pytest
from aiohttp import web
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cnr_oci import mapping
from cnr_oci.app import create_app
from cnr_oci.embedded import free_port
from cnr_oci.routes import ROUTES
from cnr_oci.settings import Settings
from tests import helpers
from tests.conftest import TEST_SECRET

NS = "fuzz"


class ServerThread:
    """cnr-oci on its own event loop in a thread, so a synchronous client can fuzz it."""

    def __init__(self, settings_: Settings) -> None:
        self.port = free_port()
        self.settings = settings_
        self.loop = asyncio.new_event_loop()
        self.ready = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.runner = web.AppRunner(create_app(self.settings))
        self.loop.run_until_complete(self.runner.setup())
        self.loop.run_until_complete(web.TCPSite(self.runner, "127.0.0.1", self.port).start())
        self.ready.set()
        self.loop.run_forever()
        self.loop.run_until_complete(self.runner.cleanup())
        self.loop.close()

    def __enter__(self) -> "ServerThread":
        self.thread.start()
        assert self.ready.wait(30)
        return self

    def __exit__(self, *exc: object) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(30)


@pytest.fixture(scope="module")
def server(registry):
    before = helpers.catalog(registry.url)
    with ServerThread(Settings(upstream=registry.url, token_secret=TEST_SECRET, max_body_size=256 * 1024)) as s:
        s.before = before
        yield s


segment = st.one_of(
    st.sampled_from([NS, "app", "1.0.0", "1.0.0-rc.1", "kpm", "helm", "-", "default", ">=1.0", "stable",
                     "a" * 64, "..", "%2F", "%00", "", "UPPER", "x" * 300, "é", "sha256", "json", "pull"]),
    st.text(min_size=0, max_size=20),
)


@st.composite
def requests(draw: st.DrawFn) -> tuple[str, str]:
    """(method, path): mostly a real route with its own method and random segments."""
    if draw(st.integers(0, 9)) == 0:
        return draw(st.sampled_from(["GET", "POST", "PUT", "HEAD"])), "/" + draw(st.text(max_size=40))
    method, template, _ = draw(st.sampled_from(ROUTES))
    if draw(st.integers(0, 9)) == 0:
        method = draw(st.sampled_from(["GET", "POST", "DELETE", "PUT", "OPTIONS", "HEAD"]))

    def fill(m: re.Match[str]) -> str:
        if m.group(0) == "{json:(/json)?}":
            return draw(st.sampled_from(["", "/json"]))
        value = draw(segment)
        return urllib.parse.quote(value, safe="") if draw(st.integers(0, 4)) else value

    path = re.sub(r"\{[^{}]+(?:\{[^}]*\}[^{}]*)?\}", fill, template)
    return method, draw(st.sampled_from(["/cnr", ""])) + path + draw(st.sampled_from(["", "/"]))


queries = st.dictionaries(
    st.sampled_from(["format", "force", "media_type", "namespace", "query", "q", "limit", "offset", "x"]),
    st.one_of(st.sampled_from(["json", "true", "false", "kpm", "-1", "10", ""]), st.text(max_size=10)),
    max_size=3,
)

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
    max_leaves=10,
)


@st.composite
def push_bodies(draw: st.DrawFn) -> bytes:
    blob = draw(st.sampled_from([helpers.kpm(), helpers.chart("app"), b"", b"\x1f\x8b junk", b"plain"]))
    doc = {
        "blob": draw(st.one_of(st.just(base64.b64encode(blob).decode()), st.text(max_size=30), json_values)),
        "release": draw(st.one_of(st.sampled_from(["1.0.0", "2.0.0-beta.1", "1.0", "v1"]), json_values)),
        "media_type": draw(st.one_of(st.sampled_from(["kpm", "helm", "../x", ""]), json_values)),
    }
    for key in draw(st.lists(st.sampled_from(["metadata", "force", "name", "package", "extra"]), max_size=3)):
        doc[key] = draw(json_values)
    if draw(st.booleans()):
        del doc[draw(st.sampled_from(sorted(doc)))]
    return json.dumps(doc).encode()


bodies = st.one_of(st.just(b""), st.binary(max_size=200), json_values.map(lambda v: json.dumps(v).encode()), push_bodies())


@settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                   HealthCheck.too_slow])
@given(request=requests(), query=queries, body=bodies)
def test_no_input_causes_a_5xx(server, request, query, body):
    method, path = request
    target = path + ("?" + urllib.parse.urlencode(query) if query else "")
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
    try:
        try:
            conn.request(method, target, body=body or None, headers={"Content-Type": "application/json"})
        except (http.client.InvalidURL, ValueError, UnicodeEncodeError):
            return  # http.client will not even send it
        resp = conn.getresponse()
        data = resp.read()
    finally:
        conn.close()
    assert resp.status < 500, (method, target, body[:200], resp.status, data[:300])
    if resp.status >= 400 and method != "HEAD" and resp.getheader("Content-Type", "").startswith("application/json"):
        doc = json.loads(data)
        assert {"code", "message", "details", "error"} <= set(doc), doc
    elif resp.status >= 400 and method != "HEAD":
        # aiohttp's own HTTP parser refuses malformed request lines before any handler runs.
        assert resp.status == 400, (resp.status, data[:200])


def test_the_registry_stays_consistent_after_fuzzing(server, registry):
    for repo in sorted(helpers.catalog(registry.url) - server.before):
        for tag in helpers.tags(registry.url, repo):
            assert mapping.tag_to_release(tag) or mapping.channel_from_tag(tag), (repo, tag)
            doc, _ = helpers.manifest(registry.url, repo, tag)
            if mapping.tag_to_release(tag):
                assert mapping.classify(doc) is not None, (repo, tag, doc)
