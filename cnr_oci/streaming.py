"""Streaming a blob to a CNR client: raw, or base64 inside a JSON pull document, verified as it flows."""

from __future__ import annotations

import base64
import json
from typing import Any

from aiohttp import web

from cnr_oci import appkeys, blobcache


def b64_chunk_size(chunk: int) -> int:
    """A chunk size that is a multiple of 3, so base64 pieces concatenate cleanly."""
    return max(3, chunk - chunk % 3)


# Bytes read from the registry per write to the client (a multiple of 3, for the JSON form's base64).
STREAM_CHUNK = b64_chunk_size(1024 * 1024)


async def stream_blob(request: web.Request, blob: blobcache.Blob, filename: str,
                      json_fields: dict[str, Any] | None,
                      content_type: str = "application/x-gzip") -> web.StreamResponse:
    """Pass the blob through; with ``json_fields``, as a JSON pull document with the blob base64ed
    on the fly.

    Content-Length is always set, and the last chunk waits for the digest check,
    so a wrong or broken transfer is a short body, never a complete wrong one.
    """
    try:
        chunks = blob.chunks(STREAM_CHUNK)
        first = await anext(chunks, b"")  # a failure here still gets a CNR error
        resp = web.StreamResponse()
        prefix = suffix = b""
        if json_fields is None:
            resp.content_type = content_type
            resp.headers["Content-Disposition"] = filename
            if blob.size is not None:
                resp.content_length = blob.size
        else:
            resp.content_type = "application/json"
            prefix = (json.dumps({**json_fields, "filename": filename})[:-1] + ', "blob": "').encode()
            suffix = b'"}'
            if blob.size is not None:
                resp.content_length = len(prefix) + 4 * ((blob.size + 2) // 3) + len(suffix)
        request[appkeys.STREAMING] = True
        await resp.prepare(request)
        await resp.write(prefix)
        rest = b""
        piece: bytes | None = first
        while piece is not None:
            if json_fields is None:
                await resp.write(piece)
            else:
                data = rest + piece
                cut = len(data) - len(data) % 3
                await resp.write(base64.b64encode(data[:cut]))
                rest = data[cut:]
            piece = await anext(chunks, None)
        await resp.write(base64.b64encode(rest) + suffix if json_fields is not None else b"")
        await resp.write_eof()
        return resp
    finally:
        blob.close()
