"""--blob-redirect: hand the client the registry's redirect to storage instead of piping the bytes.

Registries backed by object storage (distribution with S3, Harbor, ECR, GHCR) answer a blob GET with a
redirect to a presigned storage or CDN URL. With --blob-redirect, cnr-oci makes that GET as the caller
(so the registry decides who may read), and answers the client 307 to the same URL: the client downloads
from storage at storage speed and cnr-oci spends no CPU on the bytes. The client then verifies the
digest itself (it is in what it asked for). `?redirect=false` asks for the streamed, verified path.
"""

from __future__ import annotations

from aiohttp import web

from cnr_oci import appkeys, upstream
from cnr_oci.blobcache import Blob
from cnr_oci.mapping import Package
from cnr_oci.oci import BlobRedirect


def wants_redirect(request: web.Request) -> bool:
    return bool(request.config_dict[appkeys.SETTINGS].blob_redirect) and \
        request.query.get("redirect", "").lower() not in ("false", "0", "no")


async def open_for_client(request: web.Request, pkg: Package, digest: str) -> Blob | web.Response:
    """The blob as a verified stream, or (with --blob-redirect, where the registry redirects) a 307 to
    where the registry sent us. A blob in the blob cache is served from it (after its per-identity
    check); a digest the registry does not know goes the streamed way (a migrated release's old
    digest, or a 404)."""
    read = request.config_dict[appkeys.STORE].read
    if wants_redirect(request) and digest not in read.blobs:
        try:
            found = await read.bounded(read.client.open_blob_or_redirect(read.repo(pkg), digest))
        except upstream.NotFound:
            pass
        else:
            if isinstance(found, BlobRedirect):
                # A presigned URL is a capability for this caller: never cached by a proxy, never logged.
                return web.Response(status=307, headers={"Location": found.location, "Cache-Control": "no-store",
                                                         "Vary": "Authorization"})
            return found
    return await read.open_blob(pkg, digest)
