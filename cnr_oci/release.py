"""What one release write stores: the Release to write, and its config blob and manifest (no I/O)."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from typing import Any

from cnr_oci import helm, layout
from cnr_oci.archive import PushInput
from cnr_oci.entries import Contents
from cnr_oci.mapping import Package


def now_iso() -> str:
    """RFC 3339 in UTC to the second, as helm writes org.opencontainers.image.created."""
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass(frozen=True)
class Release:
    """One (release, media type) to write: everything but the blob's bytes."""

    release: str
    media_type: str
    digest: str  # the blob's
    size: int
    metadata: dict[str, Any] | None
    chart: dict[str, Any] | None
    force: bool
    created: str | None = None  # None: now
    annotations: dict[str, str] = field(default_factory=dict)  # more, on the manifest
    prov: tuple[str, int] | None = None  # a chart's provenance file: (digest, size)

    @classmethod
    def of(cls, inp: PushInput) -> Release:
        prov = None if inp.prov is None else (layout.sha256(inp.prov), len(inp.prov))
        return cls(inp.release, inp.media_type, inp.digest, len(inp.blob), inp.metadata, inp.chart, inp.force,
                   prov=prov)


def documents(pkg: Package, rel: Release, created: str, max_manifest: int) -> tuple[bytes, bytes]:
    """(config blob, manifest) for a release: helm's own layout for a chart, else a CNR artifact.

    Raises:
        PayloadTooLarge: they would pass the registry's manifest limit.
    """
    if rel.chart is not None:
        config, doc = helm.documents(rel.chart, rel.release, rel.digest, rel.size, created, rel.metadata,
                                     rel.annotations, rel.prov)
    else:
        config, doc = layout.artifact_documents(pkg, rel.release, rel.media_type, rel.digest, rel.size,
                                                rel.metadata, created, rel.annotations)
    raw = layout.compact(doc)
    layout.check_size(config, raw, max_manifest)
    return config, raw


def signature_of(held: Contents, rel: Release) -> tuple[str, int] | None:
    """The provenance layer of the chart a force push replaces, when the new chart is the same bytes."""
    old = held.packages.get(rel.media_type, ({}, None))[1]
    if rel.chart is None or rel.prov is not None or old is None:
        return None
    prov = layout.prov_layer(old.doc)
    if prov is None or (layout.content_layer(old.doc) or {}).get("digest") != rel.digest:
        return None
    return str(prov["digest"]), int(prov.get("size") or 0)
