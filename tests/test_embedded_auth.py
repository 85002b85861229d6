"""The embedded registry is not open for writes beyond loopback: users from `cnr-oci user add`
(bcrypt htpasswd), or an explicit --insecure-open."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys

import pytest

from cnr_oci import cli
from cnr_oci.embedded import free_port
from cnr_oci.settings import Settings
from tests.conftest import TEST_SECRET, require_binary
from tests.helpers import body, kpm, unique

API = "/cnr/api/v1/packages"
LOGIN = "/cnr/api/v1/users/login"


def cnr_oci(
    *argv: str, stdin: str | None = None, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "cnr_oci", *argv], input=stdin, capture_output=True, text=True,
                          timeout=30, env={**os.environ, **(env or {})})


def user_add(data_dir, name: str, password: str) -> subprocess.CompletedProcess[str]:
    return cnr_oci("user", "add", name, "--data-dir", str(data_dir), "--password-stdin", stdin=password + "\n")


async def login(client, user: str, password: str):
    resp = await client.post(LOGIN, json={"user": {"username": user, "password": password}})
    return resp.status, await resp.json()


# -- the refusal --------------------------------------------------------------------------


# 192.0.2.1 (TEST-NET-1) is on no interface: had serve got past the check, binding would fail.
@pytest.mark.parametrize("host", ["0.0.0.0", "::", "192.0.2.1", "registry.example"])
def test_serve_refuses_an_open_embedded_registry_beyond_loopback(host, tmp_path):
    proc = cnr_oci("serve", "--host", host, "--port", str(free_port()), "--data-dir", str(tmp_path),
                   "--token-secret", TEST_SECRET)
    assert proc.returncode == 2, proc.stderr
    assert "cnr-oci user add" in proc.stderr and "--insecure-open" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "registry").exists()  # refused before the registry (and any socket) started


def test_the_refusal_applies_only_to_an_open_embedded_registry(tmp_path):
    refused = Settings(host="0.0.0.0", data_dir=str(tmp_path))
    assert cli.open_registry_refusal(refused) is not None
    for host in ("127.0.0.1", "::1", "localhost", "127.0.0.2"):
        assert cli.open_registry_refusal(Settings(host=host, data_dir=str(tmp_path))) is None
    assert cli.open_registry_refusal(Settings(host="0.0.0.0", upstream="https://r.example")) is None
    assert cli.open_registry_refusal(Settings(host="0.0.0.0", data_dir=str(tmp_path), insecure_open=True)) is None
    assert user_add(tmp_path, "alice", "alice-pw-1").returncode == 0
    assert cli.open_registry_refusal(refused) is None


def test_insecure_open_gets_past_the_refusal(tmp_path):
    # PATH without docker-registry: serve stops at the registry start, which comes before binding,
    # so this shows --insecure-open passes the check without opening a socket beyond loopback.
    env = {"PATH": str(tmp_path)}
    proc = cnr_oci("serve", "--host", "0.0.0.0", "--port", str(free_port()), "--data-dir", str(tmp_path),
                   "--token-secret", TEST_SECRET, "--insecure-open", env=env)
    assert proc.returncode == 2, proc.stderr
    assert "cnr-oci user add" not in proc.stderr and "apt-get install -y docker-registry" in proc.stderr
    assert "--insecure-open: the embedded registry is open on 0.0.0.0" in proc.stderr
    proc = cnr_oci("serve", "--host", "0.0.0.0", "--port", str(free_port()), "--data-dir", str(tmp_path),
                   "--token-secret", TEST_SECRET, env={**env, "CNR_OCI_INSECURE_OPEN": "true"})
    assert "apt-get install -y docker-registry" in proc.stderr


# -- cnr-oci user add / delete --------------------------------------------------------------


def test_user_add_writes_a_bcrypt_htpasswd_readable_only_by_its_owner(tmp_path):
    import bcrypt

    proc = user_add(tmp_path, "alice", "alice-pw-1")
    assert proc.returncode == 0, proc.stderr
    assert "alice-pw-1" not in proc.stdout + proc.stderr
    path = tmp_path / "htpasswd"
    assert oct(path.stat().st_mode & 0o777) == "0o600"
    [line] = path.read_text().splitlines()
    name, _, hashed = line.partition(":")
    assert name == "alice" and hashed.startswith("$2b$") and bcrypt.checkpw(b"alice-pw-1", hashed.encode())
    assert user_add(tmp_path, "bob", "bob-pw-2").returncode == 0
    assert user_add(tmp_path, "alice", "alice-pw-new").returncode == 0  # a new password, same user
    entries = dict(line.split(":", 1) for line in path.read_text().splitlines())
    assert sorted(entries) == ["alice", "bob"] and bcrypt.checkpw(b"alice-pw-new", entries["alice"].encode())
    assert cnr_oci("user", "delete", "bob", "--data-dir", str(tmp_path)).returncode == 0
    assert [line.split(":")[0] for line in path.read_text().splitlines()] == ["alice"]
    missing = cnr_oci("user", "delete", "bob", "--data-dir", str(tmp_path))
    assert missing.returncode == 2 and "no user 'bob'" in missing.stderr


def test_user_add_takes_the_data_dir_from_the_environment(tmp_path):
    proc = cnr_oci("user", "add", "carol", "--password-stdin", stdin="carol-pw-3\n",
                   env={"CNR_OCI_DATA_DIR": str(tmp_path)})
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "htpasswd").read_text().startswith("carol:$2b$")


@pytest.mark.parametrize("name,password,message", [
    ("a:b", "pw", "no space or ':'"), ("#x", "pw", "not starting with '#'"), ("bob", "", "empty"),
    ("bob", "x" * 73, "72 bytes"),
])
def test_user_add_refuses_what_htpasswd_cannot_take(tmp_path, name, password, message):
    proc = user_add(tmp_path, name, password)
    assert proc.returncode == 2 and message in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "htpasswd").exists()


# -- serving with users ---------------------------------------------------------------------


@pytest.fixture
async def guarded(make_client, tmp_path):
    """cnr-oci on loopback with its embedded registry and one user, alice."""
    require_binary("docker-registry")
    assert user_add(tmp_path, "alice", "alice-pw-1").returncode == 0
    return await make_client(Settings(data_dir=str(tmp_path)))


async def test_with_users_anonymous_and_invented_callers_are_refused(guarded):
    repo = "/".join(unique())
    resp = await guarded.post(f"{API}/{repo}", json=body(kpm()))
    assert resp.status == 401 and (await resp.json())["code"] == "unauthorized-access"
    status, data = await login(guarded, "mallory", "invented")
    assert status == 401 and data["code"] == "unauthorized-access"
    status, _ = await login(guarded, "alice", "wrong-password")
    assert status == 401
    assert (await guarded.delete(f"{API}/{repo}/1.0.0/kpm")).status == 401


async def test_with_users_a_user_logs_in_pushes_and_pulls(guarded):
    repo = "/".join(unique())
    blob = kpm()
    status, data = await login(guarded, "alice", "alice-pw-1")
    assert status == 200
    alice = {"Authorization": data["token"]}
    resp = await guarded.post(f"{API}/{repo}", json=body(blob), headers=alice)
    assert resp.status == 200, await resp.text()
    assert await (await guarded.get(f"{API}/{repo}/1.0.0/kpm/pull", headers=alice)).read() == blob
    assert (await guarded.get(f"{API}/{repo}/1.0.0/kpm/pull")).status == 401


async def test_users_added_or_deleted_while_serving_count_at_once(guarded, tmp_path):
    assert user_add(tmp_path, "bob", "bob-pw-2").returncode == 0
    assert (await login(guarded, "bob", "bob-pw-2"))[0] == 200
    assert cnr_oci("user", "delete", "bob", "--data-dir", str(tmp_path)).returncode == 0
    assert (await login(guarded, "bob", "bob-pw-2"))[0] == 401


async def test_without_users_on_loopback_the_embedded_registry_stays_open(make_client, tmp_path):
    require_binary("docker-registry")
    client = await make_client(Settings(data_dir=str(tmp_path)))
    assert (await client.post(f"{API}/{'/'.join(unique())}", json=body(kpm()))).status == 200


async def test_the_first_user_closes_a_running_open_registry(make_client, tmp_path):
    require_binary("docker-registry")
    client = await make_client(Settings(data_dir=str(tmp_path)))
    assert (await client.post(f"{API}/{'/'.join(unique())}", json=body(kpm()))).status == 200
    assert user_add(tmp_path, "dora", "dora-pw-1").returncode == 0
    for _ in range(100):  # the server notices within a second and restarts the registry with users
        await asyncio.sleep(0.1)
        resp = await client.post(f"{API}/{'/'.join(unique())}", json=body(kpm()))
        if resp.status == 401:
            break
    assert resp.status == 401
    assert (await login(client, "dora", "dora-pw-1"))[0] == 200


def test_an_emptied_htpasswd_counts_as_no_users(tmp_path):
    assert user_add(tmp_path, "erin", "erin-pw-1").returncode == 0
    assert cnr_oci("user", "delete", "erin", "--data-dir", str(tmp_path)).returncode == 0
    assert (tmp_path / "htpasswd").is_file()
    refusal = cli.open_registry_refusal(Settings(host="0.0.0.0", data_dir=str(tmp_path)))
    assert refusal is not None and "without users" in refusal
