"""Fill one namespace of a real appr 0.7.4 server (tests/appr_server.py) THROUGH APPR'S OWN HTTP API, with
the body the appr CLI sends (appr/commands/push.py + appr/client.py: POST ?force=false, Content-Type
application/json, {"manifest_name", "name", "release", "metadata", "media_type", "blob", "organization",
"package"}), and return what a migration of it must reproduce.

The namespace NS holds:
  NS/webapp   helm: 1.0.0-rc.1, 1.0.0, 1.0.0+build.5, 1.1.0; metadata on all but the rc;
              channels stable {1.0.0, 1.1.0} current 1.1.0, beta {1.1.0, 1.0.0-rc.1} current 1.0.0-rc.1
              (appr's current is the release added last, not the highest)
  NS/stack    kpm 0.1.0 and 0.2.0, and docker-compose in 0.2.0 too (one release, two media types)
  NS/compose  docker-compose 1.0.0 and 1.0.1 with the SAME .tar.gz bytes (one blob, two releases)
  NS/big      helm 1.0.0 holding a ``big``-byte random member (50 MiB by default; 0 leaves it out), streamed
              from a file, never held in memory

Every other (release, media type) has a tarball of its own: appr stores blobs per package under the sha256
of the GUNZIPPED tar, so two different .tar.gz of the same tar would share (and overwrite) one stored blob.
"""

from __future__ import annotations

import base64
import gzip
import hashlib
import http.client
import io
import json
import os
import tarfile
import tempfile
import urllib.parse
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.helpers import tarball

MIB = 1024 * 1024
USER_AGENT = "apprpy-cli/0.7.4"
CHUNK = 3 * 64 * 1024  # a multiple of 3: base64 of each chunk concatenates into base64 of the whole


@dataclass(frozen=True)
class Manifest:
    """One (release, media type) of a package, as pushed and as appr reports it."""

    release: str
    media_type: str
    sha256: str  # of the .tar.gz bytes pushed: what pull answers, byte for byte
    size: int  # of the .tar.gz
    tar_sha256: str  # of the gunzipped tar, computed here
    digest: str  # appr's content.digest (E8), which is tar_sha256
    metadata: Any  # as pushed (appr answers it back unchanged; None when not sent)
    created_at: str  # as appr reports it (E8): naive UTC isoformat
    data: bytes | None = field(default=None, repr=False)  # the .tar.gz, for the small ones
    path: Path | None = None  # where the big one is kept (fill(..., workdir=)), else None


@dataclass
class Channel:
    name: str
    releases: list[str]  # in the order they were added (appr lists them sorted, highest first)
    current: str  # the release added last


@dataclass
class Package:
    name: str  # "ns/name"
    created_at: str = ""  # the package's, as E5 reports it (its first push)
    manifests: dict[tuple[str, str], Manifest] = field(default_factory=dict)
    channels: dict[str, Channel] = field(default_factory=dict)

    @property
    def releases(self) -> set[str]:
        return {r for r, _ in self.manifests}

    def media_types(self, release: str) -> set[str]:
        return {m for r, m in self.manifests if r == release}


@dataclass
class Expected:
    url: str
    namespace: str
    packages: dict[str, Package] = field(default_factory=dict)


class ApprError(Exception):
    def __init__(self, status: int, body: bytes, what: str) -> None:
        super().__init__(f"{what}: HTTP {status}: {body[:500]!r}")
        self.status = status
        self.body = body


def request(url: str, method: str, path: str, body: bytes | Iterator[bytes] | None = None, length: int | None = None,
            timeout: float = 120) -> tuple[int, dict[str, str], bytes]:
    """One HTTP request to url + /cnr/api/v1 + path; an iterator body is streamed with its Content-Length."""
    split = urllib.parse.urlsplit(url)
    conn = http.client.HTTPConnection(split.hostname or "127.0.0.1", split.port, timeout=timeout)
    headers = {"User-Agent": USER_AGENT}
    if body is not None:
        headers["Content-Type"] = "application/json"
        headers["Content-Length"] = str(len(body) if isinstance(body, bytes) else length)
    try:
        conn.request(method, f"{split.path.rstrip('/')}/cnr/api/v1{path}", body=body, headers=headers)
        resp = conn.getresponse()
        return resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read()
    finally:
        conn.close()


def get_json(url: str, path: str) -> Any:
    status, _, data = request(url, "GET", path)
    if status != 200:
        raise ApprError(status, data, f"GET {path}")
    return json.loads(data)


def push(url: str, package: str, release: str, media_type: str, blob: bytes | Path, metadata: Any = None,
         manifest_name: str | None = None, force: bool = False) -> Any:
    """POST the appr CLI's push body; a Path blob is base64-streamed from its file."""
    ns, name = package.split("/")
    marker = "\x00BLOB\x00"
    # The CLI's dict, in its order; client.push then sets name, organization and package.
    doc = {"manifest_name": manifest_name, "name": name, "release": release, "metadata": metadata,
           "media_type": media_type, "blob": marker, "organization": ns, "package": package}
    head, tail = (part.encode() for part in json.dumps(doc).split(json.dumps(marker)))
    head += b'"'
    tail = b'"' + tail
    size = len(blob) if isinstance(blob, bytes) else blob.stat().st_size

    def chunks() -> Iterator[bytes]:
        yield head
        if isinstance(blob, bytes):
            yield base64.b64encode(blob)
        else:
            with open(blob, "rb") as f:
                while chunk := f.read(CHUNK):
                    yield base64.b64encode(chunk)
        yield tail

    path = f"/packages/{package}?force={str(force).lower()}"
    status, _, data = request(url, "POST", path, chunks(), len(head) + 4 * ((size + 2) // 3) + len(tail))
    if status != 200:
        raise ApprError(status, data, f"push {package} {release} {media_type}")
    return json.loads(data)


def add_channel_release(url: str, package: str, channel: str, release: str) -> Any:
    """What `appr channel --add` sends: POST .../channels/NAME/RELEASE, no body."""
    status, _, data = request(url, "POST", f"/packages/{package}/channels/{channel}/{release}")
    if status != 200:
        raise ApprError(status, data, f"channel {package} {channel} {release}")
    return json.loads(data)


def tar_sha256(blob: bytes | Path) -> str:
    h = hashlib.sha256()
    with gzip.open(io.BytesIO(blob) if isinstance(blob, bytes) else blob, "rb") as f:
        while chunk := f.read(MIB):
            h.update(chunk)
    return h.hexdigest()


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(MIB):
            h.update(chunk)
    return h.hexdigest()


class _Random(io.RawIOBase):
    def read(self, n: int = -1) -> bytes:
        return os.urandom(n)


def big_tarball(path: Path, size: int, name: str = "big") -> Path:
    """A helm-shaped .tar.gz whose member random.bin holds ``size`` random bytes (so it does not compress),
    written to ``path`` without holding it in memory. Deflate level 0 (stored blocks, a valid gzip): level 1
    takes 2 s more to find that random bytes do not compress."""
    with gzip.GzipFile(path, "wb", compresslevel=0, mtime=0) as gz, \
            tarfile.TarFile(fileobj=gz, mode="w", copybufsize=MIB) as tar:
        chart = f"apiVersion: v1\nname: {name}\nversion: 1.0.0\ndescription: a big chart\n".encode()
        info = tarfile.TarInfo(f"{name}/Chart.yaml")
        info.size = len(chart)
        tar.addfile(info, io.BytesIO(chart))
        info = tarfile.TarInfo(f"{name}/random.bin")
        info.size = size
        tar.addfile(info, _Random())
    return path


def helm_chart(name: str, version: str, maintainers: list[dict[str, str]] | None = None) -> bytes:
    """The files `appr push` packs for a chart: the chart directory under its name."""
    chart = f"apiVersion: v1\nname: {name}\nversion: {version}\ndescription: appr fill\n"
    if maintainers:
        chart += "maintainers:\n" + "".join(f"- name: {m['name']}\n  email: {m['email']}\n" for m in maintainers)
    return tarball({f"{name}/Chart.yaml": chart.encode(), f"{name}/values.yaml": f"tag: {version}\n".encode(),
                    f"{name}/templates/cm.yaml": b"apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: x\n"})


def kpm_package(package: str, version: str) -> bytes:
    manifest = f'{{package: {{name: "{package}", version: "{version}"}}, variables: {{replicas: 1}}, deploy: []}}\n'
    return tarball({"manifest.jsonnet": manifest.encode(), "templates/svc.yaml": b"kind: Service\n"})


def compose_file(tag: str) -> bytes:
    return tarball({"docker-compose.yaml": f'version: "2"\nservices:\n  web:\n    image: nginx:{tag}\n'.encode()})


def fill(url: str, ns: str, *, big: int = 50 * MIB, workdir: Path | None = None) -> Expected:
    """Fill namespace ``ns`` of the appr server at ``url`` (http://host:port) and return what it holds.

    ``big``: the size of NS/big's random member (0: no NS/big). The big .tar.gz is kept in ``workdir``
    (Manifest.path) when one is given, else written to a temporary file and removed after the push."""
    exp = Expected(url, ns)
    pushed: dict[str, dict[tuple[str, str], tuple[bytes | Path, Any]]] = {}

    def put(name: str, release: str, media_type: str, blob: bytes | Path, metadata: Any = None,
            manifest_name: str | None = None) -> None:
        push(url, f"{ns}/{name}", release, media_type, blob, metadata, manifest_name)
        pushed.setdefault(name, {})[(release, media_type)] = (blob, metadata)

    people = [{"name": "Ann", "email": "ann@example.org"}]
    for version, who in [("1.0.0-rc.1", None), ("1.0.0", []), ("1.0.0+build.5", people), ("1.1.0", people)]:
        # The CLI sends the chart's {"maintainers", "source"}; the rc goes without metadata (a bare HTTP push).
        meta = None if who is None else {"maintainers": who, "source": [f"https://example.org/webapp/{version}"]}
        put("webapp", version, "helm", helm_chart("webapp", version, who), meta, manifest_name="webapp")
    for version in ("0.1.0", "0.2.0"):
        meta = {"variables": {"replicas": 1}, "resources": [], "shards": [], "dependencies": []}
        put("stack", version, "kpm", kpm_package(f"{ns}/stack", version), meta)
    put("stack", "0.2.0", "docker-compose", compose_file("stack-0.2.0"))
    same = compose_file("1.0")
    put("compose", "1.0.0", "docker-compose", same)
    put("compose", "1.0.1", "docker-compose", same)

    channels = {"webapp": [("stable", "1.0.0"), ("stable", "1.1.0"), ("beta", "1.1.0"), ("beta", "1.0.0-rc.1")]}
    for name, adds in channels.items():
        pkg = exp.packages.setdefault(f"{ns}/{name}", Package(f"{ns}/{name}"))
        for channel, release in adds:
            add_channel_release(url, pkg.name, channel, release)
            chan = pkg.channels.setdefault(channel, Channel(channel, [], release))
            chan.releases.append(release)
            chan.current = release

    with tempfile.TemporaryDirectory() as tmp:
        big_path: Path | None = None
        if big:
            big_path = big_tarball(Path(workdir or tmp) / f"{ns}-big-1.0.0.tar.gz", big)
            put("big", "1.0.0", "helm", big_path, {"maintainers": [], "source": []}, manifest_name="big")
        _record(exp, pushed, keep=workdir is not None)
    return exp


def _record(exp: Expected, pushed: dict[str, dict[tuple[str, str], tuple[bytes | Path, Any]]], keep: bool) -> None:
    """Read back what appr reports (E5 created_at, E8 digests and created_at) next to what was pushed."""
    listed = {p["name"]: p for p in get_json(exp.url, f"/packages?namespace={exp.namespace}")}
    for name, blobs in pushed.items():
        full = f"{exp.namespace}/{name}"
        pkg = exp.packages.setdefault(full, Package(full))
        pkg.created_at = listed[full]["created_at"]
        reported = {(m["release"], _short(m["mediaType"])): m for m in get_json(exp.url, f"/packages/{full}")}
        if set(reported) != set(blobs):
            raise AssertionError(f"{full}: appr lists {sorted(reported)}, pushed {sorted(blobs)}")
        for (release, media_type), (blob, metadata) in blobs.items():
            m = reported[(release, media_type)]
            if isinstance(blob, bytes):
                sha, size, data, path = hashlib.sha256(blob).hexdigest(), len(blob), blob, None
            else:
                sha, size, data, path = file_sha256(blob), blob.stat().st_size, None, blob if keep else None
            pkg.manifests[(release, media_type)] = Manifest(
                release, media_type, sha256=sha, size=size, tar_sha256=tar_sha256(blob),
                digest=m["content"]["digest"], metadata=metadata, created_at=m["created_at"], data=data, path=path)


def _short(manifest_media_type: str) -> str:
    """application/vnd.appr.package-manifest.helm.v0.json -> helm (as appr's get_media_type)."""
    prefix, suffix = "application/vnd.appr.package-manifest.", ".v0.json"
    assert manifest_media_type.startswith(prefix) and manifest_media_type.endswith(suffix), manifest_media_type
    return manifest_media_type[len(prefix):-len(suffix)]
