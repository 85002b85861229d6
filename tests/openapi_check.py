"""Every response a test client sees, checked against schemas/openapi.json with openapi-core.

An aiohttp client middleware (installed by the `make_client` fixture) checks each response to the app under
test: its status and headers at once; its body when it is read (JSON bodies up to SMALL bytes are read at
once, so a test that only looks at the status still has its body checked). A body the test streams itself
(resp.content) is not checked. A path or method the document does not have must be a CNR 404 or 405.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from aiohttp import ClientRequest, ClientResponse
from openapi_core import OpenAPI
from openapi_core.datatypes import RequestParameters
from openapi_core.templating.paths.exceptions import OperationNotFound, PathNotFound, ServerNotFound
from openapi_core.validation.response.validators import V31ResponseDataValidator, V31ResponseHeadersValidator
from openapi_schema_validator import OAS31Validator
from werkzeug.datastructures import Headers, ImmutableMultiDict

from cnr_oci import openapi

SMALL = 64 * 1024
ROUTER_ERRORS = (404, 405)  # the router's answer to a path or method it does not have


@functools.cache
def spec() -> OpenAPI:
    return OpenAPI.from_dict(openapi.document())


@dataclass
class Req:
    """An openapi-core request: only what finding the operation needs (requests themselves are not checked:
    tests send bad ones on purpose)."""

    host_url: str
    path: str
    method: str
    parameters: RequestParameters = field(default_factory=RequestParameters)
    content_type: str = "application/json"
    body: bytes | None = None


@dataclass
class Resp:
    status_code: int
    headers: Headers
    content_type: str
    data: bytes | None


def _request(req: ClientRequest) -> Req:
    path = req.url.raw_path  # as the router matches it: a %2F stays inside its segment
    # Every CNR path is answered with and without a trailing slash (the document says so once).
    if len(path) > 1 and path.endswith("/"):
        path = path[:-1]
    if path == "/cnr":  # the index page under /cnr is "/" of the /cnr server
        path = "/cnr/"
    # HEAD is GET without a body (the document says so once).
    method = "get" if req.method == "HEAD" else req.method.lower()
    host = f"{req.url.scheme}://{req.url.host}:{req.url.port}"
    return Req(host, path, method, RequestParameters(query=ImmutableMultiDict(list(req.url.query.items()))))


def _response(resp: ClientResponse, data: bytes | None) -> Resp:
    return Resp(resp.status, Headers(list(resp.headers.items())), resp.content_type, data)


def _fail(req: ClientRequest, resp: ClientResponse, errors: list[Exception], data: bytes | None = None) -> None:
    if errors:
        shown = "; ".join(f"{type(e).__name__}: {e} {getattr(e, 'schema_errors', '') or ''}" for e in errors)
        raise AssertionError(f"{req.method} {req.url.path} answered {resp.status} {resp.content_type}, which "
                             f"schemas/openapi.json does not describe: {shown}; body {(data or b'')[:300]!r}")


def _router_error(req: ClientRequest, resp: ClientResponse, data: bytes) -> None:
    """A path or method outside the document: the router's 404 or 405, in the CNR envelope."""
    if resp.status not in ROUTER_ERRORS:
        raise AssertionError(f"{req.method} {req.url.path} is not in schemas/openapi.json, answered {resp.status}")
    components = openapi.document()["components"]
    OAS31Validator({"$ref": "#/components/schemas/CnrError", "components": components}).validate(json.loads(data))


def _headers(req: ClientRequest, resp: ClientResponse) -> bool:
    """Status and headers; False when the operation is not in the document (checked with the body)."""
    try:
        errors = list(V31ResponseHeadersValidator(spec().spec).iter_errors(_request(req), _response(resp, None)))
    except (PathNotFound, OperationNotFound, ServerNotFound):
        return False
    missing = (PathNotFound, OperationNotFound, ServerNotFound)
    _fail(req, resp, [e for e in errors if not isinstance(e, missing)])
    return not any(isinstance(e, missing) for e in errors)


def _body(req: ClientRequest, resp: ClientResponse, data: bytes, known: bool) -> None:
    if req.method == "HEAD":
        return
    if not known:
        _router_error(req, resp, data)
        return
    errors = list(V31ResponseDataValidator(spec().spec).iter_errors(_request(req), _response(resp, data)))
    _fail(req, resp, errors, data)


def checker(origin: Callable[[], str | None]) -> Callable[..., Awaitable[ClientResponse]]:
    """A client middleware checking the responses of the server at origin() (others pass unchecked)."""

    async def check(req: ClientRequest, handler: Callable[[ClientRequest], Awaitable[ClientResponse]]
                    ) -> ClientResponse:
        resp = await handler(req)
        if origin() is None or f"{req.url.scheme}://{req.url.host}:{req.url.port}" != origin():
            return resp
        known = _headers(req, resp)
        read = resp.read

        async def read_and_check() -> bytes:
            data = await read()
            if not getattr(resp, "_openapi_checked", False):
                resp._openapi_checked = True  # type: ignore[attr-defined]
                _body(req, resp, data, known)
            return data

        resp.read = read_and_check  # type: ignore[method-assign]
        small = resp.content_length is not None and resp.content_length <= SMALL
        if small and req.method != "HEAD" and resp.content_type == "application/json":
            await resp.read()
        return resp

    return check


__all__ = ["checker"]
