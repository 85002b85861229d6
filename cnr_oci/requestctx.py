"""The current request's id, caller name and count of registry calls: set by the HTTP middleware,
read by the transport (which sends the id on and counts its calls) and by the access log.

A context variable, like ``auth.IDENTITY``: tasks a request starts (a ``gather`` of registry
calls) share the request's context object, so their calls are counted too.
"""

from __future__ import annotations

import contextvars
import re
import time
import uuid
from dataclasses import dataclass, field

HEADER = "X-Request-ID"
# What an incoming X-Request-ID may be (UUIDs, hex, base64, ULIDs, `host:seq`): anything else, or
# anything longer, is replaced by a new id, so the log and upstream headers stay bounded and clean.
_ACCEPTED = re.compile(r"[A-Za-z0-9._:+/=-]{1,128}")


@dataclass
class RequestContext:
    """One request's id, its caller's user name (None: anonymous) and its registry calls so far."""

    id: str
    user: str | None = None
    route: str | None = None  # the matched route's canonical path
    upstream_calls: int = 0
    started: float = field(default_factory=time.perf_counter)
    status: int | None = None  # set when the response's headers are sent
    logged: bool = False  # its access line is written


CURRENT: contextvars.ContextVar[RequestContext | None] = contextvars.ContextVar("cnr_oci_request", default=None)


def accept_id(incoming: str | None) -> str:
    """The incoming X-Request-ID if it is short and plain, else a new random id (32 hex digits)."""
    if incoming is not None and _ACCEPTED.fullmatch(incoming):
        return incoming
    return uuid.uuid4().hex


def upstream_call() -> str | None:
    """Count one registry request for the current request; its id to send on (None: no request)."""
    ctx = CURRENT.get()
    if ctx is None:
        return None
    ctx.upstream_calls += 1
    return ctx.id
