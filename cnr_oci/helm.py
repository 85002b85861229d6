"""helm's own OCI layout: the config blob, annotations and manifest that `helm push` writes (no I/O)."""

from __future__ import annotations

import json
import re
from typing import Any

from cnr_oci import layout


def documents(chart: dict[str, Any], release: str, blob_digest: str, blob_size: int, created: str,
              metadata: dict[str, Any] | None, extra: dict[str, str] | None = None,
              prov: tuple[str, int] | None = None) -> tuple[bytes, dict[str, Any]]:
    """(config blob, manifest) as helm push writes them for a chart; CNR metadata, which helm's
    layout has no place for, goes in an annotation. ``prov`` (digest, size): the chart's provenance
    file, a second layer as helm push adds it."""
    config = helm_config(chart)
    annotations = helm_annotations(chart, release, created)
    if metadata is not None:
        annotations[layout.ANN_METADATA] = json.dumps(metadata, sort_keys=True)
    if len(config) <= layout.MAX_ANN_CHART and config.isascii():  # ASCII, as helm keeps annotations
        annotations[layout.ANN_CHART] = config.decode()
    annotations.update(extra or {})
    manifest: dict[str, Any] = {
        # helm push writes no top-level mediaType (the Content-Type says it); a chart's manifest
        # differs from helm's only in documented annotations.
        "schemaVersion": 2,
        "config": layout.descriptor(layout.HELM_CONFIG, config, layout.sha256(config)),
        # helm ignores layer annotations; ORAS names the pulled file after this one.
        "layers": [{"mediaType": layout.HELM_LAYER, "digest": blob_digest, "size": blob_size,
                    "annotations": {layout.ANN_TITLE: f"{chart['name']}-{release}.tgz"}}],
        "annotations": annotations,
    }
    if prov is not None:
        manifest["layers"].append(prov_descriptor(f"{chart['name']}-{release}.tgz.prov", *prov))
    return config, manifest


def prov_descriptor(filename: str, digest: str, size: int) -> dict[str, Any]:
    """helm's provenance layer, titled for ORAS as the .prov file is named."""
    return {"mediaType": layout.HELM_PROV, "digest": digest, "size": size,
            "annotations": {layout.ANN_TITLE: filename}}


def helm_annotations(chart: dict[str, Any], release: str, created: str) -> dict[str, str]:
    """What helm's pkg/registry writes: org.opencontainers.image.* where they have values,
    then the chart's own annotations, which may not override title or version."""
    maintainers = [m for m in chart.get("maintainers") or [] if isinstance(m, dict)]
    authors = ", ".join(
        str(m.get("name") or "") + (f" ({m['email']})" if m.get("email") else "") for m in maintainers
    )
    ann = {
        layout.ANN_DESCRIPTION: str(chart.get("description") or ""),
        layout.ANN_TITLE: str(chart.get("name") or ""),
        layout.ANN_VERSION: release,
        "org.opencontainers.image.url": str(chart.get("home") or ""),
        layout.ANN_CREATED: created,
        "org.opencontainers.image.source": str((chart.get("sources") or [""])[0] or ""),
        "org.opencontainers.image.authors": authors,
    }
    out = {k: _escape_non_ascii(v) for k, v in ann.items() if v.strip()}
    for key, value in (chart.get("annotations") or {}).items():
        # Nor may they set cnr-oci's own keys: a chart could fake another push's metadata.
        if key not in layout.OWN_ANNOTATIONS and isinstance(value, str):
            out[str(key)] = _escape_non_ascii(value)
    return out


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



# helm's chart.Metadata fields, in struct order: helm writes json.Marshal(Metadata).
_HELM_FIELDS = [
    "name", "home", "sources", "version", "description", "keywords", "maintainers", "icon",
    "apiVersion", "condition", "tags", "appVersion", "deprecated", "annotations", "kubeVersion",
    "dependencies", "type",
]
# Metadata's string fields, and its []string and map[string]string ones.
_STRING_FIELDS = {
    "name", "home", "version", "description", "icon", "apiVersion", "condition", "tags", "appVersion",
    "kubeVersion", "type",
}
_STRING_LISTS = {"sources", "keywords"}
_MAINTAINER_FIELDS = ["name", "email", "url"]
# helm's chart.Dependency fields in struct order, and whether each is omitempty (name and repository are not).
_DEPENDENCY_FIELDS = [("name", False), ("version", True), ("repository", False), ("condition", True),
                      ("tags", True), ("enabled", True), ("import-values", True), ("alias", True)]
_DEPENDENCY_STRINGS = {"name", "version", "repository", "condition", "alias"}


def _dependency(dep: Any) -> Any:
    """One entry of dependencies as helm marshals its Dependency struct (unknown keys dropped)."""
    if not isinstance(dep, dict):
        return dep
    out: dict[str, Any] = {}
    for key, omitempty in _DEPENDENCY_FIELDS:
        value = dep.get(key)
        if key in _DEPENDENCY_STRINGS:
            value = _go_string(value)
        elif key == "tags" and isinstance(value, list):
            value = [_go_string(v) for v in value]
        if not (omitempty and _omitempty(value)):
            out[key] = value
    return out


def _omitempty(value: Any) -> bool:
    return value is None or value is False or value == "" or value == [] or value == {}


def _go_string(value: Any) -> Any:
    """A YAML scalar as helm's YAML loader (sigs.k8s.io/yaml) stores it in a Go string field."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return ""
    return value if isinstance(value, str) else str(value)


_SURROGATE = re.compile("[\ud800-\udfff]")


def go_json(doc: Any) -> bytes:
    """JSON as Go's encoding/json writes it: compact, UTF-8, with <, > and & escaped; a lone surrogate
    (YAML's "\\ud800" escape) becomes U+FFFD, as Go strings hold it."""
    text = json.dumps(doc, separators=(",", ":"), ensure_ascii=False, default=str, allow_nan=False)
    text = _SURROGATE.sub("\ufffd", text)
    for raw, esc in (("<", "\\u003c"), (">", "\\u003e"), ("&", "\\u0026"),
                     ("\u2028", "\\u2028"), ("\u2029", "\\u2029")):
        text = text.replace(raw, esc)
    return text.encode()


def helm_config(chart: dict[str, Any]) -> bytes:
    """The config blob helm push writes: Chart.yaml as helm's Metadata struct marshals it."""
    return go_json(metadata(chart))


def metadata(chart: dict[str, Any]) -> dict[str, Any]:
    """Chart.yaml (or a config) with helm's Metadata field types: scalars as Go strings where the field is
    a string, unknown keys of maintainers and dependencies dropped, empty fields left out."""
    out: dict[str, Any] = {}
    for key in _HELM_FIELDS:
        value = chart.get(key)
        if key == "maintainers" and isinstance(value, list):
            value = [
                {k: _go_string(m[k]) for k in _MAINTAINER_FIELDS if isinstance(m, dict) and not _omitempty(m.get(k))}
                for m in value
            ]
        elif key == "dependencies" and isinstance(value, list):
            value = [_dependency(d) for d in value]
        elif key in _STRING_FIELDS and value is not None:
            value = _go_string(value)
        elif key in _STRING_LISTS and isinstance(value, list):
            value = [_go_string(v) for v in value]
        elif key == "annotations" and isinstance(value, dict):
            value = {_go_string(k): _go_string(v) for k, v in value.items()}
        if not _omitempty(value):
            out[key] = value
    return out
