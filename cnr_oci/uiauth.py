"""The package browser's login and logout: a form, the browser's Basic prompt, and the session cookie.

Credentials are checked against the registry (Store.login, as the API's login does); on success the
session cookie (uisession) carries them encrypted. Login and logout are POSTed forms with a CSRF token.
"""

from __future__ import annotations

import urllib.parse
from typing import Any

from aiohttp import web

from cnr_oci import appkeys, archive, bodies, errors, ui, uisession, upstream
from cnr_oci.auth import IDENTITY, Credentials


def _next(value: str | None) -> str:
    """Where to go after logging in or out: a path of the browser only, never another site. Browsers drop
    tabs and newlines from a URL (a tab between two slashes makes "//evil"): no control character is taken."""
    if (value and value.startswith("/") and not value.startswith("//") and "\\" not in value
            and not any(c <= " " or c == "\x7f" for c in value) and not urllib.parse.urlsplit(value).netloc):
        return value
    return "/ui/"


def _form_page(request: web.Request, message: str | None = None, status: int = 200) -> web.Response:
    return ui.render(request, "login.html", {"title": "Log in", "message": message,
                                             "next": _next(request.query.get("next"))}, status)


async def login_form(request: web.Request) -> web.StreamResponse:
    return _form_page(request)


def _logged_in(request: web.Request, creds: Credentials | None, to: str) -> web.HTTPSeeOther:
    resp = web.HTTPSeeOther(to, headers={"Cache-Control": "private"})
    uisession.set_session(request, resp, request.config_dict[appkeys.TOKENS], creds)
    return resp


async def login(request: web.Request) -> web.StreamResponse:
    """POST /ui/login: check the CSRF token and the credentials, then set the session cookie."""
    settings = request.config_dict[appkeys.SETTINGS]
    raw = await bodies.read_body(request, archive.MAX_SMALL_BODY, min_rate=settings.body_min_rate,
                                 grace=settings.body_grace)
    form = urllib.parse.parse_qs(raw.decode("utf-8", errors="replace"), max_num_fields=8)
    field = {k: v[0] for k, v in form.items()}
    uisession.check_csrf(request, field.get(uisession.CSRF_FIELD))
    user, password = field.get("username", ""), field.get("password", "")
    if not user:
        return _form_page(request, "Give a user name.", 422)
    try:
        creds = await request.config_dict[appkeys.STORE].login(user, password)
    except (errors.Unauthorized, upstream.Unauthorized):
        return _form_page(request, "The registry refused this user name or password.", 401)
    raise _logged_in(request, creds, _next(field.get("next")))


async def login_basic(request: web.Request) -> web.StreamResponse:
    """GET /ui/login/basic: the browser's own Basic prompt; its answer becomes the session cookie."""
    ident = IDENTITY.get() if request.headers.get("Authorization", "").lower().startswith("basic ") else None
    if ident is not None:
        try:
            creds = await request.config_dict[appkeys.STORE].login(ident.username, ident.password)
        except (errors.Unauthorized, upstream.Unauthorized):
            creds, ident = None, None
        if ident is not None:
            raise _logged_in(request, creds, "/ui/")
    resp = _form_page(request, "Log in with your browser's prompt, or with this form.", 401)
    resp.headers["WWW-Authenticate"] = 'Basic realm="cnr-oci"'
    return resp


async def logout(request: web.Request) -> web.StreamResponse:
    """POST /ui/logout: drop the session cookie (CSRF-checked)."""
    raw = await bodies.read_body(request, archive.MAX_SMALL_BODY)
    form = urllib.parse.parse_qs(raw.decode("utf-8", errors="replace"), max_num_fields=8)
    uisession.check_csrf(request, form.get(uisession.CSRF_FIELD, [''])[0])
    resp = web.HTTPSeeOther("/ui/", headers={"Cache-Control": "private"})
    uisession.clear_session(request, resp)
    raise resp


def setup_ui(app: web.Application) -> None:
    """Every route of the package browser: the reading pages (ui) and login and logout."""
    ui.setup_ui_routes(app)
    app.router.add_get("/ui/login", login_form)
    app.router.add_post("/ui/login", login)
    app.router.add_get("/ui/login/basic", login_basic)
    app.router.add_post("/ui/logout", logout)


def _page(op_id: str, summary: str, ok: dict[str, str], params: tuple[str, ...] = (),
          method: str = "get") -> dict[str, Any]:
    """One package-browser route as openapi.py describes routes: HTML, root only; errors are HTML pages with
    the API's status (a refused CSRF token: the CNR JSON error)."""
    html: dict[str, Any] = {"text/html": {"schema": {}}}
    responses: dict[str, Any] = {status: {"description": why, **({"content": html} if status == "200" else {
        "headers": {"Location": {"schema": {"type": "string"}}}})} for status, why in ok.items()}
    responses["default"] = {"description": "An error page with the API's status", "content": {
        **html, "application/json": {"schema": {}}}}
    params_ = [{"name": p, "in": "path", "required": True, "schema": {"type": "string"}} for p in params]
    return {method: {"operationId": op_id, "summary": summary, "tags": ["ui"], "responses": responses,
                     **({"parameters": params_} if params_ else {})}}


def openapi_paths() -> dict[str, Any]:
    """The package browser's routes, for the OpenAPI document (kept here, beside the routes)."""
    page, moved = {"200": "An HTML page"}, {"303": "Where to go next, with the session cookie set or cleared"}
    paths = {
        "/ui": _page("ui_root", "Redirects to /ui/", {"302": "To /ui/"}),
        "/ui/": _page("ui_home", "Namespaces", page),
        "/ui/packages": _page("ui_packages", "Packages, with search (?q=, ?namespace=)", page),
        "/ui/packages/{ns}/{name}": _page("ui_package", "A package: releases, media types, channels", page,
                                          ("ns", "name")),
        "/ui/packages/{ns}/{name}/{release}/{media_type}": _page(
            "ui_release", "A release: chart files, metadata, pull commands", page,
            ("ns", "name", "release", "media_type")),
        "/ui/static/{filename}": _page("ui_static", "The stylesheet", {"200": "A static file"}, ("filename",)),
        "/ui/login": {**_page("ui_login_form", "The login form", page),
                      **_page("ui_login", "Log in (a form with a CSRF token)", {**page, **moved}, method="post")},
        "/ui/login/basic": _page("ui_login_basic", "Log in with the browser's Basic prompt", moved),
        "/ui/logout": _page("ui_logout", "Log out (a form with a CSRF token)", moved, method="post"),
    }
    for item in paths.values():
        item["servers"] = [{"url": "/"}]
    return paths
