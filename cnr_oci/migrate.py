"""Migration: every package, release, media type and channel of a CNR server, copied into the store."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import mmap
import os
import re
import shutil
import signal
import tempfile
import time
from pathlib import Path
from typing import Any

from cnr_oci import archive, cnrsource, errors, layout, mapping, upstream
from cnr_oci.cnrsource import CnrSource, Fetched, SourceError, SourceRelease
from cnr_oci.entries import Entry
from cnr_oci.mapping import Package
from cnr_oci.migratereport import (
    CONFLICT,
    COPIED,
    FAILED,
    MOVED,
    OVERWRITTEN,
    PLANNED,
    SAME,
    ChannelOutcome,
    Outcome,
    Progress,
    Report,
)
from cnr_oci.release import Release
from cnr_oci.store import Store

log = logging.getLogger(__name__)
# Fault injection for the kill-and-resume tests: the process SIGKILLs itself at this point
# ("fetch": mid-download of a blob; "written": after a package's first release is tagged, the rest
# not; "channels": after every release of a package is tagged, before its channels are written).
KILL_AT = os.environ.get("CNR_OCI_MIGRATE_KILL_AT", "")


def _maybe_die(point: str) -> None:
    if KILL_AT == point:
        log.warning("CNR_OCI_MIGRATE_KILL_AT=%s: killing myself", point)
        os.kill(os.getpid(), signal.SIGKILL)

# What happened to one (release, media type), or one channel.
_DIGEST = re.compile(r"sha256:[a-f0-9]{64}")


SPOOL_PREFIX = "cnr-oci-migrate-"


def _remove_stale_spools(workdir: Path | None) -> None:
    """Spool directories of runs that were killed (their process is gone) are removed."""
    root = workdir or Path(tempfile.gettempdir())
    for path in root.glob(f"{SPOOL_PREFIX}*-*"):
        pid = path.name[len(SPOOL_PREFIX):].split("-", 1)[0]
        if not pid.isdigit() or Path(f"/proc/{pid}").exists():
            continue
        shutil.rmtree(path, ignore_errors=True)
        log.info("removed %s, left by a migration that was killed", path)


def _chart_of(path: Path, size: int) -> dict[str, Any] | None:
    """Chart.yaml of a spooled helm blob, read through a memory map (nothing held whole; run in a thread)."""
    if size == 0:
        raise errors.InvalidUsage("blob is empty")
    with path.open("rb") as f:
        mapped = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
        try:
            return archive.inspect_tarball(mapped, "helm")
        finally:
            # A refused chart's error holds the scanner's view of the map in its traceback: closing
            # then raises BufferError, which would replace the error (and crashed whole runs).
            with contextlib.suppress(BufferError):
                mapped.close()


class Migration:
    """Copies releases with ``jobs`` transfers at once; each is verified, written tag last, read back."""

    def __init__(self, store: Store, source: CnrSource, *, jobs: int = 4, force: bool = False,
                 dry_run: bool = False, workdir: Path | None = None, progress: Progress | None = None,
                 max_blob: int = cnrsource.MAX_BLOB) -> None:
        self.store = store
        self.max_blob = max_blob
        self.source = source
        self.force = force
        self.dry_run = dry_run
        self.workdir = workdir
        self.progress = progress or Progress()
        self._slots = asyncio.Semaphore(jobs)
        self.report = Report(source.base)
        source.on_progress = lambda: _maybe_die("fetch")

    async def run(self, namespaces: list[str], packages: list[str]) -> Report:
        """Every package named, or listed in the namespaces (all, when neither is given)."""
        start = time.monotonic()
        names = set(packages)
        if namespaces or not packages:
            for ns in namespaces or [None]:  # type: ignore[list-item]
                try:
                    found = set(await self.source.packages(ns))
                except SourceError as exc:
                    self.report.packages_failed[f"{ns or '*'}/*"] = str(exc)
                    continue
                if ns and not found:  # a typo must not pass for a migration of nothing
                    self.report.packages_failed[f"{ns}/*"] = "the source lists no package in this namespace"
                names |= found
        lists = await asyncio.gather(*(self._listing(name) for name in sorted(names)))
        listed = [x for x in lists if x is not None]
        self.progress.total(sum(len(r) for _, r in listed),
                            sum(max(0, x.size or 0) for _, r in listed for x in r))
        _remove_stale_spools(self.workdir)
        with tempfile.TemporaryDirectory(prefix=f"{SPOOL_PREFIX}{os.getpid()}-", dir=self.workdir) as tmp:
            await asyncio.gather(*(self._package(pkg, rels, Path(tmp)) for pkg, rels in listed))
        self.report.seconds = time.monotonic() - start
        return self.report

    async def _listing(self, name: str) -> tuple[Package, list[SourceRelease]] | None:
        """A package's releases (E8), listed --jobs at a time; None when that fails (reported)."""
        ns, _, short = name.partition("/")
        try:  # before any request names it: "../x" or "a/b?c" would be another path on the source
            pkg = mapping.parse_package(ns, short, self.store.read.prefix)
            async with self._slots:
                return pkg, await self.source.releases(name)
        except errors.CnrError as exc:
            self.report.packages_failed[name] = exc.message
        except SourceError as exc:
            self.report.packages_failed[name] = str(exc)
        return None

    async def _package(self, pkg: Package, rels: list[SourceRelease], tmp: Path) -> None:
        name = pkg.full
        rels = self._unambiguous(pkg, rels)
        # Oldest first, so that an interrupted run leaves the older releases in place.
        ordered = sorted(rels, key=lambda r: (mapping.is_release(r.release), r.release))
        try:
            tags: set[str] | None = set(await self.store.read.client.tags(self.store.read.repo(pkg)))
        except upstream.NotFound:
            tags = set()
        except upstream.RegistryError:
            tags = None  # each release is looked at on its own
        outcomes = await asyncio.gather(*(self._release(pkg, r, tmp, tags) for r in ordered))
        moved = {o.release for o in outcomes if o.status in MOVED | {PLANNED}}
        if any(o.status == COPIED for o in outcomes):
            _maybe_die("channels")
        try:
            channels = await self.source.channels(name)
        except SourceError as exc:
            self.report.channels.append(ChannelOutcome(name, "*", "failed", str(exc)))
            return
        for ch in channels:
            self.report.channels.append(await self._channel(pkg, ch, moved, {r.release for r in rels}))

    def _unambiguous(self, pkg: Package, rels: list[SourceRelease]) -> list[SourceRelease]:
        """One entry a (release, media type): a repeat with the same digest is dropped; one listed with
        several digests is reported failed (which one is the release?) and not moved."""
        groups: dict[tuple[str, str], list[SourceRelease]] = {}
        for r in rels:
            groups.setdefault((r.release, r.media_type), []).append(r)
        out = []
        for (release, media_type), group in groups.items():
            digests = sorted({r.digest for r in group})
            if len(digests) == 1:
                out.append(group[0])
                continue
            shown = ", ".join(digests[:3]) + (f" and {len(digests) - 3} more" if len(digests) > 3 else "")
            for r in group:
                o = Outcome(pkg.full, release, media_type, FAILED, source_digest=r.digest,
                            detail=f"the source lists this release twice or more, with digests {shown}")
                log.warning("%s %s (%s): failed: %s", pkg.full, release, media_type, o.detail)
                self.report.releases.append(o)
                self.progress.release_done(o)
        return out

    async def _release(self, pkg: Package, rel: SourceRelease, tmp: Path, tags: set[str] | None) -> Outcome:
        out = Outcome(pkg.full, rel.release, rel.media_type, FAILED, source_digest=rel.digest)
        try:
            async with self._slots:
                await self._copy(pkg, rel, tmp, out, tags)
        except (SourceError, upstream.RegistryError, errors.CnrError, OSError) as exc:
            out.status, out.detail = FAILED, getattr(exc, "message", None) or str(exc)
        except Exception as exc:  # a bug shown by what a source sent: this release fails, the run goes on
            log.exception("%s %s (%s): unexpected error", pkg.full, rel.release, rel.media_type)
            out.status, out.detail = FAILED, f"internal error: {type(exc).__name__}: {exc}"
        log.log(logging.WARNING if out.status in (FAILED, CONFLICT) else logging.INFO,
                "%s %s (%s): %s%s", pkg.full, rel.release, rel.media_type, out.status,
                f": {out.detail}" if out.detail else "")
        self.report.releases.append(out)
        self.progress.release_done(out)
        return out

    async def _held(self, pkg: Package, rel: SourceRelease, tags: set[str] | None = None) -> Entry | None:
        """What the target holds for this (release, media type); ``tags``, when given, is the package's
        tag list read once, and spares a manifest GET for a release that is not there."""
        if tags is not None and mapping.release_to_tag(rel.release) not in tags:
            return None
        try:
            found = await self.store.read.entries(pkg, rel.release, fresh=True)
        except errors.PackageNotFound:
            return None
        return next((e for e in found if e.media_type == rel.media_type), None)

    async def _copy(self, pkg: Package, rel: SourceRelease, tmp: Path, out: Outcome, tags: set[str] | None) -> None:
        if len(rel.release) > mapping.MAX_TAG:
            raise errors.InvalidRelease(f"release {rel.release[:80]!r}... is {len(rel.release)} characters: an OCI "
                                        f"tag holds at most {mapping.MAX_TAG}")
        if not mapping.is_release(rel.release):
            raise errors.InvalidRelease(f"release {rel.release[:80]!r} is not a SemVer 2.0 version")
        mapping.normalize_media_type(rel.media_type)
        if not _DIGEST.fullmatch(rel.digest):
            raise SourceError(f"the source advertises no sha256 digest ({rel.digest[:100]!r}), so the blob "
                              "cannot be verified; nothing was fetched")
        held = await self._held(pkg, rel, tags)
        if held is not None and rel.digest in (layout.source_digest(held.manifest), held.layer.get("digest")):
            out.status, out.detail = SAME, "the target already holds it, with this digest"
            self.progress.bytes_moved(rel.size or 0)
            return
        if self.dry_run:
            out.status = CONFLICT if held is not None else PLANNED
            out.bytes = rel.size or 0
            self.progress.bytes_moved(out.bytes)
            out.detail = "the target holds other content" if held is not None else ""
            return
        # A name of its own: "a_b/c" and "a/b_c" would join alike, and long names pass NAME_MAX.
        fd, spooled = tempfile.mkstemp(suffix=".blob", dir=tmp)
        os.close(fd)
        spool = Path(spooled)
        try:
            fetched = await self.source.fetch(rel, spool, self.max_blob)
            self.progress.bytes_moved(fetched.size)
            out.bytes, out.source_digest_of = fetched.size, self._digest_of(rel, fetched)
            if held is not None:
                if held.layer.get("digest") == fetched.gzip_digest:
                    out.status, out.detail = SAME, "the target holds the same bytes"
                    return
                if not self.force:
                    out.status = CONFLICT
                    out.detail = "the target holds other bytes for this release; --force overwrites"
                    return
            await self._write(pkg, rel, fetched, out, overwrite=held is not None)
        finally:
            spool.unlink(missing_ok=True)

    @staticmethod
    def _digest_of(rel: SourceRelease, fetched: Fetched) -> str:
        """Which bytes the source's digest is of; raises when it is of neither (nothing is written)."""
        if rel.digest == fetched.gzip_digest:
            return "tar+gzip"
        if rel.digest == fetched.tar_digest:
            return "tar"
        tar = fetched.tar_digest or f"not gzip, or over {cnrsource.tar_limit(fetched.size)} bytes"
        raise SourceError(f"the bytes served do not match the advertised digest {rel.digest} (their sha256 "
                          f"is {fetched.gzip_digest}, gunzipped {tar}); nothing was written")

    async def _write(self, pkg: Package, rel: SourceRelease, fetched: Fetched, out: Outcome, overwrite: bool) -> None:
        chart = await asyncio.to_thread(_chart_of, fetched.path, fetched.size) if rel.media_type == "helm" else None
        release = Release(
            rel.release, rel.media_type, fetched.gzip_digest, fetched.size, rel.metadata, chart, force=overwrite,
            created=layout.rfc3339(rel.created_at),
            annotations={layout.ANN_SOURCE_DIGEST: rel.digest, layout.ANN_SOURCE_DIGEST_OF: out.source_digest_of})
        try:
            await self.store.write.write(pkg, release, fetched.path)
        except errors.PackageExists:  # by another run or a push, since _held looked
            now = await self._held(pkg, rel)
            if now is not None and now.layer.get("digest") == fetched.gzip_digest:
                out.status, out.detail = SAME, "written meanwhile by someone else, with the same bytes"
            else:
                out.status, out.detail = CONFLICT, "written meanwhile by someone else; --force overwrites"
            return
        back = await self._held(pkg, rel)  # read back through the read model, as a client would see it
        if back is None or back.layer.get("digest") != fetched.gzip_digest or layout.source_digest(
                back.manifest) != rel.digest:
            raise SourceError("the release read back differs from what was written")
        out.status = OVERWRITTEN if overwrite else COPIED
        _maybe_die("written")

    async def _channel(self, pkg: Package, ch: dict[str, Any], moved: set[str], listed: set[str]) -> ChannelOutcome:
        """A channel with the releases of it that moved. Releases the source does not list are left out
        (the source's channel shows nothing for them either): one with only those is skipped, not failed,
        so that a run that moved everything succeeds."""
        name = str(ch["name"])
        wanted = [r for r in ch["releases"] if r in moved]
        current = ch["current"] if ch["current"] in wanted else None
        out = ChannelOutcome(pkg.full, name, "planned", releases=mapping.sort_releases(wanted), current=current)
        if not ch["releases"]:
            out.status, out.detail = "skipped", "empty on the source: nothing to move"
            return out
        try:
            mapping.check_channel(name)
        except errors.CnrError as exc:
            out.status, out.detail = "failed", exc.message
            return out
        unlisted = sorted({r for r in ch["releases"] if r not in listed})
        if unlisted:
            out.detail = f"releases the source does not list, left out: {', '.join(unlisted[:5])[:300]}" + (
                f" and {len(unlisted) - 5} more" if len(unlisted) > 5 else "")
        if not wanted:
            if any(r in listed for r in ch["releases"]):
                out.status, out.detail = "failed", "none of its releases moved"
            else:
                out.status = "skipped"
            return out
        if self.dry_run:
            return out
        try:
            written = await self.store.channels.put(pkg, name, wanted, current)
            out.status = "written" if written else "exists"
            out.current = current or mapping.sort_releases(wanted)[0]
        except (upstream.RegistryError, errors.CnrError) as exc:
            out.status, out.detail = "failed", getattr(exc, "message", None) or str(exc)
        except Exception as exc:  # as in _release: this channel fails, the run goes on
            log.exception("%s channel %s: unexpected error", pkg.full, name)
            out.status, out.detail = "failed", f"internal error: {type(exc).__name__}: {exc}"
        return out
