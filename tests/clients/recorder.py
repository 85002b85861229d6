"""A recording reverse proxy on 127.0.0.1 for the client tests: the client is pointed at it, it forwards
every request to cnr-oci unchanged and keeps what went over the wire, so a test can assert what the real
client sent (a push's exact blob, ``"manifest_name": null``) and what it got back (a raw pull's bytes, a 409)."""

from __future__ import annotations

import http.client
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import urlsplit


@dataclass
class Exchange:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes
    status: int
    response: bytes


class Recorder:
    """Forward to ``upstream`` (http://host:port); ``.url`` is where clients go; ``.log`` what they did."""

    def __init__(self, upstream: str) -> None:
        self.log: list[Exchange] = []
        target = urlsplit(upstream)
        recorder = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def _forward(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                headers = {k: v for k, v in self.headers.items() if k.lower() not in ("host", "connection")}
                conn = http.client.HTTPConnection(target.hostname or "127.0.0.1", target.port, timeout=60)
                conn.request(self.command, self.path, body=body or None, headers=headers)
                resp = conn.getresponse()
                data = resp.read()
                conn.close()
                recorder.log.append(Exchange(self.command, self.path, headers, body, resp.status, data))
                self.send_response(resp.status)
                for k, v in resp.getheaders():
                    if k.lower() not in ("transfer-encoding", "connection", "content-length", "date", "server"):
                        self.send_header(k, v)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            do_GET = do_POST = do_DELETE = do_PUT = do_HEAD = _forward

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def since(self, mark: int) -> list[Exchange]:
        return self.log[mark:]

    def find(self, mark: int, method: str, contains: str = "") -> Iterator[Exchange]:
        return (e for e in self.log[mark:] if e.method == method and contains in e.path)

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
