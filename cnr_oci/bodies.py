"""Reading request bodies, bounded in bytes and in time."""

from __future__ import annotations

import asyncio

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError
from aiohttp.web_protocol import RequestPayloadError

from cnr_oci import errors

# A body may start slowly (GRACE) but must then keep up MIN_RATE on average: 16 KiB/s is
# 128 kbit/s, slower than any link a push should come over, and at that rate a 64 MiB
# body still gets ~68 minutes. A client sending one byte every few seconds is cut at ~GRACE.
BODY_GRACE = 10.0
BODY_MIN_RATE = 16 * 1024.0


async def read_body(request: web.Request, limit: int, *, min_rate: float = BODY_MIN_RATE,
                    grace: float = BODY_GRACE) -> bytearray:
    """The whole body, at most ``limit`` bytes, arriving within ``grace + received / min_rate`` s.

    413 PayloadTooLarge past the limit (a declared Content-Length is checked first, chunked
    bodies are counted); 408 RequestTimeout when the body is slower, after which the
    connection is closed (the rest of the body is not read); 400 InvalidUsage for a broken
    chunked encoding or a client that hangs up.
    """
    declared = request.content_length
    if declared is not None and declared > limit:
        raise errors.PayloadTooLarge(f"request body of {declared} bytes exceeds the limit of {limit}",
                                     {"limit": limit})
    loop = asyncio.get_running_loop()
    start = loop.time()
    buf = bytearray()
    while True:
        remaining = start + grace + len(buf) / min_rate - loop.time()
        try:
            if remaining <= 0:
                raise TimeoutError
            async with asyncio.timeout(remaining):
                chunk = await request.content.readany()
        except (RequestPayloadError, HttpProcessingError):
            # the parser's text quotes the raw bytes: never echo it; the stream is broken: close
            _drop_connection(request)
            raise errors.InvalidUsage("malformed request body (transfer encoding)") from None
        except ConnectionError:
            raise errors.InvalidUsage("request body incomplete: the client went away") from None
        except TimeoutError:
            _drop_connection(request)
            raise errors.RequestTimeout(
                f"request body too slow: {len(buf)} bytes in {loop.time() - start:.1f} s "
                f"(needs {grace:g} s plus 1 s per {min_rate:g} bytes)",
                {"received": len(buf)}) from None
        if not chunk:
            return buf  # a bytearray: no second copy of a body of up to --max-body-size
        buf += chunk
        if len(buf) > limit:
            raise errors.PayloadTooLarge(f"request body exceeds the limit of {limit} bytes",
                                         {"limit": limit})


def _drop_connection(request: web.Request) -> None:
    """After the response, close instead of lingering on the unread rest of a slow body."""
    request.protocol.close()  # no keep-alive, ignore further bytes
    request.content.feed_eof()  # nothing left to read
    linger = getattr(request.protocol, "linger_on_close", None)  # server.LimitedHandler's
    if linger is not None:
        linger()
