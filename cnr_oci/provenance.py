"""helm provenance files (<chart>-<version>.tgz.prov): which chart file one signs (no I/O, no signature check).

A .prov file is an OpenPGP clear-signed message: the chart's Chart.yaml, a "..." line, then
`files: {<chart>-<version>.tgz: sha256:<hex>}` (helm pkg/provenance). cnr-oci does not check the
signature (it has no keyring; `helm pull --verify` does, with the user's); it checks that the file is
one, names its chart as ChartMuseum does (pkg/repo/provenance.go, ProvenanceFilenameFromContent), and
signs the chart file it is stored with.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from cnr_oci import errors

# A provenance file is a few KiB: Chart.yaml and a signature.
MAX_PROV = 1024 * 1024
_BEGIN = b"-----BEGIN PGP SIGNED MESSAGE-----"
# ChartMuseum's own patterns: "\nname:[ *](.+)" and "\nversion:[ *](.+)", the first match.
_NAME = re.compile(rb"\nname:[ *](.+)")
_VERSION = re.compile(rb"\nversion:[ *](.+)")
# helm writes "files:\n  <name>-<version>.tgz: sha256:<hex>" before the signature (one line each).
_FILE = re.compile(rb"(\S+\.tgz): sha256:([0-9a-f]{64})")
_SIGNATURE = b"\n-----BEGIN PGP SIGNATURE-----"


@dataclass(frozen=True)
class Provenance:
    name: str
    version: str
    files: dict[str, str]  # chart file name -> "sha256:<hex>", as signed

    @property
    def chart_file(self) -> str:
        return f"{self.name}-{self.version}.tgz"


def parse(raw: bytes) -> Provenance:
    """The chart a provenance file names, and the digests it signs.

    Raises:
        InvalidUsage: not a clear-signed helm provenance file.
    """
    if len(raw) > MAX_PROV:
        raise errors.InvalidUsage(f"the provenance file is larger than {MAX_PROV} bytes")
    name, version = _NAME.search(raw), _VERSION.search(raw)
    end = raw.find(_SIGNATURE)
    if not raw.startswith(_BEGIN) or name is None or version is None or end == -1:
        raise errors.InvalidUsage("invalid provenance file")  # ChartMuseum's message
    files: dict[str, str] = {}
    for line in raw[:end].splitlines():  # line by line: no pattern runs over the whole file
        if line.startswith(b"  ") and (m := _FILE.fullmatch(line.strip())):
            files.setdefault(m.group(1).decode("utf-8", "replace"), "sha256:" + m.group(2).decode())
    return Provenance(_text(name.group(1)), _text(version.group(1)), files)


def _text(value: bytes) -> str:
    return value.decode("utf-8", "replace").strip().strip("'\"")


def check_signs(prov: Provenance, name: str, version: str, digest: str) -> None:
    """The provenance file is for this chart file and signs its digest.

    Raises:
        InvalidUsage: it names another chart or version, or signs other bytes.
    """
    wanted = f"{name}-{version}.tgz"
    if prov.chart_file != wanted:
        raise errors.InvalidUsage(f"the provenance file is for {prov.chart_file[:200]}, not {wanted}")
    if prov.files.get(wanted) != digest:
        raise errors.InvalidUsage(f"the provenance file does not sign this {wanted}: its sha256 differs "
                                  "(sign the chart you upload: helm package --sign)")
