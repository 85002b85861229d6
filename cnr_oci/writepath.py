"""The write path: push and delete of releases behind the package lock, tag written last, and the
bookkeeping of tag writes whose outcome is unknown."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

from cachetools import LRUCache

from cnr_oci import blobs, errors, helm, layout, mapping, upstream
from cnr_oci.archive import PushInput
from cnr_oci.auth import IDENTITY, Credentials
from cnr_oci.entries import Contents
from cnr_oci.layout import Manifest
from cnr_oci.locks import PackageLocks
from cnr_oci.mapping import Package
from cnr_oci.readmodel import ReadModel
from cnr_oci.release import Release, documents, now_iso, signature_of
from cnr_oci.transport import Body

log = logging.getLogger(__name__)
# Digests whose blob was last pushed to a known repository, for cross-repository mounts.
BLOB_HOMES = 8192


@dataclass(frozen=True)
class InDoubt:
    digest: str  # what the tag points to if the failed write went through
    previous: Manifest | None  # what it pointed to before
    identity: Credentials | None


async def refuse_if_shared(read: ReadModel, repo: str, tag: str, digest: str) -> None:
    """distribution deletes by digest, which untags every tag on that manifest. cnr-oci's own
    manifests are unique per release, but another tool may have tagged one (``latest``):
    never remove such a tag silently.

    Raises:
        ResourceInUse: other tags point at the manifest; they are named.
    """
    try:
        tags = [t for t in await read.bounded(read.client.tags(repo)) if t != tag]
    except upstream.NotFound:
        return
    heads = await read.gather(read.bounded(read.client.head_manifest(repo, t)) for t in tags)
    others = sorted(t for t, d in zip(tags, heads, strict=True) if d == digest)
    if others:
        raise errors.ResourceInUse(
            f"the manifest of {repo}:{tag} is also tagged {', '.join(others)}; deleting it would "
            "remove those tags too, so nothing was deleted: remove or move them first",
            {"tags": others},
        )


class WritePath:
    """Writes releases: blobs first, the release tag last, so a failure leaves nothing visible."""

    def __init__(self, read: ReadModel, locks: PackageLocks | None = None) -> None:
        self.read = read
        self.client = read.client
        self.locks = locks or PackageLocks()
        # Tag writes whose outcome is unknown (the registry failed mid-request): rolled back
        # when the registry is back, because the client was told the write failed.
        self._in_doubt: dict[tuple[str, str], InDoubt] = {}
        self._blob_home: LRUCache[str, str] = LRUCache(BLOB_HOMES)
        # Called (under the package lock) once a release is gone from its tag.
        self.on_release_gone: Callable[[Package, str], Awaitable[None]] | None = None
        read.before_listing = self._settle_before_listing

    @asynccontextmanager
    async def push_rights(self, pkg: Package) -> AsyncIterator[blobs.UploadSession]:
        """Prove the caller may push to the package, before its body is read: an upload
        session is opened as the caller, handed to push() for the blob, and cancelled if unused.

        Raises:
            Unauthorized, Denied: the caller may not push here.
        """
        session = await self.client.open_upload(self.read.repo(pkg))
        try:
            yield session
        finally:
            await self.client.cancel_upload(session)

    async def push(self, pkg: Package, inp: PushInput, session: blobs.UploadSession | None = None) -> None:
        """Store a pushed package (E7); the blob is in memory, as the push body brought it."""
        await self.write(pkg, Release.of(inp), inp.blob, session, inp.prov)

    async def write(self, pkg: Package, rel: Release, blob: Body, session: blobs.UploadSession | None = None,
                    prov: bytes | None = None) -> None:
        """Store a package: its blob (bytes, or a spooled file sent in chunks), config, manifest, tag.

        A release that already holds other media types, or a container image, becomes
        an OCI index with one entry each; a release holding one package is that manifest.

        Raises:
            PackageExists: the (release, media type) exists and force is off.
        """
        repo = self.read.repo(pkg)
        tag = mapping.release_to_tag(rel.release)
        created = rel.created or now_iso()
        config, raw = documents(pkg, rel, created, self.client.max_manifest)
        async with self.locks.hold(repo):
            await self._settle_before_listing(repo)
            held = await self.read.contents(repo, rel.release, fresh=True)
            if rel.media_type in held.packages and not rel.force:
                raise errors.PackageExists(
                    f"{pkg.full} release {rel.release} ({rel.media_type}) already exists; "
                    "push with force to overwrite",
                    {"package": pkg.full, "release": rel.release, "media_type": rel.media_type},
                )
            if (kept := signature_of(held, rel)) is not None:  # the same chart again: its .prov still signs it
                rel = dataclasses.replace(rel, prov=kept)
                config, raw = documents(pkg, rel, created, self.client.max_manifest)
            # Side by side, but under the lock: distribution answers 500 while concurrent
            # uploads of one digest commit into the same repository.
            home = self._blob_home.get(rel.digest)
            await asyncio.gather(
                self.client.upload_blob(repo, rel.digest, blob, home if home != repo else None, session),
                self.client.upload_blob(repo, layout.sha256(config), config),
                *([self.client.upload_blob(repo, layout.sha256(prov), prov)] if prov is not None else []),
            )
            self._blob_home[rel.digest] = repo
            await self._replace(repo, tag, held, rel.media_type, raw)

    async def _replace(self, repo: str, tag: str, held: Contents, media_type: str, raw: bytes) -> None:
        """Point the release at a new manifest for one media type, beside the others it holds."""
        new = Manifest(layout.sha256(raw), layout.OCI_MANIFEST, raw, json.loads(raw))
        replaced = held.packages.get(media_type, ({}, None))[0].get("digest")
        children = [c for c in held.children if c["digest"] != replaced]
        children.append(layout.package_descriptor(media_type, new))
        if len(children) > 1:
            await self.client.put_manifest(repo, new.digest, raw, layout.OCI_MANIFEST)
        try:
            await self._write_tag(repo, tag, held, children, {new.digest: new})
        finally:
            self.read.forget(repo, tag)

    async def attach_provenance(self, pkg: Package, release: str, chart_digest: str, filename: str,
                                prov: bytes, force: bool) -> None:
        """Add a chart's provenance file to its release, as helm's provenance layer in the same manifest
        (the chart, config and annotations are kept as they are).

        Raises:
            PackageNotFound: the release holds no chart with that digest.
            PackageExists: it has a provenance file and force is off.
        """
        mapping.check_release(release)
        repo = self.read.repo(pkg)
        async with self.locks.hold(repo):
            await self._settle_before_listing(repo)
            held = await self.read.contents(repo, release, fresh=True)
            chart = held.packages.get("helm", ({}, None))[1]
            if chart is None or (layout.content_layer(chart.doc) or {}).get("digest") != chart_digest:
                raise errors.PackageNotFound(f"{pkg.full} release {release} holds no chart {chart_digest}",
                                             {"package": pkg.full, "release": release, "media_type": "helm"})
            if layout.prov_layer(chart.doc) is not None and not force:
                raise errors.PackageExists(f"{pkg.full} release {release} has a provenance file already",
                                           {"package": pkg.full, "release": release, "media_type": "helm"})
            digest = layout.sha256(prov)
            await self.client.upload_blob(repo, digest, prov)
            doc = dict(chart.doc)
            if doc.get("mediaType") not in (None, layout.OCI_MANIFEST):  # a Docker schema 2 chart another tool
                doc["mediaType"] = layout.OCI_MANIFEST  # pushed: written back as OCI, as _replace PUTs it
            doc["layers"] = [*(x for x in doc.get("layers") or [] if x.get("mediaType") != layout.HELM_PROV),
                             helm.prov_descriptor(filename + ".prov", digest, len(prov))]
            await self._replace(repo, mapping.release_to_tag(release), held, "helm", layout.compact(doc))

    async def delete(self, pkg: Package, release: str, media_type: str) -> None:
        """Delete one exact (release, media type).

        A single manifest is deleted by digest (distribution has no delete by tag); in an
        index the entry is dropped and the index rewritten; the last one removes the tag,
        and ``on_release_gone`` runs (the release leaves every channel).

        Raises:
            PackageNotFound: the release does not hold the media type.
            InvalidUsage: media type '-' on a release holding several.
            ResourceInUse: another tag shares the manifest.
            UnsupportedOperation: the registry refuses deletes.
        """
        mapping.check_release(release)
        repo = self.read.repo(pkg)
        tag = mapping.release_to_tag(release)
        async with self.locks.hold(repo):
            held = await self.read.contents(repo, release, fresh=True)
            chosen = [mt for mt in held.packages if media_type in ("-", mt)]
            if not chosen:
                if held.top is None:
                    # Already gone (an earlier delete whose answer was lost, or another tool):
                    # a channel may still name it, and must not.
                    await self._gone_from(pkg, release)
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
            except errors.ResourceInUse as exc:
                exc.details.update(package=pkg.full, release=release)
                raise
            except (upstream.RegistryUnavailable, upstream.InvalidResponse):
                # The answer was lost: the delete may have happened. If the tag is gone, it did.
                if children or not await self._absent(repo, tag):
                    raise
                log.warning("the registry's answer to deleting %s:%s was lost, but the tag is gone", repo, tag)
            finally:
                self.read.forget(repo, tag)
            if not children:
                await self._gone_from(pkg, release)

    async def _gone_from(self, pkg: Package, release: str) -> None:
        if self.on_release_gone is not None:
            await self.on_release_gone(pkg, release)

    async def _write_tag(self, repo: str, tag: str, held: Contents, children: list[dict[str, Any]],
                         known: dict[str, Manifest] | None = None) -> None:
        """Point a release tag at what it now holds: nothing, one manifest, or an index."""
        if not children:
            if held.top is not None:
                await refuse_if_shared(self.read, repo, tag, held.top.digest)
                await self.client.delete_manifest(repo, held.top.digest)
            return
        if len(children) == 1:
            digest = children[0]["digest"]
            m = (known or {}).get(digest) or await self.read.manifest(repo, digest)
            if m is None:
                raise upstream.InvalidDocument(f"manifest {digest} vanished from {repo}")
            if held.top is None or held.top.digest != m.digest:
                await self._put_tag(repo, tag, m.raw, m.media_type or layout.OCI_MANIFEST, held.top)
            return
        await self._put_tag(repo, tag, layout.release_index(children, held.top), layout.OCI_INDEX, held.top)

    async def _absent(self, repo: str, tag: str) -> bool:
        """Whether a tag is certainly absent (False when the registry cannot say)."""
        try:
            return await self.client.head_manifest(repo, tag) is None
        except upstream.RegistryError:
            return False

    async def _put_tag(self, repo: str, tag: str, raw: bytes, media_type: str, previous: Manifest | None) -> None:
        """The one write that makes a release visible; if its outcome is unknown, remember it."""
        try:
            await self.client.put_manifest(repo, tag, raw, media_type)
        except (upstream.RegistryUnavailable, upstream.InvalidResponse):
            self._in_doubt[(repo, tag)] = InDoubt(layout.sha256(raw), previous, IDENTITY.get())
            raise

    # -- writes of unknown outcome ------------------------------------------------------------------

    @property
    def in_doubt(self) -> int:
        return len(self._in_doubt)

    async def _settle_before_listing(self, repo: str) -> None:
        if self._in_doubt:
            await self.settle(repo)

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
                        await self.client.delete_manifest(key[0], d.digest)
                        log.warning("rolled back a tag write that failed with an unknown outcome: %s:%s", *key)
                    except upstream.NotFound:
                        pass  # it never landed
                elif await self.client.head_manifest(*key) == d.digest:
                    await self.client.put_manifest(*key, d.previous.raw, d.previous.media_type or layout.OCI_MANIFEST)
                    log.warning("rolled back a tag write that failed with an unknown outcome: %s:%s", *key)
                self._in_doubt.pop(key, None)
            except (upstream.RegistryUnavailable, upstream.InvalidResponse) as exc:
                log.info("cannot settle %s:%s yet: %s", *key, exc)
            except upstream.RegistryError as exc:
                log.error("cannot roll back %s:%s (%s); it stays as the registry has it", *key, exc)
                self._in_doubt.pop(key, None)
            finally:
                IDENTITY.reset(token)
                self.read.forget(*key)
        return sum(1 for k in self._in_doubt if repo is None or k[0] == repo)
