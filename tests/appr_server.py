"""The real appr 0.7.4 server (tests/clients/install_appr_server.py) as a test fixture: the reference CNR
registry that `cnr-oci migrate --from URL` reads (issue 11).

It runs as its operators ran it, `appr run-server --db-class filesystem` with the store in DATABASE_URL,
on a free 127.0.0.1 port. It serves only under /cnr; ``url`` is the bare http://127.0.0.1:PORT.
"""

from __future__ import annotations

import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path
from types import TracebackType

from cnr_oci.embedded import free_port, stop_process
from tests.clients.common import client_env, venv_of

NAME = "appr-server"


def installed() -> bool:
    """Whether `make clients` (tests/clients/install_appr_server.py) has installed the server's venv."""
    return (venv_of(NAME) / ".installed").is_file() and (venv_of(NAME) / "bin" / "appr").is_file()


class ApprServer:
    """Owns one `appr run-server` process with a fresh filesystem store under ``root``."""

    def __init__(self, root: Path, venv: Path | None = None, start_timeout: float = 30) -> None:
        self.root = root
        self.venv = venv or venv_of(NAME)
        self.storage = root / "db"
        self.log_path = root / "appr-server.log"
        self.start_timeout = start_timeout
        self.port = 0
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        """http://127.0.0.1:PORT; the API is under /cnr/api/v1 (the client's business)."""
        return f"http://127.0.0.1:{self.port}"

    @property
    def api(self) -> str:
        return f"{self.url}/cnr/api/v1"

    def start(self) -> None:
        """Start the server and wait until GET /cnr/api/v1/packages answers 200."""
        self.storage.mkdir(parents=True, exist_ok=True)
        home = self.root / "home"
        home.mkdir(exist_ok=True)
        self.port = free_port()
        args = [str(self.venv / "bin" / "appr"), "run-server", "-p", str(self.port), "-b", "127.0.0.1",
                "--db-class", "filesystem"]
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(args, stdout=log, stderr=log, stdin=subprocess.DEVNULL,
                                         env=client_env(home, DATABASE_URL=str(self.storage)))
        deadline = time.monotonic() + self.start_timeout
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"appr run-server exited {self.proc.returncode}: {self.log_tail()}")
            try:
                with urllib.request.urlopen(f"{self.api}/packages", timeout=2) as resp:
                    if resp.status == 200:
                        return
            except urllib.error.HTTPError as e:
                e.close()
            except OSError:  # refused while it starts
                pass
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"appr run-server did not answer in {self.start_timeout} s: {self.log_tail()}")
            time.sleep(0.1)

    def stop(self) -> None:
        """Terminate, then kill after 10 s."""
        if self.proc is None:
            return
        stop_process(self.proc)
        self.proc = None

    def log_tail(self, n: int = 4000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-n:]
        except OSError:
            return ""

    def __enter__(self) -> ApprServer:
        self.start()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()
