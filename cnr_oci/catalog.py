"""The catalog: which packages exist, search, and per-package summaries, as the caller may see them."""

from __future__ import annotations

import asyncio
import functools
import time
from collections.abc import AsyncGenerator
from dataclasses import dataclass

from cachetools import TTLCache

from cnr_oci import errors, mapping, upstream
from cnr_oci.auth import identity_key
from cnr_oci.mapping import Package
from cnr_oci.readmodel import TTL_ENTRIES, ReadModel

_MISSING = object()
# Packages of one listing read at once, in name order: the first ones finish first (the stream's first
# byte does not wait behind every package's first request), and the fan-out stays full.
PACKAGES_IN_FLIGHT = 32


@dataclass(frozen=True)
class Summary:
    """One package as a listing shows it: releases holding the media types asked for."""

    package: Package
    releases: list[str]  # descending
    media_types: list[str]  # those of the highest release
    created: list[str]  # created dates known, ascending


class Catalog:
    """Lists packages through the registry's catalog; summaries live for the cache TTL per identity."""

    def __init__(self, read: ReadModel) -> None:
        self.read = read
        ttl = max(read.cache_ttl, 0.0)
        self._repos: TTLCache[str, tuple[list[str], float]] = TTLCache(TTL_ENTRIES, ttl)  # (repos, read at)
        self._summaries: TTLCache[tuple[str, str, str], Summary | None] = TTLCache(TTL_ENTRIES, ttl)
        read.on_forget.append(self._forget)

    def _forget(self, repo: str, tag: str | None) -> None:
        for key in [k for k in list(self._summaries.keys()) if k[1] == repo]:
            self._summaries.pop(key, None)
        self._repos.clear()

    async def packages(self) -> list[Package]:
        """Every package in the registry's catalog that the caller may list.

        Raises:
            Denied, NotFound, UnsupportedOperation: the registry does not let the caller list it.
        """
        return (await self.packages_read_at())[0]

    async def packages_read_at(self) -> tuple[list[Package], float]:
        """packages(), and when the catalog they come from was read (time.monotonic)."""
        cached = self._repos.get(identity_key())
        if cached is None:
            start = time.monotonic()
            cached = self._repos[identity_key()] = (await self.read.client.catalog(), start)
        repos, read_at = cached
        return [p for r in repos if (p := mapping.package_from_repository(r, self.read.prefix)) is not None], read_at

    async def search(self, q: str) -> list[str]:
        """E6: names matching q that the caller can read."""
        q = q.lower()
        hits = [p for p in await self.packages() if q in p.full]
        readable = await self.read.gather(self._readable(p) for p in hits)
        return sorted(p.full for p, ok in zip(hits, readable, strict=True) if ok)

    async def _readable(self, pkg: Package) -> bool:
        try:
            return bool(await self.read.tags(self.read.repo(pkg)))
        except (upstream.Unauthorized, upstream.Denied):
            return False

    async def summaries(self, namespace: str | None = None, query: str | None = None,
                        media_type: str | None = None) -> list[Summary]:
        """E5: every package with a matching release, name ascending."""
        return [s async for s in self.iter_summaries(namespace, query, media_type)]

    async def iter_summaries(self, namespace: str | None = None, query: str | None = None,
                             media_type: str | None = None) -> AsyncGenerator[Summary, None]:
        """E5, name ascending, each summary as soon as it and those before it are known.

        Every missing summary is computed at once (fan-out bounded at the registry calls), and kept
        when done even if the caller stopped early (a limit, a client gone): the work is bounded by
        the catalog, as a full listing's is, and the next listing finds it cached.
        """
        pkgs = [
            p for p in await self.packages()
            if (not namespace or p.namespace == namespace) and (not query or query.lower() in p.full)
        ]
        ident, kind = identity_key(), media_type or ""
        keys = [(ident, self.read.repo(p), kind) for p in pkgs]
        # Cached summaries are taken as they are; only the others cost a task each (a warm listing
        # of a thousand packages would otherwise start a thousand tasks to read a dict).
        found = [self._summaries.get(k, _MISSING) for k in keys]
        tasks, window = {}, asyncio.Semaphore(PACKAGES_IN_FLIGHT)
        for i, summary in enumerate(found):
            if summary is _MISSING:
                tasks[i] = asyncio.ensure_future(self._windowed(window, pkgs[i], media_type))
                tasks[i].add_done_callback(functools.partial(self._keep, keys[i]))
        for i in range(len(keys)):
            summary = await tasks[i] if i in tasks else found[i]
            if isinstance(summary, Summary):
                yield summary

    def _keep(self, key: tuple[str, str, str], task: asyncio.Future[Summary | None]) -> None:
        """A computed summary into the cache; a failure is retrieved (so never logged as lost) and not kept."""
        if not task.cancelled() and task.exception() is None:
            self._summaries[key] = task.result()

    async def _windowed(self, window: asyncio.Semaphore, pkg: Package, media_type: str | None) -> Summary | None:
        async with window:
            return await self._compute(pkg, media_type)

    async def _compute(self, pkg: Package, media_type: str | None) -> Summary | None:
        """None when nothing matches or the caller may not read the package."""
        try:
            releases = await self.read.releases(pkg)
            if media_type is None:
                return await self._by_default(pkg, releases)
            found = [e for e in await self.read.all_entries(pkg, releases) if e.media_type == media_type]
        except (errors.PackageNotFound, upstream.Unauthorized, upstream.Denied, upstream.NotFound):
            return None
        if not found:
            return None
        kept = mapping.sort_releases({e.release for e in found})
        return Summary(pkg, kept, [media_type], sorted(c for e in found if (c := e.created)))

    async def _by_default(self, pkg: Package, releases: list[str]) -> Summary | None:
        """Unfiltered, a summary costs the tag list and the manifest of the highest release holding a
        package (2 requests when it is one manifest): the releases below it are listed as tagged, and
        the dates are that release's. Reading every release would cost one request per release."""
        for i, release in enumerate(releases):
            found = await self.read.entries(pkg, release)
            if found:
                created = sorted(c for e in found if (c := e.created))
                return Summary(pkg, releases[i:], sorted({e.media_type for e in found}), created)
        return None
