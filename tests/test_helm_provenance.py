"""Signed charts: `helm package --sign` (a throwaway GPG key), the .prov uploaded through ChartMuseum's API
or pushed by `helm push`, stored as helm's provenance layer, and `helm pull --verify` through the classic
repository (helm 3.8.1 and 4.1.4 check the signature: the oracle)."""

from __future__ import annotations

import asyncio
import io
import os
import secrets
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from cnr_oci import layout
from cnr_oci.settings import Settings
from tests import helpers
from tests.test_chartmuseum_api import CM, form, upload
from tests.test_helm_repo import chart

SIGNER = "cnr-oci test signer"


@pytest.fixture(scope="module")
def keyring() -> Iterator[Path]:
    """A fresh GPG key (RSA: helm's OpenPGP library has no EdDSA), exported as the old-style secret and
    public keyrings helm reads. GNUPGHOME is short: gpg-agent's socket path has a length limit."""
    if shutil.which("gpg") is None:
        if os.environ.get("CI"):
            pytest.fail("gpg is not installed (apt-get install gnupg)")
        pytest.skip("gpg is not installed")
    home = Path(tempfile.mkdtemp(prefix="g", dir="/tmp"))
    env = {**os.environ, "GNUPGHOME": str(home)}
    gpg = ["gpg", "--batch", "--quiet", "--pinentry-mode", "loopback", "--passphrase", ""]
    try:
        subprocess.run([*gpg, "--quick-gen-key", f"{SIGNER} <signer@example.invalid>", "rsa2048", "sign",
                        "never"], env=env, check=True, timeout=60)
        (home / "secring.gpg").write_bytes(subprocess.run([*gpg, "--export-secret-keys"], env=env, check=True,
                                                          capture_output=True, timeout=30).stdout)
        (home / "pubring.gpg").write_bytes(subprocess.run([*gpg, "--export"], env=env, check=True,
                                                          capture_output=True, timeout=30).stdout)
        yield home
    finally:
        subprocess.run(["gpgconf", "--kill", "gpg-agent"], env=env, check=False, timeout=30)
        shutil.rmtree(home, ignore_errors=True)


def signed_chart(helm, keyring: Path, where: Path, name: str, version: str) -> tuple[bytes, bytes]:
    """`helm package --sign`: the chart and its .prov."""
    src = where / "src" / name
    (src / "templates").mkdir(parents=True)
    (src / "Chart.yaml").write_text(f"apiVersion: v2\nname: {name}\nversion: {version}\ndescription: signed\n")
    (src / "values.yaml").write_text("a: 1\n")
    helm("package", "--sign", "--key", SIGNER, "--keyring", str(keyring / "secring.gpg"), str(src),
         "-d", str(where))
    tgz = where / f"{name}-{version}.tgz"
    return tgz.read_bytes(), Path(str(tgz) + ".prov").read_bytes()


async def verified_pull(client, helm, keyring: Path, ns: str, name: str, version: str, out: Path) -> str:
    """helm repo add + pull --verify through /helm/<ns>: helm checks the signature and the chart's hash."""
    alias = "s" + secrets.token_hex(3)
    await asyncio.to_thread(helm, "repo", "add", alias, str(client.make_url(f"/helm/{ns}")))
    out.mkdir(exist_ok=True)
    return await asyncio.to_thread(helm, "pull", f"{alias}/{name}", "--version", version, "--verify",
                                   "--keyring", str(keyring / "pubring.gpg"), "-d", str(out))


async def test_a_signed_chart_uploaded_with_its_prov_is_verified_by_helm_pull(client, registry, helm, keyring,
                                                                            tmp_path):
    ns = "p" + secrets.token_hex(3)
    tgz, prov = await asyncio.to_thread(signed_chart, helm, keyring, tmp_path, "web", "1.0.0")
    resp = await upload(client, ns, form(tgz, prov=prov))  # cm-push sends both fields in one form
    assert (resp.status, await resp.json()) == (201, {"saved": True})
    # One manifest: the chart, then helm's provenance layer, as helm push writes it.
    m = await (await client.get(f"/helm/{ns}/charts/web-1.0.0.tgz.prov")).read()
    assert m == prov
    manifest = helpers.manifest(registry.url, f"{ns}/web", "1.0.0")[0]
    assert [x["mediaType"] for x in manifest["layers"]] == [layout.HELM_LAYER, layout.HELM_PROV]
    assert manifest["layers"][1]["digest"] == layout.sha256(prov)
    out = await verified_pull(client, helm, keyring, ns, "web", "1.0.0", tmp_path / "out")
    assert "Signed by: cnr-oci test signer" in out and (tmp_path / "out" / "web-1.0.0.tgz").read_bytes() == tgz
    # helm pull oci:// straight from the registry verifies the same release (its provenance layer).
    (tmp_path / "oci").mkdir()
    oci = await asyncio.to_thread(helm, "pull", f"oci://{registry.host}/{ns}/web", "--version", "1.0.0", "--verify",
                                  "--keyring", str(keyring / "pubring.gpg"), "-d", str(tmp_path / "oci"), oci=True)
    assert "Signed by: cnr-oci test signer" in oci and (tmp_path / "oci" / "web-1.0.0.tgz").read_bytes() == tgz
    # The CNR pull is the same release: the chart's bytes.
    assert await (await client.get(f"/cnr/api/v1/packages/{ns}/web/1.0.0/helm/pull")).read() == tgz


async def test_helm_pull_verify_fails_when_the_prov_was_signed_by_another_key(client, helm, keyring, tmp_path):
    """The oracle can fail: a keyring without the signer's key makes helm refuse the same download."""
    ns = "p" + secrets.token_hex(3)
    tgz, prov = await asyncio.to_thread(signed_chart, helm, keyring, tmp_path, "web", "1.0.0")
    assert (await upload(client, ns, form(tgz, prov=prov))).status == 201
    empty = tmp_path / "empty.gpg"
    empty.write_bytes(b"")
    alias = "x" + secrets.token_hex(3)
    await asyncio.to_thread(helm, "repo", "add", alias, str(client.make_url(f"/helm/{ns}")))
    with pytest.raises(AssertionError):
        await asyncio.to_thread(helm, "pull", f"{alias}/web", "--version", "1.0.0", "--verify", "--keyring",
                                str(empty), "-d", str(tmp_path))


async def test_a_prov_posted_alone_joins_its_charts_release_and_409_unless_force(client, registry, helm, keyring,
                                                                               tmp_path):
    ns = "p" + secrets.token_hex(3)
    tgz, prov = await asyncio.to_thread(signed_chart, helm, keyring, tmp_path, "app", "2.1.0")
    assert (await client.get(f"/helm/{ns}/charts/app-2.1.0.tgz.prov")).status == 404
    resp = await client.post(f"{CM}/{ns}/prov", data=prov)
    assert resp.status == 404 and "upload the chart first" in (await resp.json())["error"]
    assert (await upload(client, ns, tgz)).status == 201
    before = helpers.manifest(registry.url, f"{ns}/app", "2.1.0")[0]
    resp = await client.post(f"{CM}/{ns}/prov", data=prov)
    assert (resp.status, await resp.json()) == (201, {"saved": True})
    after = helpers.manifest(registry.url, f"{ns}/app", "2.1.0")[0]
    # Same chart, config and annotations; one more layer.
    assert after["config"] == before["config"] and after["annotations"] == before["annotations"]
    assert after["layers"][0] == before["layers"][0] and after["layers"][1]["mediaType"] == layout.HELM_PROV
    assert await (await client.get(f"/helm/{ns}/charts/app-2.1.0.tgz.prov")).read() == prov
    out = await verified_pull(client, helm, keyring, ns, "app", "2.1.0", tmp_path / "out")
    assert "Chart Hash Verified" in out
    resp = await client.post(f"{CM}/{ns}/prov", data=prov)
    assert resp.status == 409 and "already exists" in (await resp.json())["error"]
    assert (await client.post(f"{CM}/{ns}/prov?force", data=prov)).status == 201


async def test_a_prov_that_signs_other_bytes_is_refused_and_nothing_changes(client, registry, helm, keyring,
                                                                          tmp_path):
    ns = "p" + secrets.token_hex(3)
    _, prov = await asyncio.to_thread(signed_chart, helm, keyring, tmp_path, "web", "1.0.0")
    other = chart("web", "1.0.0")  # same name and version, other bytes
    resp = await upload(client, ns, form(other, prov=prov))
    assert resp.status == 400 and "does not sign" in (await resp.json())["error"]
    assert helpers.tags(registry.url, f"{ns}/web") == []
    assert (await upload(client, ns, other)).status == 201
    resp = await client.post(f"{CM}/{ns}/prov", data=prov)
    assert resp.status == 400 and "does not sign" in (await resp.json())["error"]
    assert len(helpers.manifest(registry.url, f"{ns}/web", "1.0.0")[0]["layers"]) == 1
    for junk in (b"", b"plain text", b"-----BEGIN PGP SIGNED MESSAGE-----\nname: web\n", secrets.token_bytes(2048)):
        resp = await client.post(f"{CM}/{ns}/prov", data=junk)
        assert resp.status == 400 and set(await resp.json()) == {"error"}, junk[:20]
    assert (await client.post(f"{CM}/{ns}/prov", data=io.BytesIO(b"x" * (2 << 20)))).status == 413


async def test_helm_push_of_a_signed_chart_is_verified_through_the_classic_repository(client, registry, helm,
                                                                                    keyring, tmp_path):
    """helm push sends the .prov beside the chart as its provenance layer; the classic repository serves
    it, and helm pull --verify of the helm-pushed chart works through cnr-oci."""
    ns = "p" + secrets.token_hex(3)
    tgz, prov = await asyncio.to_thread(signed_chart, helm, keyring, tmp_path, "pushed", "0.3.0")
    await asyncio.to_thread(helm, "push", str(tmp_path / "pushed-0.3.0.tgz"), f"oci://{registry.host}/{ns}",
                            oci=True)
    layers = helpers.manifest(registry.url, f"{ns}/pushed", "0.3.0")[0]["layers"]
    # helm 3.8.1 writes the provenance layer first, helm 4.1.4 second (cnr-oci writes helm 4's order).
    assert sorted(x["mediaType"] for x in layers) == sorted([layout.HELM_LAYER, layout.HELM_PROV])
    assert await (await client.get(f"/helm/{ns}/charts/pushed-0.3.0.tgz.prov")).read() == prov
    out = await verified_pull(client, helm, keyring, ns, "pushed", "0.3.0", tmp_path / "out")
    assert "Signed by" in out and (tmp_path / "out" / "pushed-0.3.0.tgz").read_bytes() == tgz


async def test_disable_force_overwrite_makes_force_a_409(make_client, registry):
    client = await make_client(Settings(upstream=registry.url, disable_force_overwrite=True))
    ns = "f" + secrets.token_hex(3)
    first = chart("app", "1.0.0")
    assert (await upload(client, ns, first)).status == 201
    resp = await upload(client, ns, chart("app", "1.0.0", "keywords: [x]\n"), query="?force")
    assert resp.status == 409 and "already exists" in (await resp.json())["error"]
    assert await (await client.get(f"/helm/{ns}/charts/app-1.0.0.tgz")).read() == first


async def test_a_force_push_of_the_same_chart_keeps_its_provenance_and_of_another_drops_it(client, helm, keyring,
                                                                                          tmp_path):
    ns = "p" + secrets.token_hex(3)
    tgz, prov = await asyncio.to_thread(signed_chart, helm, keyring, tmp_path, "web", "1.3.0")
    assert (await upload(client, ns, form(tgz, prov=prov))).status == 201
    api = f"/cnr/api/v1/packages/{ns}/web"
    resp = await client.post(api, json=helpers.body(tgz, "1.3.0", "helm", force=True))
    assert resp.status == 200, await resp.text()
    assert await (await client.get(f"/helm/{ns}/charts/web-1.3.0.tgz.prov")).read() == prov
    resp = await client.post(api, json=helpers.body(chart("web", "1.3.0"), "1.3.0", "helm", force=True))
    assert resp.status == 200
    assert (await client.get(f"/helm/{ns}/charts/web-1.3.0.tgz.prov")).status == 404
