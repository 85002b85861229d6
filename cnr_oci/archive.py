"""Parsing and checking a push body; CPU-bound, so the server runs it in a thread."""

from __future__ import annotations

import base64
import binascii
import hashlib
import io
import json
import tarfile
import zlib
from dataclasses import dataclass, field
from typing import Any

import yaml

from cnr_oci import errors, mapping, schemas

# A gzip bomb guard: the tar inside a push may not expand beyond this.
MAX_EXPANDED = 1024 * 1024 * 1024
# libyaml's loader when PyYAML was built with it (several times faster), else the pure one.
_YamlLoader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
_TRUE = {"true", "1", "True"}


@dataclass
class PushInput:
    release: str
    media_type: str
    blob: bytes
    digest: str
    metadata: dict[str, Any] | None
    force: bool
    chart: dict[str, Any] | None = field(default=None)


def parse_force(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if value is None:
        return False
    return str(value) in _TRUE


def parse_push(raw: bytes, query_force: str | None, package: mapping.Package) -> PushInput:
    """Parse, validate and decode an E7 push body.

    Raises:
        InvalidUsage: not JSON, not an object, a schema violation, a bad blob.
        InvalidRelease: a release that is not strict SemVer 2.0.
    """
    try:
        body = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise errors.InvalidUsage(f"the push body is not JSON: {exc}") from exc
    if not isinstance(body, dict):
        raise errors.InvalidUsage("the push body must be a JSON object")
    problem = schemas.first_error(schemas.PUSH_REQUEST, body)
    if problem:
        fld, msg = problem
        cls = errors.InvalidRelease if fld == "release" else errors.InvalidUsage
        raise cls(f"invalid push body: field {fld or '(root)'!r}: {msg}", {"field": fld})
    release = mapping.check_release(body["release"])
    media_type = mapping.normalize_media_type(body.get("media_type", "kpm"))
    # The JSON body wins over the query string, except for force, which may be in either.
    force = parse_force(body.get("force")) or parse_force(query_force)
    blob = decode_blob(body["blob"])
    chart = inspect_tarball(blob, media_type, package)
    return PushInput(
        release=release,
        media_type=media_type,
        blob=blob,
        digest="sha256:" + hashlib.sha256(blob).hexdigest(),
        metadata=body.get("metadata"),
        force=force,
        chart=chart,
    )


def decode_blob(text: str) -> bytes:
    try:
        data = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        try:  # clients that wrap base64 lines
            data = base64.b64decode("".join(text.split()), validate=True)
        except (binascii.Error, ValueError) as exc:
            raise errors.InvalidUsage("blob is not valid base64", {"field": "blob"}) from exc
    if not data:
        raise errors.InvalidUsage("blob is empty", {"field": "blob"})
    return data


def inspect_tarball(data: bytes, media_type: str, package: mapping.Package) -> dict[str, Any] | None:
    """Check that data is a gzipped tar with members; for helm, return Chart.yaml.

    Raises:
        InvalidUsage: not gzip, not tar, empty, too large expanded, no Chart.yaml.
        InvalidParameters: the chart's name is not the package name (helm push needs it).
    """
    if data[:2] != b"\x1f\x8b":
        raise errors.InvalidUsage("blob is not gzip data (expected a .tar.gz)", {"field": "blob"})
    chart_yaml: bytes | None = None
    members = 0
    expanded = 0
    try:
        with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as tar:
            for member in tar:
                members += 1
                expanded += member.size
                if expanded > MAX_EXPANDED:
                    raise errors.InvalidUsage("blob expands beyond 1 GiB", {"field": "blob"})
                parts = member.name.strip("/").split("/")
                if (
                    media_type == "helm"
                    and member.isfile()
                    and len(parts) == 2
                    and parts[1] == "Chart.yaml"
                ):
                    f = tar.extractfile(member)
                    chart_yaml = f.read(1024 * 1024) if f else None
    except (tarfile.TarError, EOFError, zlib.error, OSError) as exc:
        raise errors.InvalidUsage(f"blob is not a gzipped tar: {exc}", {"field": "blob"}) from exc
    if members == 0:
        raise errors.InvalidUsage("blob is an empty tar archive", {"field": "blob"})
    if media_type != "helm":
        return None
    if chart_yaml is None:
        raise errors.InvalidUsage("helm chart has no <chart>/Chart.yaml", {"field": "blob"})
    try:
        chart = yaml.load(chart_yaml, Loader=_YamlLoader)
    except yaml.YAMLError as exc:
        raise errors.InvalidUsage(f"Chart.yaml is not valid YAML: {exc}", {"field": "blob"}) from exc
    if not isinstance(chart, dict) or not chart.get("name"):
        raise errors.InvalidUsage("Chart.yaml has no name", {"field": "blob"})
    if chart["name"] != package.name:
        raise errors.InvalidParameters(
            f"chart name {str(chart['name'])[:80]!r} differs from package name {package.name!r}; "
            "helm requires the repository's last path segment to equal the chart name",
            {"field": "blob", "package": package.full},
        )
    return chart


# helm's chart.Metadata fields, in struct order: helm writes json.Marshal(Metadata).
_HELM_FIELDS = [
    "name", "home", "sources", "version", "description", "keywords", "maintainers", "icon",
    "apiVersion", "condition", "tags", "appVersion", "deprecated", "annotations", "kubeVersion",
    "dependencies", "type",
]
_MAINTAINER_FIELDS = ["name", "email", "url"]


def _omitempty(value: Any) -> bool:
    return value is None or value is False or value == "" or value == [] or value == {}


def go_json(doc: Any) -> bytes:
    """JSON as Go's encoding/json writes it: compact, UTF-8, with <, > and & escaped."""
    text = json.dumps(doc, separators=(",", ":"), ensure_ascii=False, default=str)
    for raw, esc in (("<", "\\u003c"), (">", "\\u003e"), ("&", "\\u0026"),
                     ("\u2028", "\\u2028"), ("\u2029", "\\u2029")):
        text = text.replace(raw, esc)
    return text.encode()


def helm_config(chart: dict[str, Any]) -> bytes:
    """The config blob helm push writes: Chart.yaml as helm's Metadata struct marshals it."""
    out: dict[str, Any] = {}
    for key in _HELM_FIELDS:
        value = chart.get(key)
        if key == "maintainers" and isinstance(value, list):
            value = [
                {k: m[k] for k in _MAINTAINER_FIELDS if isinstance(m, dict) and not _omitempty(m.get(k))}
                for m in value
            ]
        if key in ("version", "appVersion", "kubeVersion") and value is not None and not isinstance(value, str):
            value = str(value)
        if not _omitempty(value):
            out[key] = value
    return go_json(out)
