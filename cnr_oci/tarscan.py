"""A bounded, streaming reader of gzipped tar archives.

It holds nothing but headers, one extended header at a time, and the data its caller asks for; the gzip
stream's expansion, the extended headers and the member count are bounded. Limits are module constants
with their reasons.
"""

from __future__ import annotations

import mmap
import zlib
from collections.abc import Iterator
from dataclasses import dataclass

from cnr_oci import errors

# A whole .tar.gz: bytes, or a memory-mapped spooled file (read as needed, never copied whole).
Archive = bytes | mmap.mmap

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
# Members scanned at most. helm create makes about 10 files and big charts with subcharts a few hundred;
# each member costs a Python loop iteration, so 1M empty members must not be walked.
MAX_MEMBERS = 10_000

_BLOCK = 512
_INFLATE_CHUNK = 64 * 1024
_ZERO_BLOCK = bytes(_BLOCK)


class TarFormatError(errors.CnrOciError):
    """The bytes are not a (gzipped) tar archive."""


class TarLimitError(errors.CnrOciError):
    """The archive is well formed as far as read, but exceeds a limit (one above, or its caller's)."""

    def __init__(self, message: str, limit: int) -> None:
        super().__init__(message)
        self.limit = limit


class _Inflater:
    """The decompressed bytes of a gzip stream (members concatenated), inflated on demand in small
    chunks, so that a gzip bomb never materialises; at most MAX_EXPANDED bytes are ever inflated."""

    def __init__(self, data: Archive) -> None:
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

    def __init__(self, data: Archive) -> None:
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
