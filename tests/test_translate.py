"""translate.py: every registry error becomes one CNR error, by the one table, whatever the handler."""

from __future__ import annotations

import pytest

from cnr_oci import errors, translate, upstream

PARAMS = {"ns": "ns", "name": "app", "release": "1.0.0", "media_type": "helm"}


def every_registry_error() -> list[type[upstream.RegistryError]]:
    found, todo = [], [upstream.RegistryError]
    while todo:
        cls = todo.pop()
        found.append(cls)
        todo.extend(cls.__subclasses__())
    return found


@pytest.mark.parametrize("cls", every_registry_error(), ids=lambda c: c.__name__)
def test_every_registry_error_has_a_cnr_error_with_the_contracts_status(cls):
    err = translate.to_cnr(cls("GET /v2/x: registry answered", 500, "X"), "show", PARAMS)
    expected = {
        upstream.Unauthorized: 401, upstream.Denied: 403, upstream.NotFound: 404, upstream.UnsupportedOperation: 501,
        upstream.TooLarge: 413, upstream.TooManyRequests: 503, upstream.RegistryUnavailable: 503,
    }
    status = next((s for c, s in expected.items() if issubclass(cls, c)), 502)
    assert isinstance(err, errors.CnrError) and err.status == status
    assert err.code == {401: "unauthorized-access", 403: "forbidden", 404: "resource-not-found",
                        413: "payload-too-large", 501: "unsupported"}.get(status, "upstream-unavailable")


def test_a_denial_names_the_package_and_the_missing_scopes():
    err = translate.to_cnr(upstream.Denied("no", 403, "DENIED", scopes=["push"]), "push", PARAMS)
    assert err.status == 403 and err.details == {"package": "ns/app", "scopes": ["push"]}


@pytest.mark.parametrize("handler", ["pull", "blob"])
def test_a_missing_blob_is_package_not_found(handler):
    params = {"ns": "ns", "name": "app", "digest": "a" * 64} if handler == "blob" else PARAMS
    err = translate.to_cnr(upstream.BlobUnknown("blob gone", 404, "BLOB_UNKNOWN"), handler, params)
    assert err.code == "package-not-found" and err.status == 404 and err.details["package"] == "ns/app"
    if handler == "blob":
        assert err.details["release"] == "sha256:" + "a" * 64


@pytest.mark.parametrize("cls", [upstream.Denied, upstream.NotFound, upstream.UnsupportedOperation])
@pytest.mark.parametrize("handler", ["list_packages", "search"])
def test_a_catalog_the_caller_may_not_list_is_forbidden(cls, handler):
    err = translate.to_cnr(cls("catalog", 403), handler, {})
    assert err.status == 403 and err.details == {"scopes": ["catalog"]} and "catalog" in err.message


@pytest.mark.parametrize("handler", ["delete_release", "remove_channel_release", "delete_channel"])
def test_a_registry_that_refuses_deletes_is_unsupported_and_nothing_was_deleted(handler):
    err = translate.to_cnr(upstream.UnsupportedOperation("DELETE", 405, ""), handler, {**PARAMS, "channel": "stable"})
    assert err.status == 501 and "nothing was deleted" in err.message and "405 UNSUPPORTED" in err.message
    assert err.details["package"] == "ns/app"


def test_the_same_errors_elsewhere_keep_their_plain_meaning():
    assert translate.to_cnr(upstream.BlobUnknown("x", 404), "show", PARAMS).code == "resource-not-found"
    assert translate.to_cnr(upstream.Denied("x", 403), "show", PARAMS).status == 403
    assert translate.to_cnr(upstream.UnsupportedOperation("x", 405), "push", PARAMS).message.startswith("registry:")


@pytest.mark.parametrize("status, code", [(404, "resource-not-found"), (405, "invalid-usage"),
                                          (413, "payload-too-large"), (400, "invalid-usage")])
def test_the_routers_own_refusals_keep_their_status(status, code):
    err = translate.http_to_cnr(status, "Not Found")
    assert err.status == status and err.code == code
