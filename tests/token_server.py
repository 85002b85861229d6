"""A small registry token server (the distribution token spec) for the token-mode tests.

It issues RS256 JWTs with an x5c header, signed by a key whose certificate the registry
trusts (auth.token.rootcertbundle). ACLs are by repository prefix.
"""

from __future__ import annotations

import base64
import datetime as dt
import fnmatch
import secrets
import time
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace

import jwt
from aiohttp import web
from cryptography.hazmat.primitives import serialization

from cnr_oci.embedded import free_port

SERVICE = "test-registry"
ISSUER = "test-issuer"
# The users of the token-mode tests and what each may do (repository glob -> actions): carol has no rights.
USERS = {"alice": "alice-pw-1", "admin": "admin-pw-2", "carol": "carol-pw-3"}
ACL = {
    "alice": {"a*/*": {"pull", "push"}, "b*/*": {"pull"}},
    "admin": {"*": {"pull", "push", "delete"}},
    "carol": {},
}


def basic(user: str, password: str | None = None, scheme: str = "Basic") -> dict[str, str]:
    """An Authorization header for one of USERS (or any user and password)."""
    raw = f"{user}:{password if password is not None else USERS[user]}".encode()
    return {"Authorization": f"{scheme} {base64.b64encode(raw).decode()}"}


@dataclass
class TokenServer:
    key: object
    cert: object
    users: dict[str, str]
    acl: dict[str, dict[str, set[str]]]  # user -> repository glob -> actions
    answer_field: str = "token"
    lifetime: int = 300
    requests: list[tuple[str, tuple[str, ...]]] = field(default_factory=list)
    refresh_tokens: dict[str, str] = field(default_factory=dict)  # refresh token -> user
    grants: list[dict[str, str]] = field(default_factory=list)  # the forms of OAuth2 POSTs

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/token", self.token)
        app.router.add_post("/token", self.oauth)
        return app

    def _user(self, request: web.Request) -> str | None:
        header = request.headers.get("Authorization", "")
        if not header:
            return None
        scheme, _, value = header.partition(" ")
        user, _, password = base64.b64decode(value).decode().partition(":")
        if scheme.lower() != "basic" or self.users.get(user) != password:
            raise web.HTTPUnauthorized()
        return user

    def _granted(self, user: str | None, scope: str) -> dict[str, object] | None:
        kind, _, rest = scope.partition(":")
        name, _, actions = rest.rpartition(":")
        if kind == "registry" and user is not None:
            return {"type": kind, "name": name, "actions": ["*"]}
        allowed: set[str] = set()
        for pattern, acts in self.acl.get(user or "", {}).items():
            if fnmatch.fnmatch(name, pattern):
                allowed |= acts
        wanted = [a for a in actions.split(",") if a in allowed]
        return {"type": kind, "name": name, "actions": wanted}

    async def token(self, request: web.Request) -> web.Response:
        user = self._user(request)
        scopes = tuple(request.query.getall("scope", []))
        return self._issue(user, scopes, request.query.get("service", SERVICE), self.answer_field)

    async def oauth(self, request: web.Request) -> web.Response:
        """The OAuth2 refresh-token grant (distribution docs/spec/auth/oauth.md); no other grant."""
        form = {k: str(v) for k, v in (await request.post()).items()}
        self.grants.append(form)
        if form.get("grant_type") != "refresh_token" or not form.get("client_id") or not form.get("service"):
            raise web.HTTPBadRequest()
        user = self.refresh_tokens.get(form.get("refresh_token", ""))
        if user is None:
            raise web.HTTPUnauthorized()
        return self._issue(user, tuple(form.get("scope", "").split()), form["service"], "access_token")

    def _issue(self, user: str | None, scopes: tuple[str, ...], service: str, answer_field: str) -> web.Response:
        self.requests.append((user or "", scopes))
        now = int(time.time())
        access = [g for s in scopes if (g := self._granted(user, s)) is not None]
        der = self.cert.public_bytes(serialization.Encoding.DER)  # type: ignore[attr-defined]
        claims = {"iss": ISSUER, "sub": user or "", "aud": service,
                  "exp": now + self.lifetime, "nbf": now - 10, "iat": now, "jti": secrets.token_hex(8),
                  "access": access}
        token = jwt.encode(claims, self.key, algorithm="RS256",  # type: ignore[arg-type]
                           headers={"x5c": [base64.b64encode(der).decode()]})
        return web.json_response({answer_field: token, "expires_in": self.lifetime,
                                  "issued_at": dt.datetime.now(dt.UTC).isoformat()})


def token_config(realm: str, rootcert: str) -> str:
    return f"""auth:
  token:
    realm: {realm}
    service: {SERVICE}
    issuer: {ISSUER}
    rootcertbundle: {rootcert}
"""


def start_token_registry(root: Path) -> SimpleNamespace:
    """A real registry trusting a token server that is yet to be started on ``port``."""
    from tests.certs import self_signed
    from tests.conftest import start_registry

    cert_path, _, key, cert = self_signed(root / "certs", "token-signer")
    port = free_port()
    reg = start_registry(root, extra_config=token_config(f"http://127.0.0.1:{port}/token", str(cert_path)))
    return SimpleNamespace(registry=reg, port=port, key=key, cert=cert)
