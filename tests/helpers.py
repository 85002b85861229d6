"""Builders for packages and push bodies, and direct looks at the registry."""

from __future__ import annotations

import base64
import gzip
import hashlib
import io
import json
import secrets
import subprocess
import tarfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any


def tarball(files: dict[str, bytes]) -> bytes:
    """A .tar.gz, byte-for-byte reproducible (gzip mtime 0)."""
    buf = io.BytesIO()
    with gzip.GzipFile(fileobj=buf, mode="wb", mtime=0) as gz, tarfile.open(fileobj=gz, mode="w") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def chart(name: str, version: str = "0.1.0", extra: bytes = b"") -> bytes:
    yaml = f"apiVersion: v2\nname: {name}\nversion: {version}\ndescription: test chart\n"
    return tarball({f"{name}/Chart.yaml": yaml.encode(), f"{name}/values.yaml": b"x: 1\n" + extra})


def kpm(name: str = "pkg", extra: bytes = b"") -> bytes:
    return tarball({"manifest.yaml": b"package: " + name.encode() + b"\n" + extra})


def body(blob: bytes, release: str = "1.0.0", media_type: str = "kpm", **more: Any) -> dict[str, Any]:
    return {"blob": base64.b64encode(blob).decode(), "release": release, "media_type": media_type, **more}


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def unique(prefix: str = "t") -> tuple[str, str]:
    return f"{prefix}{secrets.token_hex(4)}", f"app{secrets.token_hex(2)}"


def _get(url: str, accept: str = "") -> tuple[int, bytes, dict[str, str]]:
    req = urllib.request.Request(url, headers={"Accept": accept} if accept else {})
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status, r.read(), dict(r.headers)
    except urllib.error.HTTPError as e:
        return e.code, e.read(), dict(e.headers)


def tags(registry_url: str, repo: str) -> list[str]:
    """The tags the registry itself holds, bypassing cnr-oci."""
    status, data, _ = _get(f"{registry_url}/v2/{repo}/tags/list")
    if status == 404:
        return []
    return sorted(json.loads(data).get("tags") or [])


def manifest(registry_url: str, repo: str, ref: str) -> tuple[dict[str, Any], str]:
    accept = "application/vnd.oci.image.manifest.v1+json, application/vnd.oci.image.index.v1+json"
    status, data, headers = _get(f"{registry_url}/v2/{repo}/manifests/{ref}", accept)
    assert status == 200, (status, data)
    return json.loads(data), headers.get("Docker-Content-Digest", "")


def blob(registry_url: str, repo: str, digest: str) -> bytes:
    status, data, _ = _get(f"{registry_url}/v2/{repo}/blobs/{digest}")
    assert status == 200, status
    return data


def catalog(registry_url: str) -> set[str]:
    """Every repository in the registry, following the catalog's pages."""
    repos: set[str] = set()
    last = ""
    while True:
        _, data, _ = _get(f"{registry_url}/v2/_catalog?n=1000" + (f"&last={last}" if last else ""))
        page = json.loads(data).get("repositories") or []
        repos.update(page)
        if len(page) < 1000:
            return repos
        last = page[-1]


def put_blob(registry_url: str, repo: str, data: bytes) -> str:
    """Upload a blob with raw OCI calls (POST, then PUT ?digest=); returns its digest."""
    digest = "sha256:" + sha(data)
    req = urllib.request.Request(f"{registry_url}/v2/{repo}/blobs/uploads/", method="POST", data=b"")
    with urllib.request.urlopen(req) as r:
        loc = r.headers["Location"]
    sep = "&" if "?" in loc else "?"
    req = urllib.request.Request(f"{loc}{sep}digest={digest}", method="PUT", data=data,
                                 headers={"Content-Type": "application/octet-stream"})
    urllib.request.urlopen(req).close()
    return digest


def put_manifest(registry_url: str, repo: str, ref: str, doc: dict[str, Any],
                 media_type: str = "application/vnd.oci.image.manifest.v1+json") -> str:
    raw = json.dumps(doc).encode()
    req = urllib.request.Request(f"{registry_url}/v2/{repo}/manifests/{ref}", data=raw, method="PUT",
                                 headers={"Content-Type": media_type})
    urllib.request.urlopen(req).close()
    return "sha256:" + sha(raw)


def descriptor(media_type: str, data: bytes, **extra: Any) -> dict[str, Any]:
    return {"mediaType": media_type, "digest": "sha256:" + sha(data), "size": len(data), **extra}


def wait_served(proc: subprocess.Popen[bytes], port: int, log_path: Path, timeout: float = 30) -> None:
    """Until a `cnr-oci serve` subprocess answers /healthz; fails with its log's tail if it dies first."""
    deadline = time.monotonic() + timeout
    while True:
        assert proc.poll() is None, log_path.read_text()[-3000:]
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=1):
                return
        except OSError:
            assert time.monotonic() < deadline, "cnr-oci serve did not start"
            time.sleep(0.05)
