"""What a migration reports: the outcome of each release and channel, the run's report, progress hooks."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

# What happened to one (release, media type).
COPIED, SAME, OVERWRITTEN = "copied", "exists", "overwritten"
CONFLICT, FAILED, PLANNED = "conflict", "failed", "planned"
MOVED = frozenset({COPIED, SAME, OVERWRITTEN})


@dataclass
class Outcome:
    package: str
    release: str
    media_type: str
    status: str
    detail: str = ""
    bytes: int = 0
    source_digest: str = ""
    source_digest_of: str = ""  # "tar" (appr), "tar+gzip", or "" when not fetched


@dataclass
class ChannelOutcome:
    package: str
    channel: str
    status: str  # "written", "exists", "failed", "planned", "skipped" (it names no release the source lists)
    detail: str = ""
    releases: list[str] = field(default_factory=list)
    current: str | None = None


@dataclass
class Report:
    source: str
    releases: list[Outcome] = field(default_factory=list)
    channels: list[ChannelOutcome] = field(default_factory=list)
    packages_failed: dict[str, str] = field(default_factory=dict)  # package: why it could not be listed
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return not self.packages_failed and all(o.status in MOVED | {PLANNED} for o in self.releases) and all(
            c.status != "failed" for c in self.channels)

    def counts(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for o in self.releases:
            out[o.status] = out.get(o.status, 0) + 1
        return out

    def as_json(self) -> dict[str, Any]:
        return {"source": self.source, "ok": self.ok, "seconds": round(self.seconds, 3), "counts": self.counts(),
                "packages_failed": dict(sorted(self.packages_failed.items())),
                "releases": [asdict(o) for o in self.releases], "channels": [asdict(c) for c in self.channels]}


@dataclass
class Progress:
    """Callbacks a front end (progress bars, log lines) hooks into; all optional."""

    total: Callable[[int, int], None] = lambda releases, nbytes: None
    release_done: Callable[[Outcome], None] = lambda outcome: None
    bytes_moved: Callable[[int], None] = lambda n: None
