"""The CNR wire shapes: every JSON document the CNR API answers with, built from the storage layers' data."""

from __future__ import annotations

import json
from typing import Any

from aiohttp import web

from cnr_oci import errors, layout
from cnr_oci.catalog import Summary
from cnr_oci.channels import Channel
from cnr_oci.entries import Details, Entry
from cnr_oci.mapping import Package


def manifest_media_type(media_type: str) -> str:
    return f"application/vnd.cnr.package-manifest.{media_type}.v1.json"


def manifest_object(pkg: Package, e: Entry, d: Details) -> dict[str, Any]:
    """The CNR manifest object of one (release, media type): E8, E9, and the base of E10."""
    digest = str(e.layer.get("digest", ""))
    return {
        "package": pkg.full,
        "release": e.release,
        "created_at": d.created,
        "metadata": d.metadata,
        "mediaType": manifest_media_type(e.media_type),
        "content": {
            "mediaType": layout.layer_media_type(e.media_type),
            "size": e.layer.get("size"),
            "digest": digest.removeprefix("sha256:"),
            "urls": [],
        },
    }


def shown(pkg: Package, e: Entry, d: Details, channels: list[str]) -> dict[str, Any]:
    """E10: the manifest object, the channels whose current release it is, and the manifest digest."""
    return {**manifest_object(pkg, e, d), "channels": channels, "digest": e.digest}


def package_summary(s: Summary) -> dict[str, Any]:
    """One E5 package object."""
    created: list[str | None] = [*s.created] or [None]
    return {
        "name": s.package.full,
        "namespace": s.package.namespace,
        "releases": s.releases,
        "default": s.releases[0],
        "manifests": s.media_types,
        "visibility": "public",
        "created_at": created[0],
        "updated_at": created[-1],
        "channels": None,
    }


def channel(c: Channel) -> dict[str, Any]:
    """A channel object (E14 to E16)."""
    return {"name": c.name, "current": c.current, "releases": c.releases}


def pull_head(pkg: Package, release: str, media_type: str | None) -> dict[str, Any]:
    """The fields of a JSON pull (E12) before filename and blob; E13 has no media type."""
    head: dict[str, Any] = {"package": pkg.full, "release": release}
    if media_type is not None:
        head["media_type"] = media_type
    return head


def release_deleted(pkg: Package, release: str) -> dict[str, Any]:
    return {"status": "deleted", "package": pkg.full, "release": release}


def channel_release_removed(pkg: Package, name: str, release: str) -> dict[str, Any]:
    return {"status": "deleted", "package": pkg.full, "name": name, "release": release}


def channel_deleted(pkg: Package, name: str) -> dict[str, Any]:
    return {"channel": name, "package": pkg.full, "action": "delete"}


def encode(data: Any) -> bytes:
    """A list item by item: each json.dumps holds the GIL, so the event loop gets a turn between
    items rather than after the whole listing (tens of MB when every release carries MiBs)."""
    if isinstance(data, list):
        return b"[" + b", ".join(json.dumps(item).encode() for item in data) + b"]"
    return json.dumps(data).encode()


def error_body(code: str, message: str, details: dict[str, Any]) -> dict[str, Any]:
    """The CNR envelope: flat fields for appr/go-appr, nested ``error`` for operator-courier."""
    inner = {"code": code, "message": message, "details": details}
    return {**inner, "error": inner}


def render(err: errors.CnrError, headers: dict[str, str] | None = None) -> web.Response:
    """Write any CNR error as its JSON response."""
    return web.Response(
        status=err.status,
        text=json.dumps(error_body(err.code, err.message, err.details)),
        content_type="application/json",
        headers=headers,
    )
