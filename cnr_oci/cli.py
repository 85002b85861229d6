"""The cnr-oci command line. Precedence: flag, then CNR_OCI_<NAME>, then default."""

from __future__ import annotations

import argparse
import logging
import os
import re
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
    ("--repository-prefix", "repository_prefix", str,
     "prefix of every OCI repository, e.g. a Harbor project (default none)"),
    ("--data-dir", "data_dir", str, "data directory of the embedded registry (default ./data)"),
    ("--max-body-size", "max_body_size", parse_size, "largest request body (default 64MiB)"),
    ("--log-level", "log_level", str, "debug, info, warning or error (default info)"),
]


def env_name(field: str) -> str:
    return "CNR_OCI_" + field.upper()


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="cnr-oci", description="CNR app registry on an OCI registry")
    parser.add_argument("--version", action="version", version=f"cnr-oci {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="run the server")
    for flag, field, _, text in FLAGS:
        serve.add_argument(flag, dest=field, default=None, help=f"{text}; env {env_name(field)}")
    return parser


def settings_from(args: argparse.Namespace, environ: Mapping[str, str]) -> Settings:
    """Flag, then environment, then the Settings default."""
    values: dict[str, Any] = {}
    known = {f.name for f in fields(Settings)}
    for flag, field, convert, _ in FLAGS:
        assert field in known
        raw = getattr(args, field, None)
        if raw is None:
            raw = environ.get(env_name(field)) or None
        if raw is not None:
            try:
                values[field] = convert(raw)
            except (ValueError, argparse.ArgumentTypeError) as exc:
                raise SystemExit(f"cnr-oci: {flag} / {env_name(field)}: {exc}") from exc
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

    try:
        web.run_app(create_app(settings), host=settings.host, port=settings.port,
                    print=lambda msg: logging.getLogger("cnr_oci").info("%s", msg.strip()))
    except RegistryNotInstalled as exc:
        print(f"cnr-oci: {exc}", file=sys.stderr)
        return 2
    return 0
