"""The real helm CLI (v3.8.1, the first release with OCI support) against cnr-oci's storage."""

from __future__ import annotations

import os
import shutil
import subprocess

import pytest

from tests import helpers
from tests.helpers import body, chart, kpm, unique

API = "/cnr/api/v1/packages"


@pytest.fixture
def helm(tmp_path):
    exe = shutil.which("helm")
    if exe is None:
        if os.environ.get("CI"):
            pytest.fail("helm is not installed: `make helm` puts it in .tools/")
        pytest.skip("helm is not installed (make helm)")
    env = {**os.environ, **{f"HELM_{k}_HOME": str(tmp_path / k.lower()) for k in ("CACHE", "CONFIG", "DATA")}}

    (tmp_path / "out").mkdir()  # helm 3.8 pull -d does not create it

    def run(*args: str) -> str:
        proc = subprocess.run([exe, *args], capture_output=True, text=True, env=env, cwd=tmp_path, timeout=60)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        return proc.stdout + proc.stderr

    return run


async def test_helm_pulls_a_chart_pushed_through_cnr(client, registry, helm, tmp_path):
    ns, name = unique()
    tgz = chart(name, "1.0.0")
    assert (await client.post(f"{API}/{ns}/{name}", json=body(tgz, media_type="helm"))).status == 200
    helm("pull", f"oci://{registry.host}/{ns}/{name}", "--version", "1.0.0", "-d", "out")
    assert (tmp_path / "out" / f"{name}-1.0.0.tgz").read_bytes() == tgz
    assert f"name: {name}" in helm("show", "chart", f"oci://{registry.host}/{ns}/{name}", "--version", "1.0.0")


async def test_a_chart_pushed_with_helm_shows_up_through_cnr(client, registry, helm, tmp_path):
    ns, name = unique()
    tgz = chart(name, "0.2.0")
    (tmp_path / f"{name}-0.2.0.tgz").write_bytes(tgz)
    helm("push", f"{name}-0.2.0.tgz", f"oci://{registry.host}/{ns}")
    manifests = await (await client.get(f"{API}/{ns}/{name}")).json()
    assert [(m["release"], m["content"]["digest"]) for m in manifests] == [("0.2.0", helpers.sha(tgz))]
    assert await (await client.get(f"{API}/{ns}/{name}/0.2.0/helm/pull")).read() == tgz
    # helm 3.8.1 writes no org.opencontainers.image.created: the dates are null, never "".
    manifest, _ = helpers.manifest(registry.url, f"{ns}/{name}", "0.2.0")
    created = (manifest.get("annotations") or {}).get("org.opencontainers.image.created")
    listed = await (await client.get(API, params={"namespace": ns})).json()
    assert manifests[0]["created_at"] == created and listed[0]["created_at"] == created
    assert listed[0]["updated_at"] == created and created is None


async def test_helm_3_8_pulls_through_a_multi_type_index(client, registry, helm, tmp_path):
    ns, name = unique()
    tgz = chart(name, "1.0.0")
    assert (await client.post(f"{API}/{ns}/{name}", json=body(tgz, media_type="helm"))).status == 200
    assert (await client.post(f"{API}/{ns}/{name}", json=body(kpm(), media_type="kpm"))).status == 200
    helm("pull", f"oci://{registry.host}/{ns}/{name}", "--version", "1.0.0", "-d", "out")
    assert (tmp_path / "out" / f"{name}-1.0.0.tgz").read_bytes() == tgz


async def test_helm_pulls_a_chart_named_unlike_its_package(client, registry, helm, tmp_path):
    """helm 3.8.1 pulls by reference and names the file after the repository, not the chart
    (as docs/storage.md says); the bytes are the chart's."""
    ns, name = unique()
    tgz = chart("othername", "1.0.0")
    assert (await client.post(f"{API}/{ns}/{name}", json=body(tgz, media_type="helm"))).status == 200
    helm("pull", f"oci://{registry.host}/{ns}/{name}", "--version", "1.0.0", "-d", "out")
    assert [p.name for p in (tmp_path / "out").iterdir()] == [f"{name}-1.0.0.tgz"]
    assert (tmp_path / "out" / f"{name}-1.0.0.tgz").read_bytes() == tgz
    assert "name: othername" in helm("show", "chart", f"oci://{registry.host}/{ns}/{name}", "--version", "1.0.0")
