"""schemas/openapi.json: valid OpenAPI 3.1, the one the server serves, covering every route the app has;
Swagger UI from the package's assets. (Every response of the route tests is checked against the document
by tests/openapi_check.py, installed by the make_client fixture.)"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from aiohttp import web
from openapi_spec_validator import validate

from cnr_oci import errors, openapi
from cnr_oci.app import create_app
from tests import openapi_check

COMMITTED = Path(__file__).resolve().parent.parent / "schemas" / "openapi.json"


def test_the_committed_document_is_valid_openapi_3_1_and_is_the_generated_one():
    doc = json.loads(COMMITTED.read_text())
    validate(doc)
    assert doc["openapi"] == "3.1.0"
    assert COMMITTED.read_text() == openapi.rendered(), "run: python -m cnr_oci.openapi > schemas/openapi.json"


async def test_openapi_json_is_served_at_the_root_only(client):
    resp = await client.get("/openapi.json")
    assert resp.status == 200
    assert await resp.json() == json.loads(COMMITTED.read_text())
    assert (await client.get("/cnr/openapi.json")).status == 404


def _templates(app: web.Application, prefix: str = "") -> set[tuple[str, str]]:
    """(method, OpenAPI path) of every route: trailing-slash twins folded, {json} ((/json)?) as two paths."""
    found: set[tuple[str, str]] = set()
    for route in app.router.routes():
        if route.method == "HEAD":
            continue
        info = route.resource.get_info() if route.resource is not None else {}
        if "app" in info:  # the /cnr sub-application
            found |= _templates(info["app"], prefix + info["prefix"])
            continue
        static = info["prefix"] + "/{filename}" if "directory" in info else None  # a static directory
        path = prefix + str(info.get("path") or info.get("formatter") or static)
        variants = [path.replace("{json}", ""), path.replace("{json}", "/json")]
        for p in {re.sub(r"\{(\w+):[^}]*\}", r"{\1}", v) for v in variants}:
            p = p.rstrip("/") or "/"
            found.add((route.method.lower(), "/" if p == "/cnr" else p))
    return found


def _documented() -> set[tuple[str, str]]:
    doc = openapi.document()
    found: set[tuple[str, str]] = set()
    for path, item in doc["paths"].items():
        for server in item.get("servers", doc["servers"]):
            base = server["url"].rstrip("/")
            for method in item.keys() - {"servers", "parameters"}:
                found.add((method, "/" if base + path == "/cnr/" else (base + path).rstrip("/") or "/"))
    return found


def test_every_route_of_the_app_is_in_the_document_and_nothing_else(settings):
    routes = _templates(create_app(settings))
    documented = _documented()
    assert routes - documented == set(), "routes the document lacks"
    assert documented - routes == set(), "documented routes the app does not have"


def test_every_error_status_of_the_cnr_table_is_described():
    statuses = {cls.status for cls in vars(errors).values()
                if isinstance(cls, type) and issubclass(cls, errors.CnrError)}
    assert statuses <= set(openapi.WHY)
    responses = openapi.document()["components"]["responses"]
    assert {f"Cnr{s}" for s in statuses} <= set(responses)


async def test_api_docs_renders_swagger_ui_from_the_package_not_a_cdn(client):
    resp = await client.get("/api-docs")
    assert resp.status == 200
    page = await resp.text()
    assert "/api-docs/swagger-ui-bundle.js" in page and '"/openapi.json"' in page
    assert not re.search(r'(src|href)="(https?:)?//', page), "no asset from another host"
    js = await client.get("/api-docs/swagger-ui-bundle.js")
    assert js.status == 200 and js.content_type == "text/javascript"
    assert b"SwaggerUIBundle" in await js.read()
    css = await client.get("/api-docs/swagger-ui.css")
    assert css.status == 200 and css.content_type == "text/css"


@pytest.mark.parametrize("name", ["index.html", "swagger-initializer.js", "..%2F__init__.py", "nothing"])
async def test_api_docs_serves_only_its_listed_assets(client, name):
    resp = await client.get(f"/api-docs/{name}")
    assert resp.status == 404
    assert (await resp.json())["code"] == "resource-not-found"


async def test_the_response_check_fails_a_response_that_drifts_from_the_document(aiohttp_client):
    """The check the route tests rely on: a /version without its fields, an undocumented status."""
    async def version(request: web.Request) -> web.Response:
        return web.json_response({"cnr-api": 1})

    async def healthz(request: web.Request) -> web.Response:
        return web.json_response({"status": "ok"}, status=418)

    app = web.Application()
    app.router.add_get("/version", version)
    app.router.add_get("/healthz", healthz)
    origin: list[str] = []
    client = await aiohttp_client(app, middlewares=(openapi_check.checker(lambda: origin[0]),))
    origin.append(str(client.make_url("")).rstrip("/"))
    with pytest.raises(AssertionError, match="does not describe"):
        await client.get("/version")  # a small JSON body is checked as it arrives
    with pytest.raises(AssertionError, match="418"):
        await client.get("/healthz")
