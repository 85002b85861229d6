#!/usr/bin/env python3
"""cnr-oci's classic helm repository at scale: one namespace of CHARTS charts x VERSIONS versions.

Fills a real docker-registry directly in helm's OCI layout (as `helm push` writes it), starts
`cnr-oci serve` in front of it, then times GET /helm/<ns>/index.yaml cold (first request), warm
(from memory) and as a 304, and counts the registry requests the cold build made. Loopback only.

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
from cnr_oci.embedded import EmbeddedRegistry, free_port

NS = "charts"
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


async def push_chart(s: aiohttp.ClientSession, reg: str, i: int, versions: int) -> None:
    name = f"chart{i:04d}"
    repo = f"{NS}/{name}"
    for v in range(versions):
        version = f"1.{v}.0"
        blob = tgz(name, version)
        config = json.dumps({"name": name, "version": version, "description": "bench chart",
                             "apiVersion": "v2"}, separators=(",", ":")).encode()
        layer_digest = await put_blob(s, reg, repo, blob)
        config_digest = await put_blob(s, reg, repo, config)
        doc = {"schemaVersion": 2,
               "config": {"mediaType": HELM_CONFIG, "digest": config_digest, "size": len(config)},
               "layers": [{"mediaType": HELM_LAYER, "digest": layer_digest, "size": len(blob)}],
               "annotations": {"org.opencontainers.image.title": name, "org.opencontainers.image.version": version,
                               "org.opencontainers.image.created": "2026-01-01T00:00:00Z"}}
        async with s.put(f"{reg}/v2/{repo}/manifests/{version}", data=json.dumps(doc).encode(),
                         headers={"Content-Type": MANIFEST}) as r:
            assert r.status == 201, r.status


async def fill(reg: str, charts: int, versions: int) -> float:
    start = time.perf_counter()
    sem = asyncio.Semaphore(16)
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=32)) as s:
        async def one(i: int) -> None:
            async with sem:
                await push_chart(s, reg, i, versions)
        await asyncio.gather(*(one(i) for i in range(charts)))
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


async def measure(url: str, entries: int) -> dict[str, object]:
    path = f"{url}/helm/{NS}/index.yaml"
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
    listed = body.count(b"\n  - ") if body else 0
    return {"entries_expected": entries, "index_bytes": len(body), "entries_listed": listed,
            "cold_s": round(cold, 2), "warm_p50_ms": round(statistics.median(warm) * 1000, 2),
            "not_modified_p50_ms": round(statistics.median(not_modified) * 1000, 2),
            "cold_upstream_requests": {k: after.get(k, 0) - before.get(k, 0) for k in after}}


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
            fill_s = asyncio.run(fill(reg.url, charts, versions))
            server = subprocess.Popen(
                [sys.executable, "-m", "cnr_oci", "serve", "--port", str(port), "--upstream", reg.url,
                 "--log-level", "warning", "--token-secret", "bench-secret-not-for-production", "--cache-ttl", "60"],
                cwd=str(Path(__file__).resolve().parent.parent))
            url = f"http://127.0.0.1:{port}"
            wait_http(url + "/healthz")
            result = asyncio.run(measure(url, charts * versions))
        finally:
            if server is not None:
                server.terminate()
                server.wait(30)
            reg.stop()
    machine = common_machine(load=True)
    print(f"# cnr-oci helm repository benchmark\n\ncommand: {command}\nmachine: {machine}\n")
    print(f"{charts} charts x {versions} versions in one namespace, filled directly in {fill_s:.1f} s\n")
    print("| figure | value | target |\n|---|---|---|")
    print(f"| entries listed | {result['entries_listed']} of {result['entries_expected']} | all |")
    print(f"| index.yaml bytes | {result['index_bytes']} | |")
    print(f"| cold index.yaml (first request) | {result['cold_s']} s | <= 15 s for 5,000 entries |")
    print(f"| warm index.yaml, p50 | {result['warm_p50_ms']} ms | <= 50 ms |")
    print(f"| 304, p50 | {result['not_modified_p50_ms']} ms | <= 5 ms |")
    print(f"| registry requests of the cold build | {result['cold_upstream_requests']} | "
          "<= 1 tag list a package, 1 manifest a release |")
    out = Path(__file__).parent / "results" / "helmrepo.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"command": command, "machine": machine, "fill_s": fill_s, **result}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
