"""Log output (``--log-format text|json``) and the one access line per request.

Every record, cnr-oci's, aiohttp's or a library's, goes through one stderr handler: JSON lines
(python-json-logger) or text, each with the ``request_id`` of the request it was logged in, and
through ``logsafe.RedactingFilter``. aiohttp's own access log is replaced by ``AccessLog``
(server.LimitedRunner), which writes after the response is complete:
``request_id method route status duration_ms bytes user upstream_calls remote``.
"""

from __future__ import annotations

import logging
import re
import sys
from typing import Any

from aiohttp import web
from aiohttp.abc import AbstractAccessLogger
from aiohttp.web_request import BaseRequest
from aiohttp.web_response import StreamResponse
from pythonjsonlogger.json import JsonFormatter

from cnr_oci import requestctx
from cnr_oci.logsafe import RedactingFilter

LOGGER = "cnr_oci.access"
REQUEST_KEY = web.RequestKey("cnr_oci_request", requestctx.RequestContext)  # set by the middleware
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
# The access line's fields, in the order the text format appends them.
FIELDS = ("request_id", "method", "route", "status", "duration_ms", "bytes", "user", "upstream_calls", "remote")
_UNPRINTABLE = re.compile(r"[^\x21-\x7e]")

log = logging.getLogger(LOGGER)


class RequestIdFilter(logging.Filter):
    """Adds the current request's id to a record logged while that request runs."""

    def filter(self, record: logging.LogRecord) -> bool:
        ctx = requestctx.CURRENT.get()
        if ctx is not None and not hasattr(record, "request_id"):
            record.request_id = ctx.id
        return True


class TextFormatter(logging.Formatter):
    """The text format: the message, then ``key=value`` for the request fields a record has."""

    def formatMessage(self, record: logging.LogRecord) -> str:
        text = super().formatMessage(record)
        extra = [f"{key}={_text(getattr(record, key))}" for key in FIELDS
                 if key in record.__dict__ and key not in ("method", "route", "status")]
        return " ".join([text, *extra])


def _text(value: Any) -> str:
    return "-" if value is None else str(value)


def formatter(fmt: str, tag: str = "") -> logging.Formatter:
    """The formatter of ``--log-format``; ``tag`` goes after the logger name in text (a worker's pid)."""
    if fmt == "json":
        return JsonFormatter("%(levelname)s %(name)s %(process)d %(message)s", timestamp="time",
                             rename_fields={"levelname": "level", "name": "logger", "process": "pid"})
    return TextFormatter(TEXT_FORMAT.replace("%(name)s", "%(name)s" + tag))


def configure(level: str, fmt: str = "text", tag: str = "") -> None:
    """Send every log record to stderr in ``fmt``, with request ids and redaction (replaces any set-up)."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(formatter(fmt, tag))
    handler.addFilter(RequestIdFilter())
    handler.addFilter(RedactingFilter())
    logging.basicConfig(level=level.upper(), handlers=[handler], force=True)


def safe_name(name: str | None) -> str | None:
    """A user name as logged: printable ASCII, no spaces, at most 100 characters (no forged lines)."""
    return None if name is None else _UNPRINTABLE.sub("?", name[:100])


def write(request: BaseRequest, status: int, size: int, seconds: float) -> None:
    """The access line of ``request`` (once: a second call for the same request writes nothing)."""
    ctx = request.get(REQUEST_KEY)
    if not isinstance(ctx, requestctx.RequestContext):  # never reached the app (a malformed head)
        ctx = requestctx.RequestContext(requestctx.accept_id(None))
    if ctx.logged:
        return
    ctx.logged = True
    route = ctx.route
    fields = {"request_id": ctx.id, "method": request.method, "route": route, "status": status,
              "duration_ms": round(seconds * 1000, 2), "bytes": size, "user": safe_name(ctx.user),
              "upstream_calls": ctx.upstream_calls, "remote": request.remote}
    log.info("%s %s %s", request.method, route or "-", status, extra=fields)


class AccessLog(AbstractAccessLogger):
    """aiohttp's access logger, replaced: ``write`` once a response is complete."""

    def log(self, request: BaseRequest, response: StreamResponse, time: float) -> None:
        write(request, response.status, response.body_length, time)

    @property
    def enabled(self) -> bool:
        return log.isEnabledFor(logging.INFO)
