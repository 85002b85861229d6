"""The store: the read model, write path, channels and catalog over one registry, wired together."""

from __future__ import annotations

from cnr_oci import errors, oci
from cnr_oci.auth import IDENTITY, Credentials
from cnr_oci.blobcache import DEFAULT_MAX, DEFAULT_SIZE
from cnr_oci.catalog import Catalog
from cnr_oci.channels import Channels
from cnr_oci.entries import Details, Entry
from cnr_oci.helmrepo import HelmRepository
from cnr_oci.locks import PackageLocks
from cnr_oci.mapping import Package
from cnr_oci.readmodel import ReadModel
from cnr_oci.writepath import WritePath


class Store:
    """What the handlers use. Each part has one job; this only builds them and answers the few
    questions that take more than one (a listing with details, a release with its channels)."""

    def __init__(self, client: oci.OciClient, prefix: str = "", *, cache_ttl: float = 2.0,
                 fanout: int | None = None, locks: PackageLocks | None = None,
                 blob_cache_size: int = DEFAULT_SIZE, blob_cache_max: int = DEFAULT_MAX) -> None:
        self.client = client
        self.read = ReadModel(client, prefix, cache_ttl=cache_ttl, fanout=fanout,
                              blob_cache_size=blob_cache_size, blob_cache_max=blob_cache_max)
        self.write = WritePath(self.read, locks)
        self.channels = Channels(self.read, self.write)
        self.catalog = Catalog(self.read)
        self.helm = HelmRepository(self.read, self.catalog)

    async def login(self, username: str, password: str) -> Credentials | None:
        """The credentials a login token should carry: None when the registry asks nobody for any.

        Raises:
            Unauthorized: the registry refuses them.
        """
        if not await self.client.ping():
            return None
        creds = Credentials(username, password)
        token = IDENTITY.set(creds)
        try:
            await self.client.check_credentials()
        finally:
            IDENTITY.reset(token)
        return creds

    async def manifests(self, pkg: Package, media_type: str | None = None,
                        release: str | None = None) -> list[tuple[Entry, Details]]:
        """E8 (every release) and E9 (one exact release), with each entry's details.

        Raises:
            PackageNotFound: no such package, or (E9) no such release.
        """
        releases = await self.read.releases(pkg)
        if release is not None:
            releases = [r for r in releases if r == release]
        found = [e for e in await self.read.all_entries(pkg, releases)
                 if media_type is None or e.media_type == media_type]
        if release is not None and not found:
            raise errors.PackageNotFound(
                f"release {release} of {pkg.full} not found",
                {"package": pkg.full, "release": release, "media_type": media_type},
            )
        details = await self.read.gather(self.read.details(pkg, e) for e in found)
        return list(zip(found, details, strict=True))

    async def show(self, pkg: Package, query: str | None, media_type: str) -> tuple[Entry, Details, list[str]]:
        """E10: the entry a query selects, its details and the channels it is current in."""
        e = await self.read.resolve(pkg, query, media_type)
        return e, await self.read.details(pkg, e), await self.channels.current_of(pkg, e.release)
