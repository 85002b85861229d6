"""--blob-redirect against a real distribution with its S3 storage driver on a local S3 server (moto):
the registry answers blob GETs 307 to a presigned URL, and cnr-oci hands that redirect to the client.
The real appr CLI, curl and helm (through the classic repository) follow it and get the same bytes."""

from __future__ import annotations

import asyncio
import hashlib
import secrets
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from yarl import URL

from cnr_oci.settings import Settings
from tests import helpers
from tests.clients.common import client_env, run
from tests.clients.install_appr import main as install_appr
from tests.s3registry import S3Registry, start_s3_registry
from tests.test_helm_repo import chart

API = "/cnr/api/v1/packages"


@pytest.fixture(scope="module")
def s3_registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Registry]:
    reg = start_s3_registry(tmp_path_factory.mktemp("s3"))
    yield reg
    reg.stop()


@pytest.fixture
async def redirecting(make_client, s3_registry):
    return await make_client(Settings(upstream=s3_registry.url, blob_redirect=True))


async def pushed(client, ns: str, name: str, blob: bytes, media_type: str = "helm") -> None:
    resp = await client.post(f"{API}/{ns}/{name}", json=helpers.body(blob, "1.0.0", media_type))
    assert resp.status == 200, await resp.text()


async def test_a_blob_get_is_a_307_to_storage_and_the_bytes_there_are_the_blob(redirecting, s3_registry):
    ns, name = "r" + secrets.token_hex(3), "app"
    blob = chart(name, "1.0.0")
    await pushed(redirecting, ns, name, blob)
    digest = hashlib.sha256(blob).hexdigest()
    for path in (f"{API}/{ns}/{name}/blobs/sha256/{digest}", f"{API}/{ns}/{name}/1.0.0/helm/pull"):
        resp = await redirecting.get(path, allow_redirects=False)
        assert resp.status == 307, path
        location = URL(resp.headers["Location"])
        # To storage (the S3 server), presigned; never cached by a proxy.
        assert location.origin() == URL(s3_registry.s3_url).origin() and "X-Amz-Signature" in location.query
        assert resp.headers["Cache-Control"] == "no-store"
        followed = await redirecting.get(path)  # aiohttp follows it, as clients do
        assert followed.status == 200 and await followed.read() == blob


async def test_redirect_false_json_pulls_and_the_default_stream_through_cnr_oci(make_client, redirecting,
                                                                              s3_registry):
    ns, name = "r" + secrets.token_hex(3), "app"
    blob = chart(name, "1.0.0")
    await pushed(redirecting, ns, name, blob)
    pull = f"{API}/{ns}/{name}/1.0.0/helm/pull"
    streamed = await redirecting.get(pull + "?redirect=false", allow_redirects=False)
    assert streamed.status == 200 and await streamed.read() == blob
    doc = await redirecting.get(pull + "?format=json", allow_redirects=False)
    assert doc.status == 200 and (await doc.json())["blob"]
    # The streamed pull put this small blob in the blob cache: from there on it is served from memory
    # (after the per-identity check), not redirected.
    cached = await redirecting.get(pull, allow_redirects=False)
    assert cached.status == 200 and await cached.read() == blob
    # Without the flag, the same registry's redirect is followed by cnr-oci and the bytes streamed.
    plain = await make_client(Settings(upstream=s3_registry.url))
    resp = await plain.get(pull, allow_redirects=False)
    assert resp.status == 200 and await resp.read() == blob
    # A digest the registry does not know is still a CNR 404.
    missing = await redirecting.get(f"{API}/{ns}/{name}/blobs/sha256/{'0' * 64}", allow_redirects=False)
    assert missing.status == 404 and (await missing.json())["error"]["code"] == "package-not-found"


async def test_curl_appr_and_helm_follow_the_redirect_and_get_the_same_bytes(redirecting, helm, tmp_path):
    ns, name = "r" + secrets.token_hex(3), "web"
    blob = chart(name, "1.0.0")
    await pushed(redirecting, ns, name, blob)
    base = str(redirecting.make_url("")).rstrip("/")
    digest = hashlib.sha256(blob).hexdigest()
    assert shutil.which("curl"), "curl is not installed (apt-get install curl)"
    url = f"{base}{API}/{ns}/{name}/blobs/sha256/{digest}"
    got = await asyncio.to_thread(subprocess.run, ["curl", "-sfL", url], capture_output=True, timeout=30)
    assert got.returncode == 0 and got.stdout == blob
    # helm through the classic repository: the chart file is a redirect too.
    alias = "s3" + secrets.token_hex(2)
    await asyncio.to_thread(helm, "repo", "add", alias, f"{base}/helm/{ns}")
    (tmp_path / "out").mkdir()
    await asyncio.to_thread(helm, "pull", f"{alias}/{name}", "--version", "1.0.0", "-d", str(tmp_path / "out"))
    assert (tmp_path / "out" / f"{name}-1.0.0.tgz").read_bytes() == blob
    resp = await redirecting.get(f"/helm/{ns}/charts/{name}-1.0.0.tgz", allow_redirects=False)
    assert resp.status == 307


async def test_the_appr_cli_pulls_through_the_redirect(redirecting, tmp_path):
    venv = await asyncio.to_thread(install_appr)
    ns, name = "r" + secrets.token_hex(3), "web"
    blob = chart(name, "1.0.0")
    await pushed(redirecting, ns, name, blob)
    base = str(redirecting.make_url("")).rstrip("/")
    home, dest = tmp_path / "home", tmp_path / "dest"
    home.mkdir()
    dest.mkdir()
    p = await asyncio.to_thread(run, venv, "appr", "pull", "-t", "helm", f"{base}/{ns}/{name}@1.0.0", "--tarball",
                                "--dest", str(dest), "--output", "json", home=home, env=client_env(home))
    assert p.returncode == 0, p.stdout + p.stderr
    files = list(Path(dest).glob("*.tar.gz")) + list(Path(dest).glob("*.tgz"))
    assert len(files) == 1 and files[0].read_bytes() == blob
