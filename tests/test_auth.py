"""Authentication against a real registry in two modes: htpasswd (Basic) and token (Bearer JWT)."""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import time
from types import SimpleNamespace

import pytest

from cnr_oci import appkeys, auth, errors
from cnr_oci.settings import Settings
from tests.certs import self_signed
from tests.conftest import TEST_SECRET, start_registry
from tests.helpers import body, kpm, unique
from tests.token_server import USERS, basic

API = "/cnr/api/v1/packages"
LOGIN = "/cnr/api/v1/users/login"

async def login(client, user, password=None):
    resp = await client.post(LOGIN, json={"user": {"username": user, "password": password or USERS[user]}})
    return resp.status, await resp.json()


# -- htpasswd ------------------------------------------------------------------------


@pytest.fixture
async def basic_client(make_client, htpasswd_registry):
    return await make_client(Settings(upstream=htpasswd_registry.url))


async def test_htpasswd_login_push_pull_with_the_token(basic_client):
    status, data = await login(basic_client, "alice")
    assert status == 200 and data["token"].startswith("cnroci1.")
    # The appr client sends the token back verbatim, with no scheme.
    headers = {"Authorization": data["token"]}
    repo = "/".join(unique())
    blob = kpm()
    resp = await basic_client.post(f"{API}/{repo}", json=body(blob), headers=headers)
    assert resp.status == 200, await resp.text()
    assert await (await basic_client.get(f"{API}/{repo}/1.0.0/kpm/pull", headers=headers)).read() == blob
    listed = await (await basic_client.get(API, headers=headers, params={"namespace": repo.split("/")[0]})).json()
    assert [p["name"] for p in listed] == [repo]
    assert (await basic_client.post(f"{API}/{repo}/channels/stable/1.0.0", headers=headers)).status == 200


async def test_htpasswd_wrong_password_is_401(basic_client):
    status, data = await login(basic_client, "alice", "wrong")
    assert status == 401 and data["code"] == "unauthorized-access"
    resp = await basic_client.get(API, headers=basic("alice", "wrong"))
    assert resp.status == 401 and resp.headers["WWW-Authenticate"].startswith("Basic")


async def test_basic_and_quay_style_headers_pass_through(basic_client):
    repo = "/".join(unique())
    for n, headers in enumerate([basic("alice"), basic("alice", scheme="basic")]):
        resp = await basic_client.post(f"{API}/{repo}", json=body(kpm(), f"1.0.{n}"), headers=headers)
        assert resp.status == 200, await resp.text()


async def test_no_credentials_where_the_registry_requires_some_is_401(basic_client):
    resp = await basic_client.get(f"{API}/{'/'.join(unique())}/1.0.0/kpm/pull")
    assert resp.status == 401 and (await resp.json())["code"] == "unauthorized-access"
    resp = await basic_client.post(f"{API}/{'/'.join(unique())}", json=body(kpm()))
    assert resp.status == 401


async def test_login_with_missing_fields_is_400(basic_client):
    resp = await basic_client.post(LOGIN, json={"user": {"password": "x"}})
    assert resp.status == 400


async def test_service_credentials_for_anonymous_reads_only_when_allowed(make_client, htpasswd_registry, basic_client):
    repo = "/".join(unique())
    blob = kpm()
    assert (await basic_client.post(f"{API}/{repo}", json=body(blob), headers=basic("admin"))).status == 200
    svc = dict(upstream=htpasswd_registry.url, registry_username="admin", registry_password=USERS["admin"])
    closed = await make_client(Settings(**svc))
    assert (await closed.get(f"{API}/{repo}/1.0.0/kpm/pull")).status == 401
    reads = await make_client(Settings(**svc, anonymous_read=True))
    assert await (await reads.get(f"{API}/{repo}/1.0.0/kpm/pull")).read() == blob
    assert (await reads.post(f"{API}/{repo}", json=body(kpm(), "2.0.0"))).status == 401
    writes = await make_client(Settings(**svc, service_write=True))
    assert (await writes.post(f"{API}/{repo}", json=body(kpm(), "2.0.0"))).status == 200


async def test_service_credentials_from_a_docker_config(make_client, htpasswd_registry, basic_client, tmp_path):
    repo = "/".join(unique())
    assert (await basic_client.post(f"{API}/{repo}", json=body(kpm()), headers=basic("admin"))).status == 200
    token = base64.b64encode(f"admin:{USERS['admin']}".encode()).decode()
    (tmp_path / "config.json").write_text(json.dumps({"auths": {htpasswd_registry.host: {"auth": token}}}))
    client = await make_client(Settings(upstream=htpasswd_registry.url, docker_config=str(tmp_path),
                                        anonymous_read=True))
    assert (await client.get(f"{API}/{repo}/1.0.0/kpm")).status == 200


# -- token mode -----------------------------------------------------------------------


# token_env, tokens and token_client are in conftest.py; USERS and ACL in token_server.py.


async def test_token_mode_permissions(token_client, tokens):
    a, b = f"a{unique()[0]}/x", f"b{unique()[0]}/y"
    assert (await token_client.post(f"{API}/{b}", json=body(kpm()), headers=basic("admin"))).status == 200
    _, data = await login(token_client, "alice")
    alice = {"Authorization": data["token"]}
    resp = await token_client.post(f"{API}/{a}", json=body(kpm()), headers=alice)
    assert resp.status == 200, await resp.text()
    resp = await token_client.post(f"{API}/{b}", json=body(kpm(), "2.0.0"), headers=alice)
    data = await resp.json()
    assert resp.status == 403 and data["code"] == "forbidden"
    assert data["details"] == {"package": b, "scopes": ["push"]}
    assert (await token_client.get(f"{API}/{b}/1.0.0/kpm/pull", headers=alice)).status == 200
    resp = await token_client.get(f"{API}/{b}/1.0.0/kpm/pull")
    assert resp.status == 401 and (await resp.json())["code"] == "unauthorized-access"


async def test_token_mode_login_checks_the_password(token_client, tokens):
    assert (await login(token_client, "alice"))[0] == 200
    status, data = await login(token_client, "alice", "wrong")
    assert status == 401 and data["code"] == "unauthorized-access"


async def test_one_users_token_is_never_used_for_another_user(token_client, tokens):
    repo = f"a{unique()[0]}/x"
    blob = kpm()
    assert (await token_client.post(f"{API}/{repo}", json=body(blob), headers=basic("alice"))).status == 200
    assert await (await token_client.get(f"{API}/{repo}/1.0.0/kpm/pull", headers=basic("alice"))).read() == blob
    before = len(tokens.requests)
    resp = await token_client.get(f"{API}/{repo}/1.0.0/kpm/pull", headers=basic("carol"))
    assert resp.status in (401, 403)
    assert any(user == "carol" for user, _ in tokens.requests[before:])
    resp = await token_client.get(f"{API}/{repo}/1.0.0/kpm/pull")
    assert resp.status == 401


async def test_access_token_field_is_accepted(token_client, tokens):
    tokens.answer_field = "access_token"
    repo = f"a{unique()[0]}/x"
    assert (await token_client.post(f"{API}/{repo}", json=body(kpm()), headers=basic("alice"))).status == 200


async def test_listing_and_search_show_only_what_the_caller_can_read(token_client, tokens):
    tag = unique()[0]
    names = [f"a{tag}/x", f"b{tag}/y", f"c{tag}/z"]
    for n in names:
        assert (await token_client.post(f"{API}/{n}", json=body(kpm()), headers=basic("admin"))).status == 200
    seen = [p["name"] for p in await (await token_client.get(API, headers=basic("alice"))).json()]
    assert f"a{tag}/x" in seen and f"b{tag}/y" in seen and f"c{tag}/z" not in seen
    found = await (await token_client.get(f"{API}/search", params={"q": tag}, headers=basic("alice"))).json()
    assert sorted(found) == [f"a{tag}/x", f"b{tag}/y"]
    assert await (await token_client.get(f"{API}/search", params={"q": tag}, headers=basic("carol"))).json() == []


async def test_tokens_are_cached_per_identity_until_expiry(make_client, token_env, tokens):
    # Without the blob cache, so that every pull makes an upstream request (the blob GET).
    token_client = await make_client(Settings(upstream=token_env.registry.url, blob_cache_size=0))
    repo = f"a{unique()[0]}/x"
    await token_client.post(f"{API}/{repo}", json=body(kpm()), headers=basic("alice"))
    before = len(tokens.requests)
    for _ in range(3):  # a pull streams the blob from the registry every time
        assert (await token_client.get(f"{API}/{repo}/1.0.0/kpm/pull", headers=basic("alice"))).status == 200
    assert len(tokens.requests) == before  # the pull scope was cached from the push
    authn = token_client.app[appkeys.OCI].auth
    authn.clock = lambda: time.monotonic() + 10_000  # every token has expired
    assert (await token_client.get(f"{API}/{repo}/1.0.0/kpm/pull", headers=basic("alice"))).status == 200
    assert len(tokens.requests) == before + 1


# -- login tokens ---------------------------------------------------------------------


def codec(clock=time.time):
    return auth.TokenCodec(auth.load_secret(TEST_SECRET, "/nonexistent"), ttl=60, clock=clock)


def test_login_token_round_trips_and_expires():
    now = [1_000_000.0]
    c = codec(lambda: now[0])
    token = c.issue(auth.Credentials("u", "p"))
    assert c.open(token) == auth.Credentials("u", "p")
    now[0] += 61
    with pytest.raises(errors.Unauthorized):
        c.open(token)


def test_altered_or_foreign_tokens_are_refused():
    c = codec()
    token = c.issue(auth.Credentials("u", "p"))
    body_ = token[len(auth.TOKEN_PREFIX):]
    flipped = auth.TOKEN_PREFIX + body_[:20] + ("A" if body_[20] != "A" else "B") + body_[21:]
    other = auth.TokenCodec(auth.load_secret("another secret, 16+ characters", "/nonexistent"), ttl=60)
    for bad in (flipped, other.issue(auth.Credentials("u", "p")), auth.TOKEN_PREFIX + "garbage",
                token + "x", token + "xyz", token + "=", token + " x"):
        with pytest.raises(errors.Unauthorized):
            c.open(bad)


async def test_an_expired_token_gives_401(basic_client):
    _, data = await login(basic_client, "alice")
    basic_client.app[appkeys.TOKENS].clock = lambda: time.time() + 13 * 3600
    resp = await basic_client.get(API, headers={"Authorization": data["token"]})
    assert resp.status == 401 and (await resp.json())["code"] == "unauthorized-access"


def test_the_secret_is_generated_once_into_the_data_dir(tmp_path, caplog):
    with caplog.at_level(logging.WARNING):
        first = auth.load_secret(None, str(tmp_path))
    assert "replicas" in caplog.text
    assert auth.load_secret(None, str(tmp_path)) == first
    assert oct((tmp_path / "token-secret").stat().st_mode & 0o777) == "0o600"


async def test_open_registry_login_gives_a_token_with_no_credentials(client):
    status, data = await login(client, "anyone", "anything")
    assert status == 200
    assert client.app[appkeys.TOKENS].open(data["token"]) is None
    assert (await client.get(API, headers={"Authorization": data["token"]})).status == 200


# -- hardening ------------------------------------------------------------------------


async def test_no_secret_reaches_the_logs(basic_client, caplog):
    caplog.set_level(logging.DEBUG)
    repo = "/".join(unique())
    blob = kpm(extra=b"very-secret-blob-content")
    _, data = await login(basic_client, "alice")
    token = data["token"]
    await login(basic_client, "alice", "wrong-pw-xyz")
    headers = {"Authorization": token}
    await basic_client.post(f"{API}/{repo}", json=body(blob), headers=headers)
    await basic_client.post(f"{API}/{repo}", json=body(blob), headers=headers)  # 409
    await basic_client.get(f"{API}/{repo}/1.0.0/kpm/pull", headers=headers)
    await basic_client.get(f"{API}/{repo}/1.0.0/kpm/pull?format=json", headers=headers)
    await basic_client.get(API, headers=basic("alice", "bad-pw-abc"))
    await basic_client.get(API, headers={"Authorization": token[:-4] + "AAAA"})
    text = "\n".join(r.getMessage() + repr(r.args) + str(r.exc_info) for r in caplog.records)
    assert caplog.records, "nothing was logged"
    secrets = [USERS["alice"], "wrong-pw-xyz", "bad-pw-abc", token, token[len(auth.TOKEN_PREFIX):][:40],
               basic("alice")["Authorization"], base64.b64encode(blob).decode()[:40], "very-secret-blob-content"]
    for secret in secrets:
        assert secret not in text


async def test_cors_is_off_unless_configured(client, make_client, registry):
    resp = await client.get("/cnr/version", headers={"Origin": "https://ui.example"})
    assert "Access-Control-Allow-Origin" not in resp.headers
    cors = await make_client(Settings(upstream=registry.url, cors_origins=("https://ui.example",)))
    resp = await cors.get("/cnr/version", headers={"Origin": "https://ui.example"})
    assert resp.headers["Access-Control-Allow-Origin"] == "https://ui.example"
    resp = await cors.options("/cnr/api/v1/packages", headers={
        "Origin": "https://ui.example", "Access-Control-Request-Method": "POST"})
    assert resp.status == 204 and "Authorization" in resp.headers["Access-Control-Allow-Headers"]
    resp = await cors.get("/cnr/version", headers={"Origin": "https://evil.example"})
    assert "Access-Control-Allow-Origin" not in resp.headers


# -- TLS to the registry --------------------------------------------------------------


@pytest.fixture(scope="module")
def tls_registry(tmp_path_factory):
    root = tmp_path_factory.mktemp("tls")
    cert, key, _, _ = self_signed(root / "certs", "registry")
    reg = start_registry(root, extra_config=f"  tls:\n    certificate: {cert}\n    key: {key}\n", tls=True)
    yield SimpleNamespace(registry=reg, ca=str(cert))
    reg.stop()


async def test_tls_to_the_registry_with_a_ca_bundle_or_the_insecure_switch(make_client, tls_registry):
    url = tls_registry.registry.url
    assert url.startswith("https://")
    for settings in (Settings(upstream=url, ca_file=tls_registry.ca), Settings(upstream=url, tls_insecure=True)):
        client = await make_client(settings)
        assert (await client.post(f"{API}/{'/'.join(unique())}", json=body(kpm()))).status == 200
    unverified = await make_client(Settings(upstream=url, connect_timeout=2))
    resp = await unverified.get(API)
    assert resp.status == 503 and (await resp.json())["code"] == "upstream-unavailable"


# -- who is calling, before the body is read -------------------------------------------


async def _post_head_only(
    client, path: str, headers: dict[str, str], length: int, sent: bytes = b"{"
) -> tuple[int, dict]:
    """POST with a large Content-Length but only a few bytes of body; the answer must come
    without the rest, so the server decided before reading the body."""
    reader, writer = await asyncio.open_connection(client.server.host, client.server.port)
    try:
        head = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
        writer.write(f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                     f"Content-Length: {length}\r\n{head}\r\n".encode() + sent)
        await writer.drain()
        status_line = await asyncio.wait_for(reader.readline(), 5)
        raw_headers = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
        size = int(next(line.split(b":")[1] for line in raw_headers.split(b"\r\n")
                        if line.lower().startswith(b"content-length")))
        payload = await asyncio.wait_for(reader.readexactly(size), 5)
        return int(status_line.split()[1]), json.loads(payload)
    finally:
        writer.close()


async def test_anonymous_push_is_401_before_the_body_is_read(basic_client):
    repo = "/".join(unique())
    status, data = await _post_head_only(basic_client, f"{API}/{repo}", {}, 50 * 1024 * 1024)
    assert status == 401 and data["code"] == "unauthorized-access"


async def test_wrong_password_push_is_401_before_the_body_is_read(basic_client):
    repo = "/".join(unique())
    status, data = await _post_head_only(basic_client, f"{API}/{repo}", basic("alice", "wrong"), 50 * 1024 * 1024)
    assert status == 401 and data["code"] == "unauthorized-access"


async def test_push_without_push_rights_is_403_before_the_body_is_read(token_client, tokens):
    b = f"b{unique()[0]}/y"  # alice may only pull b*/*
    status, data = await _post_head_only(token_client, f"{API}/{b}", basic("alice"), 50 * 1024 * 1024)
    assert status == 403 and data["code"] == "forbidden" and data["details"]["package"] == b


async def test_the_push_rights_session_is_used_for_the_blob_or_cancelled(basic_client, htpasswd_registry):
    repo = "/".join(unique())
    uploads = htpasswd_registry.root / "registry" / "docker" / "registry" / "v2" / "repositories" / repo / "_uploads"
    assert (await basic_client.post(f"{API}/{repo}", json=body(kpm()), headers=basic("alice"))).status == 200
    assert uploads.is_dir() and list(uploads.iterdir()) == []  # used, completed, removed
    resp = await basic_client.post(f"{API}/{repo}", json=body(b"not a tarball", "2.0.0"), headers=basic("alice"))
    assert resp.status == 400
    # Cancelled: distribution 2.8 keeps only a hash-state stub of a cancelled upload, no data.
    assert [p.name for p in uploads.rglob("*") if p.is_file() and p.name in ("data", "startedat")] == []


async def test_pushes_beyond_the_in_flight_limit_wait_then_get_503(make_client, registry):
    client = await make_client(Settings(upstream=registry.url, max_concurrent_pushes=1, push_queue_wait=0.5))
    repo = "/".join(unique())
    # The first push holds the only slot while its body trickles in.
    reader, writer = await asyncio.open_connection(client.server.host, client.server.port)
    payload = json.dumps(body(kpm())).encode()
    writer.write(f"POST {API}/{repo} HTTP/1.1\r\nHost: x\r\nContent-Length: {len(payload)}\r\n\r\n".encode()
                 + payload[:10])
    await writer.drain()
    await asyncio.sleep(0.3)
    resp = await client.post(f"{API}/{repo}", json=body(kpm(), "2.0.0"))
    data = await resp.json()
    assert resp.status == 503 and data["code"] == "server-busy" and resp.headers["Retry-After"] == "0"
    writer.write(payload[10:])
    await writer.drain()
    assert b" 200 " in await asyncio.wait_for(reader.readline(), 10)
    writer.close()
    assert (await client.post(f"{API}/{repo}", json=body(kpm(), "2.0.0"))).status == 200
