"""Pure functions mapping CNR names, releases and media types onto OCI (no I/O)."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Iterable

import semantic_version  # type: ignore[import-untyped]

from cnr_oci import errors

# Every pattern here is used with fullmatch: "$" alone also matches before a final newline.
# The OCI distribution spec's path component grammar.
_COMPONENT = re.compile(r"^[a-z0-9]+(?:(?:\.|_|__|-+)[a-z0-9]+)*$")
# SemVer 2.0, from semver.org (no leading zeros, no "v" prefix).
_SEMVER = re.compile(
    r"^(0|[1-9]\d*)\.(0|[1-9]\d*)\.(0|[1-9]\d*)"
    r"(?:-((?:0|[1-9]\d*|\d*[a-zA-Z-][0-9a-zA-Z-]*)(?:\.(?:0|[1-9]\d*|\d*[a-zA-Z-][0-9a-zA-Z-]*))*))?"
    r"(?:\+([0-9a-zA-Z-]+(?:\.[0-9a-zA-Z-]+)*))?$"
)
# OCI tags are at most 128 characters.
MAX_TAG = 128
# distribution refuses repository names longer than 255 characters.
MAX_REPOSITORY = 255
_SHORT_MEDIA_TYPE = re.compile(r"^[a-z0-9][a-z0-9._-]{0,63}$")
_LONG_MEDIA_TYPE = re.compile(
    r"^(?:application/)?vnd\.(?:cnr|appr)\.package(?:-manifest)?\."
    r"([a-z0-9][a-z0-9._-]*?)\.v[01](?:\.tar\+gzip|\.json|\+json)?$"
)
_HEX64 = re.compile(r"^[a-f0-9]{64}$")

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
MANIFEST_ACCEPT = ", ".join([OCI_MANIFEST, OCI_INDEX, DOCKER_MANIFEST, DOCKER_LIST])

HELM_CONFIG = "application/vnd.cncf.helm.config.v1+json"
HELM_LAYER = "application/vnd.cncf.helm.chart.content.v1.tar+gzip"
HELM_LEGACY_LAYER = "application/tar+gzip"
CNR_CONFIG = "application/vnd.cnr.package.config.v1+json"
CHANNEL_CONFIG = "application/vnd.cnr.channel.v1+json"
CHANNEL_ARTIFACT = "application/vnd.cnr.channel.v1"
EMPTY_MEDIA_TYPE = "application/vnd.oci.empty.v1+json"
CHANNEL_TAG_PREFIX = "channel-"
_CHANNEL = re.compile(r"^[a-zA-Z0-9][a-zA-Z0-9._-]{0,119}$")
ANN_TITLE = "org.opencontainers.image.title"
ANN_VERSION = "org.opencontainers.image.version"
ANN_CREATED = "org.opencontainers.image.created"
ANN_DESCRIPTION = "org.opencontainers.image.description"
# Where a helm manifest keeps CNR metadata; helm's layout has no other place for it.
ANN_METADATA = "vnd.cnr.package.metadata"
# On index entries: the CNR media type of the package the entry points at.
ANN_MEDIA_TYPE = "vnd.cnr.package.media-type"


def layer_media_type(media_type: str) -> str:
    return f"application/vnd.cnr.package.{media_type}.v1.tar+gzip"


def manifest_media_type(media_type: str) -> str:
    return f"application/vnd.cnr.package-manifest.{media_type}.v1.json"


def artifact_type(media_type: str) -> str:
    return f"application/vnd.cnr.package.{media_type}.v1"


@dataclass(frozen=True)
class Package:
    namespace: str
    name: str

    @property
    def full(self) -> str:
        return f"{self.namespace}/{self.name}"

    def repository(self, prefix: str = "") -> str:
        return f"{prefix}/{self.full}" if prefix else self.full

    @property
    def file_stem(self) -> str:
        return f"{self.namespace}_{self.name}"


def parse_package(namespace: str, name: str, prefix: str = "") -> Package:
    """Validate a CNR package name; it must be an OCI repository name as it is.

    Raises:
        InvalidUsage: the name is not a valid OCI path (it is never rewritten).
    """
    for label, part in (("namespace", namespace), ("name", name)):
        if not _COMPONENT.fullmatch(part):
            raise errors.InvalidUsage(
                f"invalid package {label} {part!r}: it must match "
                "[a-z0-9]+((.|_|__|-+)[a-z0-9]+)* (lowercase OCI repository path component)",
                {"package": f"{namespace}/{name}"},
            )
    pkg = Package(namespace, name)
    if len(pkg.repository(prefix)) > MAX_REPOSITORY:
        raise errors.InvalidUsage(
            f"package name too long: the OCI repository name may be at most {MAX_REPOSITORY} characters",
            {"package": pkg.full},
        )
    return pkg


def package_from_repository(repository: str, prefix: str = "") -> Package | None:
    """The CNR package held in an OCI repository, or None when it is not one."""
    if prefix:
        if not repository.startswith(prefix + "/"):
            return None
        repository = repository[len(prefix) + 1 :]
    parts = repository.split("/")
    if len(parts) != 2:
        return None
    return Package(parts[0], parts[1])


def is_release(value: str) -> bool:
    return len(value) <= MAX_TAG and bool(_SEMVER.fullmatch(value))


def check_release(value: Any) -> str:
    """A strict SemVer 2.0 release, or 422 invalid-release."""
    if not isinstance(value, str) or not is_release(value):
        shown = value if isinstance(value, str) and len(value) <= 80 else repr(value)[:80]
        raise errors.InvalidRelease(
            f"release {shown!r} is not a strict SemVer 2.0 version (e.g. 1.0.0)",
            {"version": str(value)[:200]},
        )
    return value


def release_to_tag(release: str) -> str:
    """helm's rule (pkg/registry/reference.go): '+' is not allowed in a tag."""
    return release.replace("+", "_")


def tag_to_release(tag: str) -> str | None:
    """The release a tag holds, or None for tags that are not releases."""
    release = tag.replace("_", "+")
    return release if is_release(release) else None


def check_channel(name: str) -> str:
    """A channel name that fits in the tag channel-<name>."""
    if not _CHANNEL.fullmatch(name):
        raise errors.InvalidUsage(
            f"invalid channel name {name[:80]!r}: letters, digits, '.', '_' and '-', at most 120",
            {"channel": name[:200]},
        )
    return name


def channel_tag(name: str) -> str:
    return CHANNEL_TAG_PREFIX + name


def channel_from_tag(tag: str) -> str | None:
    if tag.startswith(CHANNEL_TAG_PREFIX) and _CHANNEL.fullmatch(tag[len(CHANNEL_TAG_PREFIX):]):
        return tag[len(CHANNEL_TAG_PREFIX):]
    return None


def normalize_media_type(value: Any, allow_any: bool = False) -> str:
    """Short CNR media type name; long vnd.cnr / vnd.appr forms are shortened."""
    if not isinstance(value, str):
        raise errors.InvalidUsage("media_type must be a string", {"media_type": repr(value)[:80]})
    if allow_any and value == "-":
        return value
    long = _LONG_MEDIA_TYPE.fullmatch(value)
    if long:
        value = str(long.group(1))
    if not _SHORT_MEDIA_TYPE.fullmatch(value):
        raise errors.InvalidUsage(
            f"invalid media type {value[:80]!r}: expected a short name such as helm or kpm",
            {"media_type": value[:200]},
        )
    return str(value)


def check_digest(value: str) -> str:
    if not _HEX64.fullmatch(value):
        raise errors.InvalidUsage(
            "invalid digest: expected 64 lowercase hex characters (sha256)", {"digest": value[:80]}
        )
    return value


def sort_releases(releases: Iterable[str]) -> list[str]:
    """SemVer descending; build metadata breaks ties so the order is total."""
    return sorted(
        releases, key=lambda r: (semantic_version.Version(r), r), reverse=True
    )


def _parse_query(query: str) -> semantic_version.SimpleSpec:
    try:
        return semantic_version.SimpleSpec(query)
    except ValueError as exc:
        raise errors.InvalidRelease(
            f"cannot parse version query {query[:80]!r}", {"version": query[:200]}
        ) from exc


def check_query(query: str | None) -> None:
    """422 when a version query can not be parsed."""
    if query and query != "default" and not is_release(query):
        _parse_query(query)


def match_releases(releases: Iterable[str], query: str | None) -> list[str]:
    """The releases a version query selects, best first.

    ``default`` (or no query) selects every release, prereleases included; an exact
    release selects itself; any other range excludes prereleases unless it names one.
    """
    ordered = sort_releases(releases)
    if not query or query == "default":
        return ordered
    if is_release(query):
        return [r for r in ordered if r == query]
    spec = _parse_query(query)
    want_pre = "-" in query
    out = []
    for r in ordered:
        v = semantic_version.Version(r)
        if (want_pre or not v.prerelease) and v in spec:
            out.append(r)
    return out


def classify(manifest: dict[str, Any]) -> str | None:
    """The CNR media type of an OCI image manifest, or None when it is not a package.

    By artifactType, then config.mediaType, then the first layer's type.
    """
    art = manifest.get("artifactType")
    if isinstance(art, str):
        m = _LONG_MEDIA_TYPE.fullmatch(art)
        if m:
            return m.group(1)
    config = manifest.get("config") or {}
    layers = manifest.get("layers") or []
    layer_type = layers[0].get("mediaType") if layers and isinstance(layers[0], dict) else None
    if config.get("mediaType") == HELM_CONFIG:
        return "helm"
    if isinstance(layer_type, str):
        if layer_type == HELM_LAYER:
            return "helm"
        m = _LONG_MEDIA_TYPE.fullmatch(layer_type)
        if m:
            return m.group(1)
    return None


def content_layer(manifest: dict[str, Any]) -> dict[str, Any] | None:
    """The layer that holds the package tarball."""
    for layer in manifest.get("layers") or []:
        mt = layer.get("mediaType", "") if isinstance(layer, dict) else ""
        if isinstance(mt, str) and (mt in (HELM_LAYER, HELM_LEGACY_LAYER) or _LONG_MEDIA_TYPE.fullmatch(mt)):
            return dict(layer)
    return None


def descriptor(media_type: str, data: bytes, digest: str, **extra: Any) -> dict[str, Any]:
    return {"mediaType": media_type, "digest": digest, "size": len(data), **extra}


def helm_annotations(chart: dict[str, Any], release: str, created: str) -> dict[str, str]:
    """What helm's pkg/registry writes: org.opencontainers.image.* where they have values,
    then the chart's own annotations, which may not override title or version."""
    maintainers = [m for m in chart.get("maintainers") or [] if isinstance(m, dict)]
    authors = ", ".join(
        str(m.get("name") or "") + (f" ({m['email']})" if m.get("email") else "") for m in maintainers
    )
    ann = {
        ANN_DESCRIPTION: str(chart.get("description") or ""),
        ANN_TITLE: str(chart.get("name") or ""),
        ANN_VERSION: release,
        "org.opencontainers.image.url": str(chart.get("home") or ""),
        ANN_CREATED: created,
        "org.opencontainers.image.source": str((chart.get("sources") or [""])[0] or ""),
        "org.opencontainers.image.authors": authors,
    }
    out = {k: _escape_non_ascii(v) for k, v in ann.items() if v.strip()}
    for key, value in (chart.get("annotations") or {}).items():
        # Nor may they set cnr-oci's own keys: a chart could fake another push's metadata.
        if key not in (ANN_TITLE, ANN_VERSION, ANN_METADATA, ANN_MEDIA_TYPE) and isinstance(value, str):
            out[str(key)] = _escape_non_ascii(value)
    return out


# RFC 3339, as helm and cnr-oci write org.opencontainers.image.created.
_RFC3339 = re.compile(r"\d{4}-\d{2}-\d{2}[Tt ]\d{2}:\d{2}:\d{2}(?:\.\d{1,9})?(?:[Zz]|[+-]\d{2}:\d{2})")


def created_date(value: Any) -> str | None:
    """A created date as stored by anyone: an RFC 3339 string, else None (never garbage)."""
    return value if isinstance(value, str) and _RFC3339.fullmatch(value) else None


def _escape_non_ascii(value: str) -> str:
    """helm escapes non-ASCII annotation values as \\uXXXX UTF-16 units, for strict registries."""
    out = []
    for ch in value:
        cp = ord(ch)
        if cp < 0x80:
            out.append(ch)
        elif cp <= 0xFFFF:
            out.append(f"\\u{cp:04x}")
        else:
            cp -= 0x10000
            out.append(f"\\u{0xD800 + (cp >> 10):04x}\\u{0xDC00 + (cp & 0x3FF):04x}")
    return "".join(out)


def filename(pkg: Package, release: str) -> str:
    return f"{pkg.file_stem}_{release}.tar.gz"


def b64_chunk_size(chunk: int) -> int:
    """A chunk size that is a multiple of 3, so base64 pieces concatenate cleanly."""
    return max(3, chunk - chunk % 3)
