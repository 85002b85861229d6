"""A real docker-registry for the session, and a cnr-oci app in front of it."""

from __future__ import annotations

import dataclasses
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from cnr_oci.app import create_app
from cnr_oci.embedded import EmbeddedRegistry, free_port, stop_process
from cnr_oci.settings import Settings
from tests import helpers, openapi_check
from tests.appr_server import ApprServer
from tests.appr_server import installed as appr_server_installed
from tests.clients.install_appr_server import main as install_appr_server
from tests.helmcli import helm  # noqa: F401  (registers the fixture for every test module)
from tests.helpers import body, kpm, unique
from tests.token_server import ACL as TOKEN_ACL
from tests.token_server import USERS as TOKEN_USERS
from tests.token_server import TokenServer, start_token_registry


def require_binary(name: str) -> None:
    """Skip locally, fail in CI, when a needed binary is missing."""
    if shutil.which(name) is None:
        msg = f"{name} is not installed (apt-get install -y {name})"
        if os.environ.get("CI"):
            pytest.fail(msg)
        pytest.skip(msg)


def start_registry(root: Path, **kwargs: Any) -> EmbeddedRegistry:
    require_binary("docker-registry")
    reg = EmbeddedRegistry(root, log_path=str(root / "registry.log"), **kwargs)
    reg.start()
    return reg


# The users of the shared htpasswd registry: the token server's, and bob.
HTPASSWD_USERS = {**TOKEN_USERS, "bob": "bob-pw-2"}


def start_htpasswd_registry(root: Path, users: dict[str, str]) -> EmbeddedRegistry:
    """A registry that asks for Basic credentials of these users (bcrypt, as distribution needs)."""
    import bcrypt

    lines = [f"{u}:{bcrypt.hashpw(p.encode(), bcrypt.gensalt(rounds=4)).decode()}" for u, p in users.items()]
    (root / "htpasswd").write_text("\n".join(lines) + "\n")
    return start_registry(root, extra_config=f"auth:\n  htpasswd:\n    realm: test\n    path: {root / 'htpasswd'}\n")


@pytest.fixture(scope="module")
def htpasswd_registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedRegistry]:
    """A registry that needs Basic credentials of HTPASSWD_USERS, for a test module."""
    reg = start_htpasswd_registry(tmp_path_factory.mktemp("htpasswd"), HTPASSWD_USERS)
    yield reg
    reg.stop()


@pytest.fixture
async def auth_client(make_client: Any, htpasswd_registry: EmbeddedRegistry) -> Any:
    """A client of cnr-oci in front of the htpasswd registry."""
    return await make_client(Settings(upstream=htpasswd_registry.url))


@pytest.fixture(scope="session")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedRegistry]:
    reg = start_registry(tmp_path_factory.mktemp("registry"))
    yield reg
    reg.stop()


@pytest.fixture
def own_registry(tmp_path: Path) -> Iterator[EmbeddedRegistry]:
    """A registry of the test's own, for tests that stop or kill it."""
    reg = start_registry(tmp_path)
    yield reg
    reg.stop()


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real redis-server on a free 127.0.0.1 port; yields its URL."""
    require_binary("redis-server")
    require_binary("redis-cli")
    port = free_port()
    proc = subprocess.Popen(["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                             "--appendonly", "no", "--dir", str(tmp_path_factory.mktemp("redis"))],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 10
    while subprocess.run(["redis-cli", "-p", str(port), "ping"],
                         capture_output=True, text=True).stdout.strip() != "PONG":
        assert time.monotonic() < deadline and proc.poll() is None, "redis-server did not start"
        time.sleep(0.05)
    yield f"redis://127.0.0.1:{port}/0"
    proc.terminate()
    proc.wait(10)


@pytest.fixture
def settings(registry: EmbeddedRegistry) -> Settings:
    return Settings(upstream=registry.url, max_body_size=4 * 1024 * 1024, token_secret=TEST_SECRET)


CnrClient = Callable[..., Any]
TEST_SECRET = "test-secret-not-for-production"


@pytest.fixture
async def make_client(aiohttp_client: Any) -> CnrClient:
    async def make(settings: Settings) -> TestClient:
        if settings.token_secret is None:  # never write a secret into ./data from a test
            settings = dataclasses.replace(settings, token_secret=TEST_SECRET)
        # Every response is checked against schemas/openapi.json (tests/openapi_check.py).
        origin: list[str] = []
        check = openapi_check.checker(lambda: origin[0] if origin else None)
        made: TestClient = await aiohttp_client(create_app(settings), middlewares=(check,))
        origin.append(str(made.make_url("")).rstrip("/"))
        return made

    return make


@pytest.fixture
async def client(make_client: CnrClient, settings: Settings) -> TestClient:
    return await make_client(settings)


@pytest.fixture
async def existing(client: TestClient) -> tuple[str, str]:
    """A package with release 1.0.0, so the repository exists."""
    ns, name = unique()
    resp = await client.post(f"/cnr/api/v1/packages/{ns}/{name}", json=body(kpm()))
    assert resp.status == 200
    return ns, name


@pytest.fixture(scope="module")
def token_env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SimpleNamespace]:
    """A real registry in token mode, trusting the `tokens` server (started per test on env.port)."""
    env = start_token_registry(tmp_path_factory.mktemp("token"))
    yield env
    env.registry.stop()


@pytest.fixture
async def tokens(aiohttp_server: Any, token_env: SimpleNamespace) -> TokenServer:
    """The token server of token_env, granting token_server.ACL to token_server.USERS."""
    server = TokenServer(token_env.key, token_env.cert, TOKEN_USERS, TOKEN_ACL)
    await aiohttp_server(server.app(), port=token_env.port)
    return server


@pytest.fixture
async def token_client(make_client: CnrClient, token_env: SimpleNamespace, tokens: TokenServer) -> TestClient:
    return await make_client(Settings(upstream=token_env.registry.url))


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_logreport(report: pytest.TestReport) -> Iterator[None]:
    """In CI a skipped test is a failure: the Makefile installs every tool instead."""
    if os.environ.get("CI") and report.skipped and not hasattr(report, "wasxfail"):
        report.outcome = "failed"
        report.longrepr = f"skipped in CI (install the tool instead): {report.longrepr}"
    yield


@dataclasses.dataclass
class LiveServer:
    """A `cnr-oci serve` process (as users run it) in front of a registry that needs credentials."""

    url: str  # http://127.0.0.1:<port>, what a CNR client is given as its endpoint
    port: int
    registry: EmbeddedRegistry
    users: dict[str, str]
    log_path: Path

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.port}"


LIVE_USERS = {"alice": "alice-pw-1", "bob": "bob-pw-2"}


def start_live_server(
    root: Path, users: dict[str, str] = LIVE_USERS, *extra: str, upstream: Callable[[str], str] | None = None
) -> tuple[subprocess.Popen[bytes], LiveServer]:
    """``upstream``: the URL cnr-oci is given, from the registry's (a proxy in front of it, say)."""
    reg = start_htpasswd_registry(root, users)
    port = free_port()
    log_path = root / "cnr-oci.log"
    url = upstream(reg.url) if upstream is not None else reg.url
    with open(log_path, "wb") as log:
        proc = subprocess.Popen([sys.executable, "-m", "cnr_oci", "serve", "--port", str(port), "--upstream", url,
                                 "--token-secret", TEST_SECRET, "--data-dir", str(root / "data"), *extra],
                                stdout=log, stderr=log)
    helpers.wait_served(proc, port, log_path)
    return proc, LiveServer(f"http://127.0.0.1:{port}", port, reg, dict(users), log_path)


@pytest.fixture(scope="module")
def live_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    """cnr-oci serve on a free port, in front of an htpasswd registry with LIVE_USERS."""
    proc, live = start_live_server(tmp_path_factory.mktemp("live"))
    try:
        yield live
    finally:
        stop_process(proc)
        live.registry.stop()


@pytest.fixture(scope="session")
def appr_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ApprServer]:
    """The real appr 0.7.4 server (filesystem store) on a free port, for the session: a test fills its own
    namespaces (tests/appr_fill.py). Skips when `make clients` has not installed it (a failure in CI)."""
    if not appr_server_installed():
        pytest.skip("appr-server is not installed (make clients, or python tests/clients/install_appr_server.py)")
    install_appr_server()  # a no-op unless its packages or edits changed
    with ApprServer(tmp_path_factory.mktemp("appr-server")) as server:
        yield server
