"""A managed docker-registry child process with filesystem storage on a free loopback port.

Used by ``cnr-oci serve`` when no upstream is given, and by the test fixtures.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import socket
import ssl
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from cnr_oci.errors import CnrOciError

INSTALL_HINT = (
    "the embedded registry needs the 'docker-registry' binary (CNCF distribution); "
    "install it with: apt-get install -y docker-registry  (or pass --upstream URL)"
)

CONFIG = """\
version: 0.1
log:
  level: warn
  accesslog:
    disabled: true
storage:
  filesystem:
    rootdirectory: {root}
  delete:
    enabled: {delete}
  maintenance:
    uploadpurging:
      # A push opens an upload session before its body is read (to prove push rights); a refused
      # push cancels it, and distribution 2.8 still keeps a small stub of each: purge them.
      enabled: true
      age: 2h
      interval: 1h
      dryrun: false
http:
  addr: 127.0.0.1:{port}
  secret: cnr-oci-embedded
{extra}"""


HTPASSWD_CONFIG = """\
auth:
  htpasswd:
    realm: cnr-oci
    path: {path}
"""
# distribution 2.8 accepts only bcrypt entries; cost 10 is Go's bcrypt.DefaultCost, and the
# registry pays it on every request that carries a password.
BCRYPT_ROUNDS = 10
_USERNAME = re.compile(r"^[^\s:#][^\s:]{0,254}$")


class RegistryNotInstalled(CnrOciError):
    pass


class RegistryStartFailed(CnrOciError):
    """docker-registry exited, or did not answer, at start; the message ends with its log's last lines."""


class UserError(CnrOciError):
    """A user name or password the htpasswd file cannot take."""


def htpasswd_path(data_dir: str | os.PathLike[str]) -> Path:
    """The embedded registry's users: ``<data-dir>/htpasswd`` (``cnr-oci user add``)."""
    return Path(data_dir) / "htpasswd"


def has_users(path: Path) -> bool:
    """Whether an htpasswd file names at least one user (an emptied one names none)."""
    try:
        return bool(_read_users(path))
    except OSError:
        return False


def _read_users(path: Path) -> list[tuple[str, str]]:
    if not path.exists():
        return []
    users = []
    for line in path.read_text().splitlines():
        name, sep, hashed = line.strip().partition(":")
        if sep and name and not name.startswith("#"):
            users.append((name, hashed))
    return users


def _write_users(path: Path, users: list[tuple[str, str]]) -> None:
    """Replace the file atomically, mode 0600 from the first byte."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        with os.fdopen(fd, "w") as f:
            f.writelines(f"{name}:{hashed}\n" for name, hashed in users)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o600)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def add_user(data_dir: str | os.PathLike[str], name: str, password: str) -> bool:
    """Add a user (or set a new password) in the htpasswd file; True when the user is new."""
    import bcrypt

    if not _USERNAME.fullmatch(name):
        raise UserError("a user name is 1 to 255 characters, with no space or ':' and not starting with '#'")
    secret = password.encode()
    if not secret:
        raise UserError("the password is empty")
    if len(secret) > 72:
        raise UserError("bcrypt takes at most 72 bytes of password")
    hashed = bcrypt.hashpw(secret, bcrypt.gensalt(rounds=BCRYPT_ROUNDS)).decode()
    path = htpasswd_path(data_dir)
    users = _read_users(path)
    new = all(n != name for n, _ in users)
    _write_users(path, [(n, h) for n, h in users if n != name] + [(name, hashed)])
    return new


def delete_user(data_dir: str | os.PathLike[str], name: str) -> bool:
    """Remove a user from the htpasswd file; False when there was no such user."""
    path = htpasswd_path(data_dir)
    users = _read_users(path)
    kept = [(n, h) for n, h in users if n != name]
    if len(kept) == len(users):
        return False
    _write_users(path, kept)
    return True


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def stop_process(proc: subprocess.Popen[Any], grace: float = 10) -> None:
    """SIGTERM, then SIGKILL after ``grace`` seconds; reaped either way."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(grace)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


class EmbeddedRegistry:
    """Owns one docker-registry process; start() waits until GET /v2/ answers."""

    def __init__(
        self,
        data_dir: str | os.PathLike[str],
        *,
        binary: str = "docker-registry",
        port: int | None = None,
        delete_enabled: bool = True,
        extra_config: str = "",
        log_path: str | None = None,
        tls: bool = False,
        htpasswd: str | os.PathLike[str] | None = None,
    ) -> None:
        self.root = Path(data_dir)
        self.binary = binary
        self.port = port or free_port()
        self.delete_enabled = delete_enabled
        self.extra_config = extra_config
        # warn level, no access log: only what goes wrong, kept for the operator (and for a failed start).
        self.log_path = log_path or str(Path(data_dir) / "registry.log")
        self.tls = tls  # extra_config carries http.tls; readiness is checked without verification
        self.htpasswd = Path(htpasswd) if htpasswd is not None else None  # Basic auth from this file
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"{'https' if self.tls else 'http'}://127.0.0.1:{self.port}"

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self, timeout: float = 20.0) -> None:
        exe = shutil.which(self.binary) or (self.binary if os.path.isfile(self.binary) else None)
        if exe is None:
            raise RegistryNotInstalled(INSTALL_HINT)
        storage = self.root / "registry"
        storage.mkdir(parents=True, exist_ok=True)
        config = self.root / "registry.yml"
        extra = self.extra_config
        if self.htpasswd is not None:
            extra += HTPASSWD_CONFIG.format(path=json.dumps(str(self.htpasswd.resolve())))
        config.write_text(
            CONFIG.format(
                root=storage.resolve(),
                port=self.port,
                delete="true" if self.delete_enabled else "false",
                extra=extra,
            )
        )
        with contextlib.ExitStack() as stack:
            out = stack.enter_context(open(self.log_path, "ab")) if self.log_path else subprocess.DEVNULL
            self.proc = subprocess.Popen([exe, "serve", str(config)], stdout=out, stderr=out)
        self.wait_ready(timeout)

    def wait_ready(self, timeout: float = 20.0) -> None:
        deadline = time.monotonic() + timeout
        while True:
            if self.proc is not None and self.proc.poll() is not None:
                raise RegistryStartFailed(f"docker-registry exited with code {self.proc.returncode}"
                                          + self._log_tail())
            try:
                ctx = ssl._create_unverified_context() if self.tls else None
                with urllib.request.urlopen(self.url + "/v2/", timeout=1, context=ctx):
                    return
            except urllib.error.HTTPError as exc:
                if exc.code == 401:
                    return  # auth configured: it answers, so it is up
            except OSError:
                pass
            if time.monotonic() > deadline:
                self.stop()
                raise RegistryStartFailed(f"docker-registry did not answer on {self.url}/v2/ in {timeout}s"
                                          + self._log_tail())
            time.sleep(0.05)

    def _log_tail(self, lines: int = 5) -> str:
        try:
            tail = Path(self.log_path).read_text(errors="replace").splitlines()[-lines:]
        except OSError:
            return ""
        if not tail:
            return f" (its log, {self.log_path}, is empty)"
        return f"; the last lines of {self.log_path}:\n" + "\n".join(tail)

    def restart(self) -> None:
        """Stop and start again on the same port, with the current settings."""
        self.stop()
        self.start()

    def stop(self) -> None:
        if self.proc is not None:
            stop_process(self.proc, 5)
        self.proc = None

    def kill(self) -> None:
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait()
            self.proc = None
