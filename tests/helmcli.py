"""The real helm CLIs (3.8.1 and 4.1.4, from `make helm`) as a pytest fixture: `helm(*args, oci=False)`."""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.clients.common import ROOT

Helm = Callable[..., str]


def helm_exe(version: str) -> str:
    """helm 3.8.1 is .tools/helm, helm 4.1.4 .tools/helm4/helm (make helm), here or beside the helm on PATH."""
    rel = "helm" if version == "3" else "helm4/helm"
    found = shutil.which("helm")
    for cand in (ROOT / ".tools" / rel, *([Path(found).parent / rel] if found else [])):
        if cand.is_file() and os.access(cand, os.X_OK):
            return str(cand)
    if os.environ.get("CI"):
        pytest.fail(f"helm {version} is not installed: `make helm` puts it in .tools/")
    pytest.skip(f"helm {version} is not installed (make helm)")


@pytest.fixture(params=["3", "4"], ids=["helm3.8.1", "helm4.1.4"])
def helm(request: pytest.FixtureRequest, tmp_path: Path) -> Helm:
    """Runs one helm with its own homes. helm 4 talks https to a registry unless given --plain-http
    (even on 127.0.0.1; helm 3.8.1 has no such flag and uses http there): `oci=True` adds it."""
    exe = helm_exe(request.param)
    env = {**os.environ,
           **{f"HELM_{k}_HOME": str(tmp_path / "helmhome" / k.lower()) for k in ("CACHE", "CONFIG", "DATA")}}
    plain = ["--plain-http"] if request.param == "4" else []

    def run(*args: str, oci: bool = False, cwd: Path = tmp_path) -> str:
        proc = subprocess.run([exe, *args, *(plain if oci else [])], capture_output=True, text=True, env=env,
                              cwd=cwd, timeout=60)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        return proc.stdout + proc.stderr

    run.version = request.param  # type: ignore[attr-defined]
    return run
