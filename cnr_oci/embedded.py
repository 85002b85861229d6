"""A managed docker-registry child process with filesystem storage on a free loopback port.

Used by ``cnr-oci serve`` when no upstream is given, and by the test fixtures.
"""

from __future__ import annotations

import os
import shutil
import socket
import ssl
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

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
      enabled: false
http:
  addr: 127.0.0.1:{port}
  secret: cnr-oci-embedded
{extra}"""


class RegistryNotInstalled(RuntimeError):
    pass


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


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
    ) -> None:
        self.root = Path(data_dir)
        self.binary = binary
        self.port = port or free_port()
        self.delete_enabled = delete_enabled
        self.extra_config = extra_config
        self.log_path = log_path
        self.tls = tls  # extra_config carries http.tls; readiness is checked without verification
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
        config.write_text(
            CONFIG.format(
                root=storage.resolve(),
                port=self.port,
                delete="true" if self.delete_enabled else "false",
                extra=self.extra_config,
            )
        )
        out = open(self.log_path, "ab") if self.log_path else subprocess.DEVNULL
        try:
            self.proc = subprocess.Popen([exe, "serve", str(config)], stdout=out, stderr=out)
        finally:
            if self.log_path:
                out.close()  # type: ignore[union-attr]
        self.wait_ready(timeout)

    def wait_ready(self, timeout: float = 20.0) -> None:
        deadline = time.monotonic() + timeout
        while True:
            if self.proc is not None and self.proc.poll() is not None:
                raise RuntimeError(f"docker-registry exited with code {self.proc.returncode}")
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
                raise RuntimeError(f"docker-registry did not answer on {self.url}/v2/ in {timeout}s")
            time.sleep(0.05)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    def kill(self) -> None:
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait()
            self.proc = None
