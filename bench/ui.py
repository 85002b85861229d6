#!/usr/bin/env python3
"""The package browser's page times, warm, and (with --screenshots) the README's screenshots.

Starts `cnr-oci serve` in front of an htpasswd docker-registry (alice, bob), fills namespace `demo`
(charts with READMEs, channels, a kpm package), `acme`, and --filler packages in `bulk`, then times
each page as alice over one keep-alive connection: a few warm-up requests, then --runs timed ones
(median and p95, milliseconds). Loopback only.

    python bench/ui.py                          # make bench-ui
    python bench/ui.py --screenshots docs       # also the PNGs the README shows (Debian's chromium)
"""

from __future__ import annotations

import argparse
import base64
import http.client
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import machine, pct, table
from cnr_oci.embedded import stop_process
from tests.conftest import start_live_server
from tests.helpers import tarball

README = """# webapp

A small web application behind an nginx, with an optional Redis cache.

## Install

```sh
helm repo add demo http://cnr-oci.example/helm/demo
helm install web demo/webapp --set replicaCount=3
```

## Values

| key | default | what |
|---|---|---|
| `replicaCount` | 2 | pods |
| `redis.enabled` | false | a cache |
"""


def chart(name: str, version: str, readme: str = "") -> bytes:
    yaml = (f"apiVersion: v2\nname: {name}\nversion: {version}\nappVersion: '2.4.1'\ntype: application\n"
            f"description: The {name} service\nhome: https://example.com/{name}\nkeywords: [web, demo]\n")
    files = {f"{name}/Chart.yaml": yaml.encode(), f"{name}/values.yaml": b"replicaCount: 2\nimage:\n  "
             b"repository: nginx\n  tag: '1.27'\nredis:\n  enabled: false\n"}
    if readme:
        files[f"{name}/README.md"] = readme.encode()
    return tarball(files)


class Api:
    """The CNR API and the pages, as alice, over one keep-alive connection."""

    def __init__(self, port: int, password: str) -> None:
        self.conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        self.auth = "Basic " + base64.b64encode(f"alice:{password}".encode()).decode()

    def request(self, method: str, path: str, doc: object = None, accept: str = "application/json") -> int:
        body = json.dumps(doc).encode() if doc is not None else None
        self.conn.request(method, path, body=body, headers={"Authorization": self.auth, "Accept": accept,
                                                            "Content-Type": "application/json"})
        resp = self.conn.getresponse()
        resp.read()
        return resp.status

    def push(self, pkg: str, release: str, blob: bytes, media_type: str = "helm", **more: object) -> None:
        doc = {"blob": base64.b64encode(blob).decode(), "release": release, "media_type": media_type, **more}
        status = self.request("POST", f"/cnr/api/v1/packages/{pkg}?force=true", doc)
        assert status == 200, (pkg, release, status)


def fill(api: Api, filler: int) -> None:
    for version in ("1.0.0", "1.1.0", "2.0.0-rc.1"):
        api.push("demo/webapp", version, chart("webapp", version, README),
                 metadata={"team": "web", "tier": "frontend", "oncall": "#web-oncall"})
    api.request("POST", "/cnr/api/v1/packages/demo/webapp/channels/stable/1.1.0")
    api.request("POST", "/cnr/api/v1/packages/demo/webapp/channels/beta/2.0.0-rc.1")
    api.push("demo/api-gateway", "0.9.2", chart("api-gateway", "0.9.2"))
    api.push("demo/worker", "3.2.0", tarball({"manifest.yaml": b"package: worker\n"}), "kpm")
    api.push("acme/billing", "1.4.0", chart("billing", "1.4.0"))
    api.push("acme/toolbox", "0.3.0", tarball({"manifest.yaml": b"package: toolbox\n"}), "kpm")
    for i in range(filler):
        api.push(f"bulk/pkg{i:04d}", "1.0.0", tarball({"manifest.yaml": f"package: {i}\n".encode()}), "kpm")


PAGES = [("namespaces", "/ui/"), ("packages (demo)", "/ui/packages?namespace=demo"),
         ("packages (all, first 100)", "/ui/packages"), ("search", "/ui/packages?q=web"),
         ("package", "/ui/packages/demo/webapp"), ("release (helm, README)", "/ui/packages/demo/webapp/1.1.0/helm"),
         ("release (kpm)", "/ui/packages/demo/worker/3.2.0/kpm")]


def time_pages(api: Api, runs: int) -> list[list[object]]:
    rows: list[list[object]] = [["page", "median ms", "p95 ms"]]
    for label, path in PAGES:
        for _ in range(5):
            assert api.request("GET", path, accept="text/html") == 200, path
        took = []
        for _ in range(runs):
            start = time.perf_counter()
            api.request("GET", path, accept="text/html")
            took.append((time.perf_counter() - start) * 1000)
        rows.append([label, f"{statistics.median(took):.1f}", f"{pct(took, 95):.1f}"])
    return rows


def screenshots(url: str, password: str, where: Path) -> None:
    from playwright.sync_api import sync_playwright

    from tests.test_ui_browser import ARGS, CHROMIUM

    with tempfile.TemporaryDirectory() as profile, sync_playwright() as p:
        ctx = p.chromium.launch_persistent_context(profile, executable_path=CHROMIUM, headless=True, args=ARGS,
                                                   viewport={"width": 1100, "height": 760})
        page = ctx.new_page()
        page.goto(url + "/ui/login")
        page.get_by_label("User name").fill("alice")
        page.get_by_label("Password").fill(password)
        page.get_by_role("button", name="Log in").click()
        page.wait_for_load_state()
        for name, path in [("namespaces", "/ui/"), ("packages", "/ui/packages?namespace=demo"),
                           ("package", "/ui/packages/demo/webapp"), ("release", "/ui/packages/demo/webapp/1.1.0/helm")]:
            page.goto(url + path)
            page.screenshot(path=str(where / f"ui-{name}.png"), full_page=name != "release")
            print(f"wrote {where / f'ui-{name}.png'}")
        ctx.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=200)
    parser.add_argument("--filler", type=int, default=200, help="kpm packages in namespace bulk")
    parser.add_argument("--screenshots", type=Path, help="write ui-*.png here")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as root:
        proc, live = start_live_server(Path(root))
        try:
            api = Api(live.port, live.users["alice"])
            fill(api, args.filler)
            if args.screenshots:
                screenshots(live.url, live.users["alice"], args.screenshots)
            print(f"Package browser, warm, as alice; {args.runs} requests a page after 5 warm-ups; "
                  f"{args.filler + 5} packages. {machine(load=True)}")
            print(table(time_pages(api, args.runs)))
        finally:
            stop_process(proc)
            live.registry.stop()


if __name__ == "__main__":
    main()
