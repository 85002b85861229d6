"""Parsing and checking a push body; CPU-bound, so the server runs it in a thread.

Everything here is bounded: the JSON body's nesting, the tarball (by tarscan's limits), and Chart.yaml's
size, nesting and aliases. Limits are module constants with their reasons.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
from dataclasses import dataclass, field
from typing import Any

import yaml

from cnr_oci import errors, mapping, schemas
from cnr_oci.helm import helm_config
from cnr_oci.safejson import MAX_DEPTH, load_json
from cnr_oci.tarscan import Archive, TarFormatError, TarLimitError, TarMember, TarScanner

# -- limits -------------------------------------------------------------------------------------------

# A JSON body that is not a push (login's) is small: a user name and a password.
MAX_SMALL_BODY = 64 * 1024
# Chart.yaml is read whole and parsed; real ones are a few KiB.
MAX_CHART_YAML = 1024 * 1024
# YAML events (scalars, collection starts and ends) in Chart.yaml. Real ones have tens to a few hundred;
# loading and schema-checking cost about 30 us an event, so this keeps a hostile one near 0.3 s.
MAX_YAML_EVENTS = 10_000

_TRUE = {"true", "1", "True"}


def _yaml_loader() -> type[Any]:
    """libyaml's safe loader when PyYAML was built with it, without the timestamp resolver: helm's YAML
    (sigs.k8s.io/yaml) keeps an unquoted date as a string, and JSON has no date type."""
    base: type[Any] = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    resolvers = {
        first: [(tag, rx) for tag, rx in rules if tag != "tag:yaml.org,2002:timestamp"]
        for first, rules in base.yaml_implicit_resolvers.items()
    }
    return type("ChartYamlLoader", (base,), {"yaml_implicit_resolvers": resolvers})


_YamlLoader = _yaml_loader()


@dataclass
class PushInput:
    release: str
    media_type: str
    blob: bytes
    digest: str
    metadata: dict[str, Any] | None
    force: bool
    chart: dict[str, Any] | None = field(default=None)
    prov: bytes | None = None  # a chart's provenance file, stored as helm's provenance layer


def parse_force(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if value is None:
        return False
    return str(value) in _TRUE


def parse_push(raw: bytes | bytearray, query_force: str | None) -> PushInput:
    """Parse, validate and decode an E7 push body.

    Raises:
        InvalidUsage: not JSON, not an object, a schema violation, a bad blob or chart, a limit exceeded.
        InvalidRelease: a release that is not strict SemVer 2.0.
        InvalidParameters: a chart whose name is not the package's.
    """
    body = load_json(raw, "push body")
    if not isinstance(body, dict):
        raise errors.InvalidUsage("the push body must be a JSON object")
    problem = schemas.first_error(schemas.PUSH_REQUEST, body)
    if problem:
        fld, msg = problem
        cls = errors.InvalidRelease if fld == "release" else errors.InvalidUsage
        raise cls(f"invalid push body: field {fld or '(root)'!r}: {msg}", {"field": fld})
    release = mapping.check_release(body["release"])
    media_type = mapping.normalize_media_type(body.get("media_type") or "kpm")
    # The JSON body wins over the query string, except for force, which may be in either.
    force = parse_force(body.get("force")) or parse_force(query_force)
    blob = decode_blob(body["blob"])
    chart = inspect_tarball(blob, media_type)
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
        data = _b64decode(text)
    except (binascii.Error, ValueError):
        try:  # clients that wrap base64 lines
            data = _b64decode("".join(text.split()))
        except (binascii.Error, ValueError) as exc:
            raise errors.InvalidUsage("blob is not valid base64", {"field": "blob"}) from exc
    if not data:
        raise errors.InvalidUsage("blob is empty", {"field": "blob"})
    return data


# Characters of base64 decoded per call (a multiple of 4). One call holds the GIL: a 64 MiB body
# decoded at once kept the event loop waiting ~170 ms; between slices the loop gets its turn.
_B64_SLICE = 1024 * 1024


def _b64decode(text: str) -> bytes:
    """Strict base64 (the alphabet, padding only at the end), decoded slice by slice."""
    if len(text) % 4 or text.find("=", 0, max(0, len(text) - 2)) != -1:
        raise binascii.Error("bad base64 length or padding")
    return b"".join(base64.b64decode(text[i:i + _B64_SLICE], validate=True)
                    for i in range(0, len(text), _B64_SLICE))


# -- the tarball ------------------------------------------------------------------------------------


def _is_chart_yaml(member: TarMember) -> bool:
    parts = member.name.strip(b"/").split(b"/")
    return member.is_file and len(parts) == 2 and parts[1] == b"Chart.yaml"


def inspect_tarball(data: Archive, media_type: str) -> dict[str, Any] | None:
    """Check that data is a gzipped tar with members; for helm, return Chart.yaml.

    For helm the scan stops at the first <dir>/Chart.yaml (or goes to the end, within the limits, to
    find there is none: then it is not a chart, and None is returned); for every other media type it
    stops at the first member, since the server never unpacks those.

    Raises:
        InvalidUsage: not gzip, not tar, empty, a limit exceeded, a bad Chart.yaml.
    """
    if data[:2] != b"\x1f\x8b":
        raise errors.InvalidUsage("blob is not gzip data (expected a .tar.gz)", {"field": "blob"})
    chart_yaml: bytes | None = None
    scanner = TarScanner(data)
    try:
        for member in scanner:
            if media_type != "helm":
                break
            if _is_chart_yaml(member):
                if member.size > MAX_CHART_YAML:
                    raise TarLimitError(
                        f"Chart.yaml of {member.size} bytes exceeds the limit of {MAX_CHART_YAML}",
                        MAX_CHART_YAML,
                    )
                chart_yaml = scanner.read_data(member)
                break
    except TarLimitError as exc:
        raise errors.InvalidUsage(str(exc), {"field": "blob", "limit": exc.limit}) from exc
    except TarFormatError as exc:
        raise errors.InvalidUsage(f"blob is not a gzipped tar: {exc}", {"field": "blob"}) from exc
    if scanner.members == 0:
        raise errors.InvalidUsage("blob is an empty tar archive", {"field": "blob"})
    if media_type != "helm" or chart_yaml is None:
        # A "helm" tarball that is not a chart (operator-courier's operator bundles) is stored as
        # it came, as a generic CNR artifact of media type helm: helm's layout needs a chart's config.
        return None
    # The chart's name may differ from the package's: appr and Quay stored such charts, and real
    # packages do (docs/storage.md says what helm then does with them).
    return load_chart_yaml(chart_yaml)


# -- Chart.yaml ---------------------------------------------------------------------------------------


def _chart_error(message: str, **details: Any) -> errors.CnrError:
    return errors.InvalidUsage(message, {"field": "blob", **details})


def _preflight_yaml(text: bytes) -> None:
    """Walk libyaml's event stream, before anything is built: no aliases, bounded depth and size."""
    depth = 0
    for count, event in enumerate(yaml.parse(text, Loader=_YamlLoader), 1):
        if count > MAX_YAML_EVENTS:
            raise _chart_error(f"Chart.yaml has more than {MAX_YAML_EVENTS} YAML nodes", limit=MAX_YAML_EVENTS)
        if isinstance(event, yaml.AliasEvent):
            raise _chart_error("Chart.yaml uses YAML aliases")
        if isinstance(event, yaml.CollectionStartEvent):
            depth += 1
            if depth > MAX_DEPTH:
                raise _chart_error(f"Chart.yaml nests deeper than {MAX_DEPTH} levels", limit=MAX_DEPTH)
        elif isinstance(event, yaml.CollectionEndEvent):
            depth -= 1


def load_chart_yaml(text: bytes) -> dict[str, Any]:
    """Chart.yaml, checked against helm's chart.Metadata types; InvalidUsage names what is wrong."""
    try:
        _preflight_yaml(text)
        chart = yaml.load(text, Loader=_YamlLoader)
    except yaml.YAMLError as exc:
        raise _chart_error(f"Chart.yaml is not valid YAML: {str(exc)[:300]}") from exc
    except (ValueError, RecursionError) as exc:  # e.g. an integer beyond Python's digit limit
        raise _chart_error(f"Chart.yaml holds a value that cannot be read: {str(exc)[:200]}") from exc
    if not isinstance(chart, dict) or not chart.get("name"):
        raise _chart_error("Chart.yaml has no name")
    name = str(chart["name"])
    # helm's own rule (chart.Metadata.Validate): the name is a plain file name. It becomes the
    # pulled file's name (helm, ORAS), so no path and no control characters.
    if "/" in name or "\\" in name or name in (".", "..") or not name.isprintable():
        raise _chart_error(f"Chart.yaml name {name[:80]!r} is invalid: helm takes a plain file name",
                           chart_field="name")
    problem = schemas.first_error(schemas.CHART, chart, best=False)
    if problem:
        fld, msg = problem
        raise _chart_error(f"Chart.yaml field {fld or '(root)'!r}: {msg}", chart_field=fld)
    try:
        helm_config(chart)
    except (ValueError, TypeError) as exc:  # NaN/Infinity, keys JSON cannot carry
        raise _chart_error(f"Chart.yaml holds a value JSON cannot carry: {str(exc)[:200]}") from exc
    return chart
