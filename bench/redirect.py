#!/usr/bin/env python3
"""--blob-redirect over S3: a 50 MiB blob through cnr-oci with the redirect, against a direct download from
the S3 server (the presigned URL the registry hands out) and cnr-oci's streamed path, in one run.

docker-registry runs with its S3 driver on a local S3 server (moto in server mode, on loopback), as in
tests/test_blob_redirect.py. Each figure is the median of ROUNDS downloads, the client following
redirects (aiohttp). Loopback only.

    python bench/redirect.py            # make bench-redirect
    python bench/redirect.py --quick    # 8 MiB, 3 rounds
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import os
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import aiohttp

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench.common import machine, table, wait_http
from cnr_oci.embedded import free_port
from tests.s3registry import start_s3_registry

NS, NAME = "bench", "big"


def tarball(size: int) -> bytes:
    """A .tar.gz of about ``size`` bytes (random content does not compress)."""
    import gzip
    import io
    import tarfile

    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w") as t:
        info = tarfile.TarInfo(f"{NAME}/data.bin")
        info.size = size
        t.addfile(info, io.BytesIO(os.urandom(size)))
    return gzip.compress(raw.getvalue(), 1)


async def push(url: str, blob: bytes) -> None:
    import base64

    body = {"blob": base64.b64encode(blob).decode(), "release": "1.0.0", "media_type": "kpm"}
    async with aiohttp.ClientSession() as s, s.post(f"{url}/cnr/api/v1/packages/{NS}/{NAME}", json=body) as r:
        assert r.status == 200, await r.text()


async def timed(url: str, rounds: int, size: int, digest: str, allow_redirects: bool = True) -> list[float]:
    out = []
    async with aiohttp.ClientSession(auto_decompress=False) as s:
        for _ in range(rounds):
            h = hashlib.sha256()
            t = time.perf_counter()
            async with s.get(url, allow_redirects=allow_redirects) as r:
                assert r.status == 200, r.status
                async for chunk in r.content.iter_chunked(1 << 20):
                    h.update(chunk)
            out.append(size / (time.perf_counter() - t) / 1e6)
            assert h.hexdigest() == digest
    return out


async def location(url: str) -> str:
    async with aiohttp.ClientSession() as s, s.get(url, allow_redirects=False) as r:
        assert r.status == 307, r.status
        return r.headers["Location"]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    size, rounds = ((8 << 20), 3) if args.quick else ((50 << 20), 7)
    command = "python " + " ".join(shlex.quote(a) for a in sys.argv)
    blob = tarball(size)
    size = len(blob)
    digest = hashlib.sha256(blob).hexdigest()
    with tempfile.TemporaryDirectory(prefix="cnr-oci-redirect-") as tmp:
        reg = start_s3_registry(Path(tmp))
        port = free_port()
        server = subprocess.Popen(
            [sys.executable, "-m", "cnr_oci", "serve", "--port", str(port), "--upstream", reg.url, "--blob-redirect",
             "--log-level", "warning", "--token-secret", "bench-secret-not-for-production",
             "--max-body-size", str(2 * size)], cwd=str(Path(__file__).resolve().parent.parent))
        try:
            url = f"http://127.0.0.1:{port}"
            wait_http(url + "/healthz")
            asyncio.run(push(url, blob))
            path = f"{url}/cnr/api/v1/packages/{NS}/{NAME}/blobs/sha256/{digest}"
            presigned = asyncio.run(location(path))
            figures = {
                "S3 direct (the presigned URL)": asyncio.run(timed(presigned, rounds, size, digest)),
                "cnr-oci --blob-redirect (client follows)": asyncio.run(timed(path, rounds, size, digest)),
                "cnr-oci streamed (?redirect=false)": asyncio.run(timed(path + "?redirect=false", rounds, size,
                                                                       digest)),
                "registry direct (follows to S3)": asyncio.run(timed(f"{reg.url}/v2/{NS}/{NAME}/blobs/sha256:{digest}",
                                                                     rounds, size, digest)),
            }
        finally:
            server.terminate()
            server.wait(30)
            reg.stop()
    direct = statistics.median(figures["S3 direct (the presigned URL)"])
    rows = [["path", "MB/s (median)", "x S3 direct"]]
    for label, values in figures.items():
        med = statistics.median(values)
        rows.append([label, f"{med:.0f}", f"{med / direct:.2f}"])
    ratio = statistics.median(figures["cnr-oci --blob-redirect (client follows)"]) / direct
    print(f"# --blob-redirect over S3 (moto)\n\ncommand: {command}\nmachine: {machine(load=True)}\n")
    print(f"{size >> 20} MiB blob, {rounds} rounds each\n")
    print(table(rows))
    print(f"\ntarget: --blob-redirect >= 0.95x S3 direct: {ratio:.2f}x, {'met' if ratio >= 0.95 else 'missed'}")
    out = Path(__file__).parent / "results" / "redirect.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"command": command, "size": size, "figures": figures, "ratio": ratio}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
