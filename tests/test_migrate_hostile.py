"""`cnr-oci migrate` from hostile and broken sources (issue 11): in-process fake CNR servers that lie,
stall, flood and crash, a migration run in process against the real registry, and what it must do."""

from __future__ import annotations

import asyncio
import hashlib
import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from cnr_oci import migrate as migrate_mod
from cnr_oci.app import open_backend
from cnr_oci.cnrsource import CnrSource
from cnr_oci.metrics import Metrics
from cnr_oci.migrate import Migration, Report
from cnr_oci.settings import Settings
from tests import helpers

API = "/cnr/api/v1/packages"
MANIFEST_TYPE = "application/vnd.cnr.package-manifest.{}.v0.json"
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@dataclass
class Rel:
    """One (release, media type) the fake source lists; every field may lie."""

    release: str
    blob: bytes
    media_type: str = "kpm"
    digest: str | None = None  # default: the sha256 of blob, as cnr-oci advertises it
    size: Any = None  # default: len(blob)
    metadata: Any = None
    created_at: Any = "2017-10-18T21:18:31.071062"

    def manifest(self, package: str) -> dict[str, Any]:
        digest = self.digest if self.digest is not None else helpers.sha(self.blob)
        return {"package": package, "release": self.release, "mediaType": MANIFEST_TYPE.format(self.media_type),
                "metadata": self.metadata, "created_at": self.created_at,
                "content": {"digest": digest, "size": len(self.blob) if self.size is None else self.size,
                            "urls": []}}


@dataclass
class FakeSource:
    """A CNR source in process: packages (name: releases), channels, and hooks to misbehave."""

    packages: dict[str, list[Rel]] = field(default_factory=dict)
    channels: dict[str, list[Any]] = field(default_factory=dict)
    # Replace the answer to one kind of request ("list", "manifests", "channels", "blob").
    override: dict[str, Handler] = field(default_factory=dict)
    requests: list[tuple[str, str, str]] = field(default_factory=list)  # method, path_qs, Authorization
    url: str = ""

    def blob_of(self, package: str, hexd: str) -> bytes | None:
        for r in self.packages.get(package, []):
            if (r.digest or helpers.sha(r.blob)).removeprefix("sha256:") == hexd:
                return r.blob
        return None

    async def handle(self, request: web.Request) -> web.StreamResponse:
        self.requests.append((request.method, request.path_qs, request.headers.get("Authorization", "")))
        path = request.path.removeprefix(API).strip("/")
        parts = path.split("/") if path else []
        if not parts:
            kind = "list"
        elif len(parts) == 2:
            kind = "manifests"
        elif len(parts) == 3 and parts[2] == "channels":
            kind = "channels"
        elif len(parts) == 5 and parts[2] == "blobs":
            kind = "blob"
        else:
            kind = "other"
        if kind in self.override:
            return await self.override[kind](request)
        name = "/".join(parts[:2])
        if kind == "list":
            return web.json_response([{"name": n} for n in self.packages])
        if kind == "manifests" and name in self.packages:
            return web.json_response([r.manifest(name) for r in self.packages[name]])
        if kind == "channels" and name in self.packages:
            return web.json_response(self.channels.get(name, []))
        if kind == "blob":
            data = self.blob_of(name, parts[4])
            if data is not None:
                return web.Response(body=data)
        return web.json_response({"error": {"code": "not-found", "message": "not found"}}, status=404)


@pytest.fixture
async def source(aiohttp_server: Any) -> FakeSource:
    src = FakeSource()
    app = web.Application(client_max_size=1 << 30)
    app.router.add_route("*", "/{tail:.*}", src.handle)
    server = await aiohttp_server(app)
    src.url = str(server.make_url("")).rstrip("/")
    return src


async def run(src: FakeSource, registry: Any, packages: list[str] | None = None, *, jobs: int = 4,
              settings: Settings | None = None, workdir: Path | None = None, **kwargs: Any) -> Report:
    """A migration in process, as `cnr-oci migrate --from src --upstream registry` runs it."""
    settings = settings or Settings(upstream=registry.url, cache_ttl=0)
    timeout = aiohttp.ClientTimeout(total=None, connect=settings.connect_timeout, sock_read=settings.read_timeout)
    async with open_backend(settings, registry.url, Metrics()) as backend, \
            aiohttp.ClientSession(timeout=timeout, auto_decompress=False) as session:
        m = Migration(backend.store, CnrSource(session, src.url), jobs=jobs, workdir=workdir, **kwargs)
        return await m.run([], packages or [])


def status_of(report: Report) -> dict[tuple[str, str, str], str]:
    return {(o.package, o.release, o.media_type): o.status for o in report.releases}


@pytest.fixture
def target(registry: Any, make_client: Any) -> Callable[[], Awaitable[Any]]:
    async def make() -> Any:
        return await make_client(Settings(upstream=registry.url, cache_ttl=0))
    return make


def pkgname() -> str:
    ns, name = helpers.unique("h")
    return f"{ns}/{name}"


# -- listings -------------------------------------------------------------------------------------------


async def test_a_large_listing_arriving_in_pieces_is_read_whole(source, registry, target):
    """E8 answers of several MiB (here: 1 MiB of metadata) arrive in many reads; all of it is parsed."""
    name = pkgname()
    blob = helpers.kpm()
    meta = {"text": "x" * (1024 * 1024)}
    source.packages[name] = [Rel("1.0.0", blob, metadata=meta)]
    report = await run(source, registry, [name])
    assert not report.packages_failed, report.packages_failed
    assert status_of(report) == {(name, "1.0.0", "kpm"): "copied"}
    client = await target()
    shown = await (await client.get(f"{API}/{name}/1.0.0/kpm")).json()
    assert shown["metadata"] == meta
