"""The package type-checks under mypy --strict (style.md, habit 10) and ruff check is clean."""

import shutil
import subprocess
import sys
from pathlib import Path

import pytest


def test_mypy_strict_passes():
    if shutil.which("mypy") is None and subprocess.run([sys.executable, "-m", "mypy", "--version"],
                                                      capture_output=True).returncode != 0:
        pytest.skip("mypy is not installed")
    root = Path(__file__).resolve().parent.parent
    proc = subprocess.run([sys.executable, "-m", "mypy", "--strict", "cnr_oci"], cwd=root,
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_ruff_is_clean():
    root = Path(__file__).resolve().parent.parent
    proc = subprocess.run([sys.executable, "-m", "ruff", "check", "cnr_oci", "tests", "bench"], cwd=root,
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
