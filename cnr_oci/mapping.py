"""CNR names, releases, channels, media types and version queries: parsing, checks and their OCI names (no I/O)."""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

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

CHANNEL_TAG_PREFIX = "channel-"
_CHANNEL = re.compile(r"^[a-zA-Z0-9][a-zA-Z0-9._-]{0,119}$")


def long_media_type_name(value: str) -> str | None:
    """The short name in a long vnd.cnr / vnd.appr media type (``helm`` in
    ``application/vnd.cnr.package.helm.v1.tar+gzip``), or None when it is not one."""
    m = _LONG_MEDIA_TYPE.fullmatch(value)
    return str(m.group(1)) if m else None


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
    value = long_media_type_name(value) or value
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


# helm reads chart versions with Masterminds semver's loose form: "v" prefix, minor and patch optional.
_LOOSE = re.compile(r"v?(\d{1,9})(?:\.(\d{1,9}))?(?:\.(\d{1,9}))?(-[0-9A-Za-z.-]+)?(\+[0-9A-Za-z.-]+)?")


def helm_version(value: str) -> str | None:
    """A chart version as helm reads it (1.0 is 1.0.0, v2 is 2.0.0), as strict SemVer; None when helm
    cannot read it as a version."""
    m = _LOOSE.fullmatch(value)
    if m is None:
        return None
    major, minor, patch, pre, build = m.groups()
    strict = f"{int(major)}.{int(minor or 0)}.{int(patch or 0)}{pre or ''}{build or ''}"
    return strict if is_release(strict) else None


def semver_key(release: str) -> Any:
    """A strict SemVer release's sort key (SemVer precedence)."""
    return semantic_version.Version(release)


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


def match_releases(releases: Iterable[str], query: str | None, presorted: bool = False) -> list[str]:
    """The releases a version query selects, best first.

    ``default`` (or no query) selects every release, prereleases included; an exact
    release selects itself; any other range excludes prereleases unless it names one.
    ``presorted``: the releases are already in sort_releases order.
    """
    ordered = list(releases) if presorted else sort_releases(releases)
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


def filename(pkg: Package, release: str) -> str:
    return f"{pkg.file_stem}_{release}.tar.gz"
