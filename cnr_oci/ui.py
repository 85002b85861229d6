"""The package browser: server-rendered pages under /ui/ (and / for browsers), read as the caller.

Every page reads through the store as the API does, with the identity the middleware set (a Basic
header, a login token, or the session cookie of uisession). Pages are Jinja2 templates with
autoescaping; they need no JavaScript, answer ``Cache-Control: private`` and forbid scripts by CSP.
Nothing here is under a path a namespace can take: /ui/ is not a CNR route prefix.
"""

from __future__ import annotations

import asyncio
import collections
import html
import json
import shlex
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp_jinja2
import jinja2
from aiohttp import web
from cachetools import LRUCache

from cnr_oci import appkeys, errors, mapping, translate, uisession, upstream
from cnr_oci.auth import IDENTITY, identity_key
from cnr_oci.chartfiles import MAX_CHART_BLOB, ChartFiles, read_chart
from cnr_oci.mapping import Package
from cnr_oci.store import Store

HERE = Path(__file__).resolve().parent
PAGE_SIZE = 100
HEADERS = {
    "Cache-Control": "private",
    "Vary": "Authorization, Cookie",
    "Content-Security-Policy": "default-src 'none'; style-src 'self'; img-src 'self'; form-action 'self'; "
                               "frame-ancestors 'none'; base-uri 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
}
Page = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _store(request: web.Request) -> Store:
    return request.config_dict[appkeys.STORE]


def _base(request: web.Request) -> str:
    return f"{request.scheme}://{request.host}"


def _user(request: web.Request) -> str | None:
    """Who the page is read as, when the caller said (a header or the cookie), not the service account."""
    ident = IDENTITY.get()
    said = "Authorization" in request.headers or uisession.logged_in(request)
    # A dead cookie (tampered, expired) is anonymous, and --anonymous-read then lends the service account.
    service = request.config_dict.get(appkeys.SERVICE_CREDENTIALS)
    return ident.username if ident is not None and said and ident is not service else None


def render(request: web.Request, template: str, context: dict[str, Any], status: int = 200) -> web.Response:
    """A page, with the header, CSRF token and caching headers every page has."""
    ctx = {"user": _user(request), "csrf": uisession.csrf_token(request), "request_path": request.path_qs,
           **context}
    resp = aiohttp_jinja2.render_template(template, request, ctx, status=status)
    resp.headers.update(HEADERS)
    uisession.keep_csrf(request, resp)
    return resp


def page(catalog: bool = False) -> Callable[[Page], Page]:
    """A page handler whose CNR and registry errors become an HTML error page with the same status."""
    def wrap(handler: Page) -> Page:
        async def run(request: web.Request) -> web.StreamResponse:
            try:
                return await handler(request)
            except upstream.RegistryError as exc:
                err = translate.to_cnr(exc, "list_packages" if catalog else handler.__name__, request.match_info)
            except errors.CnrError as exc:
                err = exc
            return render(request, "error.html", {"error": err, "title": f"{err.status} {err.code}"}, err.status)
        run.__name__ = handler.__name__
        return run
    return wrap


# -- / -----------------------------------------------------------------------------------------------


def discovery_page(request: web.Request) -> str:
    """The plain page non-browser clients get at /: appr's discovery reads its appr-package meta tag."""
    base = _base(request)
    content = f"{request.host}/{{name}} {base}/cnr/api/v1/packages/{{name}}/{{version}}/{{media_type}}/pull"
    return (
        "<!DOCTYPE html><html><head><title>cnr-oci</title>"
        f'<meta name="appr-package" content="{html.escape(content)}">'
        "</head><body><h1>cnr-oci</h1><p>A CNR / appr app registry backed by an OCI registry.</p>"
        f'<p>API: <a href="{html.escape(base)}/cnr/api/v1/packages">{html.escape(base)}/cnr/api/v1/packages</a></p>'
        "</body></html>"
    )


def wants_html(request: web.Request) -> bool:
    return "text/html" in request.headers.get("Accept", "")


async def index(request: web.Request) -> web.StreamResponse:
    """/ and /cnr: the home page for browsers, the discovery page (same meta tag) for clients."""
    if wants_html(request):
        resp = await home(request)
        resp.headers["Vary"] = HEADERS["Vary"] + ", Accept"
        return resp
    return web.Response(text=discovery_page(request), content_type="text/html", headers={"Vary": "Accept"})


# -- pages -------------------------------------------------------------------------------------------


@page(catalog=True)
async def home(request: web.Request) -> web.StreamResponse:
    """Namespaces, each with its package count."""
    counts = collections.Counter(p.namespace for p in await _store(request).catalog.packages())
    base = _base(request)
    meta = f"{request.host}/{{name}} {base}/cnr/api/v1/packages/{{name}}/{{version}}/{{media_type}}/pull"
    return render(request, "home.html", {"title": "Namespaces", "namespaces": sorted(counts.items()),
                                         "appr_meta": meta})


@page(catalog=True)
async def packages(request: web.Request) -> web.StreamResponse:
    """Packages, filtered by namespace and a search term, a page at a time."""
    q, ns = request.query.get("q", "").strip()[:200], request.query.get("namespace", "").strip()[:200]
    try:
        offset = max(0, int(request.query.get("offset", "0")))
    except ValueError as exc:
        raise errors.InvalidParameters("offset must be an integer") from exc
    found = await _store(request).catalog.summaries(namespace=ns or None, query=q or None)
    shown = found[offset:offset + PAGE_SIZE]
    more = offset + PAGE_SIZE if len(found) > offset + PAGE_SIZE else None
    title = f"Packages in {ns}" if ns else "Packages"
    return render(request, "packages.html", {"title": title, "q": q, "namespace": ns, "summaries": shown,
                                             "total": len(found), "offset": offset, "more": more})


def _package(request: web.Request) -> Package:
    prefix = request.config_dict[appkeys.SETTINGS].repository_prefix.strip("/")
    return mapping.parse_package(request.match_info["ns"], request.match_info["name"], prefix)


@page()
async def package(request: web.Request) -> web.StreamResponse:
    """A package: every (release, media type) with digest, size and date, and its channels."""
    pkg, store = _package(request), _store(request)
    found, channels = await asyncio.gather(store.manifests(pkg), store.channels.listing(pkg))
    rows = [{"release": e.release, "media_type": e.media_type, "digest": str(e.layer.get("digest", "")),
             "size": e.layer.get("size"), "created": d.created or e.created} for e, d in found]
    return render(request, "package.html", {"title": pkg.full, "pkg": pkg, "rows": rows, "channels": channels})


# Charts already read, by blob digest (content-addressed: the same bytes give the same page parts). A hostile
# README costs seconds of markdown-it; it is paid once, not on every view. The caller still had to read the
# release's manifest (Store.show) before its digest is looked up here.
_CHARTS: LRUCache[str, ChartFiles] = LRUCache(maxsize=32)


async def _chart(store: Store, pkg: Package, digest: str, size: Any) -> ChartFiles:
    """The chart's files, read once per digest (single flight, then the LRU)."""
    found = _CHARTS.get(digest)
    if found is None:
        found = await store.read.once(("chart", identity_key(), store.read.repo(pkg), digest),
                                      lambda: _read_chart(store, pkg, digest, size))
        _CHARTS[digest] = found
    return found


async def _read_chart(store: Store, pkg: Package, digest: str, size: Any) -> ChartFiles:
    """The chart's files, from a blob of bounded size read through the read model (as the caller)."""
    if isinstance(size, int) and size > MAX_CHART_BLOB:
        return ChartFiles(problem=f"the chart is larger than {MAX_CHART_BLOB} bytes: not opened here")
    blob = await store.read.open_blob(pkg, digest)
    parts, total = [], 0
    try:
        async for chunk in blob.chunks():
            total += len(chunk)
            if total > MAX_CHART_BLOB:
                return ChartFiles(problem=f"the chart is larger than {MAX_CHART_BLOB} bytes: not opened here")
            parts.append(chunk)
    finally:
        if hasattr(blob, "close"):
            blob.close()
    return await asyncio.to_thread(read_chart, b"".join(parts))


def commands(request: web.Request, pkg: Package, release: str, media_type: str, chart_name: str | None,
             user: str | None) -> list[tuple[str, str]]:
    """Copy-ready commands that fetch this release, by client; every word shell-quoted (a chart's name,
    the Host header and the user name are the caller's or a pusher's text, pasted into a shell)."""
    q = shlex.quote
    base = _base(request)
    url = f"{base}/cnr/api/v1/packages/{pkg.full}/{release}/{media_type}/pull"
    auth = f" -u {q(user)}" if user else ""
    cmds = [("curl", f"curl -fsSL{auth} -o {q(mapping.filename(pkg, release))} {q(url)}"),
            ("appr", f"appr pull {q(f'{base}/{pkg.full}@{release}')} -t {q(media_type)} --tarball")]
    reg = request.config_dict[appkeys.UPSTREAM].split("://", 1)[-1].rstrip("/")
    repo = pkg.repository(request.config_dict[appkeys.SETTINGS].repository_prefix.strip("/"))
    if media_type == "helm":
        cmds.append(("helm (OCI)", f"helm pull {q(f'oci://{reg}/{repo}')} --version {q(release)}"))
        cmds.append(("helm (repository)", f"helm repo add {q(pkg.namespace)} {q(f'{base}/helm/{pkg.namespace}')} && "
                                          f"helm pull {q(f'{pkg.namespace}/{chart_name or pkg.name}')} "
                                          f"--version {q(release)}"))
    cmds.append(("oras", f"oras pull {q(f'{reg}/{repo}:{mapping.release_to_tag(release)}')}"))
    return cmds


@page()
async def release(request: web.Request) -> web.StreamResponse:
    """One release: its metadata, channels, the chart's files (helm) and the commands that pull it."""
    pkg, store = _package(request), _store(request)
    media_type = mapping.normalize_media_type(request.match_info["media_type"])
    e, d, channels = await store.show(pkg, request.match_info["release"], media_type)
    digest, size = str(e.layer.get("digest", "")), e.layer.get("size")
    chart = await _chart(store, pkg, digest, size) if media_type == "helm" else None
    chart_name = str(chart.chart["name"]) if chart is not None and chart.chart else None
    return render(request, "release.html", {
        "title": f"{pkg.full} {e.release}", "pkg": pkg, "e": e, "digest": digest, "size": size,
        "created": d.created or e.created, "channels": channels, "chart": chart,
        "metadata": json.dumps(d.metadata, indent=2, sort_keys=True) if d.metadata is not None else None,
        "commands": commands(request, pkg, e.release, media_type, chart_name, _user(request)),
    })


async def ui_root(request: web.Request) -> web.StreamResponse:
    raise web.HTTPFound("/ui/")


def setup_ui_routes(app: web.Application) -> None:
    """The templates, the /ui/ reading pages and the stylesheet, on the main application."""
    aiohttp_jinja2.setup(app, loader=jinja2.FileSystemLoader(HERE / "templates"), autoescape=True,
                         undefined=jinja2.StrictUndefined)
    app.router.add_get("/ui", ui_root)
    app.router.add_get("/ui/", home)
    app.router.add_get("/ui/packages", packages)
    app.router.add_get("/ui/packages/{ns}/{name}", package)
    app.router.add_get("/ui/packages/{ns}/{name}/{release}/{media_type}", release)
    app.router.add_static("/ui/static", HERE / "static")
