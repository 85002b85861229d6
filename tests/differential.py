"""Run the same requests against two cnr-oci trees (before and after a refactor) and compare answers.

Used by tests/differential_check.py, which runs only when OLD_TREE names a checkout of the old code.
Each tree is served as users run it (``python -m cnr_oci serve``), with the tree as working
directory and PYTHONPATH, in front of its own real docker-registry.
"""

from __future__ import annotations

import dataclasses
import http.client
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from cnr_oci.embedded import EmbeddedRegistry, free_port, stop_process
from tests import helpers

SECRET = "differential-secret-not-for-production"
# Headers whose values must match (Content-Length is checked against the body instead).
COMPARED_HEADERS = ("Content-Type", "Allow", "WWW-Authenticate", "Retry-After", "Content-Disposition",
                    "Connection", "Access-Control-Allow-Origin", "Access-Control-Allow-Methods", "Vary")
DATE = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}Z")
HEX64 = re.compile(r"(?<![0-9a-f])[0-9a-f]{64}(?![0-9a-f])")
REQUEST_ID = re.compile(r"request id [A-Za-z0-9._:+/=-]+")  # requestctx: an X-Request-ID or 32 hex digits


@dataclasses.dataclass
class Server:
    tree: Path
    proc: subprocess.Popen[bytes]
    port: int
    registry: EmbeddedRegistry
    log_path: Path
    prefix: str = ""

    def repo(self, package: str) -> str:
        """The registry repository of a CNR package."""
        return f"{self.prefix}/{package}" if self.prefix else package

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.port}"

    def stop(self) -> None:
        stop_process(self.proc)


def tree_env(tree: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CNR_OCI_")}
    env["PYTHONPATH"] = str(tree)
    return env


def module_file(tree: Path) -> str:
    """Where ``import cnr_oci`` resolves when run as the server is run."""
    out = subprocess.run([sys.executable, "-c", "import cnr_oci; print(cnr_oci.__file__)"], cwd=tree,
                         env=tree_env(tree), capture_output=True, text=True, check=True)
    return out.stdout.strip()


def start_server(tree: Path, registry: EmbeddedRegistry, root: Path, *extra: str) -> Server:
    """``python -m cnr_oci serve`` from ``tree`` in front of ``registry``; waits for /healthz."""
    assert Path(module_file(tree)).resolve().is_relative_to(tree.resolve()), module_file(tree)
    root.mkdir(parents=True, exist_ok=True)
    port = free_port()
    log_path = root / "cnr-oci.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "cnr_oci", "serve", "--upstream", registry.url, "--port", str(port),
             "--token-secret", SECRET, "--data-dir", str(root / "data"), *extra],
            cwd=tree, env=tree_env(tree), stdout=log, stderr=log)
    helpers.wait_served(proc, port, log_path)
    prefix = extra[extra.index("--repository-prefix") + 1].strip("/") if "--repository-prefix" in extra else ""
    return Server(tree, proc, port, registry, log_path, prefix)


@dataclasses.dataclass
class Answer:
    status: int
    headers: dict[str, str]
    body: bytes


def call(server: Server, method: str, path: str, body: bytes | None = None,
         headers: dict[str, str] | None = None) -> Answer:
    """One request, the path sent byte for byte as given (no normalisation)."""
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        resp = conn.getresponse()
        data = resp.read()
        return Answer(resp.status, {k.title(): v for k, v in resp.getheaders()}, data)
    finally:
        conn.close()


@dataclasses.dataclass
class Step:
    method: str
    path: str
    body: bytes | None = None
    headers: dict[str, str] = dataclasses.field(default_factory=dict)
    note: str = ""
    loose: bool = False  # compare status, code and headers only (the body may name any of several causes)

    # Headers that must differ per server (each server's own login token): (old's, new's).
    split: tuple[dict[str, str], dict[str, str]] | None = None

    @staticmethod
    def json(method: str, path: str, doc: Any, headers: dict[str, str] | None = None, **kw: Any) -> Step:
        return Step(method, path, json.dumps(doc).encode(), {"Content-Type": "application/json", **(headers or {})},
                    **kw)


class Normaliser:
    """Values that differ by nature between two servers: hosts and ports, dates, request ids,
    login tokens, and digests of documents that embed a creation time (any sha256 that is not one
    of the known content digests)."""

    def __init__(self, server: Server, known_digests: set[str]) -> None:
        self.hosts = [(server.host, "<server>"), (server.registry.host, "<registry>"),
                      (f"localhost:{server.port}", "<server>"), (f"'127.0.0.1', {server.registry.port}", "<registry>")]
        self.known = known_digests

    def text(self, s: str) -> str:
        for host, token in self.hosts:
            s = s.replace(host, token)
        s = DATE.sub("<date>", s)
        s = REQUEST_ID.sub("request id <id>", s)
        return HEX64.sub(lambda m: m.group(0) if m.group(0) in self.known else "<doc-digest>", s)

    def value(self, v: Any, key: str = "") -> Any:
        if key in ("token", "request_id") and isinstance(v, str):
            return f"<{key}>"
        if isinstance(v, dict):
            return {k: self.value(x, k) for k, x in v.items()}
        if isinstance(v, list):
            return [self.value(x) for x in v]
        if isinstance(v, str):
            return self.text(v)
        return v

    def answer(self, a: Answer) -> dict[str, Any]:
        out: dict[str, Any] = {"status": a.status}
        for h in COMPARED_HEADERS:
            if h in a.headers:
                out[h] = self.text(a.headers[h])
        length = a.headers.get("Content-Length")
        if length is not None:
            out["Content-Length=len(body)"] = int(length) == len(a.body)
        else:
            out["chunked"] = a.headers.get("Transfer-Encoding")
        try:
            doc = json.loads(a.body)
        except ValueError:
            doc = None
        if doc is not None:
            if isinstance(doc, dict) and "code" in doc:
                out["code"] = doc["code"]
            out["json"] = self.value(doc)
        else:
            out["body"] = self.text(a.body.decode("latin-1"))
        return out


def compare(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """The keys whose values differ, each as 'key: old -> new' (bodies diffed field by field)."""
    diffs = []
    for key in sorted(set(old) | set(new)):
        if old.get(key) != new.get(key) and key != "code":  # the code is compared in the body
            if key == "json":
                found = json_diff(old.get(key), new.get(key))
                flat = {(p, repr(o), repr(n)) for p, o, n in found}
                # The envelope repeats code, message and details under "error": name them once.
                diffs += [f"json{p}: {o!r} -> {n!r}" for p, o, n in found
                          if not (p.startswith(".error.") and (p[6:], repr(o), repr(n)) in flat)]
            else:
                diffs.append(f"{key}: {str(old.get(key))[:300]!r} -> {str(new.get(key))[:300]!r}")
    return diffs


def json_diff(a: Any, b: Any, path: str = "") -> list[tuple[str, Any, Any]]:
    if isinstance(a, dict) and isinstance(b, dict):
        out = []
        for k in sorted(set(a) | set(b), key=str):
            if k not in a or k not in b:
                out.append((f"{path}.{k}", a.get(k, "<absent>"), b.get(k, "<absent>")))
            else:
                out += json_diff(a[k], b[k], f"{path}.{k}")
        return out
    if isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
        return [d for i, (x, y) in enumerate(zip(a, b, strict=True)) for d in json_diff(x, y, f"{path}[{i}]")]
    return [] if a == b else [(path, a, b)]


class Pair:
    """Old and new servers, driven in lockstep; differences are collected, not raised at once."""

    def __init__(self, old: Server, new: Server, known_digests: set[str]) -> None:
        self.old, self.new = old, new
        self.known = known_digests
        self.diffs: list[str] = []
        self.count = 0
        self.statuses: dict[int, int] = {}  # new's answers by status, to see what a run covered

    def run(self, step: Step) -> tuple[Answer, Answer]:
        self.count += 1
        split = step.split or ({}, {})
        t0 = time.monotonic()
        a = call(self.old, step.method, step.path, step.body, {**step.headers, **split[0]})
        b = call(self.new, step.method, step.path, step.body, {**step.headers, **split[1]})
        if os.environ.get("DIFF_SLOW") and time.monotonic() - t0 > float(os.environ["DIFF_SLOW"]):
            print(f"slow {time.monotonic() - t0:.2f}s {step.method} {step.path} {step.note}")
        self.statuses[b.status] = self.statuses.get(b.status, 0) + 1
        old, new = Normaliser(self.old, self.known).answer(a), Normaliser(self.new, self.known).answer(b)
        if step.loose:
            for doc in (old, new):
                if isinstance(doc.get("json"), dict):
                    doc["json"] = {"code": doc["json"].get("code")}
                doc.pop("Content-Length=len(body)", None)
        found = compare(old, new)
        if found:
            label = f"{step.method} {step.path}" + (f" ({step.note})" if step.note else "")
            self.diffs.append(label + "\n    " + "\n    ".join(found))
        return a, b

    def run_all(self, steps: list[Step]) -> None:
        for s in steps:
            self.run(s)

    def report(self) -> str:
        return f"{len(self.diffs)} of {self.count} requests answered differently:\n" + "\n".join(self.diffs)


class ThreadedApp:
    """An aiohttp application (a test's token server) served from a thread of its own, so that
    synchronous tests and subprocess servers can use it."""

    def __init__(self, app: Any, port: int) -> None:
        import asyncio
        import threading

        from aiohttp import web

        self.loop = asyncio.new_event_loop()
        self.runner = web.AppRunner(app)
        self.loop.run_until_complete(self.runner.setup())
        self.loop.run_until_complete(web.TCPSite(self.runner, "127.0.0.1", port).start())
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()

    def stop(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.run_until_complete(self.runner.cleanup())
        self.loop.close()
