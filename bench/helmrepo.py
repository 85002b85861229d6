#!/usr/bin/env python3
"""cnr-oci's classic helm repository at scale: a namespace of 1,000 charts x 5 versions.

Fills a real docker-registry directly, without cnr-oci: namespace `charts` in the layout cnr-oci writes
(its uploads, CNR pushes and migrations: helm's layout plus a copy of the config in an annotation), and
namespace `pushed` (a fifth of the size) as `helm push` writes it, whose configs must be read. Starts
`cnr-oci serve` in front of it and times GET /helm/<ns>/index.yaml cold (first request), warm (from
memory), as a 304, and after one upload through cnr-oci, with the registry requests each made.
Loopback only.

    python bench/helmrepo.py              # 1,000 charts x 5 versions (make bench-helmrepo)
    python bench/helmrepo.py --quick      # 100 x 5
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import io
import json
import shlex
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

import aiohttp

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench.common import machine as common_machine
from bench.common import wait_http
from cnr_oci import helm
from cnr_oci.embedded import EmbeddedRegistry, free_port

MANIFEST = "application/vnd.oci.image.manifest.v1+json"
HELM_CONFIG = "application/vnd.cncf.helm.config.v1+json"
HELM_LAYER = "application/vnd.cncf.helm.chart.content.v1.tar+gzip"


def sha(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def tgz(name: str, version: str) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as t:
        data = f"apiVersion: v2\nname: {name}\nversion: {version}\ndescription: bench chart\n".encode()
        info = tarfile.TarInfo(f"{name}/Chart.yaml")
        info.size = len(data)
        t.addfile(info, io.BytesIO(data))
    return buf.getvalue()


async def put_blob(s: aiohttp.ClientSession, reg: str, repo: str, data: bytes) -> str:
    digest = sha(data)
    async with s.post(f"{reg}/v2/{repo}/blobs/uploads/") as r:
        loc = r.headers["Location"]
    sep = "&" if "?" in loc else "?"
    url = loc if loc.startswith("http") else reg + loc
    async with s.put(f"{url}{sep}digest={digest}", data=data,
                     headers={"Content-Type": "application/octet-stream"}) as r:
        assert r.status == 201, r.status
    return digest


async def push_chart(s: aiohttp.ClientSession, reg: str, ns: str, i: int, versions: int, ours: bool) -> None:
    """One chart's versions: as cnr-oci writes them (``ours``), else as helm push does."""
    name = f"chart{i:04d}"
    repo = f"{ns}/{name}"
    for v in range(versions):
        version = f"1.{v}.0"
        blob = tgz(name, version)
        chart = {"name": name, "version": version, "description": "bench chart", "apiVersion": "v2"}
        layer_digest = sha(blob)
        config, doc = helm.documents(chart, version, layer_digest, len(blob), "2026-01-01T00:00:00Z", None)
        if not ours:  # helm push: no config copy, no layer title
            doc["annotations"].pop("vnd.cnr.package.chart")
            doc["layers"][0].pop("annotations")
        await put_blob(s, reg, repo, blob)
        await put_blob(s, reg, repo, config)
        async with s.put(f"{reg}/v2/{repo}/manifests/{version}", data=json.dumps(doc).encode(),
                         headers={"Content-Type": MANIFEST}) as r:
            assert r.status == 201, r.status


async def fill(reg: str, namespaces: dict[str, tuple[int, bool]], versions: int) -> float:
    start = time.perf_counter()
    sem = asyncio.Semaphore(16)
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=32)) as s:
        async def one(ns: str, i: int, ours: bool) -> None:
            async with sem:
                await push_chart(s, reg, ns, i, versions, ours)
        await asyncio.gather(*(one(ns, i, ours) for ns, (charts, ours) in namespaces.items() for i in range(charts)))
    return time.perf_counter() - start


async def upstream_requests(s: aiohttp.ClientSession, url: str) -> dict[str, float]:
    async with s.get(url + "/metrics") as r:
        text = await r.text()
    out: dict[str, float] = {}
    for line in text.splitlines():
        if line.startswith("cnr_oci_upstream_requests_total{"):
            method = line.split('method="', 1)[1].split('"', 1)[0]
            out[method] = out.get(method, 0) + float(line.rsplit(" ", 1)[1])
    return out


def delta(after: dict[str, float], before: dict[str, float]) -> dict[str, int]:
    return {k: int(after.get(k, 0) - before.get(k, 0)) for k in after if after.get(k, 0) != before.get(k, 0)}


async def measure(url: str, ns: str, entries: int, upload: bool) -> dict[str, object]:
    path = f"{url}/helm/{ns}/index.yaml"
    async with aiohttp.ClientSession() as s:
        before = await upstream_requests(s, url)
        t = time.perf_counter()
        async with s.get(path, headers={"Accept-Encoding": "identity"}) as r:
            body = await r.read()
            etag = r.headers["ETag"]
        cold = time.perf_counter() - t
        after = await upstream_requests(s, url)
        warm, not_modified = [], []
        for _ in range(20):
            t = time.perf_counter()
            async with s.get(path, headers={"Accept-Encoding": "identity"}) as r:
                await r.read()
            warm.append(time.perf_counter() - t)
        for _ in range(50):
            t = time.perf_counter()
            async with s.get(path, headers={"If-None-Match": etag}) as r:
                assert r.status == 304, r.status
            not_modified.append(time.perf_counter() - t)
        result: dict[str, object] = {}
        if upload:  # one upload through cnr-oci, then the index again: only that package is read again
            async with s.post(f"{url}/helm/api/{ns}/charts", data=tgz("chart0007", "9.0.0")) as r:
                assert r.status == 201, await r.text()
            before_write = await upstream_requests(s, url)
            t = time.perf_counter()
            async with s.get(path, headers={"Accept-Encoding": "identity"}) as r:
                assert b"9.0.0" in await r.read()
            result["after_upload_ms"] = round((time.perf_counter() - t) * 1000, 1)
            result["after_upload_requests"] = delta(await upstream_requests(s, url), before_write)
    listed = body.count(b"\n  - ") if body else 0
    return {"entries_expected": entries, "index_bytes": len(body), "entries_listed": listed,
            "cold_s": round(cold, 2), "warm_p50_ms": round(statistics.median(warm) * 1000, 2),
            "not_modified_p50_ms": round(statistics.median(not_modified) * 1000, 2),
            "cold_upstream_requests": delta(after, before), **result}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    charts, versions = (100, 5) if args.quick else (1000, 5)
    command = "python " + " ".join(shlex.quote(a) for a in sys.argv)
    with tempfile.TemporaryDirectory(prefix="cnr-oci-helmbench-") as tmp:
        reg = EmbeddedRegistry(Path(tmp) / "registry", log_path=str(Path(tmp) / "registry.log"))
        reg.start()
        port = free_port()
        server = None
        try:
            spaces = {"charts": (charts, True), "pushed": (charts // 5, False)}
            fill_s = asyncio.run(fill(reg.url, spaces, versions))
            server = subprocess.Popen(
                [sys.executable, "-m", "cnr_oci", "serve", "--port", str(port), "--upstream", reg.url,
                 "--log-level", "warning", "--token-secret", "bench-secret-not-for-production", "--cache-ttl", "60"],
                cwd=str(Path(__file__).resolve().parent.parent))
            url = f"http://127.0.0.1:{port}"
            wait_http(url + "/healthz")
            results = {ns: asyncio.run(measure(url, ns, n * versions, ns == "charts"))
                       for ns, (n, _) in spaces.items()}
        finally:
            if server is not None:
                server.terminate()
                server.wait(30)
            reg.stop()
    machine = common_machine(load=True)
    print(f"# cnr-oci helm repository benchmark\n\ncommand: {command}\nmachine: {machine}\n")
    print(f"Filled directly in {fill_s:.1f} s: `charts`, {charts} charts x {versions} versions as cnr-oci writes "
          f"them; `pushed`, {charts // 5} x {versions} as helm push writes them\n")
    print("| figure | charts (cnr-oci's layout) | pushed (helm push's layout) | target |\n|---|---|---|---|")
    a, b = results["charts"], results["pushed"]
    rows = [("entries listed", "entries_listed", "all"), ("index.yaml bytes", "index_bytes", ""),
            ("cold index.yaml (first request), s", "cold_s", "<= 15 s for 5,000 entries"),
            ("warm index.yaml, p50 ms", "warm_p50_ms", "<= 50 ms"), ("304, p50 ms", "not_modified_p50_ms", "<= 5 ms"),
            ("registry requests of the cold build", "cold_upstream_requests",
             "<= 1 tag list a package, 1 manifest a release; configs only where needed")]
    for label, key, target in rows:
        print(f"| {label} | {a[key]} | {b[key]} | {target} |")
    print(f"| index.yaml after one upload through cnr-oci, ms | {a['after_upload_ms']} | | |")
    print(f"| registry requests of that rebuild | {a['after_upload_requests']} | | that package only |")
    print("\nGET requests: 1 catalog page set + 1 tag list a package + 1 manifest a release (+ 1 config a "
          "release where the manifest has no copy of it)")
    out = Path(__file__).parent / "results" / "helmrepo.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"command": command, "machine": machine, "fill_s": fill_s, **results}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
