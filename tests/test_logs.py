"""Structured logs (`serve --log-format json`): one access line per request with its id, route, status,
duration, bytes, user and registry calls; X-Request-ID kept, answered and passed on to the registry;
no secret in any line. One whole session through a real `cnr-oci serve` and a real registry."""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import secrets
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from cnr_oci import accesslog, cli, middleware, server
from cnr_oci.embedded import free_port, stop_process
from tests.conftest import LIVE_USERS, start_live_server
from tests.helpers import body, chart, kpm, unique

API = "/cnr/api/v1/packages"
HOP = {"connection", "keep-alive", "transfer-encoding", "content-length", "te", "trailer", "upgrade"}
WRONG_PASSWORD = "wrong-pw-" + secrets.token_hex(4)
COOKIE = "session=cookie-secret-" + secrets.token_hex(4)


class RecordingProxy:
    """A loopback proxy in front of the registry, recording each request's X-Request-ID: distribution's
    own log shows no request headers. Host is passed through, so the registry's Locations name the proxy."""

    def __init__(self, target: str) -> None:
        self.target = target
        self.port = free_port()
        self.seen: list[tuple[str, str, str | None]] = []  # method, path, X-Request-ID
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> RecordingProxy:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._start(), self._loop).result(10)
        return self

    async def _start(self) -> None:
        self._session = aiohttp.ClientSession(auto_decompress=False)
        app = web.Application(client_max_size=1 << 30)
        app.router.add_route("*", "/{tail:.*}", self._forward)
        self._runner = web.AppRunner(app, access_log=None, auto_decompress=False)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", self.port).start()

    async def _forward(self, request: web.Request) -> web.StreamResponse:
        self.seen.append((request.method, request.path, request.headers.get("X-Request-ID")))
        headers = {k: v for k, v in request.headers.items() if k.lower() not in HOP}
        data = await request.read()
        async with self._session.request(request.method, self.target + request.raw_path, headers=headers,
                                         data=data or None, allow_redirects=False) as up:
            payload = await up.read()
            resp = web.StreamResponse(status=up.status, headers={k: v for k, v in up.headers.items()
                                                                 if k.lower() not in HOP})
            if request.method == "HEAD" and "Content-Length" in up.headers:
                resp.headers["Content-Length"] = up.headers["Content-Length"]
            else:
                resp.content_length = len(payload)
            await resp.prepare(request)
            if request.method != "HEAD":
                await resp.write(payload)
            await resp.write_eof()
            return resp

    def stop(self) -> None:
        async def close() -> None:
            await self._runner.cleanup()
            await self._session.close()

        asyncio.run_coroutine_threadsafe(close(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop.close()


@dataclass
class Session:
    """What a whole session sent and got, and what the server logged."""

    ids: dict[str, str] = field(default_factory=dict)  # step -> the X-Request-ID sent
    answered: dict[str, tuple[int, str | None, int]] = field(default_factory=dict)  # step -> status, id, size
    secrets: list[str] = field(default_factory=list)
    raw_log: str = ""
    lines: list[dict[str, Any]] = field(default_factory=list)
    upstream: list[tuple[str, str, str | None]] = field(default_factory=list)
    ns: str = ""

    def access(self, step: str) -> dict[str, Any]:
        [line] = [ln for ln in self.lines if ln.get("logger") == accesslog.LOGGER
                  and ln.get("request_id") == self.ids[step]]
        return line


def basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


async def run_session(base: str, s: Session) -> None:
    ns, name = unique("logs")
    s.ns = ns
    password = LIVE_USERS["alice"]
    alice = basic("alice", password)
    s.secrets += [password, WRONG_PASSWORD, alice.split()[1], basic("alice", WRONG_PASSWORD).split()[1],
                  COOKIE.split("=")[1]]

    async with aiohttp.ClientSession(base) as http:
        async def call(step: str, method: str, path: str, *, rid: str | None = None, **kw: Any) -> bytes:
            rid = rid if rid is not None else f"{step}-{secrets.token_hex(6)}"
            s.ids[step] = rid
            async with http.request(method, path, headers={"X-Request-ID": rid, **kw.pop("headers", {})},
                                    **kw) as resp:
                data = await resp.read()
                s.answered[step] = (resp.status, resp.headers.get("X-Request-ID"), len(data))
                return data

        token = json.loads(await call("login", "POST", f"{API.removesuffix('/packages')}/users/login",
                                      json={"user": {"username": "alice", "password": password}}))["token"]
        s.secrets.append(token)
        await call("login-wrong", "POST", "/cnr/api/v1/users/login",
                   json={"user": {"username": "alice", "password": WRONG_PASSWORD}})
        blob = kpm(extra=secrets.token_hex(2000).encode())
        await call("push", "POST", f"{API}/{ns}/{name}", json=body(blob), headers={"Authorization": token})
        await call("pull", "GET", f"{API}/{ns}/{name}/1.0.0/kpm/pull",
                   headers={"Authorization": alice, "Cookie": COOKIE})
        await call("list", "GET", API, params={"namespace": ns}, headers={"Authorization": f"Bearer {token}"})
        await call("missing", "GET", f"{API}/{ns}/missing/1.0.0/kpm/pull", headers={"Authorization": alice})
        await call("unmatched", "GET", f"/no/such/{ns}/route")
        await call("wrong-password", "GET", f"{API}/{ns}/{name}",
                   headers={"Authorization": basic("alice", WRONG_PASSWORD)})
        await call("cm-upload", "POST", f"/helm/api/{ns}/charts", data=chart("web", "1.0.0"),
                   headers={"Authorization": alice, "Content-Type": "application/gzip"})
        await call("helm-index", "GET", f"/helm/{ns}/index.yaml", headers={"Authorization": alice})
        await call("bad-id", "GET", "/version", rid="not a plain id")
        await call("long-id", "GET", "/version", rid="x" * 129)


@pytest.fixture(scope="module")
def session(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Session]:
    root = tmp_path_factory.mktemp("logs")
    proxies: list[RecordingProxy] = []

    def through_proxy(registry_url: str) -> str:
        proxies.append(RecordingProxy(registry_url).start())
        return proxies[0].url

    proc, live = start_live_server(root, LIVE_USERS, "--log-format", "json", upstream=through_proxy)
    s = Session()
    try:
        asyncio.run(run_session(live.url, s))
    finally:
        stop_process(proc)  # every line is written before it exits
        for proxy in proxies:
            proxy.stop()
        live.registry.stop()
    s.raw_log = live.log_path.read_text()
    s.lines = [json.loads(line) for line in s.raw_log.splitlines() if line.strip()]
    s.upstream = proxies[0].seen
    yield s


def test_every_log_line_is_a_json_object_with_time_level_and_logger(session):
    assert session.lines and len(session.lines) == len([ln for ln in session.raw_log.splitlines() if ln.strip()])
    for line in session.lines:
        assert isinstance(line, dict) and {"time", "level", "logger", "message"} <= line.keys(), line
    assert any(line["logger"] != accesslog.LOGGER for line in session.lines)  # other records: JSON too


def test_each_request_has_exactly_one_access_line_with_its_fields(session):
    access = [line for line in session.lines if line["logger"] == accesslog.LOGGER]
    by_id = {step: [ln for ln in access if ln["request_id"] == rid] for step, rid in session.ids.items()
             if not step.endswith("-id")}
    assert all(len(found) == 1 for found in by_id.values()), by_id
    ours = {rid for step, rid in session.ids.items() if not step.endswith("-id")}
    others = [ln for ln in access if ln["request_id"] not in ours]
    # the rest: the start-up health polls, and the two requests whose id was replaced
    assert {ln["route"] for ln in others} == {"/healthz", "/version"}
    assert len([ln for ln in others if ln["route"] != "/healthz"]) == 2
    for step, (status, _, size) in session.answered.items():
        line = session.access(step) if not step.endswith("-id") else None
        if line is None:
            continue
        assert line["status"] == status, (step, line)
        assert line["method"] in ("GET", "POST")
        assert isinstance(line["duration_ms"], float) and 0 < line["duration_ms"] < 30000
        assert line["bytes"] >= size and isinstance(line["upstream_calls"], int)
        assert line["remote"] == "127.0.0.1"
        assert set(accesslog.FIELDS) <= line.keys()


def test_the_route_is_the_matched_template_not_the_raw_path(session):
    ns = session.ns
    assert session.access("push")["route"] == "/cnr/api/v1/packages/{ns}/{name}"
    assert session.access("pull")["route"] == "/cnr/api/v1/packages/{ns}/{name}/{release}/{media_type}/pull{json}"
    assert session.access("cm-upload")["route"] == "/helm/api/{ns}/charts"
    assert session.access("helm-index")["route"] == "/helm/{ns}/index.yaml"
    assert session.access("unmatched")["route"] is None and session.access("unmatched")["status"] == 404
    assert session.access("missing")["status"] == 404
    assert not [ln for ln in session.lines if ln["logger"] == accesslog.LOGGER and ns in json.dumps(ln)]


def test_the_user_is_the_callers_name_and_none_when_anonymous(session):
    assert session.access("push")["user"] == "alice"  # a login token
    assert session.access("pull")["user"] == "alice"  # Basic
    assert session.access("list")["user"] == "alice"  # Bearer token
    wrong = session.access("wrong-password")
    assert (wrong["user"], wrong["status"]) == ("alice", 401)
    assert session.access("unmatched")["user"] is None
    assert session.access("login")["status"] == 200 and session.access("login-wrong")["status"] == 401


def test_request_ids_round_trip_and_reach_the_registry_on_every_upstream_call(session):
    for step, rid in session.ids.items():
        _, answered, _ = session.answered[step]
        if step.endswith("-id"):  # not plain, or too long: replaced by a new one
            assert answered and answered != rid and len(answered) == 32
            assert rid not in session.raw_log
        else:
            assert answered == rid, step
    counts: dict[str | None, int] = {}
    for _, _, rid in session.upstream:
        counts[rid] = counts.get(rid, 0) + 1
    access = {ln["request_id"]: ln for ln in session.lines if ln["logger"] == accesslog.LOGGER}
    assert None not in counts, [u for u in session.upstream if u[2] is None]  # every call names its request
    assert set(counts) <= set(access)
    for rid, line in access.items():
        assert line["upstream_calls"] == counts.get(rid, 0), line
    for step in ("push", "pull", "cm-upload", "helm-index", "wrong-password", "login"):
        assert session.access(step)["upstream_calls"] > 0, step
    assert session.access("unmatched")["upstream_calls"] == 0


def test_no_secret_appears_anywhere_in_the_log(session):
    assert len(session.secrets) == 6
    for secret in session.secrets:
        assert secret not in session.raw_log
    assert "Authorization" not in session.raw_log and "Cookie" not in session.raw_log


def test_the_text_format_has_the_same_fields_and_the_flag_refuses_others(capsys):
    assert cli.settings_from(cli.build_parser().parse_args(["serve"]), {}).log_format == "text"
    assert cli.settings_from(cli.build_parser().parse_args(["serve"]), {"CNR_OCI_LOG_FORMAT": "json"}).log_format \
        == "json"
    with pytest.raises(SystemExit):
        cli.settings_from(cli.build_parser().parse_args(["serve", "--log-format", "xml"]), {})
    record = logging.LogRecord(accesslog.LOGGER, logging.INFO, __file__, 1, "%s %s %s", ("GET", "/x/{y}", 200),
                               None)
    record.__dict__.update({"request_id": "abc", "method": "GET", "route": "/x/{y}", "status": 200,
                            "duration_ms": 1.5, "bytes": 10, "user": None, "upstream_calls": 2,
                            "remote": "127.0.0.1"})
    text = accesslog.formatter("text").format(record)
    assert text.endswith("GET /x/{y} 200 request_id=abc duration_ms=1.5 bytes=10 user=- upstream_calls=2 "
                         "remote=127.0.0.1")
    assert accesslog.safe_name("evil\nuser x") == "evil?user?x"


async def test_a_stream_aborted_after_its_headers_still_gets_exactly_one_line(caplog):
    """aiohttp writes no access line for a handler that fails after prepare(): the middleware does."""
    async def broken_stream(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse()
        await resp.prepare(request)
        await resp.write(b"x" * 1000)
        raise RuntimeError("the registry went away mid-blob")

    async def fine(request: web.Request) -> web.Response:
        return web.Response(text="ok")

    app = web.Application(middlewares=[middleware.request_middleware])
    app.on_response_prepare.append(middleware.send_request_id)
    app.router.add_get("/blob/{digest}", broken_stream)
    app.router.add_get("/fine", fine)
    runner = server.LimitedRunner(app)
    await runner.setup()
    port = free_port()
    await server.LimitedSite(runner, "127.0.0.1", port).start()
    caplog.set_level(logging.INFO, accesslog.LOGGER)
    try:
        async with aiohttp.ClientSession() as http:
            with pytest.raises(aiohttp.ClientPayloadError):
                async with http.get(f"http://127.0.0.1:{port}/blob/abc", headers={"X-Request-ID": "aborted-1"}) as r:
                    assert r.headers["X-Request-ID"] == "aborted-1"
                    await r.read()
            async with http.get(f"http://127.0.0.1:{port}/fine", headers={"X-Request-ID": "fine-1"}) as r:
                assert r.headers["X-Request-ID"] == "fine-1"
    finally:
        await runner.cleanup()
    lines = [r for r in caplog.records if r.name == accesslog.LOGGER]
    assert [(r.request_id, r.route, r.status) for r in lines] == [  # type: ignore[attr-defined]
        ("aborted-1", "/blob/{digest}", 200), ("fine-1", "/fine", 200)]
    assert lines[0].bytes >= 1000  # type: ignore[attr-defined]
