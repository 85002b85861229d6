"""The cnr-oci command line. Precedence: flag, then CNR_OCI_<NAME>, then default."""

from __future__ import annotations

import argparse
import logging
import os
import re
import ssl
import sys
from dataclasses import fields
from typing import Any, Callable, Mapping, Sequence

from aiohttp import web

from cnr_oci import __version__
from cnr_oci.settings import Settings

_SIZE = re.compile(r"^\s*(\d+)\s*([kmg]i?b?|b)?\s*$", re.I)
_UNITS = {"": 1, "b": 1, "k": 1024, "m": 1024**2, "g": 1024**3}


def parse_size(value: str) -> int:
    """Bytes from '67108864', '64MiB', '64M' or '512k' (binary units)."""
    m = _SIZE.match(str(value))
    if not m:
        raise argparse.ArgumentTypeError(f"invalid size {value!r}")
    unit = (m.group(2) or "").lower()[:1]
    return int(m.group(1)) * _UNITS[unit]


def _bool(value: str) -> bool:
    if str(value).lower() in ("1", "true", "yes", "on"):
        return True
    if str(value).lower() in ("0", "false", "no", "off", ""):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, not {value!r}")


def _origins(value: str) -> tuple[str, ...]:
    return tuple(o.strip() for o in value.split(",") if o.strip())


def _upstream(value: str) -> str:
    if not re.match(r"^https?://[^/]+", value):
        raise argparse.ArgumentTypeError("--upstream must be an http:// or https:// URL")
    return value.rstrip("/")


# (flag, settings field, parser, help)
FLAGS: list[tuple[str, str, Callable[[str], Any], str]] = [
    ("--host", "host", str, "address to listen on (default 127.0.0.1)"),
    ("--port", "port", int, "port to listen on (default 5000)"),
    ("--upstream", "upstream", _upstream,
     "OCI registry URL, http:// or https://; without it an embedded docker-registry is started"),
    ("--ca-file", "ca_file", str, "CA bundle for TLS to the upstream registry"),
    ("--upstream-timeout", "upstream_timeout", float,
     "seconds one registry call may take, retries included (default 10; 0: no limit)"),
    ("--upstream-min-rate", "upstream_min_rate", parse_size,
     "a blob stream from the registry slower than this many bytes/s over 10 s is cut off "
     "(default 16KiB; 0: no limit)"),
    ("--repository-prefix", "repository_prefix", str,
     "prefix of every OCI repository, e.g. a Harbor project (default none)"),
    ("--data-dir", "data_dir", str, "data directory of the embedded registry (default ./data)"),
    ("--max-body-size", "max_body_size", parse_size, "largest request body (default 64MiB)"),
    ("--log-level", "log_level", str, "debug, info, warning or error (default info)"),
    ("--token-secret", "token_secret", str,
     "secret for login tokens; default: generated once into <data-dir>/token-secret"),
    ("--token-ttl", "token_ttl", int, "lifetime of login tokens in seconds (default 43200)"),
    ("--registry-username", "registry_username", str, "cnr-oci's own registry user (service credentials)"),
    ("--registry-password", "registry_password", str, "cnr-oci's own registry password"),
    ("--docker-config", "docker_config", str,
     "read service credentials for the upstream from this Docker config.json (or its directory)"),
    ("--anonymous-read", "anonymous_read", _bool, "callers without credentials read as the service user"),
    ("--service-write", "service_write", _bool, "callers without credentials write as the service user"),
    ("--tls-insecure", "tls_insecure", _bool, "do not verify the upstream registry's TLS certificate"),
    ("--tls-cert", "tls_cert", str, "serve HTTPS with this certificate (PEM)"),
    ("--tls-key", "tls_key", str, "the private key of --tls-cert (PEM)"),
    ("--cors-origin", "cors_origins", _origins, "comma-separated origins allowed by CORS (default none: off)"),
    ("--redis-url", "redis_url", str, "Redis for package locks shared by several replicas (default none)"),
    ("--cache-ttl", "cache_ttl", float, "seconds tag lists, the catalog and listings are cached (default 5)"),
]
SWITCHES = {"anonymous_read", "service_write", "tls_insecure"}


def env_name(flag: str) -> str:
    """--repository-prefix -> CNR_OCI_REPOSITORY_PREFIX."""
    return "CNR_OCI_" + flag.lstrip("-").upper().replace("-", "_")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="cnr-oci", description="CNR app registry on an OCI registry")
    parser.add_argument("--version", action="version", version=f"cnr-oci {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="run the server")
    for flag, field, _, text in FLAGS:
        if field in SWITCHES:
            serve.add_argument(flag, dest=field, action="store_const", const="true", default=None,
                               help=f"{text}; env {env_name(flag)}=true")
        else:
            serve.add_argument(flag, dest=field, default=None, help=f"{text}; env {env_name(flag)}")
    return parser


def settings_from(args: argparse.Namespace, environ: Mapping[str, str]) -> Settings:
    """Flag, then environment, then the Settings default."""
    values: dict[str, Any] = {}
    known = {f.name for f in fields(Settings)}
    for flag, field, convert, _ in FLAGS:
        assert field in known
        raw = getattr(args, field, None)
        if raw is None:
            raw = environ.get(env_name(flag)) or None
        if raw is not None:
            try:
                values[field] = convert(raw)
            except (ValueError, argparse.ArgumentTypeError) as exc:
                raise SystemExit(f"cnr-oci: {flag} / {env_name(flag)}: {exc}") from exc
    return Settings(**values)


def main(argv: Sequence[str] | None = None, environ: Mapping[str, str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    settings = settings_from(args, os.environ if environ is None else environ)
    logging.basicConfig(
        level=settings.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    from cnr_oci.app import create_app
    from cnr_oci.embedded import RegistryNotInstalled

    listener = None
    if settings.tls_cert:
        listener = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        listener.load_cert_chain(settings.tls_cert, settings.tls_key)
    try:
        web.run_app(create_app(settings), host=settings.host, port=settings.port, ssl_context=listener,
                    print=lambda msg: logging.getLogger("cnr_oci").info("%s", msg.strip()))
    except RegistryNotInstalled as exc:
        print(f"cnr-oci: {exc}", file=sys.stderr)
        return 2
    return 0
