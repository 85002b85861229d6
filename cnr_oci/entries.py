"""What a release tag holds, as the read model reports it: entries, contents, details, stored configs."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from cnr_oci import errors, layout, safejson, schemas, upstream
from cnr_oci.layout import Manifest


@dataclass(frozen=True)
class Entry:
    """One (release, media type) of a package, as stored."""

    release: str
    media_type: str
    digest: str
    manifest: dict[str, Any]
    layer: dict[str, Any]

    @property
    def created(self) -> str | None:
        return layout.manifest_created(self.manifest)


@dataclass
class Contents:
    """What one release tag holds: the top manifest and its children.

    ``children`` are index entries (a single manifest counts as one child);
    ``packages`` maps each CNR media type to its child descriptor and manifest.
    """

    top: Manifest | None
    children: list[dict[str, Any]]
    packages: dict[str, tuple[dict[str, Any], Manifest]]


@dataclass(frozen=True)
class Details:
    """What a release carries beside its blob: CNR metadata and when it was created."""

    metadata: Any
    created: str | None


def parse_stored(raw: bytes, schema: str, where: str) -> dict[str, Any]:
    """A config blob read back from the registry, checked against its schema.

    Raises:
        InvalidDocument: it is not JSON, nests too deep, or does not match its schema.
    """
    try:
        doc = safejson.load_json(raw, "config")
    except errors.CnrError as exc:
        raise upstream.InvalidDocument(f"config {where}: {exc.message}") from exc
    problem = schemas.first_error(schema, doc)
    if problem:
        raise upstream.InvalidDocument(
            f"stored document at {where} does not match schema {schema}: {problem[0] or '(root)'}: {problem[1]}"
        )
    return doc  # type: ignore[no-any-return]
