"""Secrets and credentials: the token-secret KDF and its refusals, credentials in --upstream,
and Docker identity tokens used as OAuth2 refresh tokens."""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import os
import subprocess
import sys

import aiohttp
import pytest
from cryptography.fernet import Fernet

from cnr_oci import auth, cli
from cnr_oci.embedded import free_port
from cnr_oci.settings import Settings
from tests.conftest import TEST_SECRET
from tests.helpers import body, kpm, unique
from tests.token_server import SERVICE, TokenServer, start_token_registry

API = "/cnr/api/v1/packages"


def serve(*argv: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """`cnr-oci serve` that is expected to refuse before binding (a hang fails the test)."""
    return subprocess.run([sys.executable, "-m", "cnr_oci", "serve", "--port", str(free_port()), *argv],
                          capture_output=True, text=True, timeout=20, env={**os.environ, **(env or {})})


# -- defect 10: the token secret --------------------------------------------------------


def test_a_string_secret_goes_through_scrypt_with_the_documented_parameters():
    key = auth.load_secret(TEST_SECRET, "/nonexistent")
    # An independent scrypt (OpenSSL through hashlib) with the README's salt and cost agrees,
    # so replicas and operators can reproduce the key.
    expected = hashlib.scrypt(TEST_SECRET.encode(), salt=b"cnr-oci/token-secret/v2", n=2**15, r=8, p=1,
                              dklen=32, maxmem=64 * 1024 * 1024)
    assert key == base64.urlsafe_b64encode(expected)
    assert key != base64.urlsafe_b64encode(hashlib.sha256(TEST_SECRET.encode()).digest())


def test_a_token_of_the_old_single_sha256_derivation_is_refused():
    old = Fernet(base64.urlsafe_b64encode(hashlib.sha256(TEST_SECRET.encode()).digest()))
    token = auth.TOKEN_PREFIX + old.encrypt(json.dumps({"u": "alice", "p": "alicepw1"}).encode()).decode()
    codec = auth.TokenCodec(auth.load_secret(TEST_SECRET, "/nonexistent"), ttl=60)
    with pytest.raises(Exception, match="invalid or expired"):
        codec.open(token)


def test_a_fernet_key_is_used_as_is():
    key = Fernet.generate_key()
    assert auth.load_secret(key.decode(), "/nonexistent") == key


@pytest.mark.parametrize("secret", ["hunter2", "x", "fifteen-chars!!"])
def test_a_short_secret_is_refused(secret):
    with pytest.raises(auth.SecretError, match="shorter than 16"):
        auth.load_secret(secret, "/nonexistent")


def test_a_short_secret_is_a_clean_cli_error(registry):
    proc = serve("--upstream", registry.url, "--token-secret", "hunter2")
    assert proc.returncode == 2, proc.stderr
    assert "shorter than 16 characters" in proc.stderr and "Traceback" not in proc.stderr
    assert "hunter2" not in proc.stderr


def test_an_empty_secret_file_is_a_clean_cli_error(registry, tmp_path):
    path = tmp_path / "token-secret"
    path.write_text("\n")
    path.chmod(0o600)
    with pytest.raises(auth.SecretError, match="is empty"):
        auth.load_secret(None, str(tmp_path))
    proc = serve("--upstream", registry.url, "--data-dir", str(tmp_path))
    assert proc.returncode == 2, proc.stderr
    assert "is empty" in proc.stderr and "Traceback" not in proc.stderr


def test_a_secret_file_open_to_others_is_refused(registry, tmp_path):
    path = tmp_path / "token-secret"
    path.write_bytes(Fernet.generate_key())
    path.chmod(0o644)
    with pytest.raises(auth.SecretError, match="chmod 600"):
        auth.load_secret(None, str(tmp_path))
    proc = serve("--upstream", registry.url, "--data-dir", str(tmp_path))
    assert proc.returncode == 2 and "chmod 600" in proc.stderr and "Traceback" not in proc.stderr
    path.chmod(0o600)
    assert auth.load_secret(None, str(tmp_path)) == path.read_bytes()


async def test_the_kdf_runs_once_at_start_not_per_request(make_client, settings, monkeypatch):
    calls = []
    real = auth.Scrypt

    def counting(*args, **kwargs):
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(auth, "Scrypt", counting)
    secret = f"a fresh secret for this test {unique()[0]}"
    client = await make_client(Settings(upstream=settings.upstream, token_secret=secret))
    assert len(calls) == 1
    for _ in range(3):
        resp = await client.post("/cnr/api/v1/users/login", json={"user": {"username": "u", "password": "p"}})
        token = (await resp.json())["token"]
        assert (await client.get(API, headers={"Authorization": token})).status == 200
    assert len(calls) == 1


# -- defect 11: credentials in --upstream -----------------------------------------------


@pytest.mark.parametrize("url", ["http://user:pass@127.0.0.1:5000", "https://user@registry.example",
                                 "https://user:@registry.example/"])
def test_credentials_in_the_upstream_url_are_refused(url, capsys):
    with pytest.raises(SystemExit) as exc:
        cli.settings_from(cli.build_parser().parse_args(["serve", "--upstream", url]), {})
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "--registry-username" in err and "pass" not in err.replace("--registry-password", "")
    with pytest.raises(SystemExit):
        cli.settings_from(cli.build_parser().parse_args(["serve"]), {"CNR_OCI_UPSTREAM": url})


def test_an_upstream_without_credentials_is_accepted():
    args = cli.build_parser().parse_args(["serve", "--upstream", "https://registry.example:5000/"])
    assert cli.settings_from(args, {}).upstream == "https://registry.example:5000"


# -- defect 12: Docker identity tokens are OAuth2 refresh tokens --------------------------

ROBOT_REFRESH = "rt-robot-0123456789abcdef"
ACL = {"admin": {"*": {"pull", "push", "delete"}}, "robot": {"*": {"pull"}}}


@pytest.fixture(scope="module")
def oauth_env(tmp_path_factory):
    env = start_token_registry(tmp_path_factory.mktemp("oauth"))
    yield env
    env.registry.stop()


@pytest.fixture
async def oauth_tokens(aiohttp_server, oauth_env):
    server = TokenServer(oauth_env.key, oauth_env.cert, {"admin": "admin-pw"}, ACL,
                         refresh_tokens={ROBOT_REFRESH: "robot"})
    await aiohttp_server(server.app(), port=oauth_env.port)
    return server


async def test_the_token_server_refuses_the_identity_token_as_a_basic_password(oauth_env, oauth_tokens):
    realm = f"http://127.0.0.1:{oauth_env.port}/token"
    async with aiohttp.ClientSession() as session:
        basic = "Basic " + base64.b64encode(f"robot:{ROBOT_REFRESH}".encode()).decode()
        async with session.get(realm, params={"service": SERVICE, "scope": "repository:a/b:pull"},
                               headers={"Authorization": basic}) as resp:
            assert resp.status == 401


async def test_reads_through_a_docker_identity_token(make_client, oauth_env, oauth_tokens, tmp_path, caplog):
    caplog.set_level(logging.DEBUG)
    repo = "/".join(unique())
    blob = kpm()
    admin = {"Authorization": "Basic " + base64.b64encode(b"admin:admin-pw").decode()}
    seed = await make_client(Settings(upstream=oauth_env.registry.url))
    assert (await seed.post(f"{API}/{repo}", json=body(blob), headers=admin)).status == 200
    # What `docker login` writes for a registry that issues identity tokens.
    entry = {"auth": base64.b64encode(b"<token>:").decode(), "identitytoken": ROBOT_REFRESH}
    (tmp_path / "config.json").write_text(json.dumps({"auths": {oauth_env.registry.host: entry}}))

    reads = await make_client(Settings(upstream=oauth_env.registry.url, docker_config=str(tmp_path),
                                       anonymous_read=True))
    resp = await reads.get(f"{API}/{repo}/1.0.0/kpm/pull")
    assert resp.status == 200, await resp.text()
    assert await resp.read() == blob
    grant = oauth_tokens.grants[-1]
    assert grant["grant_type"] == "refresh_token" and grant["refresh_token"] == ROBOT_REFRESH
    assert grant["service"] == SERVICE and grant["client_id"] and f"repository:{repo}:pull" in grant["scope"]
    assert (await reads.post(f"{API}/{repo}", json=body(kpm(), "2.0.0"))).status == 401  # reads only

    closed = await make_client(Settings(upstream=oauth_env.registry.url, docker_config=str(tmp_path)))
    assert (await closed.get(f"{API}/{repo}/1.0.0/kpm/pull")).status == 401  # --anonymous-read is the opt-in
    assert ROBOT_REFRESH not in caplog.text


def test_an_identity_token_stays_out_of_repr(tmp_path):
    entry = {"auth": base64.b64encode(b"<token>:").decode(), "identitytoken": ROBOT_REFRESH}
    (tmp_path / "config.json").write_text(json.dumps({"auths": {"127.0.0.1:1": entry}}))
    creds = auth.service_credentials(None, None, str(tmp_path), "127.0.0.1:1")
    assert creds is not None and creds.refresh_token == ROBOT_REFRESH and creds.password == ""
    assert ROBOT_REFRESH not in repr(creds) and ROBOT_REFRESH not in creds.key
