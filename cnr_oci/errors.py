"""The root of cnr-oci's errors, and the CNR error table, declared once (rendered by wire.render)."""

from __future__ import annotations

from typing import Any


class CnrOciError(Exception):
    """Base of every error cnr-oci raises."""


class CnrError(CnrOciError):
    """Base of every error that reaches a CNR client."""

    code = "internal-error"
    status = 500

    def __init__(self, message: str, details: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.details = details or {}
        self.headers: dict[str, str] = {}


def _error(name: str, code: str, status: int) -> type[CnrError]:
    return type(name, (CnrError,), {"code": code, "status": status})


InvalidUsage = _error("InvalidUsage", "invalid-usage", 400)
Unauthorized = _error("Unauthorized", "unauthorized-access", 401)
Forbidden = _error("Forbidden", "forbidden", 403)
PackageNotFound = _error("PackageNotFound", "package-not-found", 404)
ReleaseNotFound = _error("ReleaseNotFound", "package-release-not-found", 404)
ChannelNotFound = _error("ChannelNotFound", "channel-not-found", 404)
ResourceNotFound = _error("ResourceNotFound", "resource-not-found", 404)
MethodNotAllowed = _error("MethodNotAllowed", "invalid-usage", 405)
PackageExists = _error("PackageExists", "package-exists", 409)
ResourceInUse = _error("ResourceInUse", "resource-in-use", 409)
RequestTimeout = _error("RequestTimeout", "invalid-usage", 408)
PayloadTooLarge = _error("PayloadTooLarge", "payload-too-large", 413)
UnsupportedMediaType = _error("UnsupportedMediaType", "invalid-usage", 415)
InvalidRelease = _error("InvalidRelease", "invalid-release", 422)
InvalidParameters = _error("InvalidParameters", "invalid-parameters", 422)
InternalError = _error("InternalError", "internal-error", 500)
Unsupported = _error("Unsupported", "unsupported", 501)
# 502 and 503 share the contract's code: the registry answered garbage, or is down.
UpstreamInvalid = _error("UpstreamInvalid", "upstream-unavailable", 502)
UpstreamUnavailable = _error("UpstreamUnavailable", "upstream-unavailable", 503)
ServerBusy = _error("ServerBusy", "server-busy", 503)
