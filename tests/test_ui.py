"""The package browser without a browser: pages, headers, the login cookie, CSRF, and route names."""

from __future__ import annotations

import base64
import re

from cnr_oci.uisession import CSRF_COOKIE, SESSION_COOKIE
from tests.conftest import HTPASSWD_USERS
from tests.helpers import body, chart, kpm, tarball, unique

API = "/cnr/api/v1/packages"
HTML = {"Accept": "text/html,application/xhtml+xml"}
USERS = HTPASSWD_USERS


def readme_chart(name: str, readme: bytes) -> bytes:
    yaml = f"apiVersion: v2\nname: {name}\nversion: 1.0.0\ndescription: a chart with a README\n".encode()
    return tarball({f"{name}/Chart.yaml": yaml, f"{name}/values.yaml": b"replicas: 3\n", f"{name}/README.md": readme})


async def test_each_page_renders_private_and_without_scripts(client):
    ns, name = unique()
    assert (await client.post(f"{API}/{ns}/{name}", json=body(chart(name), media_type="helm"))).status == 200
    assert (await client.post(f"{API}/{ns}/{name}/channels/stable/1.0.0")).status == 200
    for path in ("/", "/ui/", f"/ui/packages?namespace={ns}", f"/ui/packages?q={name}", f"/ui/packages/{ns}/{name}",
                 f"/ui/packages/{ns}/{name}/1.0.0/helm"):
        resp = await client.get(path, headers=HTML)
        text = await resp.text()
        assert resp.status == 200 and resp.content_type == "text/html", (path, text[:300])
        assert resp.headers["Cache-Control"] == "private", path
        assert "script-src" not in resp.headers["Content-Security-Policy"]  # default-src 'none': no script runs
        assert "<script" not in text and "<h1>" in text, path
        assert f"{ns}/{name}" in text or ns in text, path
    page = await (await client.get(f"/ui/packages/{ns}/{name}", headers=HTML)).text()
    assert "stable" in page and "sha256:" in page and "1.0.0" in page


async def test_home_keeps_the_discovery_meta_tag_for_browsers_and_clients(client):
    for headers in (HTML, {}):
        text = await (await client.get("/", headers=headers)).text()
        assert '<meta name="appr-package"' in text
    assert (await (await client.get("/.well-known/app-registry-uri.json")).json())["uri_prefix"].endswith("/cnr/")


async def test_a_release_page_shows_chart_files_and_copyable_commands(client):
    ns, name = unique()
    blob = readme_chart(name, b"# Hello\n\n<script>window.pwned = 1</script>\n\n[x](javascript:alert(1))\n")
    assert (await client.post(f"{API}/{ns}/{name}", json=body(blob, media_type="helm",
                                                               metadata={"team": "blue"}))).status == 200
    text = await (await client.get(f"/ui/packages/{ns}/{name}/1.0.0/helm", headers=HTML)).text()
    assert "<h1>Hello</h1>" in text and "replicas: 3" in text and "a chart with a README" in text
    assert "<script>" not in text and "&lt;script&gt;" in text and 'href="javascript' not in text
    assert "&#34;team&#34;" in text or '"team"' in text
    for client_name in ("curl", "appr", "helm (OCI)", "helm (repository)", "oras"):
        assert f'data-client="{client_name}"' in text
    assert f"/helm/{ns}" in text and "oci://" in text


async def test_no_ui_route_shadows_a_cnr_route_whatever_the_namespace(client):
    """Namespaces named like the server's own path segments still reach the API, and have pages."""
    for ns in ("api", "helm", "cnr", "ui", "healthz", "static", "login", "packages"):
        name = unique()[1]
        for prefix in ("/cnr/api/v1/packages", "/api/v1/packages"):
            pushed = await client.post(f"{prefix}/{ns}/{name}", json=body(kpm()), params={"force": "true"})
            assert pushed.status == 200
            shown = await client.get(f"{prefix}/{ns}/{name}/1.0.0/kpm")
            assert shown.status == 200 and (await shown.json())["package"] == f"{ns}/{name}"
        assert (await client.get(f"/ui/packages/{ns}/{name}", headers=HTML)).status == 200
        assert (await client.get(f"/ui/packages/{ns}/{name}/1.0.0/kpm", headers=HTML)).status == 200
        assert (await client.get(f"/helm/{ns}/index.yaml")).status == 200


async def test_a_missing_package_page_is_an_html_404(client):
    resp = await client.get("/ui/packages/nobody/nothing", headers=HTML)
    assert resp.status == 404 and resp.content_type == "text/html"
    assert resp.headers["Cache-Control"] == "private"


def _csrf(text: str) -> str:
    found = re.search(r'name="csrf" value="([^"]+)"', text)
    assert found, text[:500]
    return found.group(1)


async def _login(c, user: str = "alice", password: str | None = None):
    form = await c.get("/ui/login", headers=HTML)
    token = _csrf(await form.text())
    return await c.post("/ui/login", data={"csrf": token, "username": user, "password": password or USERS[user],
                                           "next": "/ui/packages"}, allow_redirects=False)


async def test_the_login_cookie_is_httponly_strict_and_opens_private_packages(auth_client):
    c = auth_client
    ns, name = unique()
    basic = {"Authorization": "Basic " + base64.b64encode(b"alice:alice-pw-1").decode()}
    assert (await c.post(f"{API}/{ns}/{name}", json=body(kpm()), headers=basic)).status == 200
    anonymous = await c.get(f"/ui/packages/{ns}/{name}", headers=HTML)
    assert anonymous.status == 401 and f"<h1>{ns}/{name}</h1>" not in await anonymous.text()
    resp = await _login(c)
    assert resp.status == 303 and resp.headers["Location"] == "/ui/packages"
    morsel = resp.cookies[SESSION_COOKIE]
    assert morsel["httponly"] and morsel["samesite"] == "Strict" and morsel["path"] == "/"
    assert not morsel["secure"]  # plain HTTP here; over HTTPS the cookie is Secure (request.secure)
    assert "alice-pw-1" not in morsel.value
    page = await c.get(f"/ui/packages/{ns}/{name}", headers=HTML)
    assert page.status == 200 and "Signed in as" in await page.text()
    for home in ("/", "/cnr", "/cnr/"):  # the home page, wherever a browser finds it
        assert "Signed in as" in await (await c.get(home, headers=HTML)).text(), home
    # The cookie stands for nobody on the API: writes need Authorization, whatever the browser holds.
    assert (await c.get(f"{API}/{ns}/{name}")).status == 401


async def test_a_tampered_or_foreign_cookie_is_anonymous(auth_client):
    c = auth_client
    resp = await _login(c)
    value = resp.cookies[SESSION_COOKIE].value
    assert (await c.get("/ui/packages", headers=HTML)).status == 200  # the cookie as issued opens the catalog
    c.session.cookie_jar.clear()
    c.session.cookie_jar.update_cookies({SESSION_COOKIE: value}, c.make_url("/"))
    assert (await c.get("/ui/packages", headers=HTML)).status == 200  # set this way, the cookie is sent
    for bad in (value[:-4] + ("AAAA" if not value.endswith("AAAA") else "BBBB"), "cnroci1.garbage", "x"):
        c.session.cookie_jar.clear()
        c.session.cookie_jar.update_cookies({SESSION_COOKIE: bad}, c.make_url("/"))
        page = await c.get("/ui/packages", headers=HTML)
        assert page.status == 401 and "Signed in as" not in await page.text()


async def test_a_wrong_password_is_refused_with_the_form_again(auth_client):
    resp = await _login(auth_client, "alice", "wrong")
    assert resp.status == 401 and SESSION_COOKIE not in resp.cookies


async def test_login_and_logout_refuse_a_missing_or_wrong_csrf_token(auth_client):
    c = auth_client
    await c.get("/ui/login", headers=HTML)  # sets the CSRF cookie
    assert c.session.cookie_jar.filter_cookies(c.make_url("/")).get(CSRF_COOKIE) is not None
    for data in ({"username": "alice", "password": USERS["alice"]},
                 {"csrf": "x" * 43, "username": "alice", "password": USERS["alice"]}):
        resp = await c.post("/ui/login", data=data, allow_redirects=False)
        assert resp.status == 403 and SESSION_COOKIE not in resp.cookies
    token = _csrf(await (await c.get("/ui/login", headers=HTML)).text())
    foreign = await c.post("/ui/login", data={"csrf": token, "username": "alice", "password": USERS["alice"]},
                           headers={"Origin": "https://evil.example"}, allow_redirects=False)
    assert foreign.status == 403
    assert (await _login(c)).status == 303
    assert (await c.post("/ui/logout", data={"csrf": "nope"}, allow_redirects=False)).status == 403
    out = await c.post("/ui/logout", data={"csrf": token}, allow_redirects=False)
    assert out.status == 303
    assert (await c.get("/ui/packages", headers=HTML)).status == 401


async def test_the_browser_basic_prompt_sets_the_cookie(auth_client):
    c = auth_client
    prompt = await c.get("/ui/login/basic", headers=HTML, allow_redirects=False)
    assert prompt.status == 401 and prompt.headers["WWW-Authenticate"].startswith("Basic")
    basic = {"Authorization": "Basic " + base64.b64encode(b"bob:bob-pw-2").decode()}
    resp = await c.get("/ui/login/basic", headers={**HTML, **basic}, allow_redirects=False)
    assert resp.status == 303 and SESSION_COOKIE in resp.cookies
