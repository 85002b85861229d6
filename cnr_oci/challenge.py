"""Answering a registry's WWW-Authenticate challenge: Basic, or a Bearer token per scope.

Tokens are cached by (identity, realm, service, scope) until they expire, so one caller's
token is never sent on another caller's request.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field

import aiohttp
from cachetools import LRUCache

from cnr_oci.auth import Credentials
from cnr_oci.errors import CnrOciError

log = logging.getLogger(__name__)
_PARAM = re.compile(r'(\w+)\s*=\s*(?:"((?:[^"\\]|\\.)*)"|([^\s,]+))')
# The token spec: when expires_in is absent, a token lasts 60 seconds.
DEFAULT_EXPIRY = 60
MARGIN = 5
MAX_ENTRIES = 10_000  # cached tokens (and Basic identities); the least recently used go first
TokenKey = tuple[str, str, str, str]  # (identity, realm, service, scope)


@dataclass(frozen=True)
class Challenge:
    scheme: str
    params: dict[str, str]

    @property
    def scopes(self) -> list[str]:
        return self.params.get("scope", "").split()


def parse_challenge(header: str | None) -> Challenge | None:
    if not header:
        return None
    scheme, _, rest = header.strip().partition(" ")
    params = {m.group(1).lower(): (m.group(2) if m.group(2) is not None else m.group(3)) for m in _PARAM.finditer(rest)}
    return Challenge(scheme.lower(), params)


def scope_for(method: str, path: str) -> str:
    """The scope a registry request needs (distribution's access records)."""
    if path.startswith("/v2/_catalog"):
        return "registry:catalog:*"
    m = re.match(r"^/v2/(.+?)/(?:manifests|blobs|tags)/", path)
    if not m:
        return ""
    if "/blobs/uploads/" in path:  # every upload request, a cancel (DELETE) included, needs push
        return f"repository:{m.group(1)}:pull,push"
    actions = {"GET": "pull", "HEAD": "pull", "DELETE": "delete"}.get(method, "pull,push")
    return f"repository:{m.group(1)}:{actions}"


class TokenRefused(CnrOciError):
    """The token endpoint refused the credentials (401/403)."""


class TokenUnavailable(CnrOciError):
    """The token endpoint could not be reached or answered garbage."""


@dataclass
class _Held:
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    users: int = 0


class Authenticator:
    """Turns challenges into Authorization headers, per identity.

    Tokens live in an LRU of ``max_entries``; a lock per key exists only while someone
    holds or waits for it, so N concurrent requests for one key fetch one token.
    """

    def __init__(self, session: aiohttp.ClientSession, clock: Callable[[], float] = time.monotonic,
                 max_entries: int = MAX_ENTRIES) -> None:
        self._session = session
        self.clock = clock
        self._tokens: LRUCache[TokenKey, tuple[str, float]] = LRUCache(max_entries)
        self._locks: dict[TokenKey, _Held] = {}
        self._bearer: tuple[str, str] | None = None  # (realm, service) learnt from the registry
        self._basic: LRUCache[str, bool] = LRUCache(max_entries)  # identities the registry wants Basic from

    @property
    def sizes(self) -> tuple[int, int, int]:
        """(tokens, locks, Basic identities) held now."""
        return len(self._tokens), len(self._locks), len(self._basic)

    @contextlib.asynccontextmanager
    async def _locked(self, key: TokenKey) -> AsyncIterator[None]:
        held = self._locks.setdefault(key, _Held())
        held.users += 1
        try:
            async with held.lock:
                yield
        finally:
            held.users -= 1
            if not held.users:
                del self._locks[key]

    def cached(self, ident: Credentials | None, scope: str) -> str | None:
        """A header to send up front, so a request needs no 401 round trip."""
        if ident is not None and self._basic.get(ident.key):
            return ident.basic()
        if self._bearer is None:
            return None
        item = self._tokens.get((ident.key if ident else "", *self._bearer, scope))
        if item is not None and item[1] > self.clock():
            return "Bearer " + item[0]
        return None

    async def answer(self, header: str | None, ident: Credentials | None, path_scope: str,
                     refused: str | None = None) -> str | None:
        """The Authorization header that answers a challenge, or None when there is none to give.

        A token another request fetched meanwhile is used, unless it is ``refused`` (the
        header the registry just answered 401 to).

        Raises:
            TokenRefused: the token endpoint refused these credentials.
            TokenUnavailable: the token endpoint failed.
        """
        ch = parse_challenge(header)
        if ch is None:
            return None
        if ch.scheme == "basic":
            if ident is None:
                return None
            self._basic[ident.key] = True
            return ident.basic()
        if ch.scheme != "bearer" or "realm" not in ch.params:
            return None
        realm, service = ch.params["realm"], ch.params.get("service", "")
        self._bearer = (realm, service)
        scope = " ".join(ch.scopes)
        key = (ident.key if ident else "", realm, service, scope)
        async with self._locked(key):
            item = self._tokens.get(key)
            if item is not None and item[1] > self.clock() and "Bearer " + item[0] != refused:
                token, expiry = item
            else:
                token, expiry = await self._fetch(realm, service, ch.scopes, ident)
                self._tokens[key] = (token, expiry)
            if path_scope and path_scope != scope:
                self._tokens[(key[0], realm, service, path_scope)] = (token, expiry)
        return "Bearer " + token

    def forget(self, ident: Credentials | None, scope: str) -> None:
        """Drop a token the registry refused, so the next request fetches a fresh one."""
        if self._bearer is not None:
            self._tokens.pop((ident.key if ident else "", *self._bearer, scope), None)

    async def _fetch(self, realm: str, service: str, scopes: list[str], ident: Credentials | None) -> tuple[str, float]:
        """A token for these scopes: by GET with Basic credentials (or none), or, for an identity
        holding a refresh token (Docker's ``identitytoken``), by the OAuth2 ``refresh_token``
        grant: a form POST to the realm (distribution's docs/spec/auth/oauth.md)."""
        try:
            if ident is not None and ident.refresh_token:
                form = {"grant_type": "refresh_token", "refresh_token": ident.refresh_token,
                        "service": service, "client_id": "cnr-oci"}
                if scopes:
                    form["scope"] = " ".join(scopes)
                request = self._session.post(realm, data=form)
            else:
                params = [("service", service)] if service else []
                params += [("scope", s) for s in scopes]
                headers = {"Authorization": ident.basic()} if ident is not None else {}
                request = self._session.get(realm, params=params, headers=headers)
            async with request as resp:
                if resp.status in (401, 403):
                    raise TokenRefused(f"the token endpoint refused the credentials ({resp.status})")
                if resp.status != 200:
                    raise TokenUnavailable(f"the token endpoint answered {resp.status}")
                doc = await resp.json(content_type=None)
        except (TimeoutError, aiohttp.ClientError, ValueError) as exc:
            raise TokenUnavailable(f"the token endpoint failed: {type(exc).__name__}") from exc
        token = doc.get("token") or doc.get("access_token") if isinstance(doc, dict) else None
        if not isinstance(token, str) or not token:
            raise TokenUnavailable("the token endpoint answered no token")
        try:
            lifetime = int(doc.get("expires_in") or DEFAULT_EXPIRY)
        except (TypeError, ValueError):
            lifetime = DEFAULT_EXPIRY
        return token, self.clock() + max(1, lifetime - MARGIN)
