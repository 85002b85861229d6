"""The OCI distribution API of one registry: manifests, blobs, tags and the catalog."""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import socket
from dataclasses import dataclass
from typing import Any

import aiohttp
from yarl import URL

from cnr_oci.blobs import BlobStream, UploadSession
from cnr_oci.layout import MANIFEST_ACCEPT, Manifest, sha256
from cnr_oci.transport import Body, Transport
from cnr_oci.upstream import (
    MAX_MANIFEST,
    DigestMismatch,
    InvalidResponse,
    NotFound,
    RegistryError,
    TooLarge,
    off_loop,
    parse_json,
    parse_manifest,
    read_capped,
)
from cnr_oci.upstream import origin as upstream_origin

log = logging.getLogger(__name__)
# Redirect statuses a blob GET may answer (distribution with S3, GCS or a CDN middleware: 307).
REDIRECTS = (301, 302, 303, 307, 308)


# Redirects a blob GET may take (registry -> storage -> ...); a registry's own loop ends there.
MAX_HOPS = 5
# Addresses a registry may not send cnr-oci to (server-side request forgery): link-local, which holds the
# cloud metadata services (169.254.169.254, fe80::), AWS's IPv6 one, unspecified and multicast.
_AWS_METADATA_V6 = ipaddress.ip_address("fd00:ec2::254")


def _location(resp: aiohttp.ClientResponse, digest: str) -> URL:
    """The absolute http(s) URL a redirect names. Raises: InvalidResponse."""
    location = resp.headers.get("Location", "")
    try:
        target = resp.url.join(URL(location))
    except ValueError:
        target = None
    if not location or target is None or target.scheme not in ("http", "https") or not target.host:
        raise InvalidResponse(f"GET blob {digest}: a redirect without a usable Location")
    return target


async def _refuse_reserved(target: URL, digest: str) -> None:
    """A redirect target outside the registry must not be link-local, the metadata service, unspecified or
    multicast (checked on the address the name resolves to now; the request itself may resolve again).

    Raises: InvalidResponse.
    """
    host = (target.host or "").strip("[]")
    try:
        addresses = [ipaddress.ip_address(host.split("%")[0])]
    except ValueError:
        try:
            infos = await asyncio.get_running_loop().getaddrinfo(host, target.port, type=socket.SOCK_STREAM)
        except OSError:
            return  # the GET itself fails, as any unreachable storage
        addresses = [ipaddress.ip_address(str(info[4][0]).split("%")[0]) for info in infos]
    if any(a.is_link_local or a.is_unspecified or a.is_multicast or a == _AWS_METADATA_V6 for a in addresses):
        raise InvalidResponse(f"GET blob {digest}: the registry redirected to {host[:100]}, a link-local or "
                              "reserved address: refused")


@dataclass(frozen=True)
class BlobRedirect:
    """Where the registry sent a blob GET: storage's presigned URL, for the client to fetch itself."""

    location: str

MAX_LIST = 16 * 1024 * 1024  # one page of tags or of the catalog


class OciClient(Transport):
    """Speaks the OCI distribution API to one registry."""

    async def ping(self) -> bool:
        """Whether the registry answers; True when it asks for credentials (401)."""
        resp = await self._request("GET", "/v2/", expect=(200, 401), authenticate=False)
        resp.release()
        return resp.status == 401

    async def check_credentials(self) -> None:
        """GET /v2/ as the current identity.

        Raises:
            Unauthorized: the registry (or its token endpoint) refuses the credentials.
        """
        resp = await self._request("GET", "/v2/")
        resp.release()

    # -- manifests -------------------------------------------------------------

    async def get_manifest(self, repo: str, ref: str) -> Manifest:
        """GET a manifest by tag or digest, read whole (up to the cap) and checked.

        Raises:
            ResponseTooLarge: the registry answers more than ``max_manifest`` bytes.
            DigestMismatch: asked by digest, answered other bytes.
            InvalidResponse: not a JSON object.
        """
        what = f"manifest {repo}:{ref}"

        async def read(resp: aiohttp.ClientResponse) -> Manifest:
            async with resp:
                raw = await read_capped(resp, self.max_manifest, what)
                media_type = resp.headers.get("Content-Type", "").split(";")[0].strip()
            digest, doc = await off_loop(parse_manifest, raw)
            if ref.startswith("sha256:") and ref != digest:
                raise DigestMismatch(f"manifest {repo}@{ref} does not match its digest")
            if doc is None:
                raise InvalidResponse(f"{what} is not JSON")
            if not isinstance(doc, dict):
                raise InvalidResponse(f"{what} is not a JSON object")
            return Manifest(digest, doc.get("mediaType") or media_type, raw, doc)

        return await self._call("GET", f"/v2/{repo}/manifests/{ref}", read,
                                headers={"Accept": MANIFEST_ACCEPT}, body_limit=self.max_manifest)

    async def head_manifest(self, repo: str, ref: str) -> str | None:
        """The digest a tag points to, or None when there is no such tag."""
        try:
            resp = await self._request(
                "HEAD", f"/v2/{repo}/manifests/{ref}", headers={"Accept": MANIFEST_ACCEPT}
            )
        except NotFound:
            return None
        resp.release()
        return resp.headers.get("Docker-Content-Digest")

    async def put_manifest(self, repo: str, ref: str, raw: bytes, media_type: str) -> str:
        """PUT a manifest; distribution requires an OCI Content-Type.

        Raises:
            TooLarge: the manifest is over the cap (nothing is sent), or the registry says so.
        """
        if len(raw) > self.max_manifest:
            raise TooLarge(f"manifest {repo}:{ref} is {len(raw)} bytes; the registry takes at most "
                           f"{self.max_manifest}", 413)
        resp = await self._request(
            "PUT",
            f"/v2/{repo}/manifests/{ref}",
            expect=(201,),
            headers={"Content-Type": media_type},
            data=raw,
        )
        resp.release()
        return resp.headers.get("Docker-Content-Digest") or sha256(raw)

    async def delete_manifest(self, repo: str, digest: str) -> None:
        resp = await self._request("DELETE", f"/v2/{repo}/manifests/{digest}", expect=(202, 200))
        resp.release()

    # -- blobs -----------------------------------------------------------------

    async def blob_exists(self, repo: str, digest: str) -> bool:
        try:
            resp = await self._request("HEAD", f"/v2/{repo}/blobs/{digest}")
        except NotFound:
            return False
        resp.release()
        return True

    async def get_small_blob(self, repo: str, digest: str, limit: int = MAX_MANIFEST) -> bytes:
        """A config-sized blob, read whole and checked against its digest."""
        what = f"blob {repo}@{digest}"

        async def read(resp: aiohttp.ClientResponse) -> bytes:
            async with resp:
                data = await read_capped(resp, limit, what)
            if await off_loop(sha256, data) != digest:
                raise DigestMismatch(f"{what} does not match its digest")
            return data

        return await self._call("GET", f"/v2/{repo}/blobs/{digest}", read, body_limit=limit)

    async def open_blob(self, repo: str, digest: str) -> BlobStream:
        """Open a blob for streaming; the stream checks the digest and the rate as it goes. Redirects
        (to the registry's storage) are followed hop by hop, never to a link-local or reserved address."""
        found = await self._blob(repo, digest, hand_over=False)
        assert isinstance(found, BlobStream)
        return found

    async def open_blob_or_redirect(self, repo: str, digest: str) -> BlobStream | BlobRedirect:
        """open_blob, except that a registry answering with a redirect to another origin (its storage or
        a CDN: a presigned URL) is not followed: that URL is returned, for the client to fetch. A
        redirect to the registry's own origin is followed, as the caller."""
        return await self._blob(repo, digest, hand_over=True)

    async def _blob(self, repo: str, digest: str, hand_over: bool) -> BlobStream | BlobRedirect:
        url: str | URL = f"/v2/{repo}/blobs/{digest}"
        for _ in range(MAX_HOPS + 1):
            resp = await self._request("GET", url, expect=(200, *REDIRECTS), redirects=False)
            if resp.status == 200:
                return BlobStream(resp, digest, self.min_rate, self.rate_window)
            resp.release()
            target = _location(resp, digest)
            if upstream_origin(target) != upstream_origin(self.base):
                if hand_over:
                    return BlobRedirect(str(target))
                await _refuse_reserved(target, digest)
            url = target
        raise InvalidResponse(f"GET blob {digest}: more than {MAX_HOPS} redirects")

    async def upload_blob(
        self, repo: str, digest: str, data: Body, mount_from: str | None = None,
        session: UploadSession | None = None,
    ) -> str:
        """Upload unless present: HEAD, then mount or POST + PUT ?digest= (monolithic).
        An open, unused session of this repository is used instead of a new POST. ``data`` is the
        bytes, or a local file sent in chunks (a spooled blob: never held whole).

        Returns:
            "exists", "mounted" or "uploaded".
        """
        if await self.blob_exists(repo, digest):
            return "exists"
        if session is not None and not session.used and session.location and not mount_from:
            session.used = True
            try:
                await self._put_blob(repo, digest, data, session.location)
                return "uploaded"
            except NotFound:  # the registry purged the session meanwhile (a very slow body)
                log.info("upload session in %s expired; opening another", repo)
        params = {"mount": digest, "from": mount_from} if mount_from else None
        resp = await self._request(
            "POST", f"/v2/{repo}/blobs/uploads/", expect=(201, 202), params=params
        )
        resp.release()
        if resp.status == 201:
            return "mounted"
        location = resp.headers.get("Location")
        if not location:
            raise InvalidResponse("blob upload answered no Location")
        await self._put_blob(repo, digest, data, location)
        return "uploaded"

    async def _put_blob(self, repo: str, digest: str, data: Body, location: str) -> None:
        """Finish an upload session in one PUT ?digest= (distribution has no monolithic POST); a
        session the PUT did not close (a digest the registry refuses, say) is cancelled."""
        url = self._location(location).update_query({"digest": digest})
        try:
            resp = await self._request(
                "PUT",
                url,
                expect=(201, 204),
                headers={"Content-Type": "application/octet-stream"},
                data=data,
                what=f"PUT blob {repo}@{digest}",
            )
        except RegistryError as exc:
            if not isinstance(exc, NotFound):
                await self.cancel_upload(UploadSession(repo, location))
            raise
        resp.release()

    async def open_upload(self, repo: str) -> UploadSession:
        """Open an upload session as the current identity. Opening one needs push rights, so
        this proves them before any content is read or sent.

        Raises:
            Unauthorized: no or bad credentials where the registry needs them.
            Denied: the credentials may not push to repo.
        """
        resp = await self._request("POST", f"/v2/{repo}/blobs/uploads/", expect=(202,))
        resp.release()
        return UploadSession(repo, resp.headers.get("Location"))

    async def cancel_upload(self, session: UploadSession) -> None:
        """Cancel an unused upload session (DELETE), so nothing is left behind."""
        if session.used or not session.location:
            return
        session.used = True
        try:
            done = await self._request("DELETE", self._location(session.location), expect=(200, 202, 204, 404),
                                       what=f"cancel an unused upload in {session.repo}")
            done.release()
        except RegistryError as exc:  # an abandoned session is purged by the registry later
            log.info("%s", exc)

    # -- listing ---------------------------------------------------------------

    async def _paged(self, path: str, key: str, params: dict[str, str]) -> list[str]:
        """Follow RFC 5988 Link rel=next pages; the spec lets a server return fewer than n."""
        items: list[str] = []
        url: URL | str = path

        async def read(resp: aiohttp.ClientResponse) -> tuple[list[Any], str]:
            async with resp:
                raw = await read_capped(resp, MAX_LIST, f"{path} page")
                nxt = resp.links.get("next")
                link = str(nxt.get("url", "")) if nxt else ""
            ok, doc = await off_loop(parse_json, raw)
            if not ok:
                raise InvalidResponse(f"{path} did not answer JSON")
            page = doc.get(key) if isinstance(doc, dict) else doc
            if page is None:
                page = []
            if not isinstance(doc, dict) or not isinstance(page, list):
                raise InvalidResponse(f"{path} did not answer an object with a {key!r} list")
            return page, link

        query: dict[str, str] | None = params
        for _ in range(100_000):
            page, link = await self._call("GET", url, read, params=query, body_limit=MAX_LIST)
            items.extend(x for x in page if isinstance(x, str))
            if not link:
                break
            try:
                nxt = URL(link)
                url = self.base.join(nxt) if not nxt.is_absolute() else nxt
            except ValueError as exc:
                raise InvalidResponse(f"{path}: a bad Link: {link[:200]!r}") from exc
            query = None
        return items

    async def tags(self, repo: str) -> list[str]:
        return await self._paged(f"/v2/{repo}/tags/list", "tags", {})

    async def catalog(self, page_size: int = 1000) -> list[str]:
        """Every repository; distribution caps a catalog page at 1000."""
        return await self._paged("/v2/_catalog", "repositories", {"n": str(page_size)})
