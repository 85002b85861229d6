"""The cnr-oci command line. Precedence: flag, then CNR_OCI_<NAME>, then default."""

from __future__ import annotations

import argparse
import dataclasses
import getpass
import ipaddress
import logging
import os
import re
import ssl
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import fields
from typing import Any

from yarl import URL

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


def _at_least(low: float, convert: Callable[[str], Any] = int, high: float | None = None) -> Callable[[str], Any]:
    """A converter that refuses values below ``low`` (or above ``high``)."""
    def check(value: str) -> Any:
        n = convert(value)
        if n < low or (high is not None and n > high):
            raise argparse.ArgumentTypeError(
                f"{value!r} is out of range: at least {low:g}" + (f" and at most {high:g}" if high is not None else ""))
        return n
    return check


def _log_level(value: str) -> str:
    if value.lower() not in ("debug", "info", "warning", "error"):
        raise argparse.ArgumentTypeError(f"expected debug, info, warning or error, not {value!r}")
    return value.lower()


def _log_format(value: str) -> str:
    if value.lower() not in ("text", "json"):
        raise argparse.ArgumentTypeError(f"expected text or json, not {value!r}")
    return value.lower()


def _origins(value: str) -> tuple[str, ...]:
    return tuple(o.strip() for o in value.split(",") if o.strip())


def _upstream(value: str) -> str:
    if not re.match(r"^https?://[^/]+", value):
        raise argparse.ArgumentTypeError("--upstream must be an http:// or https:// URL")
    try:
        url = URL(value)
    except ValueError as exc:
        raise argparse.ArgumentTypeError("--upstream is not a valid URL") from exc
    if url.user is not None or url.password is not None or "@" in (url.raw_authority or ""):
        # Every caller, anonymous or with a wrong password, would act as that user.
        raise argparse.ArgumentTypeError(
            "credentials in the --upstream URL are refused: every caller would act as that user. "
            "Give cnr-oci its own credentials with --registry-username/--registry-password "
            "(used only with --anonymous-read / --service-write)"
        )
    return value.rstrip("/")


# (flag, settings field, parser, help)
FLAGS: list[tuple[str, str, Callable[[str], Any], str]] = [
    ("--host", "host", str, "address to listen on (default 127.0.0.1)"),
    ("--port", "port", _at_least(1, int, 65535), "port to listen on (default 5000)"),
    ("--upstream", "upstream", _upstream,
     "OCI registry URL, http:// or https://; without it an embedded docker-registry is started"),
    ("--ca-file", "ca_file", str, "CA bundle for TLS to the upstream registry"),
    ("--upstream-timeout", "upstream_timeout", _at_least(0, float),
     "seconds one registry call may take, retries included (default 10; 0: no limit)"),
    ("--upstream-min-rate", "upstream_min_rate", parse_size,
     "a blob stream from the registry slower than this many bytes/s over 10 s is cut off "
     "(default 16KiB; 0: no limit)"),
    ("--repository-prefix", "repository_prefix", str,
     "prefix of every OCI repository, e.g. a Harbor project (default none)"),
    ("--data-dir", "data_dir", str, "data directory of the embedded registry (default ./data)"),
    ("--max-body-size", "max_body_size", _at_least(1, parse_size), "largest request body (default 64MiB)"),
    ("--max-concurrent-pushes", "max_concurrent_pushes", _at_least(1),
     "push bodies read and decoded at once; more wait up to 10 s, then get 503 (default 4)"),
    ("--log-level", "log_level", _log_level, "debug, info, warning or error (default info)"),
    ("--token-secret", "token_secret", str,
     "secret for login tokens; default: generated once into <data-dir>/token-secret"),
    ("--token-ttl", "token_ttl", _at_least(1), "lifetime of login tokens in seconds (default 43200)"),
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
    ("--cache-ttl", "cache_ttl", _at_least(0, float),
     "seconds tag lists, the catalog and listings are cached (default 5)"),
    ("--insecure-open", "insecure_open", _bool,
     "serve the embedded registry on a non-loopback --host without users (anyone may push and delete)"),
    ("--max-connections", "max_connections", _at_least(1),
     "open client connections per process; idle ones are closed first, then new ones refused (default 1000)"),
    ("--header-timeout", "header_timeout", _at_least(0.1, float),
     "seconds a client has to send a request's line and headers, and for the TLS handshake (default 10)"),
    ("--disable-force-overwrite", "disable_force_overwrite", _bool,
     "the ChartMuseum upload API ignores ?force: an existing chart version or .prov is never replaced"),
    ("--workers", "workers", _at_least(1, int, 64),
     "server processes sharing the port (SO_REUSEPORT); more than 1 needs --redis-url (default 1)"),
    ("--blob-cache-size", "blob_cache_size", parse_size,
     "bytes of small blobs kept in memory, verified, by digest (default 256MiB; 0: no blob cache)"),
    ("--blob-cache-max", "blob_cache_max", parse_size, "the largest blob the blob cache keeps (default 1MiB)"),
    ("--blob-redirect", "blob_redirect", _bool,
     "where the registry redirects a blob GET to storage, answer the client 307 there instead of streaming"),
    ("--log-format", "log_format", _log_format, "text or json: one JSON object per log line (default text)"),
]
SWITCHES = {"anonymous_read", "service_write", "tls_insecure", "insecure_open", "disable_force_overwrite",
            "blob_redirect"}


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
    user = sub.add_parser("user", help="users of the embedded registry (<data-dir>/htpasswd)")
    actions = user.add_subparsers(dest="action", required=True)
    add = actions.add_parser("add", help="add a user, or set a new password")
    delete = actions.add_parser("delete", help="remove a user")
    for p in (add, delete):
        p.add_argument("name")
        p.add_argument("--data-dir", dest="data_dir", default=None,
                       help=f"data directory (default ./data); env {env_name('--data-dir')}")
    add.add_argument("--password-stdin", action="store_true", help="read the password from stdin")
    from cnr_oci import migratecli

    migratecli.add_parser(sub, FLAGS, SWITCHES, env_name)
    return parser


def is_loopback(host: str) -> bool:
    """True for localhost and loopback addresses; any other name or address may be reachable."""
    if host.strip().lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip().strip("[]")).is_loopback
    except ValueError:
        return False


def _fail(message: str) -> int:
    print(f"cnr-oci: {message}", file=sys.stderr)
    return 2


def user_command(args: argparse.Namespace, environ: Mapping[str, str]) -> int:
    """``cnr-oci user add|delete NAME``: edit ``<data-dir>/htpasswd`` (bcrypt, mode 0600)."""
    from cnr_oci.embedded import UserError, add_user, delete_user, htpasswd_path

    data_dir = args.data_dir or environ.get(env_name("--data-dir")) or Settings.data_dir
    path = htpasswd_path(data_dir)
    try:
        if args.action == "delete":
            if not delete_user(data_dir, args.name):
                return _fail(f"no user {args.name!r} in {path}")
            print(f"removed {args.name} from {path}", file=sys.stderr)
            return 0
        if args.password_stdin:
            password = sys.stdin.readline().rstrip("\r\n")
        else:
            password = getpass.getpass(f"password for {args.name}: ")
            if getpass.getpass("again: ") != password:
                return _fail("the passwords differ")
        new = add_user(data_dir, args.name, password)
    except (EOFError, KeyboardInterrupt):
        return _fail("no password given")
    except UserError as exc:
        return _fail(str(exc))
    except OSError as exc:
        return _fail(f"{path}: {exc}")
    print(f"{'added' if new else 'changed the password of'} {args.name} in {path}"
          " (a running cnr-oci serve sees it within a second)", file=sys.stderr)
    return 0


def open_registry_refusal(settings: Settings) -> str | None:
    """Why serve must not start: the embedded registry would be open for writes beyond loopback."""
    from cnr_oci.embedded import has_users, htpasswd_path

    if settings.upstream or is_loopback(settings.host) or settings.insecure_open:
        return None
    if has_users(htpasswd_path(settings.data_dir)):
        return None
    return (
        f"refusing to serve the embedded registry on {settings.host} without users: anyone could push "
        f"and delete. Add a user with `cnr-oci user add NAME --data-dir {settings.data_dir}`, or pass "
        "--insecure-open (CNR_OCI_INSECURE_OPEN=true) to serve it open on purpose"
    )


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
                print(f"cnr-oci: {flag} / {env_name(flag)}: {exc}", file=sys.stderr)
                raise SystemExit(2) from exc
    return Settings(**values)


def main(argv: Sequence[str] | None = None, environ: Mapping[str, str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    environ = os.environ if environ is None else environ
    if args.command == "user":
        return user_command(args, environ)
    settings = settings_from(args, environ)
    from cnr_oci import accesslog

    accesslog.configure(settings.log_level, settings.log_format)
    if args.command == "migrate":
        from cnr_oci import migratecli

        return migratecli.main(args, settings, environ)
    from cnr_oci import server
    from cnr_oci.app import create_app
    from cnr_oci.auth import SecretError
    from cnr_oci.embedded import RegistryNotInstalled, RegistryStartFailed

    refusal = open_registry_refusal(settings)
    if refusal:
        return _fail(refusal)
    if settings.insecure_open and open_registry_refusal(dataclasses.replace(settings, insecure_open=False)):
        logging.getLogger("cnr_oci").warning(
            "--insecure-open: the embedded registry is open on %s; anyone may push and delete", settings.host)
    if settings.workers > 1 and not settings.redis_url:
        return _fail("--workers above 1 needs --redis-url: the workers share package locks and drop "
                     "each other's caches through Redis")
    try:
        listener = server.tls_listener(settings.tls_cert, settings.tls_key)
    except ValueError as exc:
        return _fail(str(exc))
    except (OSError, ssl.SSLError) as exc:
        return _fail(f"--tls-cert / --tls-key: {exc}")
    limits = server.Limits(max_connections=settings.max_connections, header_timeout=settings.header_timeout)
    try:
        if settings.workers > 1:
            from cnr_oci import workers

            return workers.run(settings, limits)
        server.run(create_app(settings), host=settings.host, port=settings.port, ssl_context=listener,
                   limits=limits, announce=lambda msg: logging.getLogger("cnr_oci").info("%s", msg.strip()))
    except (RegistryNotInstalled, RegistryStartFailed, SecretError) as exc:
        return _fail(str(exc))
    except OSError as exc:  # the port is taken, the address is not ours, the data dir is not writable
        return _fail(f"cannot serve on {settings.host}:{settings.port}: {exc}")
    return 0
