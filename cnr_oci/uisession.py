"""The package browser's login cookie and CSRF token: what a browser carries instead of a header.

The session cookie holds a cnr-oci login token (auth.TokenCodec: Fernet, so the password inside is
encrypted and authenticated, and the token expires with --token-ttl). It is HttpOnly, SameSite=Strict,
Path=/, and Secure over HTTPS. It stands for an identity only on reads of the browser's own pages
(GET and HEAD of /, /cnr and /ui/...), never on the API, so no other site can make a browser write with it.
Forms that change something (login, logout) carry a CSRF token that must equal the CSRF cookie's
(double submit; the cookie is SameSite=Strict too), and a foreign Origin is refused.
"""

from __future__ import annotations

import hmac
import secrets

from aiohttp import web

from cnr_oci import errors
from cnr_oci.auth import Credentials, TokenCodec

SESSION_COOKIE = "cnroci_session"
CSRF_COOKIE = "cnroci_csrf"
CSRF_FIELD = "csrf"
NEW_CSRF = web.RequestKey("new_csrf", str)
HOME_PATHS = frozenset({"/", "/cnr", "/cnr/"})  # the home page, for browsers


def cookie_applies(request: web.Request) -> bool:
    """Whether the session cookie may stand for the caller on this request."""
    return request.method in ("GET", "HEAD") and (request.path in HOME_PATHS or request.path.startswith("/ui/"))


def cookie_identity(request: web.Request, codec: TokenCodec) -> Credentials | None:
    """The identity of the session cookie; an altered, foreign or expired cookie is anonymous."""
    token = request.cookies.get(SESSION_COOKIE)
    if not token:
        return None
    try:
        return codec.open(token)
    except errors.Unauthorized:
        return None


def logged_in(request: web.Request) -> bool:
    return bool(request.cookies.get(SESSION_COOKIE))


def _flags(request: web.Request) -> dict[str, bool | str]:
    return {"httponly": True, "samesite": "Strict", "secure": request.secure, "path": "/"}


def set_session(request: web.Request, resp: web.StreamResponse, codec: TokenCodec, creds: Credentials | None) -> None:
    resp.set_cookie(SESSION_COOKIE, codec.issue(creds), max_age=codec.ttl, **_flags(request))  # type: ignore[arg-type]


def clear_session(request: web.Request, resp: web.StreamResponse) -> None:
    resp.del_cookie(SESSION_COOKIE, path="/", secure=request.secure, httponly=True, samesite="Strict")


def csrf_token(request: web.Request) -> str:
    """The CSRF token a form carries: the CSRF cookie's, or a new one (keep_csrf sets its cookie)."""
    token = request.cookies.get(CSRF_COOKIE, "")
    if len(token) < 32:
        token = request.get(NEW_CSRF) or secrets.token_urlsafe(32)
        request[NEW_CSRF] = token
    return token


def keep_csrf(request: web.Request, resp: web.StreamResponse) -> None:
    """Set the CSRF cookie when this request made a new token."""
    token = request.get(NEW_CSRF)
    if token:
        resp.set_cookie(CSRF_COOKIE, token, **_flags(request))  # type: ignore[arg-type]


def check_csrf(request: web.Request, form_token: object) -> None:
    """Forbidden unless the form's token equals the CSRF cookie and the Origin, if sent, is this host."""
    cookie = request.cookies.get(CSRF_COOKIE, "")
    origin = request.headers.get("Origin")
    if origin is not None and origin not in (f"{request.scheme}://{request.host}", "null"):
        raise errors.Forbidden("the form was posted from another site", {"origin": origin[:100]})
    if not (isinstance(form_token, str) and len(cookie) >= 32 and hmac.compare_digest(form_token, cookie)):
        raise errors.Forbidden("the form's CSRF token is missing or wrong; reload the page and try again")
