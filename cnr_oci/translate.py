"""The one boundary where registry errors become CNR errors: the translation table and its function."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from cnr_oci import errors, upstream

# Handlers whose registry failures have a meaning of their own.
BLOB_READS = frozenset({"pull", "blob"})
CATALOG_READS = frozenset({"list_packages", "search"})
DELETES = frozenset({"delete_release", "remove_channel_release", "delete_channel"})


@dataclass(frozen=True)
class Rule:
    source: type[upstream.RegistryError] | tuple[type[upstream.RegistryError], ...]
    handlers: frozenset[str] | None  # None: any handler
    target: type[errors.CnrError]
    message: str  # formatted with exc, status, code, package


# First match wins: the specific rules, then one per registry error class.
RULES: list[Rule] = [
    Rule(upstream.NotFound, BLOB_READS, errors.PackageNotFound, "blob not found in {package}: {exc}"),
    Rule((upstream.Denied, upstream.NotFound, upstream.UnsupportedOperation), CATALOG_READS, errors.Forbidden,
         "the registry does not let this identity list its catalog, so packages cannot be listed or "
         "searched here; name the package directly"),
    Rule(upstream.UnsupportedOperation, DELETES, errors.Unsupported,
         "the registry refuses deletion ({status} {code}); nothing was deleted"),
    Rule(upstream.Unauthorized, None, errors.Unauthorized, "registry: {exc}"),
    Rule(upstream.Denied, None, errors.Forbidden, "registry: {exc}"),
    Rule(upstream.NotFound, None, errors.ResourceNotFound, "registry: {exc}"),
    Rule(upstream.UnsupportedOperation, None, errors.Unsupported, "registry: {exc}"),
    Rule(upstream.TooLarge, None, errors.PayloadTooLarge, "registry: {exc}"),
    Rule(upstream.TooManyRequests, None, errors.UpstreamUnavailable, "registry: {exc}"),
    Rule(upstream.RegistryUnavailable, None, errors.UpstreamUnavailable, "registry: {exc}"),
    Rule(upstream.InvalidDocument, None, errors.UpstreamInvalid, "{exc}"),
    Rule(upstream.InvalidResponse, None, errors.UpstreamInvalid, "registry: {exc}"),
    Rule(upstream.RegistryError, None, errors.UpstreamInvalid, "registry: {exc}"),
]


def to_cnr(exc: upstream.RegistryError, handler: str | None, params: Mapping[str, str]) -> errors.CnrError:
    """The CNR error for a registry error met while serving ``handler`` with route ``params``."""
    package = f"{params['ns']}/{params['name']}" if "ns" in params and "name" in params else None
    for rule in RULES:
        if isinstance(exc, rule.source) and (rule.handlers is None or handler in rule.handlers):
            message = rule.message.format(exc=exc, status=exc.status, code=exc.code or "UNSUPPORTED", package=package)
            return rule.target(message, _details(exc, rule, package, params))
    raise AssertionError("unreachable: the last rule matches every registry error")


def _details(
    exc: upstream.RegistryError, rule: Rule, package: str | None, params: Mapping[str, str]
) -> dict[str, object]:
    if rule.handlers is CATALOG_READS:
        return {"scopes": ["catalog"]}
    if isinstance(exc, upstream.Denied):
        return {"package": package, "scopes": exc.scopes}
    if rule.handlers is DELETES:
        # What was refused: the channel's manifest on the channel routes, else the release's.
        key = "channel" if "channel" in params else "release"
        return {"package": package, key: params.get(key)}
    if rule.handlers is None:
        return {}
    details: dict[str, object] = {"package": package}
    for key in ("release", "channel", "media_type"):
        if key in params:
            details[key] = params[key]
    if "digest" in params:
        details["release"] = "sha256:" + params["digest"]
    return details


# The router's own refusals (no such route, wrong method, body over client_max_size).
_HTTP_TO_CNR: dict[int, type[errors.CnrError]] = {
    404: errors.ResourceNotFound,
    405: errors.MethodNotAllowed,
    413: errors.PayloadTooLarge,
}


def http_to_cnr(status: int, reason: str) -> errors.CnrError:
    """The CNR error for an aiohttp HTTP error response (status >= 400)."""
    err = _HTTP_TO_CNR.get(status, errors.InvalidUsage)(reason or "error")
    err.status = status
    return err
