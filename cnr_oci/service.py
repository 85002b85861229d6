"""The CNR package service: the CNR model on top of an OciClient."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import logging
import weakref
from dataclasses import dataclass
from typing import Any, Awaitable, Iterable, TypeVar

from cnr_oci import errors, mapping, oci, schemas
from cnr_oci.archive import PushInput, helm_config
from cnr_oci.cache import LRU, TTLCache
from cnr_oci.mapping import Package

log = logging.getLogger(__name__)
T = TypeVar("T")
UNKNOWN_PLATFORM = {"os": "unknown", "architecture": "unknown"}
ANN_MEDIA_TYPE = "vnd.cnr.package.media-type"


@dataclass(frozen=True)
class Entry:
    """One (release, media type) of a package, as stored."""

    release: str
    media_type: str
    digest: str
    manifest: dict[str, Any]
    layer: dict[str, Any]


def now_iso() -> str:
    return dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _canonical(doc: dict[str, Any]) -> bytes:
    return json.dumps(doc, separators=(",", ":"), sort_keys=True).encode()


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
        tag_ttl: float = 2.0,
        manifest_cache: int = 8192,
        fanout: int = 16,
    ) -> None:
        self.oci = client
        self.prefix = prefix.strip("/")
        self._locks: weakref.WeakValueDictionary[str, asyncio.Lock] = weakref.WeakValueDictionary()
        self._tags: TTLCache[str, list[str]] = TTLCache(tag_ttl)
        self._tag_digest: TTLCache[tuple[str, str], str] = TTLCache(tag_ttl)
        self._catalog: TTLCache[str, list[str]] = TTLCache(tag_ttl)
        self._manifests: LRU[str, oci.Manifest] = LRU(manifest_cache)
        self._configs: LRU[str, dict[str, Any]] = LRU(manifest_cache)
        self._blob_home: LRU[str, str] = LRU(manifest_cache)
        self._fanout = asyncio.Semaphore(fanout)

    # -- helpers ---------------------------------------------------------------

    def repo(self, pkg: Package) -> str:
        return pkg.repository(self.prefix)

    def _lock(self, repo: str) -> asyncio.Lock:
        lock = self._locks.get(repo)
        if lock is None:
            lock = asyncio.Lock()
            self._locks[repo] = lock
        return lock

    async def _bounded(self, aw: Awaitable[T]) -> T:
        async with self._fanout:
            return await aw

    async def _gather(self, aws: Iterable[Awaitable[T]]) -> list[T]:
        return list(await asyncio.gather(*(self._bounded(a) for a in aws)))

    def _forget(self, repo: str, tag: str | None = None) -> None:
        """Drop what our own write made stale."""
        self._tags.drop(repo)
        self._catalog.clear()
        if tag is not None:
            self._tag_digest.drop((repo, tag))

    async def _tags_of(self, repo: str) -> list[str]:
        tags = self._tags.get(repo)
        if tags is None:
            try:
                tags = await self.oci.tags(repo)
            except oci.NotFound:
                tags = []
            self._tags.put(repo, tags)
        return tags

    async def _manifest(self, repo: str, ref: str, fresh: bool = False) -> oci.Manifest | None:
        """A manifest by tag or digest; by digest it is immutable and kept in the LRU."""
        digest = ref if ref.startswith("sha256:") else None
        if digest is None and not fresh:
            digest = self._tag_digest.get((repo, ref))
        if digest is not None:
            cached = self._manifests.get(digest)
            if cached is not None:
                return cached
        try:
            m = await self.oci.get_manifest(repo, digest or ref)
        except oci.NotFound:
            return None
        self._manifests.put(m.digest, m)
        if not ref.startswith("sha256:"):
            self._tag_digest.put((repo, ref), m.digest)
        return m

    # -- reading ---------------------------------------------------------------

    async def releases(self, pkg: Package) -> list[str]:
        """Every semver tag of the package, descending. 404 when there is none."""
        found = [r for t in await self._tags_of(self.repo(pkg)) if (r := mapping.tag_to_release(t))]
        if not found:
            raise errors.PackageNotFound(
                f"package {pkg.full} not found", {"package": pkg.full, "release": None, "media_type": None}
            )
        return mapping.sort_releases(found)

    async def entries(self, pkg: Package, release: str, fresh: bool = False) -> list[Entry]:
        """The packages a release tag holds: one for a manifest, several for an index."""
        repo = self.repo(pkg)
        top = await self._manifest(repo, mapping.release_to_tag(release), fresh)
        if top is None:
            return []
        if top.doc.get("manifests") is None:
            return self._entry(release, top)
        children = [
            d for d in top.doc.get("manifests") or []
            if isinstance(d, dict) and isinstance(d.get("digest"), str)
            and ((d.get("annotations") or {}).get(ANN_MEDIA_TYPE) or d.get("platform") == UNKNOWN_PLATFORM)
        ]
        found = await self._gather(self._manifest(repo, d["digest"]) for d in children)
        return [e for m in found if m is not None for e in self._entry(release, m)]

    @staticmethod
    def _entry(release: str, m: oci.Manifest) -> list[Entry]:
        media_type = mapping.classify(m.doc)
        layer = mapping.content_layer(m.doc)
        if media_type is None or layer is None:
            return []
        return [Entry(release, media_type, m.digest, m.doc, layer)]

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

    async def _config(self, repo: str, desc: dict[str, Any]) -> dict[str, Any]:
        digest = str(desc.get("digest"))
        cached = self._configs.get(digest)
        if cached is None:
            raw = await self.oci.get_small_blob(repo, digest)
            try:
                cached = json.loads(raw)
            except ValueError as exc:
                raise errors.UpstreamBadGateway(f"config {digest} in {repo} is not JSON") from exc
            schemas.check_stored(schemas.CNR_CONFIG, cached, f"{repo}@{digest}")
            self._configs.put(digest, cached)
        return cached

    async def manifest_object(self, pkg: Package, e: Entry, with_metadata: bool = True) -> dict[str, Any]:
        """The CNR manifest object of one entry."""
        ann = e.manifest.get("annotations") or {}
        created = ann.get(mapping.ANN_CREATED, "")
        metadata: Any = None
        if (e.manifest.get("config") or {}).get("mediaType") == mapping.CNR_CONFIG:
            if with_metadata:
                cfg = await self._config(self.repo(pkg), e.manifest["config"])
                metadata = cfg.get("metadata")
                created = created or cfg.get("created_at", "")
        elif mapping.ANN_METADATA in ann:
            try:
                metadata = json.loads(ann[mapping.ANN_METADATA])
            except ValueError:
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
        return {**obj, "channels": [], "digest": e.digest}

    async def list_manifests(
        self, pkg: Package, media_type: str | None = None, release: str | None = None
    ) -> list[dict[str, Any]]:
        """E8 (every release) and E9 (one exact release)."""
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
        repos = self._catalog.get("")
        if repos is None:
            repos = await self.oci.catalog()
            self._catalog.put("", repos)
        out = []
        for r in repos:
            pkg = mapping.package_from_repository(r, self.prefix)
            if pkg is not None:
                out.append(pkg)
        return out

    async def search(self, q: str) -> list[str]:
        q = q.lower()
        return sorted(p.full for p in await self.packages() if q in p.full)

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
        try:
            releases = await self._bounded(self.releases(pkg))
        except errors.PackageNotFound:
            return None
        found = [e for e in await self.all_entries(pkg, releases)
                 if media_type is None or e.media_type == media_type]
        if not found:
            return None
        kept = mapping.sort_releases({e.release for e in found})
        default = kept[0]
        created = sorted(
            str((e.manifest.get("annotations") or {}).get(mapping.ANN_CREATED, "")) for e in found
        )
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

    async def open_blob(self, pkg: Package, digest: str) -> oci.BlobStream:
        try:
            return await self.oci.open_blob(self.repo(pkg), digest)
        except oci.NotFound as exc:
            raise errors.PackageNotFound(
                f"blob {digest} not found in {pkg.full}",
                {"package": pkg.full, "release": digest, "media_type": None},
            ) from exc

    # -- writing ---------------------------------------------------------------

    async def push(self, pkg: Package, inp: PushInput) -> None:
        """Store a package; the tag is written last, so a failure leaves nothing visible.

        Raises:
            PackageExists: the (release, media type) exists and force is off.
        """
        repo = self.repo(pkg)
        tag = mapping.release_to_tag(inp.release)
        async with self._lock(repo):
            top = await self._manifest(repo, tag, fresh=True)
            if top is not None:
                held = self._entry(inp.release, top) if top.doc.get("manifests") is None else await self.entries(pkg, inp.release)
                same = [e for e in held if e.media_type == inp.media_type]
                details = {"package": pkg.full, "release": inp.release, "media_type": inp.media_type}
                if same and not inp.force:
                    raise errors.PackageExists(
                        f"{pkg.full} release {inp.release} ({inp.media_type}) already exists; "
                        "push with force to overwrite", details
                    )
                if not same or top.doc.get("manifests") is not None:
                    kinds = sorted(e.media_type for e in held) or ["a non-CNR artifact"]
                    raise errors.PackageExists(
                        f"{pkg.full} release {inp.release} already holds {', '.join(kinds)}; "
                        "several media types in one release are not supported yet", details
                    )
            config, raw = self.build_documents(pkg, inp, now_iso())
            await self.oci.upload_blob(repo, inp.digest, inp.blob, self._mount_source(inp.digest, repo))
            await self.oci.upload_blob(repo, oci.sha256(config), config)
            self._blob_home.put(inp.digest, repo)
            await self.oci.put_manifest(repo, tag, raw, mapping.OCI_MANIFEST)
            self._forget(repo, tag)

    def _mount_source(self, digest: str, repo: str) -> str | None:
        home = self._blob_home.get(digest)
        return home if home and home != repo else None

    @staticmethod
    def build_documents(pkg: Package, inp: PushInput, created: str) -> tuple[bytes, bytes]:
        """(config blob, manifest) for a push: helm's own layout, or a CNR artifact."""
        layer_annotations = {mapping.ANN_TITLE: mapping.filename(pkg, inp.release)}
        if inp.chart is not None:
            config = helm_config(inp.chart)
            config_type, layer_type = mapping.HELM_CONFIG, mapping.HELM_LAYER
            annotations = mapping.helm_annotations(inp.chart, inp.release, created)
            if inp.metadata is not None:
                annotations[mapping.ANN_METADATA] = json.dumps(inp.metadata, sort_keys=True)
            layer_annotations = {}
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
        manifest = {
            "schemaVersion": 2,
            "mediaType": mapping.OCI_MANIFEST,
            **extra,
            "config": mapping.descriptor(config_type, config, oci.sha256(config)),
            "layers": [layer],
            "annotations": annotations,
        }
        if inp.chart is None:
            _check_written(schemas.CNR_MANIFEST, manifest)
        return config, json.dumps(manifest, separators=(",", ":")).encode()

    async def delete(self, pkg: Package, release: str, media_type: str) -> dict[str, Any]:
        """Delete one exact (release, media type): resolve tag → digest, DELETE by digest.

        Raises:
            Unsupported: the registry refuses deletes.
        """
        mapping.check_release(release)
        repo = self.repo(pkg)
        tag = mapping.release_to_tag(release)
        async with self._lock(repo):
            top = await self._manifest(repo, tag, fresh=True)
            held = [] if top is None else await self.entries(pkg, release, fresh=True)
            chosen = [e for e in held if media_type in ("-", e.media_type)]
            if top is None or not chosen:
                raise errors.PackageNotFound(
                    f"{pkg.full} release {release} ({media_type}) not found",
                    {"package": pkg.full, "release": release, "media_type": media_type},
                )
            if len(chosen) > 1:
                raise errors.InvalidUsage(
                    f"release {release} holds several media types; name one",
                    {"media_types": sorted(e.media_type for e in chosen)},
                )
            try:
                await self.oci.delete_manifest(repo, top.digest)
            except oci.UnsupportedOperation as exc:
                raise errors.Unsupported(
                    f"the registry refuses deletion ({exc.status} {exc.code or 'UNSUPPORTED'}); "
                    "nothing was deleted",
                    {"package": pkg.full, "release": release},
                ) from exc
            finally:
                self._forget(repo, tag)
        return {"status": "deleted", "package": pkg.full, "release": release}
