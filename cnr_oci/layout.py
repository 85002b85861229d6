"""How CNR packages are laid out as OCI documents: media types, builders and classification (no I/O)."""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import re
from dataclasses import dataclass
from typing import Any

from cnr_oci import errors, mapping, schemas
from cnr_oci.mapping import Package

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
MANIFEST_ACCEPT = ", ".join([OCI_MANIFEST, OCI_INDEX, DOCKER_MANIFEST, DOCKER_LIST])

HELM_CONFIG = "application/vnd.cncf.helm.config.v1+json"
HELM_LAYER = "application/vnd.cncf.helm.chart.content.v1.tar+gzip"
HELM_LEGACY_LAYER = "application/tar+gzip"
# helm push adds a chart's .prov file as this layer, after the chart (helm pkg/registry ProvLayerMediaType).
HELM_PROV = "application/vnd.cncf.helm.chart.provenance.v1.prov"
CNR_CONFIG = "application/vnd.cnr.package.config.v1+json"
CHANNEL_CONFIG = "application/vnd.cnr.channel.v1+json"
CHANNEL_ARTIFACT = "application/vnd.cnr.channel.v1"
EMPTY_MEDIA_TYPE = "application/vnd.oci.empty.v1+json"
EMPTY_JSON = b"{}"
ANN_TITLE = "org.opencontainers.image.title"
ANN_VERSION = "org.opencontainers.image.version"
ANN_CREATED = "org.opencontainers.image.created"
ANN_DESCRIPTION = "org.opencontainers.image.description"
# Where a helm manifest keeps CNR metadata; helm's layout has no other place for it.
ANN_METADATA = "vnd.cnr.package.metadata"
# On index entries: the CNR media type of the package the entry points at.
ANN_MEDIA_TYPE = "vnd.cnr.package.media-type"
# On migrated releases: the digest the source CNR server advertised ("sha256:<hex>"), and what it
# hashed: "tar" (appr, Quay: the gunzipped tar) or "tar+gzip" (the blob as stored).
ANN_SOURCE_DIGEST = "vnd.cnr.package.source-digest"
ANN_SOURCE_DIGEST_OF = "vnd.cnr.package.source-digest-of"
# On chart manifests cnr-oci writes: the config blob itself (Chart.yaml as helm marshals it), so a chart
# repository's index is built from manifests alone; trusted only where its sha256 is the config's digest.
ANN_CHART = "vnd.cnr.package.chart"
# Larger configs, and those with non-ASCII text, are not copied (the index reads the config blob instead).
MAX_ANN_CHART = 16 * 1024
# Annotations only cnr-oci writes: a chart's own annotations may not set them.
OWN_ANNOTATIONS = frozenset({ANN_TITLE, ANN_VERSION, ANN_METADATA, ANN_MEDIA_TYPE, ANN_SOURCE_DIGEST,
                             ANN_SOURCE_DIGEST_OF, ANN_CHART})
# Index entries of packages: platform unknown/unknown, as buildx writes for attestations.
UNKNOWN_PLATFORM = {"architecture": "unknown", "os": "unknown"}


@dataclass(frozen=True)
class Manifest:
    """A manifest or index as the registry holds it: its digest, media type, bytes and parsed form."""

    digest: str
    media_type: str
    raw: bytes
    doc: dict[str, Any]


def sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def layer_media_type(media_type: str) -> str:
    return f"application/vnd.cnr.package.{media_type}.v1.tar+gzip"


def artifact_type(media_type: str) -> str:
    return f"application/vnd.cnr.package.{media_type}.v1"


def descriptor(media_type: str, data: bytes, digest: str) -> dict[str, Any]:
    return {"mediaType": media_type, "digest": digest, "size": len(data)}


def compact(doc: Any) -> bytes:
    """A document as cnr-oci writes it to the registry: compact JSON, keys in the given order."""
    return json.dumps(doc, separators=(",", ":")).encode()


def canonical(doc: dict[str, Any]) -> bytes:
    """A config blob: compact, keys sorted, so equal content has one digest."""
    return json.dumps(doc, separators=(",", ":"), sort_keys=True).encode()


# -- classification of what the registry holds ---------------------------------------------------------


def classify(manifest: dict[str, Any]) -> str | None:
    """The CNR media type of an OCI image manifest, or None when it is not a package.

    By artifactType, then config.mediaType, then the first layer's type.
    """
    art = manifest.get("artifactType")
    if isinstance(art, str) and (name := mapping.long_media_type_name(art)) is not None:
        return name
    config = manifest.get("config") or {}
    layers = manifest.get("layers") or []
    layer_type = layers[0].get("mediaType") if layers and isinstance(layers[0], dict) else None
    if config.get("mediaType") == HELM_CONFIG:
        return "helm"
    if isinstance(layer_type, str):
        if layer_type == HELM_LAYER:
            return "helm"
        return mapping.long_media_type_name(layer_type)
    return None


def content_layer(manifest: dict[str, Any]) -> dict[str, Any] | None:
    """The layer that holds the package tarball."""
    for layer in manifest.get("layers") or []:
        mt = layer.get("mediaType", "") if isinstance(layer, dict) else ""
        if isinstance(mt, str) and (mt in (HELM_LAYER, HELM_LEGACY_LAYER) or mapping.long_media_type_name(mt)):
            return dict(layer)
    return None


def prov_layer(manifest: dict[str, Any]) -> dict[str, Any] | None:
    """helm's provenance layer (a chart's signed .prov file), if the manifest has one."""
    for layer in manifest.get("layers") or []:
        if isinstance(layer, dict) and layer.get("mediaType") == HELM_PROV and isinstance(layer.get("digest"), str):
            return dict(layer)
    return None


def package_type(m: Manifest) -> str | None:
    """The CNR media type of a manifest that holds a package tarball, else None."""
    media_type = classify(m.doc)
    return media_type if media_type is not None and content_layer(m.doc) is not None else None


def index_children(top: Manifest) -> list[dict[str, Any]]:
    """The well-formed entries of an index."""
    return [d for d in top.doc.get("manifests") or [] if isinstance(d, dict) and isinstance(d.get("digest"), str)]


def may_hold_package(entry: dict[str, Any]) -> bool:
    """Whether an index entry may point at a package (images are never fetched to find out)."""
    return bool((entry.get("annotations") or {}).get(ANN_MEDIA_TYPE)) or entry.get("platform") == UNKNOWN_PLATFORM


def image_platform(config: bytes) -> dict[str, str] | None:
    """The platform of an image, from its config blob; None when it names none."""
    try:
        cfg = json.loads(config)
        platform = {k: cfg[k] for k in ("architecture", "os", "variant") if isinstance(cfg.get(k), str)}
    except (ValueError, AttributeError, TypeError):
        return None
    return platform if "architecture" in platform and "os" in platform else None


def created_date(value: Any) -> str | None:
    """A created date as stored by anyone: an RFC 3339 string, else None (never garbage)."""
    return value if isinstance(value, str) and _RFC3339.fullmatch(value) else None


# RFC 3339, as helm and cnr-oci write org.opencontainers.image.created.
_RFC3339 = re.compile(r"\d{4}-\d{2}-\d{2}[Tt ]\d{2}:\d{2}:\d{2}(?:\.\d{1,9})?(?:[Zz]|[+-]\d{2}:\d{2})")


def rfc3339(value: Any) -> str | None:
    """A date another server wrote (appr: ISO 8601 without a zone, meaning UTC) as cnr-oci writes
    dates, RFC 3339 in UTC to the second; None when it is not a date."""
    if not isinstance(value, str) or len(value) > 64:
        return None
    try:
        when = dt.datetime.fromisoformat(value.replace("z", "Z"))
    except ValueError:
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=dt.UTC)
    try:
        return when.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    except OverflowError:  # 9999-12-31T23:59:59-01:00 is in year 10000 in UTC
        return None


def source_digest(doc: dict[str, Any]) -> str | None:
    """The digest a migrated release had on its source server, if it was migrated."""
    value = (doc.get("annotations") or {}).get(ANN_SOURCE_DIGEST)
    return value if isinstance(value, str) else None


def manifest_created(doc: dict[str, Any]) -> str | None:
    return created_date((doc.get("annotations") or {}).get(ANN_CREATED))


# -- what cnr-oci writes -------------------------------------------------------------------------------


def package_descriptor(media_type: str, m: Manifest) -> dict[str, Any]:
    """An index entry for a package: platform unknown/unknown, as buildx does for attestations,
    so docker and containerd still pick the image by platform.

    No OCI 1.1 ``artifactType`` here, and keys in containers/image's order: older copy tools
    (skopeo 1.9) re-serialise entries, and must get the same bytes so digests survive a mirror.
    """
    return {
        "mediaType": m.media_type or OCI_MANIFEST,
        "digest": m.digest,
        "size": len(m.raw),
        "annotations": {ANN_MEDIA_TYPE: media_type},
        "platform": dict(UNKNOWN_PLATFORM),
    }


def image_descriptor(m: Manifest, platform: dict[str, str] | None) -> dict[str, Any]:
    """An index entry for a container image that a release tag held, with its platform."""
    desc: dict[str, Any] = {"mediaType": m.media_type, "digest": m.digest, "size": len(m.raw)}
    if platform is not None:
        desc["platform"] = platform
    return desc


def release_index(children: list[dict[str, Any]], previous: Manifest | None) -> bytes:
    """The index a release tag points at when it holds more than one thing; keeps the annotations
    of the index it replaces."""
    index: dict[str, Any] = {"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": children}
    if previous is not None and previous.doc.get("manifests") is not None and previous.doc.get("annotations"):
        index["annotations"] = previous.doc["annotations"]
    return compact(index)


def check_written(name: str, doc: Any) -> None:
    problem = schemas.first_error(name, doc)
    if problem:
        raise errors.InternalError(f"refusing to store a {name} that fails its schema: {problem}")


def artifact_documents(pkg: Package, release: str, media_type: str, blob_digest: str, blob_size: int,
                       metadata: dict[str, Any] | None, created: str,
                       extra: dict[str, str] | None = None) -> tuple[bytes, dict[str, Any]]:
    """(config blob, manifest) of a CNR package that is not a chart: an OCI artifact; ``extra``
    annotations (a migrated release's source digest) go on the manifest."""
    cfg = {"package": pkg.full, "release": release, "media_type": media_type, "metadata": metadata,
           "created_at": created}
    check_written(schemas.CNR_CONFIG, cfg)
    config = canonical(cfg)
    layer = {"mediaType": layer_media_type(media_type), "digest": blob_digest, "size": blob_size,
             "annotations": {ANN_TITLE: mapping.filename(pkg, release)}}
    manifest = {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "artifactType": artifact_type(media_type),
        "config": descriptor(CNR_CONFIG, config, sha256(config)),
        "layers": [layer],
        "annotations": {ANN_VERSION: release, ANN_CREATED: created, **(extra or {})},
    }
    check_written(schemas.CNR_MANIFEST, manifest)
    return config, manifest


def check_size(config: bytes, manifest: bytes, max_manifest: int) -> None:
    """Refused before anything is uploaded: the registry takes no larger manifest (distribution:
    4 MiB), and a config is read back under the same cap.

    Raises:
        PayloadTooLarge: the config or manifest would pass the registry's manifest limit.
    """
    for what, doc in (("config", config), ("manifest", manifest)):
        if len(doc) > max_manifest:
            raise errors.PayloadTooLarge(
                f"the package's {what} would be {len(doc)} bytes, over the registry's limit of "
                f"{max_manifest}: make its metadata (or Chart.yaml) smaller",
                {"field": "metadata", "limit": max_manifest},
            )


def channel_documents(doc: dict[str, Any], created: str, subject: Manifest | None) -> tuple[bytes, bytes]:
    """(config blob, manifest) of a channel: its own small manifest at tag channel-<name>, never a
    tag alias; the subject is the current release's manifest."""
    check_written(schemas.CHANNEL, doc)
    config = canonical(doc)
    manifest: dict[str, Any] = {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "artifactType": CHANNEL_ARTIFACT,
        "config": descriptor(CHANNEL_CONFIG, config, sha256(config)),
        "layers": [descriptor(EMPTY_MEDIA_TYPE, EMPTY_JSON, sha256(EMPTY_JSON))],
        "annotations": {ANN_CREATED: created},
    }
    if subject is not None:
        manifest["subject"] = {"mediaType": subject.media_type, "digest": subject.digest, "size": len(subject.raw)}
    return config, compact(manifest)


def is_channel(m: Manifest) -> bool:
    return (m.doc.get("config") or {}).get("mediaType") == CHANNEL_CONFIG


def is_cnr_config(manifest: dict[str, Any]) -> bool:
    return (manifest.get("config") or {}).get("mediaType") == CNR_CONFIG
