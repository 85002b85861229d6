"""The CNR package service: the CNR model on top of an OciClient."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import logging
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any, AsyncIterator, Awaitable, Callable, Iterable, TypeVar

from cnr_oci import blobs, errors, mapping, oci, schemas, upstream
from cnr_oci.auth import IDENTITY, Credentials, identity_key
from cnr_oci.archive import PushInput, helm_config, load_json
from cnr_oci.cache import LRU, TTLCache
from cnr_oci.locks import PackageLocks
from cnr_oci.mapping import Package

log = logging.getLogger(__name__)
T = TypeVar("T")
UNKNOWN_PLATFORM = {"architecture": "unknown", "os": "unknown"}
# Requests to the registry one listing may have in flight at once.
DEFAULT_FANOUT = 16
EMPTY_JSON = b"{}"
# Raw bytes of manifests, and of configs, kept parsed in memory (each cache).
CACHE_BYTES = 32 * 1024 * 1024
# Configs larger than this are parsed and schema-checked in a worker thread.
OFF_LOOP = 64 * 1024


@dataclass(frozen=True)
class Entry:
    """One (release, media type) of a package, as stored."""

    release: str
    media_type: str
    digest: str
    manifest: dict[str, Any]
    layer: dict[str, Any]


@dataclass
class Contents:
    """What one release tag holds: the top manifest and its children.

    ``children`` are index entries (a single manifest counts as one child);
    ``packages`` maps each CNR media type to its child descriptor and manifest.
    """

    top: upstream.Manifest | None
    children: list[dict[str, Any]]
    packages: dict[str, tuple[dict[str, Any], upstream.Manifest]]

    @property
    def is_index(self) -> bool:
        return self.top is not None and self.top.doc.get("manifests") is not None


@dataclass(frozen=True)
class InDoubt:
    digest: str  # what the tag points to if the failed write went through
    previous: upstream.Manifest | None  # what it pointed to before
    identity: Credentials | None


def _package_type(m: upstream.Manifest) -> str | None:
    """The CNR media type of a manifest that holds a package tarball, else None."""
    media_type = mapping.classify(m.doc)
    return media_type if media_type is not None and mapping.content_layer(m.doc) is not None else None


def now_iso() -> str:
    """RFC 3339 in UTC to the second, as helm writes org.opencontainers.image.created."""
    return dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def package_descriptor(media_type: str, m: upstream.Manifest) -> dict[str, Any]:
    """An index entry for a package: platform unknown/unknown, as buildx does for attestations,
    so docker and containerd still pick the image by platform.

    No OCI 1.1 ``artifactType`` here, and keys in containers/image's order: older copy tools
    (skopeo 1.9) re-serialise entries, and must get the same bytes so digests survive a mirror.
    """
    return {
        "mediaType": m.media_type or mapping.OCI_MANIFEST,
        "digest": m.digest,
        "size": len(m.raw),
        "annotations": {mapping.ANN_MEDIA_TYPE: media_type},
        "platform": dict(UNKNOWN_PLATFORM),
    }


def _canonical(doc: dict[str, Any]) -> bytes:
    return json.dumps(doc, separators=(",", ":"), sort_keys=True).encode()


def _refused(exc: upstream.RegistryError, details: dict[str, Any]) -> errors.CnrError:
    return errors.Unsupported(
        f"the registry refuses deletion ({exc.status} {exc.code or 'UNSUPPORTED'}); nothing was deleted",
        details,
    )


def encode_json(data: Any) -> bytes:
    """A list item by item: each json.dumps holds the GIL, so the event loop gets a turn between
    items rather than after the whole listing (tens of MB when every release carries MiBs)."""
    if isinstance(data, list):
        return b"[" + b", ".join(json.dumps(item).encode() for item in data) + b"]"
    return json.dumps(data).encode()


def _parse_config(raw: bytes, schema: str, where: str) -> dict[str, Any]:
    try:
        doc = load_json(raw, "config")
    except errors.CnrError as exc:  # not JSON, nested too deep, NaN: what the registry holds is bad
        raise errors.UpstreamBadGateway(f"config {where}: {exc.message}") from exc
    schemas.check_stored(schema, doc, where)
    return doc  # type: ignore[no-any-return]


def _channel_missing(pkg: Package, name: str) -> errors.CnrError:
    return errors.ChannelNotFound(f"channel {name} of {pkg.full} not found", {"package": pkg.full, "channel": name})


def _check_written(name: str, doc: Any) -> None:
    problem = schemas.first_error(name, doc)
    if problem:
        raise errors.InternalError(f"refusing to store a {name} that fails its schema: {problem}")


class PackageService:
    """Push, pull, list and delete CNR packages stored in an OCI registry."""

    def __init__(
        self,
        client: oci.OciClient,
        prefix: str = "",
        *,
        cache_ttl: float = 2.0,
        manifest_cache: int = 8192,
        fanout: int | None = None,
        locks: PackageLocks | None = None,
    ) -> None:
        self.oci = client
        self.prefix = prefix.strip("/")
        self.locks = locks or PackageLocks()
        # Tag writes whose outcome is unknown (the registry failed mid-request): rolled back
        # when the registry is back, because the client was told the write failed.
        self._in_doubt: dict[tuple[str, str], InDoubt] = {}
        # What a caller may see depends on who it is: these caches are per identity.
        self._tags: TTLCache[tuple[str, str], list[str]] = TTLCache(cache_ttl)
        self._tag_digest: TTLCache[tuple[str, str, str], str] = TTLCache(cache_ttl)
        self._catalog: TTLCache[str, list[str]] = TTLCache(cache_ttl)
        self._summaries: TTLCache[tuple[str, str, str], dict[str, Any] | None] = TTLCache(cache_ttl)
        # Weighed by raw bytes: one manifest or config may be 4 MiB (and parse to several times that).
        self._manifests: LRU[str, upstream.Manifest] = LRU(manifest_cache, max_weight=CACHE_BYTES)
        self._configs: LRU[str, dict[str, Any]] = LRU(manifest_cache, max_weight=CACHE_BYTES)
        self._blob_home: LRU[str, str] = LRU(manifest_cache)
        self._fanout = asyncio.Semaphore(fanout or DEFAULT_FANOUT)
        self._inflight: dict[tuple[Any, ...], asyncio.Future[Any]] = {}

    # -- helpers ---------------------------------------------------------------

    def repo(self, pkg: Package) -> str:
        return pkg.repository(self.prefix)

    async def _bounded(self, aw: Awaitable[T]) -> T:
        """A leaf registry call, counted against the fan-out width. Only leaves take a slot:
        a slot held while waiting for another slot deadlocks once the width is reached."""
        async with self._fanout:
            return await aw

    @staticmethod
    async def _gather(aws: Iterable[Awaitable[T]]) -> list[T]:
        return list(await asyncio.gather(*aws))

    def _forget(self, repo: str, tag: str | None = None) -> None:
        """Drop what our own write made stale, for every identity."""
        self._tags.drop_where(lambda k: k[1] == repo)
        self._summaries.drop_where(lambda k: k[1] == repo)
        self._catalog.clear()
        if tag is not None:
            self._tag_digest.drop_where(lambda k: k[1] == repo and k[2] == tag)

    async def _tags_of(self, repo: str) -> list[str]:
        key = (identity_key(), repo)
        tags = self._tags.get(key)
        if tags is None:
            try:
                tags = await self._bounded(self.oci.tags(repo))
            except upstream.NotFound:
                tags = []
            self._tags.put(key, tags)
        return tags

    async def _manifest(self, repo: str, ref: str, fresh: bool = False) -> upstream.Manifest | None:
        """A manifest by tag or digest; by digest it is immutable and kept in the LRU."""
        digest = ref if ref.startswith("sha256:") else None
        if digest is None and not fresh:
            digest = self._tag_digest.get((identity_key(), repo, ref))
        if digest is not None:
            cached = self._manifests.get(digest)
            if cached is not None:
                return cached
        try:
            m = await self._bounded(self.oci.get_manifest(repo, digest or ref))
        except upstream.NotFound:
            return None
        self._manifests.put(m.digest, m, len(m.raw))
        if not ref.startswith("sha256:"):
            self._tag_digest.put((identity_key(), repo, ref), m.digest)
        return m

    # -- reading ---------------------------------------------------------------

    async def releases(self, pkg: Package) -> list[str]:
        """Every semver tag of the package, descending. 404 when there is none."""
        if self._in_doubt:
            await self.settle(self.repo(pkg))
        found = [r for t in await self._tags_of(self.repo(pkg)) if (r := mapping.tag_to_release(t))]
        if not found:
            raise errors.PackageNotFound(
                f"package {pkg.full} not found", {"package": pkg.full, "release": None, "media_type": None}
            )
        return mapping.sort_releases(found)

    async def contents(self, repo: str, release: str, fresh: bool = False) -> Contents:
        """Read a release tag: a package manifest, an image, or an index of both."""
        top = await self._manifest(repo, mapping.release_to_tag(release), fresh)
        if top is None:
            return Contents(None, [], {})
        if top.doc.get("manifests") is None:
            media_type = _package_type(top)
            if media_type is not None:
                desc = package_descriptor(media_type, top)
                return Contents(top, [desc], {media_type: (desc, top)})
            return Contents(top, [await self._image_descriptor(repo, top)], {})
        children = [d for d in top.doc.get("manifests") or [] if isinstance(d, dict) and isinstance(d.get("digest"), str)]
        candidates = [
            d for d in children
            if (d.get("annotations") or {}).get(mapping.ANN_MEDIA_TYPE) or d.get("platform") == UNKNOWN_PLATFORM
        ]
        found = await self._gather(self._manifest(repo, d["digest"]) for d in candidates)
        packages: dict[str, tuple[dict[str, Any], upstream.Manifest]] = {}
        for d, m in zip(candidates, found):
            media_type = _package_type(m) if m is not None else None
            if m is not None and media_type is not None:
                packages.setdefault(media_type, (d, m))
        return Contents(top, children, packages)

    async def _image_descriptor(self, repo: str, m: upstream.Manifest) -> dict[str, Any]:
        """An index entry for a container image that a release tag held, with its platform."""
        desc: dict[str, Any] = {"mediaType": m.media_type, "digest": m.digest, "size": len(m.raw)}
        config = m.doc.get("config") or {}
        if isinstance(config.get("digest"), str):
            try:
                cfg = json.loads(await self._bounded(self.oci.get_small_blob(repo, config["digest"])))
                platform = {k: cfg[k] for k in ("architecture", "os", "variant") if isinstance(cfg.get(k), str)}
                if "architecture" in platform and "os" in platform:
                    desc["platform"] = platform
            except (upstream.RegistryError, ValueError, AttributeError):
                pass
        return desc

    async def entries(self, pkg: Package, release: str, fresh: bool = False) -> list[Entry]:
        """The packages a release tag holds: one for a manifest, several for an index."""
        c = await self.contents(self.repo(pkg), release, fresh)
        return [
            Entry(release, mt, m.digest, m.doc, mapping.content_layer(m.doc) or {})
            for mt, (_, m) in sorted(c.packages.items())
        ]

    async def all_entries(self, pkg: Package, releases: list[str]) -> list[Entry]:
        per = await self._gather(self.entries(pkg, r) for r in releases)
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
        candidates = mapping.match_releases(await self.releases(pkg), query)
        if not candidates:
            raise errors.ReleaseNotFound(
                f"no release of {pkg.full} matches {query!r}",
                {"package": pkg.full, "release_query": query},
            )
        for release in candidates:
            found = await self.entries(pkg, release)
            if media_type == "-":
                if len(found) > 1:
                    names = sorted(e.media_type for e in found)
                    raise errors.InvalidUsage(
                        f"release {release} of {pkg.full} holds several media types: "
                        f"{', '.join(names)}; name one",
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

    async def _config(self, repo: str, desc: dict[str, Any], schema: str) -> dict[str, Any]:
        """A config blob (a package's or a channel's), checked against its schema; immutable by digest."""
        digest = str(desc.get("digest"))
        cached = self._configs.get(digest)
        if cached is None:
            raw = await self._bounded(self.oci.get_small_blob(repo, digest))
            where = f"{repo}@{digest}"
            if len(raw) > OFF_LOOP:  # big metadata: parsing and checking it would stall the loop
                cached = await asyncio.to_thread(_parse_config, raw, schema, where)
            else:
                cached = _parse_config(raw, schema, where)
            self._configs.put(digest, cached, len(raw))
        return cached

    async def manifest_object(self, pkg: Package, e: Entry) -> dict[str, Any]:
        """The CNR manifest object of one entry."""
        ann = e.manifest.get("annotations") or {}
        # For content cnr-oci did not write (helm push, ORAS): the manifest's created annotation,
        # else null, never "".
        created = mapping.created_date(ann.get(mapping.ANN_CREATED))
        metadata: Any = None
        if (e.manifest.get("config") or {}).get("mediaType") == mapping.CNR_CONFIG:
            cfg = await self._config(self.repo(pkg), e.manifest["config"], schemas.CNR_CONFIG)
            metadata = cfg.get("metadata")
            created = created or mapping.created_date(cfg.get("created_at"))
        elif mapping.ANN_METADATA in ann:
            try:  # bounded and strict: another tool may have written anything there
                metadata = load_json(str(ann[mapping.ANN_METADATA]), "metadata annotation")
            except errors.CnrError:
                metadata = None
        digest = str(e.layer.get("digest", ""))
        return {
            "package": pkg.full,
            "release": e.release,
            "created_at": created,
            "metadata": metadata,
            "mediaType": mapping.manifest_media_type(e.media_type),
            "content": {
                "mediaType": mapping.layer_media_type(e.media_type),
                "size": e.layer.get("size"),
                "digest": digest.removeprefix("sha256:"),
                "urls": [],
            },
        }

    async def show(self, pkg: Package, query: str | None, media_type: str) -> dict[str, Any]:
        e = await self.resolve(pkg, query, media_type)
        obj = await self.manifest_object(pkg, e)
        return {**obj, "channels": await self.current_channels(pkg, e.release), "digest": e.digest}

    async def list_manifests(
        self, pkg: Package, media_type: str | None = None, release: str | None = None
    ) -> list[dict[str, Any]]:
        """E8 (every release) and E9 (one exact release)."""
        return await self._list_manifests(pkg, media_type, release)

    async def list_manifests_json(
        self, pkg: Package, media_type: str | None = None, release: str | None = None
    ) -> bytes:
        """E8 and E9 as JSON bytes. Identical listings asked at once by one identity are built and
        encoded once: with MiBs of metadata a release, each costs real memory and CPU."""
        async def build() -> bytes:
            return await asyncio.to_thread(encode_json, await self._list_manifests(pkg, media_type, release))

        return await self._once(("manifests", identity_key(), self.repo(pkg), media_type, release), build)

    async def _once(self, key: tuple[Any, ...], make: Callable[[], Awaitable[T]]) -> T:
        """Single flight: concurrent callers with one key share one computation."""
        running = self._inflight.get(key)
        if running is None:
            running = asyncio.ensure_future(make())
            self._inflight[key] = running
            running.add_done_callback(lambda _: self._inflight.pop(key, None))
        result: T = await asyncio.shield(running)
        return result

    async def _list_manifests(
        self, pkg: Package, media_type: str | None, release: str | None
    ) -> list[dict[str, Any]]:
        releases = await self.releases(pkg)
        if release is not None:
            releases = [r for r in releases if r == release]
        found = [
            e for e in await self.all_entries(pkg, releases)
            if media_type is None or e.media_type == media_type
        ]
        if release is not None and not found:
            raise errors.PackageNotFound(
                f"release {release} of {pkg.full} not found",
                {"package": pkg.full, "release": release, "media_type": media_type},
            )
        return await self._gather(self.manifest_object(pkg, e) for e in found)

    async def packages(self) -> list[Package]:
        repos = self._catalog.get(identity_key())
        if repos is None:
            try:
                repos = await self.oci.catalog()
            except (upstream.Denied, upstream.NotFound, upstream.UnsupportedOperation) as exc:
                raise errors.Forbidden(
                    "the registry does not let this identity list its catalog, so packages "
                    "cannot be listed or searched here; name the package directly",
                    {"scopes": ["catalog"]},
                ) from exc
            self._catalog.put(identity_key(), repos)
        out = []
        for r in repos:
            pkg = mapping.package_from_repository(r, self.prefix)
            if pkg is not None:
                out.append(pkg)
        return out

    async def search(self, q: str) -> list[str]:
        """E6: names matching q that the caller can read."""
        q = q.lower()
        hits = [p for p in await self.packages() if q in p.full]
        readable = await self._gather(self._readable(p) for p in hits)
        return sorted(p.full for p, ok in zip(hits, readable) if ok)

    async def _readable(self, pkg: Package) -> bool:
        try:
            return bool(await self._tags_of(self.repo(pkg)))
        except (upstream.Unauthorized, upstream.Denied):
            return False

    async def list_packages(
        self, namespace: str | None = None, query: str | None = None, media_type: str | None = None
    ) -> list[dict[str, Any]]:
        """E5: every package with a matching release, name ascending."""
        pkgs = [
            p for p in await self.packages()
            if (not namespace or p.namespace == namespace)
            and (not query or query.lower() in p.full)
        ]
        summaries = await asyncio.gather(*(self._summary(p, media_type) for p in pkgs))
        return [s for s in summaries if s is not None]

    async def _summary(self, pkg: Package, media_type: str | None) -> dict[str, Any] | None:
        """One E5 package object, cached for the cache TTL, so a warm listing asks the
        registry nothing per package."""
        key = (identity_key(), self.repo(pkg), media_type or "")
        if self._summaries.fresh(key):
            return self._summaries.get(key)
        summary = await self._compute_summary(pkg, media_type)
        self._summaries.put(key, summary)
        return summary

    async def _compute_summary(self, pkg: Package, media_type: str | None) -> dict[str, Any] | None:
        """One E5 package object; None when nothing matches or the caller may not read it."""
        try:
            releases = await self.releases(pkg)
            found = [e for e in await self.all_entries(pkg, releases)
                     if media_type is None or e.media_type == media_type]
        except (errors.PackageNotFound, upstream.Unauthorized, upstream.Denied, upstream.NotFound):
            return None
        if not found:
            return None
        kept = mapping.sort_releases({e.release for e in found})
        default = kept[0]
        created: list[str | None] = [*sorted(
            c for e in found if (c := mapping.created_date((e.manifest.get("annotations") or {}).get(mapping.ANN_CREATED)))
        )] or [None]
        return {
            "name": pkg.full,
            "namespace": pkg.namespace,
            "releases": kept,
            "default": default,
            "manifests": [media_type] if media_type else sorted({e.media_type for e in found if e.release == default}),
            "visibility": "public",
            "created_at": created[0],
            "updated_at": created[-1],
            "channels": None,
        }

    async def open_blob(self, pkg: Package, digest: str) -> blobs.BlobStream:
        try:
            return await self.oci.open_blob(self.repo(pkg), digest)
        except upstream.NotFound as exc:
            raise errors.PackageNotFound(
                f"blob {digest} not found in {pkg.full}",
                {"package": pkg.full, "release": digest, "media_type": None},
            ) from exc

    # -- writing ---------------------------------------------------------------

    @asynccontextmanager
    async def push_rights(self, pkg: Package) -> AsyncIterator[blobs.UploadSession]:
        """Prove the caller may push to the package, before its body is read: an upload
        session is opened as the caller, handed to push() for the blob, and cancelled if unused.

        Raises:
            Unauthorized, Denied: the caller may not push here.
        """
        session = await self.oci.open_upload(self.repo(pkg))
        try:
            yield session
        finally:
            await self.oci.cancel_upload(session)

    async def push(self, pkg: Package, inp: PushInput, session: blobs.UploadSession | None = None) -> None:
        """Store a package; the tag is written last, so a failure leaves nothing visible.

        A release that already holds other media types, or a container image, becomes
        an OCI index with one entry each; a release holding one package is that manifest.

        Raises:
            PackageExists: the (release, media type) exists and force is off.
        """
        repo = self.repo(pkg)
        tag = mapping.release_to_tag(inp.release)
        config, raw = self.build_documents(pkg, inp, now_iso())
        async with self.locks.hold(repo):
            if self._in_doubt:
                await self.settle(repo)
            held = await self.contents(repo, inp.release, fresh=True)
            if inp.media_type in held.packages and not inp.force:
                raise errors.PackageExists(
                    f"{pkg.full} release {inp.release} ({inp.media_type}) already exists; "
                    "push with force to overwrite",
                    {"package": pkg.full, "release": inp.release, "media_type": inp.media_type},
                )
            # Side by side, but under the lock: distribution answers 500 while concurrent
            # uploads of one digest commit into the same repository.
            await asyncio.gather(
                self.oci.upload_blob(repo, inp.digest, inp.blob, self._mount_source(inp.digest, repo), session),
                self.oci.upload_blob(repo, upstream.sha256(config), config),
            )
            self._blob_home.put(inp.digest, repo)
            new = upstream.Manifest(upstream.sha256(raw), mapping.OCI_MANIFEST, raw, json.loads(raw))
            replaced = held.packages.get(inp.media_type, ({}, None))[0].get("digest")
            children = [c for c in held.children if c["digest"] != replaced]
            children.append(package_descriptor(inp.media_type, new))
            if len(children) > 1:
                await self.oci.put_manifest(repo, new.digest, raw, mapping.OCI_MANIFEST)
            try:
                await self._write_tag(repo, tag, held, children, {new.digest: new})
            finally:
                self._forget(repo, tag)

    async def _write_tag(
        self, repo: str, tag: str, held: Contents, children: list[dict[str, Any]],
        known: dict[str, upstream.Manifest] | None = None,
    ) -> None:
        """Point a release tag at what it now holds: nothing, one manifest, or an index."""
        if not children:
            if held.top is not None:
                await self._refuse_if_shared(repo, tag, held.top.digest)
                await self.oci.delete_manifest(repo, held.top.digest)
            return
        if len(children) == 1:
            digest = children[0]["digest"]
            m = (known or {}).get(digest) or await self._manifest(repo, digest)
            if m is None:
                raise errors.UpstreamBadGateway(f"manifest {digest} vanished from {repo}")
            if held.top is None or held.top.digest != m.digest:
                await self._put_tag(repo, tag, m.raw, m.media_type or mapping.OCI_MANIFEST, held.top)
            return
        index: dict[str, Any] = {"schemaVersion": 2, "mediaType": mapping.OCI_INDEX, "manifests": children}
        if held.is_index and held.top is not None and held.top.doc.get("annotations"):
            index["annotations"] = held.top.doc["annotations"]
        await self._put_tag(repo, tag, json.dumps(index, separators=(",", ":")).encode(), mapping.OCI_INDEX, held.top)

    async def _refuse_if_shared(self, repo: str, tag: str, digest: str) -> None:
        """distribution deletes by digest, which untags every tag on that manifest. cnr-oci's own
        manifests are unique per release, but another tool may have tagged one (``latest``):
        never remove such a tag silently.

        Raises:
            ResourceInUse: other tags point at the manifest; they are named.
        """
        try:
            tags = [t for t in await self._bounded(self.oci.tags(repo)) if t != tag]
        except upstream.NotFound:
            return
        heads = await self._gather(self._bounded(self.oci.head_manifest(repo, t)) for t in tags)
        others = sorted(t for t, d in zip(tags, heads) if d == digest)
        if others:
            raise errors.ResourceInUse(
                f"the manifest of {repo}:{tag} is also tagged {', '.join(others)}; deleting it would "
                "remove those tags too, so nothing was deleted: remove or move them first",
                {"tags": others},
            )

    async def _gone(self, repo: str, tag: str) -> bool:
        """Whether a tag is certainly absent (False when the registry cannot say)."""
        try:
            return await self.oci.head_manifest(repo, tag) is None
        except upstream.RegistryError:
            return False

    async def _put_tag(self, repo: str, tag: str, raw: bytes, media_type: str, previous: upstream.Manifest | None) -> None:
        """The one write that makes a release visible; if its outcome is unknown, remember it."""
        try:
            await self.oci.put_manifest(repo, tag, raw, media_type)
        except (upstream.RegistryUnavailable, upstream.InvalidResponse):
            self._in_doubt[(repo, tag)] = InDoubt(upstream.sha256(raw), previous, IDENTITY.get())
            raise

    @property
    def in_doubt(self) -> int:
        return len(self._in_doubt)

    async def settle(self, repo: str | None = None) -> int:
        """Roll back tag writes that failed with an unknown outcome (all, or one repository's).

        The client was told the write failed, so if it went through after all it is undone:
        a new release's manifest is deleted by digest (which nothing else refers to); a
        rewritten tag is put back as it was, if it still holds what we wrote. Entries the
        registry cannot settle yet stay for a later try. Returns how many are left.
        """
        for key in [k for k in self._in_doubt if repo is None or k[0] == repo]:
            d = self._in_doubt.get(key)
            if d is None:
                continue
            token = IDENTITY.set(d.identity)
            try:
                if d.previous is None:
                    try:
                        await self.oci.delete_manifest(key[0], d.digest)
                        log.warning("rolled back a tag write that failed with an unknown outcome: %s:%s", *key)
                    except upstream.NotFound:
                        pass  # it never landed
                elif await self.oci.head_manifest(*key) == d.digest:
                    await self.oci.put_manifest(*key, d.previous.raw, d.previous.media_type or mapping.OCI_MANIFEST)
                    log.warning("rolled back a tag write that failed with an unknown outcome: %s:%s", *key)
                self._in_doubt.pop(key, None)
            except (upstream.RegistryUnavailable, upstream.InvalidResponse) as exc:
                log.info("cannot settle %s:%s yet: %s", *key, exc)
            except upstream.RegistryError as exc:
                log.error("cannot roll back %s:%s (%s); it stays as the registry has it", *key, exc)
                self._in_doubt.pop(key, None)
            finally:
                IDENTITY.reset(token)
                self._forget(*key)
        return sum(1 for k in self._in_doubt if repo is None or k[0] == repo)

    def _mount_source(self, digest: str, repo: str) -> str | None:
        home = self._blob_home.get(digest)
        return home if home and home != repo else None

    def build_documents(self, pkg: Package, inp: PushInput, created: str) -> tuple[bytes, bytes]:
        """(config blob, manifest) for a push: helm's own layout, or a CNR artifact."""
        layer_annotations = {mapping.ANN_TITLE: mapping.filename(pkg, inp.release)}
        if inp.chart is not None:
            config = helm_config(inp.chart)
            config_type, layer_type = mapping.HELM_CONFIG, mapping.HELM_LAYER
            annotations = mapping.helm_annotations(inp.chart, inp.release, created)
            if inp.metadata is not None:
                annotations[mapping.ANN_METADATA] = json.dumps(inp.metadata, sort_keys=True)
            # helm ignores layer annotations; ORAS names the pulled file after this one.
            layer_annotations = {mapping.ANN_TITLE: f"{inp.chart['name']}-{inp.release}.tgz"}
            extra: dict[str, Any] = {}
        else:
            cfg = {
                "package": pkg.full,
                "release": inp.release,
                "media_type": inp.media_type,
                "metadata": inp.metadata,
                "created_at": created,
            }
            _check_written(schemas.CNR_CONFIG, cfg)
            config = _canonical(cfg)
            config_type, layer_type = mapping.CNR_CONFIG, mapping.layer_media_type(inp.media_type)
            annotations = {mapping.ANN_VERSION: inp.release, mapping.ANN_CREATED: created}
            extra = {"artifactType": mapping.artifact_type(inp.media_type)}
        layer = mapping.descriptor(layer_type, inp.blob, inp.digest)
        if layer_annotations:
            layer["annotations"] = layer_annotations
        manifest: dict[str, Any] = {
            "schemaVersion": 2,
            # helm push writes no top-level mediaType (the Content-Type says it); a chart's manifest
            # differs from helm's only in documented annotations.
            **({} if inp.chart is not None else {"mediaType": mapping.OCI_MANIFEST}),
            **extra,
            "config": mapping.descriptor(config_type, config, upstream.sha256(config)),
            "layers": [layer],
            "annotations": annotations,
        }
        if inp.chart is None:
            _check_written(schemas.CNR_MANIFEST, manifest)
        raw = json.dumps(manifest, separators=(",", ":")).encode()
        # Refused before anything is uploaded: the registry takes no larger manifest (distribution:
        # 4 MiB), and a config is read back under the same cap.
        for what, doc in (("config", config), ("manifest", raw)):
            if len(doc) > self.oci.max_manifest:
                raise errors.PayloadTooLarge(
                    f"the package's {what} would be {len(doc)} bytes, over the registry's limit of "
                    f"{self.oci.max_manifest}: make its metadata (or Chart.yaml) smaller",
                    {"field": "metadata", "limit": self.oci.max_manifest},
                )
        return config, raw

    async def delete(self, pkg: Package, release: str, media_type: str) -> dict[str, Any]:
        """Delete one exact (release, media type).

        A single manifest is deleted by digest (distribution has no delete by tag); in an
        index the entry is dropped and the index rewritten; the last one removes the tag,
        and the release leaves every channel.

        Raises:
            Unsupported: the registry refuses deletes.
        """
        mapping.check_release(release)
        repo = self.repo(pkg)
        tag = mapping.release_to_tag(release)
        async with self.locks.hold(repo):
            held = await self.contents(repo, release, fresh=True)
            chosen = [mt for mt in held.packages if media_type in ("-", mt)]
            if not chosen:
                if held.top is None:
                    # Already gone (an earlier delete whose answer was lost, or another tool):
                    # a channel may still name it, and must not.
                    await self._drop_from_channels(pkg, release)
                raise errors.PackageNotFound(
                    f"{pkg.full} release {release} ({media_type}) not found",
                    {"package": pkg.full, "release": release, "media_type": media_type},
                )
            if len(chosen) > 1:
                raise errors.InvalidUsage(
                    f"release {release} holds several media types: {', '.join(sorted(chosen))}; name one",
                    {"media_types": sorted(chosen)},
                )
            gone = held.packages[chosen[0]][0]["digest"]
            children = [c for c in held.children if c["digest"] != gone]
            try:
                await self._write_tag(repo, tag, held, children)
            except upstream.UnsupportedOperation as exc:
                raise _refused(exc, {"package": pkg.full, "release": release}) from exc
            except errors.ResourceInUse as exc:
                exc.details.update(package=pkg.full, release=release)
                raise
            except (upstream.RegistryUnavailable, upstream.InvalidResponse):
                # The answer was lost: the delete may have happened. If the tag is gone, it did.
                if children or not await self._gone(repo, tag):
                    raise
                log.warning("the registry's answer to deleting %s:%s was lost, but the tag is gone", repo, tag)
            finally:
                self._forget(repo, tag)
            if not children:
                await self._drop_from_channels(pkg, release)
        return {"status": "deleted", "package": pkg.full, "release": release}

    # -- channels ----------------------------------------------------------------

    async def _read_channel(self, repo: str, name: str, fresh: bool = False) -> tuple[dict[str, Any], upstream.Manifest] | None:
        m = await self._manifest(repo, mapping.channel_tag(name), fresh)
        if m is None or (m.doc.get("config") or {}).get("mediaType") != mapping.CHANNEL_CONFIG:
            return None
        return await self._config(repo, m.doc["config"], schemas.CHANNEL), m

    @staticmethod
    def _visible(doc: dict[str, Any], existing: set[str]) -> dict[str, Any] | None:
        """A channel as readers see it: only releases that exist, so a channel never names a
        deleted release, whoever deleted it; ``current`` falls back to the highest left."""
        left = [r for r in doc["releases"] if r in existing]
        if not left:
            return None
        current = doc["current"] if doc["current"] in left else mapping.sort_releases(left)[0]
        return {"name": doc["name"], "current": current, "releases": left}

    async def channels(self, pkg: Package) -> list[dict[str, Any]]:
        """E14: every channel of a package; 404 when the package does not exist."""
        existing = set(await self.releases(pkg))
        repo = self.repo(pkg)
        names = sorted(n for t in await self._tags_of(repo) if (n := mapping.channel_from_tag(t)))
        found = await self._gather(self._read_channel(repo, n) for n in names)
        return [v for c in found if c is not None and (v := self._visible(c[0], existing)) is not None]

    async def channel(self, pkg: Package, name: str) -> dict[str, Any]:
        mapping.check_channel(name)
        existing = set(await self.releases(pkg))
        visible = self._visible((await self._existing_channel(pkg, name))[0], existing)
        if visible is None:
            raise _channel_missing(pkg, name)
        return visible

    async def _existing_channel(self, pkg: Package, name: str, fresh: bool = False) -> tuple[dict[str, Any], upstream.Manifest]:
        found = await self._read_channel(self.repo(pkg), name, fresh)
        if found is None:
            raise _channel_missing(pkg, name)
        return found

    async def _write_channel(self, pkg: Package, doc: dict[str, Any]) -> None:
        """A channel is its own small manifest at tag channel-<name>, never a tag alias."""
        repo = self.repo(pkg)
        _check_written(schemas.CHANNEL, doc)
        config = _canonical(doc)
        await self.oci.upload_blob(repo, upstream.sha256(config), config)
        await self.oci.upload_blob(repo, upstream.sha256(EMPTY_JSON), EMPTY_JSON)
        manifest: dict[str, Any] = {
            "schemaVersion": 2,
            "mediaType": mapping.OCI_MANIFEST,
            "artifactType": mapping.CHANNEL_ARTIFACT,
            "config": mapping.descriptor(mapping.CHANNEL_CONFIG, config, upstream.sha256(config)),
            "layers": [mapping.descriptor(mapping.EMPTY_MEDIA_TYPE, EMPTY_JSON, upstream.sha256(EMPTY_JSON))],
            "annotations": {mapping.ANN_CREATED: now_iso()},
        }
        current = await self._manifest(repo, mapping.release_to_tag(doc["current"]), fresh=True)
        if current is not None:
            manifest["subject"] = {"mediaType": current.media_type, "digest": current.digest, "size": len(current.raw)}
        tag = mapping.channel_tag(doc["name"])
        try:
            await self.oci.put_manifest(repo, tag, json.dumps(manifest, separators=(",", ":")).encode(),
                                        mapping.OCI_MANIFEST)
        finally:
            self._forget(repo, tag)

    async def add_channel_release(self, pkg: Package, name: str, release: str) -> dict[str, Any]:
        """E16: add an existing release to a channel and make it current."""
        mapping.check_channel(name)
        mapping.check_release(release)
        repo = self.repo(pkg)
        async with self.locks.hold(repo):
            if release not in await self.releases(pkg) or not await self.entries(pkg, release, fresh=True):
                raise errors.ReleaseNotFound(
                    f"{pkg.full} has no release {release}", {"package": pkg.full, "release_query": release}
                )
            found = await self._read_channel(repo, name, fresh=True)
            releases = set(found[0]["releases"]) if found else set()
            releases.add(release)
            doc = {"name": name, "current": release, "releases": mapping.sort_releases(releases)}
            await self._write_channel(pkg, doc)
        return doc

    async def remove_channel_release(self, pkg: Package, name: str, release: str) -> dict[str, Any]:
        """E17: drop a release; current moves to the highest left; the last one deletes the channel."""
        mapping.check_channel(name)
        mapping.check_release(release)
        repo = self.repo(pkg)
        async with self.locks.hold(repo):
            found = await self._existing_channel(pkg, name, fresh=True)
            if release not in found[0]["releases"]:
                raise errors.ReleaseNotFound(
                    f"channel {name} of {pkg.full} has no release {release}",
                    {"package": pkg.full, "release_query": release},
                )
            await self._channel_without(pkg, found, release)
        return {"status": "deleted", "package": pkg.full, "name": name, "release": release}

    async def _channel_without(self, pkg: Package, found: tuple[dict[str, Any], upstream.Manifest], release: str) -> None:
        doc, m = found
        left = [r for r in doc["releases"] if r != release]
        if not left:
            await self._delete_channel_manifest(pkg, doc["name"], m)
            return
        current = doc["current"] if doc["current"] != release else mapping.sort_releases(left)[0]
        await self._write_channel(pkg, {"name": doc["name"], "current": current, "releases": left})

    async def _delete_channel_manifest(self, pkg: Package, name: str, m: upstream.Manifest) -> None:
        repo = self.repo(pkg)
        try:
            await self.oci.delete_manifest(repo, m.digest)
        except upstream.UnsupportedOperation as exc:
            raise _refused(exc, {"package": pkg.full, "channel": name}) from exc
        finally:
            self._forget(repo, mapping.channel_tag(name))

    async def delete_channel(self, pkg: Package, name: str) -> dict[str, Any]:
        """E18."""
        mapping.check_channel(name)
        repo = self.repo(pkg)
        async with self.locks.hold(repo):
            found = await self._existing_channel(pkg, name, fresh=True)
            await self._delete_channel_manifest(pkg, name, found[1])
        return {"channel": name, "package": pkg.full, "action": "delete"}

    async def _drop_from_channels(self, pkg: Package, release: str) -> None:
        """A deleted release leaves every channel (called under the package lock)."""
        repo = self.repo(pkg)
        self._forget(repo)
        for tag in await self._tags_of(repo):
            name = mapping.channel_from_tag(tag)
            found = await self._read_channel(repo, name, fresh=True) if name else None
            if found is not None and release in found[0]["releases"]:
                await self._channel_without(pkg, found, release)

    async def current_channels(self, pkg: Package, release: str) -> list[str]:
        """The channels whose current release this is (for E10)."""
        try:
            return sorted(c["name"] for c in await self.channels(pkg) if c["current"] == release)
        except errors.PackageNotFound:
            return []

