"""The read model: a cached, identity-aware view of the packages an OCI registry holds."""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from typing import Any, TypeVar

from cachetools import LRUCache, TTLCache

from cnr_oci import blobcache, errors, layout, mapping, oci, safejson, schemas, upstream
from cnr_oci.auth import identity_key
from cnr_oci.entries import Contents, Details, Entry, parse_stored
from cnr_oci.layout import Manifest
from cnr_oci.mapping import Package
from cnr_oci.releaselist import ReleaseLists

log = logging.getLogger(__name__)
T = TypeVar("T")
# Requests to the registry one listing may have in flight at once.
DEFAULT_FANOUT = 16
# Raw bytes of manifests, and of configs, kept parsed in memory (each cache), and at most this many
# entries: parsed, a manifest of 600 bytes takes 3.5 KiB, so bytes alone would let ~50 000 in.
CACHE_BYTES = 32 * 1024 * 1024
CACHE_ENTRIES = 8192
# Tag lists, tag digests and catalogs kept (each cache), for --cache-ttl.
TTL_ENTRIES = 100_000
# Configs larger than this are parsed and schema-checked in a worker thread.
OFF_LOOP = 64 * 1024


def _weight(raw_size: int) -> int:
    """An entry's weight in a byte-bounded LRU: its raw size, but at least 1/CACHE_ENTRIES of the cache."""
    return max(raw_size, CACHE_BYTES // CACHE_ENTRIES)


@contextlib.asynccontextmanager
async def _closing(aw: Awaitable[Any]) -> AsyncIterator[None]:
    """Closes a coroutine that was never started (its task stopped while waiting for a fan-out
    slot), so it is not reported as never awaited; a finished one is left as it is."""
    try:
        yield
    finally:
        if inspect.iscoroutine(aw):
            aw.close()


def _keep(cache: LRUCache[str, Any], key: str, value: Any) -> None:
    with contextlib.suppress(ValueError):  # larger than the whole cache: not kept
        cache[key] = value


class ReadModel:
    """Tags, manifests, release contents and blobs of packages, as the calling identity sees them. Tag
    lists and digests live ``cache_ttl`` s per identity; manifests and configs (immutable) in LRUs by
    bytes. Only leaf registry calls take a fan-out slot (a slot held while waiting for one deadlocks)."""

    def __init__(self, client: oci.OciClient, prefix: str = "", *, cache_ttl: float = 2.0,
                 fanout: int | None = None, blob_cache_size: int = blobcache.DEFAULT_SIZE,
                 blob_cache_max: int = blobcache.DEFAULT_MAX) -> None:
        self.client = client
        self.prefix = prefix.strip("/")
        self.cache_ttl = cache_ttl
        ttl = max(cache_ttl, 0.0)
        # What a caller may see depends on who it is: these caches are per identity.
        self._tags: TTLCache[tuple[str, str], list[str]] = TTLCache(TTL_ENTRIES, ttl)
        self._tag_digest: TTLCache[tuple[str, str, str], str] = TTLCache(TTL_ENTRIES, ttl)
        # Weighed by raw bytes: one manifest or config may be 4 MiB (and parse to several times that).
        self._manifests: LRUCache[str, Manifest] = LRUCache(CACHE_BYTES, getsizeof=lambda m: _weight(len(m.raw)))
        self._configs: LRUCache[str, tuple[dict[str, Any], int]] = LRUCache(CACHE_BYTES,
                                                                            getsizeof=lambda c: _weight(c[1]))
        # The releases of a tag list, sorted, and what queries selected in them, per identity.
        self._releases = ReleaseLists()
        # Migrated releases' old digests to their blobs, with the tag list they were read from.
        self._old_digests: TTLCache[tuple[str, str], tuple[Any, dict[str, str]]] = TTLCache(TTL_ENTRIES, ttl)
        self._fanout = asyncio.Semaphore(fanout or DEFAULT_FANOUT)
        self._inflight: dict[tuple[Any, ...], asyncio.Future[Any]] = {}
        # Writes counted, and the count at each repository's last write: a read begun before it is not kept.
        self._writes, self._written = 0, LRUCache[str, int](TTL_ENTRIES)
        # Run before a release listing: the write path settles tag writes of unknown outcome there.
        self.before_listing: Callable[[str], Awaitable[None]] | None = None
        # Small blobs by digest, served where the registry let the caller read them within the TTL.
        self.blobs = blobcache.BlobCache(client, size=blob_cache_size, max_blob=blob_cache_max, ttl=ttl)
        # Called with (repository, tag or None) whenever a write made cached reads stale.
        self.on_forget: list[Callable[[str, str | None], None]] = [self.blobs.forget]

    def repo(self, pkg: Package) -> str:
        return pkg.repository(self.prefix)

    async def bounded(self, aw: Awaitable[T]) -> T:
        """A leaf registry call, counted against the fan-out width."""
        async with _closing(aw), self._fanout:
            return await aw

    @staticmethod
    async def gather(aws: Iterable[Awaitable[T]]) -> list[T]:
        return list(await asyncio.gather(*aws))

    async def once(self, key: tuple[Any, ...], make: Callable[[], Awaitable[T]]) -> T:
        """Single flight: concurrent callers with one key share one computation."""
        return await blobcache.once(self._inflight, key, make)

    def forget(self, repo: str, tag: str | None = None) -> None:
        """Drop what our own write made stale, for every identity."""
        for key in [k for k in list(self._tags.keys()) if k[1] == repo]:
            self._tags.pop(key, None)
        if tag is not None:
            for dkey in [k for k in list(self._tag_digest.keys()) if k[1] == repo and k[2] == tag]:
                self._tag_digest.pop(dkey, None)
        for running in [k for k in self._inflight if k[2:3] == (repo,)]:  # later reads start afresh
            self._inflight.pop(running, None)
        self._writes += 1  # and reads already under way do not keep what they get
        self._written[repo] = self._writes
        for hook in self.on_forget:
            hook(repo, tag)

    async def tags(self, repo: str) -> list[str]:
        key = (identity_key(), repo)
        tags = self._tags.get(key)
        if tags is None:
            tags = await self.once(("tags", *key), lambda: self._fetch_tags(key))
        return tags

    async def _fetch_tags(self, key: tuple[str, str]) -> list[str]:
        start = self._writes
        try:
            tags = await self.bounded(self.client.tags(key[1]))
        except upstream.NotFound:
            tags = []
        if self._written.get(key[1], -1) <= start:  # no write to the repository since the GET began
            self._tags[key] = tags
        return tags

    async def manifest(self, repo: str, ref: str, fresh: bool = False) -> Manifest | None:
        """A manifest by tag or digest; by digest it is immutable and kept in the LRU."""
        digest = ref if ref.startswith("sha256:") else None
        if digest is None and not fresh:
            digest = self._tag_digest.get((identity_key(), repo, ref))
        if digest is not None:
            cached = self._manifests.get(digest)
            if cached is not None:
                return cached
        if fresh:
            return await self._fetch_manifest(repo, ref, digest)
        return await self.once(("manifest", identity_key(), repo, digest or ref),
                               lambda: self._fetch_manifest(repo, ref, digest))

    async def _fetch_manifest(self, repo: str, ref: str, digest: str | None) -> Manifest | None:
        start = self._writes
        try:
            m = await self.bounded(self.client.get_manifest(repo, digest or ref))
        except upstream.NotFound:
            return None
        _keep(self._manifests, m.digest, m)
        if not ref.startswith("sha256:") and self._written.get(repo, -1) <= start:
            self._tag_digest[(identity_key(), repo, ref)] = m.digest
        return m

    async def config(self, repo: str, desc: dict[str, Any], schema: str) -> dict[str, Any]:
        """A config blob (a package's or a channel's), checked against its schema; immutable by digest."""
        digest = str(desc.get("digest"))
        cached = self._configs.get(digest)
        if cached is None:
            raw = await self.bounded(self.client.get_small_blob(repo, digest))
            where = f"{repo}@{digest}"
            if len(raw) > OFF_LOOP:  # big metadata: parsing and checking it would stall the loop
                doc = await asyncio.to_thread(parse_stored, raw, schema, where)
            else:
                doc = parse_stored(raw, schema, where)
            cached = (doc, len(raw))
            _keep(self._configs, digest, cached)
        return cached[0]

    # -- releases ------------------------------------------------------------------------------------

    async def releases(self, pkg: Package, query: str | None = None) -> list[str]:
        """Every semver tag of the package, descending (with a checked ``query``: those it selects).
        404 when there is none. Parsed, sorted and matched once per tag list, not once per request."""
        repo = self.repo(pkg)
        if self.before_listing is not None:
            await self.before_listing(repo)
        found = self._releases.get((identity_key(), repo), await self.tags(repo))
        if not found.ordered:
            raise errors.PackageNotFound(
                f"package {pkg.full} not found", {"package": pkg.full, "release": None, "media_type": None}
            )
        return list(found.match(query))

    async def contents(self, repo: str, release: str, fresh: bool = False) -> Contents:
        """Read a release tag: a package manifest, an image, or an index of both."""
        top = await self.manifest(repo, mapping.release_to_tag(release), fresh)
        if top is None:
            return Contents(None, [], {})
        if top.doc.get("manifests") is None:
            media_type = layout.package_type(top)
            if media_type is not None:
                desc = layout.package_descriptor(media_type, top)
                return Contents(top, [desc], {media_type: (desc, top)})
            return Contents(top, [await _image_descriptor(self, repo, top)], {})
        children = layout.index_children(top)
        candidates = [d for d in children if layout.may_hold_package(d)]
        found = await self.gather(self.manifest(repo, d["digest"]) for d in candidates)
        packages: dict[str, tuple[dict[str, Any], Manifest]] = {}
        for d, m in zip(candidates, found, strict=True):
            media_type = layout.package_type(m) if m is not None else None
            if m is not None and media_type is not None:
                packages.setdefault(media_type, (d, m))
        return Contents(top, children, packages)

    async def entries(self, pkg: Package, release: str, fresh: bool = False) -> list[Entry]:
        """The packages a release tag holds: one for a manifest, several for an index."""
        c = await self.contents(self.repo(pkg), release, fresh)
        return [
            Entry(release, mt, m.digest, m.doc, layout.content_layer(m.doc) or {})
            for mt, (_, m) in sorted(c.packages.items())
        ]

    async def all_entries(self, pkg: Package, releases: list[str]) -> list[Entry]:
        per = await self.gather(self.entries(pkg, r) for r in releases)
        return [e for es in per for e in es]

    async def resolve(self, pkg: Package, query: str | None, media_type: str) -> Entry:
        """The entry a version query and media type select (E10, E12).

        Raises:
            InvalidRelease: the query cannot be parsed.
            PackageNotFound: no package, or no matching release holds the media type.
            ReleaseNotFound: no release matches the query.
            InvalidUsage: media type '-' on a release holding several.
        """
        mapping.check_query(query)
        candidates = await self.releases(pkg, query)
        if not candidates:
            raise errors.ReleaseNotFound(
                f"no release of {pkg.full} matches {query!r}", {"package": pkg.full, "release_query": query},
            )
        for release in candidates:
            found = await self.entries(pkg, release)
            if media_type == "-":
                if len(found) > 1:
                    names = sorted(e.media_type for e in found)
                    raise errors.InvalidUsage(
                        f"release {release} of {pkg.full} holds several media types: {', '.join(names)}; name one",
                        {"package": pkg.full, "release": release, "media_types": names},
                    )
                if found:
                    return found[0]
            else:
                for e in found:
                    if e.media_type == media_type:
                        return e
        raise errors.PackageNotFound(
            f"package {pkg.full} has no release matching {query!r} with media type {media_type}",
            {"package": pkg.full, "release": query, "media_type": media_type},
        )

    async def details(self, pkg: Package, e: Entry) -> Details:
        """A release's metadata and created date, from its config (cnr-oci's artifacts) or its
        annotations (charts); for content cnr-oci did not write, what the manifest says, else null."""
        ann = e.manifest.get("annotations") or {}
        created = e.created
        metadata: Any = None
        if layout.is_cnr_config(e.manifest):
            cfg = await self.config(self.repo(pkg), e.manifest["config"], schemas.CNR_CONFIG)
            metadata = cfg.get("metadata")
            created = created or layout.created_date(cfg.get("created_at"))
        elif layout.ANN_METADATA in ann:
            try:  # bounded and strict: another tool may have written anything there
                metadata = safejson.load_json(str(ann[layout.ANN_METADATA]), "metadata annotation")
            except errors.CnrError:
                metadata = None
        return Details(metadata, created)

    async def open_blob(self, pkg: Package, digest: str) -> blobcache.Blob:
        """A verified stream of a blob of the package (small ones from memory); a digest the registry does not
        know may be the one a migrated release had on its source (appr hashed the tar): that release's blob
        is streamed. 404 (PackageNotFound, the digest named) when neither knows it."""
        try:
            return await self.blobs.open(self.repo(pkg), digest)
        except upstream.NotFound as exc:
            migrated = (await self._source_digests(pkg)).get(digest)
            if migrated is None:
                raise errors.PackageNotFound(
                    f"blob {digest} not found in {pkg.full}",
                    {"package": pkg.full, "release": digest, "media_type": None},
                ) from exc
        return await self.blobs.open(self.repo(pkg), migrated)

    async def _source_digests(self, pkg: Package) -> dict[str, str]:
        """old_digests of the package: a manifest read a release, so kept with its tag list, and shared."""
        try:
            releases = await self.releases(pkg)
        except errors.PackageNotFound:
            return {}
        key = (identity_key(), self.repo(pkg))
        tags, memo = self._tags.get(key), self._old_digests.get(key)
        if memo is None or memo[0] is not tags:
            entries = await self.once(("old-digests", *key), lambda: self.all_entries(pkg, releases))
            memo = self._old_digests[key] = (tags, old_digests(pkg, entries))
        return memo[1]


async def _image_descriptor(read: ReadModel, repo: str, m: Manifest) -> dict[str, Any]:
    """An image's descriptor in a release's contents, with its platform when its config tells."""
    config = m.doc.get("config") or {}
    platform = None
    if isinstance(config.get("digest"), str):
        with contextlib.suppress(upstream.RegistryError):
            platform = layout.image_platform(await read.bounded(read.client.get_small_blob(repo, config["digest"])))
    return layout.image_descriptor(m, platform)


def old_digests(pkg: Package, entries: list[Entry]) -> dict[str, str]:
    """Old digest to blob digest over migrated releases. One claimed by releases with other blobs
    resolves to none: a direct push to the registry may have forged it (cnr-oci's pushes cannot)."""
    claims: dict[str, set[str]] = {}
    for e in entries:
        if (old := layout.source_digest(e.manifest)) and isinstance(e.layer.get("digest"), str):
            claims.setdefault(old, set()).add(e.layer["digest"])
    if forged := sorted(d for d, found in claims.items() if len(found) > 1):
        log.warning("%s: releases with other blobs claim the old digests %s: none resolves", pkg.full, forged)
    return {old: found.pop() for old, found in claims.items() if len(found) == 1}
