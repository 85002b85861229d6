"""`cnr-oci migrate`: its flags, the target it opens, progress on a terminal, the report and exit code."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import re
import signal
import sys
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiohttp

from cnr_oci.app import Backend, open_backend, start_embedded
from cnr_oci.auth import IDENTITY
from cnr_oci.cnrsource import MAX_BLOB, CnrSource, SourceError, scrub
from cnr_oci.embedded import RegistryNotInstalled, RegistryStartFailed
from cnr_oci.errors import CnrOciError
from cnr_oci.metrics import Metrics
from cnr_oci.migrate import Migration
from cnr_oci.migratereport import Outcome, Progress, Report
from cnr_oci.settings import Settings
from cnr_oci.upstream import RegistryError

log = logging.getLogger("cnr_oci.migrate")
# The server's flags that name the target registry and cnr-oci's credentials for it.
TARGET_FLAGS = ("--upstream", "--ca-file", "--upstream-timeout", "--upstream-min-rate", "--repository-prefix",
                "--data-dir", "--registry-username", "--registry-password", "--docker-config", "--tls-insecure",
                "--redis-url", "--log-level")
_PACKAGE = re.compile(r"^[^/\s]+/[^/\s]+$")


def _credentials(value: str) -> tuple[str, str]:
    user, sep, password = value.partition(":")
    if not sep or not user:
        raise argparse.ArgumentTypeError("expected USER:PASSWORD")
    return user, password


def _size(value: str) -> int:
    m = re.fullmatch(r"(\d+)([kKmMgG]?)(?:i?B)?", value)
    if not m or int(m.group(1)) < 1:
        raise argparse.ArgumentTypeError("expected a size in bytes, such as 4294967296 or 4G")
    unit: int = 1024 ** " kmg".index(str(m.group(2)).lower() or " ")
    return int(m.group(1)) * unit


def _package(value: str) -> str:
    if not _PACKAGE.match(value):
        raise argparse.ArgumentTypeError(f"expected NAMESPACE/NAME, not {value!r}")
    return value


def _source_url(value: str) -> str:
    if not re.match(r"^https?://[^/]+", value):
        raise argparse.ArgumentTypeError("--from must be an http:// or https:// URL")
    if "@" in value.split("/")[2]:  # the URL is printed and reported: credentials go in their own flags
        raise argparse.ArgumentTypeError("--from takes no USER:PASSWORD@; use --from-basic or --from-login")
    return value.rstrip("/")


def add_parser(sub: Any, flags: list[tuple[str, str, Callable[[str], Any], str]], switches: set[str],
               env_name: Callable[[str], str]) -> None:
    p = sub.add_parser("migrate", help="copy every package of a CNR server (appr, Quay, cnr-oci) into the registry",
                       description="Copy a CNR registry into the OCI registry the server flags name. Exit code 0: "
                                   "everything moved; 1: some releases failed or conflict (the report names them); "
                                   "2: usage errors.")
    p.add_argument("--from", dest="source", required=True, type=_source_url, help="the source CNR server's URL")
    p.add_argument("--from-prefix", default="/cnr", help="the source's API prefix (default /cnr; '' for /api/v1)")
    p.add_argument("--namespace", action="append", default=[], help="migrate this namespace (repeatable)")
    p.add_argument("--package", action="append", default=[], type=_package,
                   help="migrate this NAMESPACE/NAME (repeatable; for sources that do not list everything)")
    auth = p.add_mutually_exclusive_group()
    auth.add_argument("--from-token", help="a token for the source (sent as Authorization)")
    auth.add_argument("--from-login", type=_credentials, help="USER:PASSWORD, exchanged for a token (E3 login)")
    auth.add_argument("--from-basic", type=_credentials, help="USER:PASSWORD sent as HTTP Basic (Quay)")
    p.add_argument("--jobs", type=int, default=4, help="releases transferred at once (default 4)")
    p.add_argument("--force", action="store_true", help="overwrite releases the target holds with other bytes")
    p.add_argument("--dry-run", action="store_true", help="print the plan; write nothing")
    p.add_argument("--report", help="write a JSON report of every release and channel to this file")
    p.add_argument("--max-blob-size", type=_size, default=MAX_BLOB,
                   help="fail a release whose blob is larger, without reading the rest (bytes, or with K, M, G; "
                        "default 1G)")
    p.add_argument("--workdir", help="where blobs are spooled while they move (default: the system's temp dir)")
    p.add_argument("--progress", choices=("auto", "bars", "lines"), default="auto",
                   help="progress bars (default on a terminal) or log lines")
    for flag, field, _, text in flags:
        if flag in TARGET_FLAGS:
            if field in switches:
                p.add_argument(flag, dest=field, action="store_const", const="true", default=None, help=text)
            else:
                p.add_argument(flag, dest=field, default=None, help=f"{text}; env {env_name(flag)}")


@asynccontextmanager
async def _target(settings: Settings) -> AsyncIterator[str]:
    """The registry to write to: --upstream, or the embedded one under --data-dir (started here)."""
    if settings.upstream:
        yield settings.upstream
        return
    reg = await start_embedded(settings)
    try:
        yield reg.url
    finally:
        await asyncio.to_thread(reg.stop)


def _bars(enabled: bool) -> tuple[Progress, Callable[[], None]]:
    """tqdm bars for releases and bytes on a terminal; else a log line a release (Migration logs them)."""
    if not enabled:
        return Progress(), lambda: None
    from tqdm import tqdm

    bars: dict[str, Any] = {}

    def total(releases: int, nbytes: int) -> None:
        bars["releases"] = tqdm(total=releases, unit="release", desc="releases", position=0, file=sys.stderr)
        bars["bytes"] = tqdm(total=nbytes or None, unit="B", unit_scale=True, desc="bytes", position=1,
                             file=sys.stderr)

    def done(outcome: Outcome) -> None:
        if "releases" in bars:
            bars["releases"].update(1)

    def moved(n: int) -> None:
        if "bytes" in bars:
            bars["bytes"].update(n)

    def close() -> None:
        for bar in bars.values():
            bar.close()

    return Progress(total, done, moved), close


class TargetRefused(CnrOciError):
    """The target registry wants credentials that were not given, or refuses those given."""


async def _check_target(backend: Backend) -> None:
    """Fail before anything moves, not once a release (a registry with users and no credentials)."""
    client = backend.store.client
    if not await client.ping():
        return  # it asks nobody for credentials
    if backend.service_credentials is None:
        raise TargetRefused("the target registry requires credentials: give --registry-username and "
                            "--registry-password, or --docker-config")
    try:
        await client.check_credentials()
    except RegistryError as exc:
        raise TargetRefused(f"the target registry refuses the credentials given: {exc}") from exc




class _Scrub(logging.Filter):
    """Source credentials out of every log line (a source may echo them in an error we log), and
    control characters escaped."""

    def __init__(self, secrets: set[str]) -> None:
        super().__init__()
        self.secrets = secrets

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        cleaned = printable(scrub(message, self.secrets))
        if cleaned != message:
            record.msg, record.args = cleaned, None
        if self.secrets and record.exc_info and record.exc_info[1] is not None:
            record.exc_text = scrub(logging.Formatter().formatException(record.exc_info), self.secrets)
            record.exc_info = None
        return True


async def migrate(args: argparse.Namespace, settings: Settings, holder: dict[str, Migration],
                  secrets: set[str] | None = None) -> Report:
    timeout = aiohttp.ClientTimeout(total=None, connect=settings.connect_timeout, sock_read=settings.read_timeout)
    bars = args.progress == "bars" or (args.progress == "auto" and sys.stderr.isatty())
    progress, close = _bars(bars)
    if bars:  # a log line a release would tear the bars; warnings (failures, conflicts) still show
        log.setLevel(max(log.getEffectiveLevel(), logging.WARNING))
    task = asyncio.current_task()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGHUP):  # as Ctrl-C: stop, clean up, report what was done
        loop.add_signal_handler(sig, lambda: task.cancel() if task else None)
    async with _target(settings) as upstream, open_backend(settings, upstream, Metrics()) as backend, \
            aiohttp.ClientSession(timeout=timeout, auto_decompress=False) as session:
        IDENTITY.set(backend.service_credentials)
        await _check_target(backend)
        source = CnrSource(session, args.source, args.from_prefix)
        if secrets is not None:
            source.secrets = secrets  # the caller's set: it scrubs what it prints with it
        if args.from_token:
            source.use_token(args.from_token)
        elif args.from_basic:
            source.use_basic(*args.from_basic)
        elif args.from_login:
            await source.login(*args.from_login)
        workdir = Path(args.workdir) if args.workdir else None
        run = Migration(backend.store, source, jobs=args.jobs, force=args.force, dry_run=args.dry_run,
                        workdir=workdir, progress=progress, max_blob=args.max_blob_size)
        holder["run"] = run
        try:
            return await run.run(args.namespace, args.package)
        finally:
            close()


def printable(text: str) -> str:
    """Control characters (and other unprintables) escaped: a source's words reach a terminal, where an
    escape sequence could clear the screen, rewrite lines or set the clipboard."""
    return "".join(c if c.isprintable() else c.encode("unicode_escape").decode() for c in text)


def _summary(report: Report, dry_run: bool) -> str:
    counts = ", ".join(f"{n} {status}" for status, n in sorted(report.counts().items())) or "nothing"
    if report.packages_failed:
        counts += f"; {len(report.packages_failed)} package(s) could not be listed"
    lines = [f"{'plan' if dry_run else 'migrated'} from {report.source}: {counts} in {report.seconds:.1f} s"]
    for o in report.releases:
        if o.status not in ("copied", "exists", "overwritten"):
            lines.append(f"  {o.status:8} {o.package} {o.release} ({o.media_type}) {o.bytes} bytes"
                         + (f": {o.detail}" if o.detail else ""))
    for c in report.channels:
        lines.append(f"  channel  {c.package} {c.channel}: {c.status} {c.releases} current {c.current}"
                     + (f": {c.detail}" if c.detail else ""))
    for name, why in report.packages_failed.items():
        lines.append(f"  failed   {name}: {why}")
    return "\n".join(printable(line) for line in lines)


def _usage_problem(args: argparse.Namespace) -> str | None:
    """What makes the command unusable, found before anything moves."""
    if args.jobs < 1 or args.jobs > 64:
        return "--jobs must be between 1 and 64"
    if args.workdir and not Path(args.workdir).is_dir():
        return f"--workdir {args.workdir}: no such directory"
    if args.report:
        parent = Path(args.report).resolve().parent
        if Path(args.report).is_dir() or not parent.is_dir() or not os.access(parent, os.W_OK):
            return f"--report {args.report}: cannot write there"
    return None


def _write_report(path: str | None, report: Report, secrets: set[str], interrupted: bool = False) -> None:
    if path:
        doc = report.as_json()
        if interrupted:
            doc.update(ok=False, interrupted=True)
        Path(path).write_text(scrub(json.dumps(doc, indent=2), secrets))


def main(args: argparse.Namespace, settings: Settings, environ: Mapping[str, str]) -> int:
    problem = _usage_problem(args)
    if problem:
        print(f"cnr-oci migrate: {problem}", file=sys.stderr)
        return 2
    secrets: set[str] = set()
    scrubber = _Scrub(secrets)
    for handler in logging.getLogger().handlers:
        handler.addFilter(scrubber)
    holder: dict[str, Migration] = {}
    try:
        report = asyncio.run(migrate(args, settings, holder, secrets))
    except (KeyboardInterrupt, asyncio.CancelledError):
        partial = holder["run"].report if "run" in holder else None
        print("cnr-oci migrate: interrupted; what finished is in place: run the same command again to go on",
              file=sys.stderr)
        if partial is not None:
            print(scrub(_summary(partial, args.dry_run), secrets))
            _write_report(args.report, partial, secrets, interrupted=True)
        return 130
    except TargetRefused as exc:
        print(f"cnr-oci migrate: {exc}", file=sys.stderr)
        return 2
    except SourceError as exc:  # the login to the source failed
        print(f"cnr-oci migrate: {printable(scrub(str(exc), secrets))}", file=sys.stderr)
        return 1
    except (RegistryNotInstalled, RegistryStartFailed, RegistryError) as exc:  # the target registry
        print(f"cnr-oci migrate: the target registry: {exc}", file=sys.stderr)
        return 1
    print(scrub(_summary(report, args.dry_run), secrets))
    try:
        _write_report(args.report, report, secrets)
    except OSError as exc:
        print(f"cnr-oci migrate: --report: {exc}", file=sys.stderr)
        return 1
    return 0 if report.ok else 1
