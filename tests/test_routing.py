"""routes.py: one CNR route table, served under /cnr by a sub-app and at the root; nothing shadows it."""

from __future__ import annotations

import secrets

import pytest
from aiohttp.test_utils import make_mocked_request

from cnr_oci.app import create_app
from cnr_oci.routes import ROUTES
from tests.helpers import body, kpm

# Names that are also paths of cnr-oci or of its neighbours: none may capture a package's routes.
RESERVED = ["cnr", "api", "v1", "packages", "healthz", "readyz", "metrics", "version", "helm", "ui", "search",
            "users", "blobs", "channels", "login"]


@pytest.mark.parametrize("namespace", RESERVED)
async def test_a_namespace_named_like_a_route_is_an_ordinary_package_at_both_mounts(client, namespace):
    name = f"app{secrets.token_hex(3)}"
    blob = kpm()
    for mount in ("/cnr", ""):
        base = f"{mount}/api/v1/packages/{namespace}/{name}"
        release = "1.0.0" if mount else "2.0.0"
        resp = await client.post(base, json=body(blob, release))
        assert resp.status == 200, (mount, await resp.text())
        pulled = await client.get(f"{base}/{release}/kpm/pull")
        assert pulled.status == 200 and await pulled.read() == blob
        listed = await (await client.get(base)).json()
        assert {m["release"] for m in listed} >= {release}
    # One package, whichever mount wrote it.
    releases = {m["release"] for m in await (await client.get(f"/api/v1/packages/{namespace}/{name}")).json()}
    assert releases == {"1.0.0", "2.0.0"}


@pytest.mark.parametrize("path", ["/", "/cnr", "/cnr/"])
async def test_the_discovery_page_answers_at_the_root_and_under_cnr(client, path):
    resp = await client.get(path)
    assert resp.status == 200 and 'name="appr-package"' in await resp.text()


@pytest.mark.parametrize("path", ["/healthz", "/readyz", "/metrics"])
async def test_operational_routes_sit_at_the_root_only(client, path):
    assert (await client.get(path)).status == 200
    missing = await client.get("/cnr" + path)
    assert missing.status == 404 and (await missing.json())["code"] == "resource-not-found"


async def test_every_cnr_route_resolves_to_its_handler_under_cnr_and_at_the_root_with_and_without_a_slash(settings):
    app = create_app(settings)
    for method, template, handler in ROUTES:
        path = (template.replace("{ns}", "ns").replace("{name}", "app").replace("{release}", "1.0.0")
                .replace("{media_type}", "kpm").replace("{channel}", "stable").replace("{digest}", "a" * 64)
                .replace("{json:(/json)?}", ""))
        for mount in ("/cnr", ""):
            for slash in ("", "/"):
                match = await app.router.resolve(make_mocked_request(method, mount + path + slash, app=app))
                assert match.http_exception is None and match.handler is handler, (method, mount + path + slash)
