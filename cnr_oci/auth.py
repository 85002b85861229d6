"""Who is calling: CNR login tokens, Basic credentials, and the identity of a request.

The identity travels in a context variable from the server middleware to the registry
client, so every registry request is made as the CNR caller (pass-through identity).
"""

from __future__ import annotations

import base64
import binascii
import contextvars
import hashlib
import json
import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from cryptography.fernet import Fernet, InvalidToken

from cnr_oci import errors

log = logging.getLogger(__name__)
TOKEN_PREFIX = "cnroci1."


@dataclass(frozen=True)
class Credentials:
    """A registry username and password. The password never appears in repr or logs."""

    username: str
    password: str = field(repr=False)

    @property
    def key(self) -> str:
        """A stable, non-reversible key for caches (tokens are per identity)."""
        return hashlib.sha256(f"{self.username}\0{self.password}".encode()).hexdigest()

    def basic(self) -> str:
        return "Basic " + base64.b64encode(f"{self.username}:{self.password}".encode()).decode()


IDENTITY: contextvars.ContextVar[Credentials | None] = contextvars.ContextVar("cnr_oci_identity", default=None)


def identity_key() -> str:
    ident = IDENTITY.get()
    return ident.key if ident is not None else ""


class TokenCodec:
    """Login tokens: Fernet (AES-128-CBC + HMAC-SHA256) over the credentials, with a timestamp.

    Fernet is authenticated encryption with a built-in, clock-injectable expiry check
    (``encrypt_at_time``/``decrypt_at_time``), so an altered or expired token is refused.
    """

    def __init__(self, secret: bytes, ttl: int, clock: Callable[[], float] = time.time) -> None:
        self._fernet = Fernet(secret)
        self.ttl = ttl
        self.clock = clock

    def issue(self, creds: Credentials | None) -> str:
        """A token carrying the credentials, or none (anonymous) when creds is None."""
        doc = {"u": creds.username, "p": creds.password} if creds is not None else {"u": None}
        payload = json.dumps(doc).encode()
        return TOKEN_PREFIX + self._fernet.encrypt_at_time(payload, int(self.clock())).decode()

    def open(self, token: str) -> Credentials | None:
        """Raises Unauthorized when the token is altered, foreign or expired."""
        try:
            payload = self._fernet.decrypt_at_time(
                token.removeprefix(TOKEN_PREFIX).encode(), self.ttl, int(self.clock())
            )
            data = json.loads(payload)
            if data["u"] is None:
                return None
            return Credentials(str(data["u"]), str(data["p"]))
        except (InvalidToken, ValueError, KeyError, TypeError) as exc:
            raise errors.Unauthorized("the token is invalid or expired; log in again") from exc


def parse_authorization(value: str | None, codec: TokenCodec) -> Credentials | None:
    """Credentials from an Authorization header.

    Accepts a cnr-oci login token (bare, as the appr client sends it, or as ``Bearer``),
    ``Basic <base64(user:pass)>``, and Quay's lowercase ``basic <base64(user:pass)>``
    (operator-courier, OLM).
    """
    if not value or not value.strip():
        return None
    value = value.strip()
    scheme, _, rest = value.partition(" ")
    if scheme.lower() == "basic" and rest:
        try:
            user, sep, password = base64.b64decode(rest.strip(), validate=True).decode().partition(":")
        except (binascii.Error, ValueError) as exc:
            raise errors.Unauthorized("malformed Basic credentials") from exc
        if not sep or not user:
            raise errors.Unauthorized("malformed Basic credentials")
        return Credentials(user, password)
    if scheme.lower() == "bearer" and rest:
        value = rest.strip()
    if value.startswith(TOKEN_PREFIX):
        return codec.open(value)
    if value == "anonymous":
        return None
    raise errors.Unauthorized("unrecognised Authorization header; log in to get a token")


def load_secret(configured: str | None, data_dir: str) -> bytes:
    """The token secret: configured (a Fernet key, or any string, hashed into one), or
    generated once and kept in the data directory."""
    if configured:
        try:
            Fernet(configured.encode())
            return configured.encode()
        except ValueError:
            return base64.urlsafe_b64encode(hashlib.sha256(configured.encode()).digest())
    path = Path(data_dir) / "token-secret"
    if path.is_file():
        return path.read_bytes().strip()
    path.parent.mkdir(parents=True, exist_ok=True)
    secret = Fernet.generate_key()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(secret)
    log.warning(
        "generated a login-token secret in %s; several replicas need one shared secret "
        "(--token-secret / CNR_OCI_TOKEN_SECRET)", path,
    )
    return secret


def service_credentials(username: str | None, password: str | None, docker_config: str | None,
                        registry_host: str) -> Credentials | None:
    """cnr-oci's own registry credentials: from settings, else from a Docker config.json
    (credential helpers included) through the docker SDK's auth helpers."""
    if username:
        return Credentials(username, password or "")
    if not docker_config:
        return None
    import docker.auth  # type: ignore[import-untyped]

    path = Path(docker_config)
    config = docker.auth.load_config(str(path / "config.json") if path.is_dir() else str(path))
    found = docker.auth.resolve_authconfig(config, registry_host)
    if not found or not found.get("Username" if "Username" in found else "username"):
        log.warning("no credentials for %s in the Docker config %s", registry_host, docker_config)
        return None
    user = found.get("Username") or found.get("username")
    secret = found.get("Password") or found.get("password") or found.get("IdentityToken") or ""
    return Credentials(str(user), str(secret))

