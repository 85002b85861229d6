"""The files of a chart the package browser shows (Chart.yaml, README, values.yaml), read with bounds.

The chart is scanned with tarscan's bounded reader in a worker thread; only top-level files of the
chart's directory are kept, each up to MAX_FILE bytes, and the README becomes HTML through
markdown-it-py with raw HTML off (a chart's ``<script>`` is shown as text, never run).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from markdown_it import MarkdownIt

from cnr_oci import errors
from cnr_oci.archive import MAX_CHART_YAML, load_chart_yaml
from cnr_oci.tarscan import Archive, TarFormatError, TarLimitError, TarScanner

# A chart blob larger than this is not opened by the browser (helm's charts are KiBs to a few MiB).
MAX_CHART_BLOB = 8 * 1024 * 1024
# Each file shown is cut here: a page is not the place for a 50 MiB values.yaml.
MAX_FILE = 256 * 1024
WANTED = {b"Chart.yaml": "chart", b"README.md": "readme", b"README": "readme", b"readme.md": "readme",
          b"values.yaml": "values"}

# commonmark without raw HTML; markdown-it's validateLink refuses javascript:, vbscript:, file: and data: links.
_MD = MarkdownIt("commonmark", {"html": False, "linkify": False})


@dataclass
class ChartFiles:
    """What the release page shows of a chart; ``problem`` says why something is missing."""

    chart: dict[str, Any] | None = None
    chart_text: str | None = None
    readme_html: str | None = None
    values: str | None = None
    truncated: list[str] = field(default_factory=list)
    problem: str | None = None


def _text(data: bytes) -> str:
    return data.decode("utf-8", errors="replace")


def read_chart(data: Archive) -> ChartFiles:
    """Chart.yaml, the README (as safe HTML) and values.yaml of a .tgz chart; never raises on bad input."""
    found = ChartFiles()
    raw: dict[str, bytes] = {}
    scanner = TarScanner(data)
    try:
        for member in scanner:
            parts = member.name.strip(b"/").split(b"/")
            kind = WANTED.get(parts[-1]) if member.is_file and len(parts) == 2 else None
            if kind is None or kind in raw:
                continue
            limit = MAX_CHART_YAML if kind == "chart" else MAX_FILE
            if member.size > limit:
                found.truncated.append(_text(parts[-1]))
                continue
            raw[kind] = scanner.read_data(member)
            if len(raw) == 3:
                break
    except (TarFormatError, TarLimitError) as exc:
        found.problem = f"the chart could not be read: {exc}"
    if "chart" in raw:
        found.chart_text = _text(raw["chart"])
        try:
            found.chart = load_chart_yaml(raw["chart"])
        except errors.CnrError as exc:
            found.problem = exc.message
    if "readme" in raw:
        found.readme_html = _MD.render(_text(raw["readme"]))
    if "values" in raw:
        found.values = _text(raw["values"])
    return found
