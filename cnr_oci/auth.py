"""Who is calling: CNR login tokens, Basic credentials, and the identity of a request.

The identity travels in a context variable from the server middleware to the registry
client, so every registry request is made as the CNR caller (pass-through identity).
"""

from __future__ import annotations

import base64
import binascii
import contextvars
import functools
import hashlib
import json
import logging
import os
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from cryptography.fernet import Fernet, InvalidToken
from cryptography.hazmat.primitives.kdf.scrypt import Scrypt

from cnr_oci import errors

log = logging.getLogger(__name__)
TOKEN_PREFIX = "cnroci1."
_FERNET_TOKEN = re.compile(r"[A-Za-z0-9_-]+={0,2}")


@dataclass(frozen=True)
class Credentials:
    """A registry username and password, or a refresh token (Docker's ``identitytoken``).

    A refresh token is exchanged at the registry's token endpoint (OAuth2 ``refresh_token``
    grant), never sent as a password. Neither secret appears in repr or logs.
    """

    username: str
    password: str = field(repr=False)
    refresh_token: str | None = field(default=None, repr=False)

    @property
    def key(self) -> str:
        """A stable, non-reversible key for caches (tokens are per identity)."""
        material = f"{self.username}\0{self.password}\0{self.refresh_token or ''}"
        return hashlib.sha256(material.encode()).hexdigest()

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
        body = token.removeprefix(TOKEN_PREFIX)
        # Fernet's base64 decoding ignores what follows the padding: a token with characters added
        # would still open. Only the exact token is accepted.
        if len(body) % 4 or not _FERNET_TOKEN.fullmatch(body):
            raise errors.Unauthorized("the token is invalid or expired; log in again")
        try:
            payload = self._fernet.decrypt_at_time(body.encode(), self.ttl, int(self.clock()))
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


class SecretError(errors.CnrOciError):
    """The login-token secret is unusable: too short, empty, or in a file others can read."""


MIN_SECRET_CHARS = 16
# Replicas must derive the same key from the same string: salt and cost are fixed (README).
KDF_SALT = b"cnr-oci/token-secret/v2"
KDF_N, KDF_R, KDF_P = 2**15, 8, 1


@functools.lru_cache(maxsize=4)
def derive_key(secret: str) -> bytes:
    """A Fernet key from a string secret, through scrypt (about 0.1 s: once per process)."""
    kdf = Scrypt(salt=KDF_SALT, length=32, n=KDF_N, r=KDF_R, p=KDF_P)
    return base64.urlsafe_b64encode(kdf.derive(secret.encode()))


def _key_from(text: str, where: str) -> bytes:
    """A Fernet key as is; any other string of 16 characters or more through the KDF."""
    if not text:
        raise SecretError(f"{where} is empty")
    try:
        Fernet(text.encode())
        return text.encode()
    except ValueError:
        pass
    if len(text) < MIN_SECRET_CHARS:
        raise SecretError(
            f"{where} is shorter than {MIN_SECRET_CHARS} characters; use a long random string, e.g. "
            "python3 -c 'from cryptography.fernet import Fernet; print(Fernet.generate_key().decode())'"
        )
    return derive_key(text)


def load_secret(configured: str | None, data_dir: str) -> bytes:
    """The token secret: configured (a Fernet key, or a string of 16+ characters through scrypt),
    or generated once and kept in ``<data-dir>/token-secret`` (mode 0600).

    Raises:
        SecretError: the secret is too short or empty, or its file is open to other users.
    """
    if configured is not None:
        return _key_from(configured.strip(), "--token-secret / CNR_OCI_TOKEN_SECRET")
    path = Path(data_dir) / "token-secret"
    try:
        if path.exists():
            mode = path.stat().st_mode & 0o777
            if mode & 0o077:
                raise SecretError(
                    f"the token secret file {path} is open to other users (mode {mode:o}); "
                    f"run: chmod 600 {path}"
                )
            return _key_from(path.read_text().strip(), f"the token secret file {path}")
        path.parent.mkdir(parents=True, exist_ok=True)
        secret = Fernet.generate_key()
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(secret)
    except (OSError, UnicodeDecodeError) as exc:
        raise SecretError(f"the token secret file {path}: {exc}") from exc
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
    found = docker.auth.resolve_authconfig(config, registry_host) or {}
    user = found.get("Username") or found.get("username")
    identity_token = found.get("IdentityToken")
    if identity_token:
        # A refresh token for the registry's OAuth2 endpoint, not a password (docker login
        # stores the user as "<token>", or none at all).
        return Credentials(str(user or "<token>"), "", refresh_token=str(identity_token))
    if not user:
        log.warning("no credentials for %s in the Docker config %s", registry_host, docker_config)
        return None
    secret = found.get("Password") or found.get("password") or ""
    return Credentials(str(user), str(secret))
