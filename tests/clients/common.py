"""The real CNR clients, as their users run them: each from PyPI into its own venv under
.tools/clients/<name>, with the smallest Python 3 edits that let it start. An edit never changes
what a client sends on the wire: that is what the server must accept.

Every edit is listed with its reason (README, Clients). ``make clients`` runs each
tests/clients/install_<name>.py; an install is redone only when its packages or edits change.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
TOOLS = ROOT / ".tools" / "clients"


@dataclass(frozen=True)
class Edit:
    """Replace ``old`` by ``new`` in ``file`` (relative to site-packages), exactly ``count`` times."""

    file: str
    old: str
    new: str
    why: str
    count: int = 1


def venv_of(name: str) -> Path:
    return TOOLS / name


def install(name: str, packages: list[str], edits: list[Edit]) -> Path:
    """Install (or keep) the venv of one client and apply its edits; fails loudly if an edit does not
    match the installed source (a new upstream release, say)."""
    venv = venv_of(name)
    stamp = venv / ".installed"
    key = json.dumps({"packages": packages, "edits": [asdict(e) for e in edits]}, sort_keys=True)
    if stamp.is_file() and stamp.read_text() == key:
        return venv
    shutil.rmtree(venv, ignore_errors=True)
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    pip = [str(venv / "bin" / "python"), "-m", "pip", "install", "-q", "--disable-pip-version-check"]
    for group in packages:  # in order: later groups may pin what earlier ones declared (urllib3)
        subprocess.run([*pip, *group.split()], check=True)
    site = next((venv / "lib").glob("python3*/site-packages"))
    for e in edits:
        path = site / e.file
        text = path.read_text()
        found = text.count(e.old)
        if found != e.count:
            raise SystemExit(f"{name}: {e.file}: expected {e.count} of {e.old!r}, found {found}")
        path.write_text(text.replace(e.old, e.new))
    stamp.write_text(key)
    print(f"installed {name} into {venv} ({len(edits)} edits)", file=sys.stderr)
    return venv


def client_env(home: Path, **extra: str) -> dict[str, str]:
    """A clean environment for a client run: its own HOME (tokens, caches), loopback only."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "VIRTUAL_ENV"))}
    env.update(HOME=str(home), NO_PROXY="*", no_proxy="*", **extra)
    return env


def run(venv: Path, program: str, *args: str, home: Path, cwd: Path | None = None, stdin: str | None = None,
        env: dict[str, str] | None = None, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """Run one of the client's console scripts as a user would."""
    return subprocess.run([str(venv / "bin" / program), *args], capture_output=True, text=True, timeout=timeout,
                          cwd=cwd or home, input=stdin, env=env or client_env(home))
