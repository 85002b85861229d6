"""Log filters: no credentials or raw request bytes in any log line."""

from __future__ import annotations

import logging
import re

from aiohttp.http_exceptions import HttpProcessingError
from aiohttp.web_protocol import RequestPayloadError

_AIOHTTP_LOGGERS = ("aiohttp.access", "aiohttp.client", "aiohttp.internal", "aiohttp.server",
                    "aiohttp.web", "aiohttp.websocket")

_CREDENTIALS = re.compile(
    r"(?i)((?:proxy-)?authorization|cookie|x-registry-auth)(\s*[:=]\s*)[^\r\n]*"
    r"|\b(basic|bearer)(\s+)[^\s'\"]+")


def redact(text: str) -> str:
    """Authorization/Cookie header values and Basic/Bearer credentials replaced by <redacted>."""
    return _CREDENTIALS.sub(lambda m: f"{m.group(1) or m.group(3)}{m.group(2) or m.group(4)}<redacted>", text)


class RedactingFilter(logging.Filter):
    """Keep raw request bytes and credentials out of a log record.

    A parse error's text quotes the raw line it choked on, so it is replaced by the
    exception's class name; other messages and tracebacks get ``redact``.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        try:
            message = record.getMessage()
        except Exception:  # a broken format string is the logging module's to report
            return True
        parse_errors = _parse_errors(exc)
        if parse_errors:
            record.msg = f"{redact(message)}: {parse_errors} (malformed request, raw bytes withheld)"
            record.args = None
            record.exc_info = None
            record.exc_text = None
            return True
        clean = redact(message)
        if clean != message:
            record.msg, record.args = clean, None
        if record.exc_info and record.exc_info[0] is not None:
            record.exc_text = redact(logging.Formatter().formatException(record.exc_info))
            record.exc_info = None
        elif record.exc_text:
            record.exc_text = redact(record.exc_text)
        return True


def _parse_errors(exc: BaseException | None) -> str:
    """'RequestPayloadError < TransferEncodingError' if exc or its causes are parse errors, else ''."""
    chain: list[BaseException] = []
    while exc is not None and exc not in chain and len(chain) < 10:
        chain.append(exc)
        exc = exc.__cause__ or exc.__context__
    if any(isinstance(e, (HttpProcessingError, RequestPayloadError)) for e in chain):
        return " < ".join(type(e).__name__ for e in chain)
    return ""


def install_log_filter() -> None:
    """Put one RedactingFilter on each of aiohttp's loggers (idempotent)."""
    for name in _AIOHTTP_LOGGERS:
        logger = logging.getLogger(name)
        if not any(isinstance(f, RedactingFilter) for f in logger.filters):
            logger.addFilter(RedactingFilter())
