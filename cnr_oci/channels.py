"""Channels: named, ordered sets of releases with a current one, each its own small manifest."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from cnr_oci import errors, layout, mapping, schemas
from cnr_oci.layout import Manifest
from cnr_oci.mapping import Package
from cnr_oci.readmodel import ReadModel
from cnr_oci.release import now_iso
from cnr_oci.writepath import WritePath

Stored = tuple[dict[str, Any], Manifest]


@dataclass(frozen=True)
class Channel:
    """A channel as readers see it: its releases (that exist), and the current one."""

    name: str
    current: str
    releases: list[str]


def _missing(pkg: Package, name: str) -> errors.CnrError:
    return errors.ChannelNotFound(f"channel {name} of {pkg.full} not found", {"package": pkg.full, "channel": name})


def visible(doc: dict[str, Any], existing: set[str]) -> Channel | None:
    """A channel as readers see it: only releases that exist, so a channel never names a
    deleted release, whoever deleted it; ``current`` falls back to the highest left."""
    left = [r for r in doc["releases"] if r in existing]
    if not left:
        return None
    current = doc["current"] if doc["current"] in left else mapping.sort_releases(left)[0]
    return Channel(doc["name"], current, left)


class Channels:
    """Reads channels through the read model; writes them under the write path's package lock."""

    def __init__(self, read: ReadModel, write: WritePath) -> None:
        self.read = read
        self.write = write
        self.client = read.client
        write.on_release_gone = self.drop_release

    async def _stored(self, repo: str, name: str, fresh: bool = False) -> Stored | None:
        m = await self.read.manifest(repo, mapping.channel_tag(name), fresh)
        if m is None or not layout.is_channel(m):
            return None
        return await self.read.config(repo, m.doc["config"], schemas.CHANNEL), m

    async def _existing(self, pkg: Package, name: str, fresh: bool = False) -> Stored:
        found = await self._stored(self.read.repo(pkg), name, fresh)
        if found is None:
            raise _missing(pkg, name)
        return found

    async def listing(self, pkg: Package) -> list[Channel]:
        """E14: every channel of a package; 404 when the package does not exist."""
        existing = set(await self.read.releases(pkg))
        repo = self.read.repo(pkg)
        names = sorted(n for t in await self.read.tags(repo) if (n := mapping.channel_from_tag(t)))
        found = await self.read.gather(self._stored(repo, n) for n in names)
        return [v for c in found if c is not None and (v := visible(c[0], existing)) is not None]

    async def show(self, pkg: Package, name: str) -> Channel:
        """E15."""
        mapping.check_channel(name)
        existing = set(await self.read.releases(pkg))
        shown = visible((await self._existing(pkg, name))[0], existing)
        if shown is None:
            raise _missing(pkg, name)
        return shown

    async def current_of(self, pkg: Package, release: str) -> list[str]:
        """The channels whose current release this is (for E10)."""
        try:
            return sorted(c.name for c in await self.listing(pkg) if c.current == release)
        except errors.PackageNotFound:
            return []

    async def add_release(self, pkg: Package, name: str, release: str) -> Channel:
        """E16: add an existing release to a channel and make it current."""
        mapping.check_channel(name)
        mapping.check_release(release)
        repo = self.read.repo(pkg)
        async with self.write.locks.hold(repo):
            if release not in await self.read.releases(pkg) or not await self.read.entries(pkg, release, fresh=True):
                raise errors.ReleaseNotFound(
                    f"{pkg.full} has no release {release}", {"package": pkg.full, "release_query": release}
                )
            found = await self._stored(repo, name, fresh=True)
            releases = set(found[0]["releases"]) if found else set()
            releases.add(release)
            ordered = mapping.sort_releases(releases)
            await self._put(pkg, {"name": name, "current": release, "releases": ordered})
        return Channel(name, release, ordered)

    async def put(self, pkg: Package, name: str, releases: list[str], current: str | None) -> bool:
        """Make a channel hold exactly these releases (that exist) with this current one (default: the
        highest); False when it already did. For migration, which copies channels whole."""
        mapping.check_channel(name)
        async with self.write.locks.hold(self.read.repo(pkg)):
            existing = set(await self.read.releases(pkg))
            ordered = mapping.sort_releases(r for r in set(releases) if r in existing)
            if not ordered:
                raise errors.ReleaseNotFound(f"none of the releases of channel {name} exist in {pkg.full}",
                                             {"package": pkg.full, "channel": name})
            doc = {"name": name, "current": current if current in ordered else ordered[0], "releases": ordered}
            found = await self._stored(self.read.repo(pkg), name, fresh=True)
            if found is not None and found[0] == doc:
                return False
            await self._put(pkg, doc)
        return True

    async def remove_release(self, pkg: Package, name: str, release: str) -> None:
        """E17: drop a release; current moves to the highest left; the last one deletes the channel."""
        mapping.check_channel(name)
        mapping.check_release(release)
        async with self.write.locks.hold(self.read.repo(pkg)):
            found = await self._existing(pkg, name, fresh=True)
            if release not in found[0]["releases"]:
                raise errors.ReleaseNotFound(
                    f"channel {name} of {pkg.full} has no release {release}",
                    {"package": pkg.full, "release_query": release},
                )
            await self._without(pkg, found, release)

    async def delete(self, pkg: Package, name: str) -> None:
        """E18."""
        mapping.check_channel(name)
        async with self.write.locks.hold(self.read.repo(pkg)):
            found = await self._existing(pkg, name, fresh=True)
            await self._delete_manifest(pkg, name, found[1])

    async def drop_release(self, pkg: Package, release: str) -> None:
        """A deleted release leaves every channel (called under the package lock)."""
        repo = self.read.repo(pkg)
        self.read.forget(repo)
        for tag in await self.read.tags(repo):
            name = mapping.channel_from_tag(tag)
            found = await self._stored(repo, name, fresh=True) if name else None
            if found is not None and release in found[0]["releases"]:
                await self._without(pkg, found, release)

    async def _without(self, pkg: Package, found: Stored, release: str) -> None:
        doc, m = found
        left = [r for r in doc["releases"] if r != release]
        if not left:
            await self._delete_manifest(pkg, doc["name"], m)
            return
        current = doc["current"] if doc["current"] != release else mapping.sort_releases(left)[0]
        await self._put(pkg, {"name": doc["name"], "current": current, "releases": left})

    async def _put(self, pkg: Package, doc: dict[str, Any]) -> None:
        repo = self.read.repo(pkg)
        subject = await self.read.manifest(repo, mapping.release_to_tag(doc["current"]), fresh=True)
        config, raw = layout.channel_documents(doc, now_iso(), subject)
        await self.client.upload_blob(repo, layout.sha256(config), config)
        await self.client.upload_blob(repo, layout.sha256(layout.EMPTY_JSON), layout.EMPTY_JSON)
        tag = mapping.channel_tag(doc["name"])
        try:
            await self.client.put_manifest(repo, tag, raw, layout.OCI_MANIFEST)
        finally:
            self.read.forget(repo, tag)

    async def _delete_manifest(self, pkg: Package, name: str, m: Manifest) -> None:
        repo = self.read.repo(pkg)
        try:
            await self.client.delete_manifest(repo, m.digest)
        finally:
            self.read.forget(repo, mapping.channel_tag(name))
