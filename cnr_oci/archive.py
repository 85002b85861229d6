"""Parsing and checking a push body; CPU-bound, so the server runs it in a thread.

Everything here is bounded: the JSON body's nesting, the gzip stream's expansion, the tar's headers and
member count, and Chart.yaml's size, nesting and aliases. Limits are module constants with their reasons.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import math
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import yaml

from cnr_oci import errors, mapping, schemas

# -- limits -------------------------------------------------------------------------------------------

# JSON (push and login bodies) and Chart.yaml nest at most this deep. Real documents use a handful of
# levels; the cap keeps every later recursive walk (json.dumps, jsonschema, a read-back json.loads on the
# event loop, whose stack is already dozens of frames deep) far from Python's recursion limit of 1000.
MAX_DEPTH = 64
# helm's own ceiling on a chart's decompressed size: `var MaxDecompressedChartSize int64 = 100 * 1024 *
# 1024` in helm's pkg/chart/loader/archive.go (recent helm 3 releases; helm 4 keeps it in
# pkg/chart/loader/archive). No chart helm can load expands further, so the scanner never inflates more
# than this from any push. (helm also has MaxDecompressedFileSize = 5 MiB a file; it is not applied here,
# because the scan stops at Chart.yaml and never sees most files.)
MAX_EXPANDED = 100 * 1024 * 1024
# One pax record block ('x') or GNU long name/link ('L', 'K') is held whole in memory to be parsed. Real
# ones carry a path (PATH_MAX is 4096) and a few times; 64 KiB is ample and stops a 1 GiB header.
MAX_EXTENDED_HEADER = 64 * 1024
# At most this many extended headers (x, L, K, or GNU sparse extension blocks' worth) before one member:
# a writer emits at most one of each kind, so a longer run is a crafted archive.
MAX_EXTENDED_RUN = 8
# A JSON body that is not a push (login's) is small: a user name and a password.
MAX_SMALL_BODY = 64 * 1024
# Members scanned at most. helm create makes about 10 files and big charts with subcharts a few hundred;
# each member costs a Python loop iteration, so 1M empty members must not be walked.
MAX_MEMBERS = 10_000
# Chart.yaml is read whole and parsed; real ones are a few KiB.
MAX_CHART_YAML = 1024 * 1024
# YAML events (scalars, collection starts and ends) in Chart.yaml. Real ones have tens to a few hundred;
# loading and schema-checking cost about 30 us an event, so this keeps a hostile one near 0.3 s.
MAX_YAML_EVENTS = 10_000

_BLOCK = 512
_INFLATE_CHUNK = 64 * 1024
_ZERO_BLOCK = bytes(_BLOCK)
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


def parse_force(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if value is None:
        return False
    return str(value) in _TRUE


# -- JSON ---------------------------------------------------------------------------------------------


def load_json(raw: bytes | bytearray | str, what: str = "body", max_bytes: int | None = None) -> Any:
    """json.loads with the nesting bounded by MAX_DEPTH; any failure is InvalidUsage (400), a body over
    max_bytes PayloadTooLarge (413)."""
    if max_bytes is not None and len(raw) > max_bytes:
        raise errors.PayloadTooLarge(f"the {what} exceeds the limit of {max_bytes} bytes", {"limit": max_bytes})
    try:
        doc = json.loads(raw, parse_constant=_no_constant, parse_float=_finite)
    except RecursionError as exc:
        raise errors.InvalidUsage(f"the {what} nests JSON deeper than {MAX_DEPTH} levels",
                                  {"limit": MAX_DEPTH}) from exc
    except (ValueError, UnicodeDecodeError) as exc:
        raise errors.InvalidUsage(f"the {what} is not JSON: {exc}") from exc
    if _depth_exceeds(doc, MAX_DEPTH):
        raise errors.InvalidUsage(f"the {what} nests JSON deeper than {MAX_DEPTH} levels", {"limit": MAX_DEPTH})
    return doc


def _no_constant(name: str) -> Any:
    """NaN and Infinity are not JSON (RFC 8259); Python's json would store them as such."""
    raise ValueError(f"{name} is not a JSON number")


def _finite(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"{text[:40]} is out of range for a JSON number")
    return value


def _depth_exceeds(doc: Any, limit: int) -> bool:
    """True if containers nest deeper than limit; iterative, so it cannot itself recurse too deep."""
    if not isinstance(doc, (dict, list)):
        return False
    stack: list[tuple[Any, int]] = [(doc, 1)]
    while stack:
        obj, depth = stack.pop()
        if depth > limit:
            return True
        for child in obj.values() if isinstance(obj, dict) else obj:
            if isinstance(child, (dict, list)):
                stack.append((child, depth + 1))
    return False


# -- the push body ------------------------------------------------------------------------------------


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


# -- gzip + tar ---------------------------------------------------------------------------------------


class TarFormatError(errors.CnrOciError):
    """The bytes are not a (gzipped) tar archive."""


class TarLimitError(errors.CnrOciError):
    """The archive is well formed as far as read, but exceeds one of the limits above."""

    def __init__(self, message: str, limit: int) -> None:
        super().__init__(message)
        self.limit = limit


class _Inflater:
    """The decompressed bytes of a gzip stream (members concatenated), inflated on demand in small
    chunks, so that a gzip bomb never materialises; at most MAX_EXPANDED bytes are ever inflated."""

    def __init__(self, data: bytes) -> None:
        self._src = memoryview(data)
        self._pos = 0
        self._z = zlib.decompressobj(wbits=16 + zlib.MAX_WBITS)
        self._pending = b""  # compressed input to feed before the next slice of _src
        self._buf = bytearray()
        self._off = 0  # _buf[:_off] is already handed out
        self.inflated = 0  # bytes produced so far
        self.consumed = 0  # bytes handed out (read or skipped) so far

    def _more(self) -> bool:
        """Inflate one more chunk into _buf; False at the end of the data."""
        while True:
            if self._z.eof:
                rest = self._z.unused_data + self._pending + bytes(self._src[self._pos:self._pos + 2])
                if rest[:2] != b"\x1f\x8b":
                    return False  # end of the last gzip member; what follows is not ours to read
                self._pending = self._z.unused_data + self._pending
                self._z = zlib.decompressobj(wbits=16 + zlib.MAX_WBITS)
            if self._z.unconsumed_tail:
                chunk: bytes | memoryview = self._z.unconsumed_tail
            elif self._pending:
                chunk, self._pending = self._pending, b""
            elif self._pos < len(self._src):
                chunk = self._src[self._pos:self._pos + _INFLATE_CHUNK]
                self._pos += len(chunk)
            else:
                if not self._z.eof:
                    raise TarFormatError("the gzip stream is truncated")
                return False
            try:
                out = self._z.decompress(chunk, _INFLATE_CHUNK)
            except zlib.error as exc:
                raise TarFormatError(f"bad gzip data: {exc}") from exc
            if out:
                self.inflated += len(out)
                if self.inflated > MAX_EXPANDED + _INFLATE_CHUNK:
                    raise TarLimitError(f"blob expands beyond {MAX_EXPANDED} bytes", MAX_EXPANDED)
                del self._buf[:self._off]  # once a chunk, not once a read
                self._off = 0
                self._buf += out
                return True

    def read(self, n: int) -> bytes:
        """Up to n bytes; fewer only at the end of the data."""
        while len(self._buf) - self._off < n and self._more():
            pass
        out = bytes(self._buf[self._off:self._off + n])
        self._off += len(out)
        self._count(len(out))
        return out

    def skip(self, n: int) -> int:
        """Discard up to n bytes without keeping them; returns how many were skipped."""
        done = 0
        while done < n:
            if len(self._buf) == self._off and not self._more():
                break
            take = min(n - done, len(self._buf) - self._off)
            self._off += take
            done += take
        self._count(done)
        return done

    def _count(self, n: int) -> None:
        self.consumed += n
        if self.consumed > MAX_EXPANDED:
            raise TarLimitError(f"blob expands beyond {MAX_EXPANDED} bytes", MAX_EXPANDED)


@dataclass
class TarMember:
    """One member's header, with its pax / GNU long name applied."""

    name: bytes
    type: bytes
    size: int
    sparse: bool

    @property
    def is_file(self) -> bool:
        """A regular file whose data is its content (not GNU sparse; '\\0' with a trailing / is a dir)."""
        if self.sparse or self.type not in (b"0", b"\0", b"7"):
            return False
        return not (self.type == b"\0" and self.name.endswith(b"/"))


# Types whose size field does not announce data (tarfile and Go's archive/tar both ignore it).
_HEADER_ONLY = frozenset((b"1", b"2", b"3", b"4", b"5", b"6"))


def _number(field_: bytes, what: str) -> int:
    """A numeric header field: NUL/space-terminated octal, or GNU base-256 (non-negative only)."""
    if field_[:1] == b"\x80":
        return int.from_bytes(field_[1:], "big")
    if field_[:1] == b"\xff":
        raise TarFormatError(f"negative {what} in a tar header")
    text = field_.split(b"\0", 1)[0].strip(b" ")
    if not text:
        return 0
    if text.strip(b"01234567"):
        raise TarFormatError(f"bad {what} in a tar header")
    return int(text, 8)


def _parse_pax(data: bytes) -> dict[bytes, bytes]:
    """Records 'LEN KEY=VALUE\\n' of a pax extended header."""
    records: dict[bytes, bytes] = {}
    pos = 0
    while pos < len(data) and data[pos] != 0:
        space = data.find(b" ", pos, pos + 21)
        digits = data[pos:space] if space > pos else b""
        if not digits.isdigit():
            raise TarFormatError("bad pax record length")
        end = pos + int(digits)
        if end <= space or end > len(data) or data[end - 1:end] != b"\n":
            raise TarFormatError("bad pax record")
        key, eq, value = data[space + 1:end - 1].partition(b"=")
        if not eq:
            raise TarFormatError("bad pax record")
        records[key] = value
        pos = end
    return records


def _padded(n: int) -> int:
    return -(-n // _BLOCK) * _BLOCK


class TarScanner:
    """A bounded, streaming reader of tar headers over gzip data.

    Iterating yields each member (after its extended headers, before its data); the data the caller does
    not read with read_data is skipped without being kept. Nothing but headers, one extended header at a
    time, and what read_data returns is ever held in memory.
    """

    def __init__(self, data: bytes) -> None:
        self._in = _Inflater(data)
        self._left = 0  # data and padding of the current member not yet consumed
        self._size = 0
        self.members = 0

    def __iter__(self) -> Iterator[TarMember]:
        while True:
            self._finish_member()
            member = self._next()
            if member is None:
                return
            yield member

    def read_data(self, member: TarMember) -> bytes:
        """The current member's data, whole (callers check member.size first)."""
        data = self._in.read(member.size)
        if len(data) < member.size:
            raise TarFormatError("the tar archive is truncated")
        self._left -= len(data)
        return data

    def _finish_member(self) -> None:
        if self._left and self._in.skip(self._left) < self._left:
            raise TarFormatError("the tar archive is truncated")
        self._left = 0

    def _block(self) -> bytes | None:
        block = self._in.read(_BLOCK)
        if not block:
            return None
        if len(block) < _BLOCK:
            raise TarFormatError("the tar archive is truncated")
        return block

    def _extended(self, size: int) -> bytes:
        if size > MAX_EXTENDED_HEADER:
            raise TarLimitError(
                f"a tar extended header of {size} bytes exceeds the limit of {MAX_EXTENDED_HEADER}",
                MAX_EXTENDED_HEADER,
            )
        data = self._in.read(_padded(size))
        if len(data) < _padded(size):
            raise TarFormatError("the tar archive is truncated")
        return data[:size]

    def _next(self) -> TarMember | None:
        long_name: bytes | None = None
        pax: dict[bytes, bytes] = {}
        run = 0
        while True:
            block = self._block()
            if block is None or block == _ZERO_BLOCK:
                if run:
                    raise TarFormatError("a tar extended header is not followed by a member")
                return None
            _check_sum(block)
            kind = block[156:157]
            size = _number(block[124:136], "size")
            if kind in (b"x", b"L", b"K"):
                run += 1
                if run > MAX_EXTENDED_RUN:
                    raise TarLimitError(
                        f"more than {MAX_EXTENDED_RUN} tar extended headers before one member",
                        MAX_EXTENDED_RUN,
                    )
                data = self._extended(size)
                if kind == b"x":
                    pax.update(_parse_pax(data))
                elif kind == b"L":
                    long_name = data.split(b"\0", 1)[0]
                continue
            self.members += 1
            if self.members > MAX_MEMBERS:
                raise TarLimitError(f"the tar archive has more than {MAX_MEMBERS} members", MAX_MEMBERS)
            if kind == b"S" and block[482]:
                self._skip_sparse_extensions()
            name = block[0:100].split(b"\0", 1)[0]
            # POSIX ustar (and pax) keeps a name prefix; GNU's "ustar  " uses those bytes for other fields.
            if block[257:263] == b"ustar\0":
                prefix = block[345:500].split(b"\0", 1)[0]
                if prefix:
                    name = prefix + b"/" + name
            if long_name is not None:
                name = long_name
            if b"path" in pax:
                name = pax[b"path"]
            if b"size" in pax:
                text = pax[b"size"]
                if not text.isdigit() or len(text) > 20:
                    raise TarFormatError("bad pax size record")
                size = int(text)
            if kind in _HEADER_ONLY:
                size = 0
            if self._in.consumed + size > MAX_EXPANDED:
                raise TarLimitError(f"blob expands beyond {MAX_EXPANDED} bytes", MAX_EXPANDED)
            self._left = _padded(size)
            sparse = kind == b"S" or any(k.startswith(b"GNU.sparse.") for k in pax)
            return TarMember(name=name, type=kind, size=size, sparse=sparse)

    def _skip_sparse_extensions(self) -> None:
        """Old GNU sparse headers are followed by extension blocks while their isextended byte is set;
        together they are an extended header, held to the same limit."""
        blocks = 0
        while True:
            blocks += 1
            if blocks * _BLOCK > MAX_EXTENDED_HEADER:
                raise TarLimitError(
                    f"a GNU sparse map beyond {MAX_EXTENDED_HEADER} bytes", MAX_EXTENDED_HEADER
                )
            block = self._block()
            if block is None:
                raise TarFormatError("the tar archive is truncated")
            if not block[504]:
                return


_HIGH_BYTES = bytes(range(128, 256))


def _check_sum(block: bytes) -> None:
    """The header checksum, summing bytes as unsigned or (old writers) as signed, as tarfile and Go do."""
    stored = _number(block[148:156], "checksum")
    unsigned = sum(block) - sum(block[148:156]) + 8 * 32
    if stored == unsigned:
        return
    rest = block[:148] + block[156:]
    signed = unsigned - 256 * (len(rest) - len(rest.translate(None, _HIGH_BYTES)))
    if stored != signed:
        raise TarFormatError("bad tar header checksum")


def _is_chart_yaml(member: TarMember) -> bool:
    parts = member.name.strip(b"/").split(b"/")
    return member.is_file and len(parts) == 2 and parts[1] == b"Chart.yaml"


def inspect_tarball(data: bytes, media_type: str) -> dict[str, Any] | None:
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
        raise _chart_error(f"Chart.yaml name {name[:80]!r} is invalid: helm takes a plain file name", chart_field="name")
    problem = schemas.first_error(schemas.CHART, chart, best=False)
    if problem:
        fld, msg = problem
        raise _chart_error(f"Chart.yaml field {fld or '(root)'!r}: {msg}", chart_field=fld)
    try:
        helm_config(chart)
    except (ValueError, TypeError) as exc:  # NaN/Infinity, keys JSON cannot carry
        raise _chart_error(f"Chart.yaml holds a value JSON cannot carry: {str(exc)[:200]}") from exc
    return chart


# -- helm's config blob -------------------------------------------------------------------------------

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


def go_json(doc: Any) -> bytes:
    """JSON as Go's encoding/json writes it: compact, UTF-8, with <, > and & escaped."""
    text = json.dumps(doc, separators=(",", ":"), ensure_ascii=False, default=str, allow_nan=False)
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
    return go_json(out)
