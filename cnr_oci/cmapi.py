"""ChartMuseum's chart manipulation API over the same store: /helm/api/<ns>/charts (and /api/helm/<ns>/charts,
where `helm cm-push` posts without --context-path=/helm).

Paths, status codes and JSON shapes follow ChartMuseum (helm/chartmuseum, multi-tenant server):
routes from pkg/chartmuseum/server/multitenant/routes.go, answers from handlers.go ({"saved": true} 201,
{"deleted": true} 200, {"error": "..."}), listings and lookups from api.go (getAllCharts with offset/limit,
getChart "chart not found", getChartVersion with "latest", uploadChartPackage 409 "file already exists").
An upload is a CNR push of media type helm to the package <ns>/<chart name>, in helm's layout.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import json
import re
from collections.abc import Awaitable, Callable
from email.parser import BytesHeaderParser
from email.utils import collapse_rfc2231_value
from typing import Any

from aiohttp import web

from cnr_oci import appkeys, archive, errors, mapping, provenance, translate, upstream
from cnr_oci.archive import PushInput
from cnr_oci.helmrepo import Index
from cnr_oci.mapping import Package
from cnr_oci.middleware import CHALLENGE
from cnr_oci.routes import _push_slot, _read_body
from cnr_oci.store import Store

PREFIXES = ("/helm/api", "/api/helm")
# ChartMuseum's form fields (handlers.go: defaultFormField "chart", defaultProvField "prov").
CHART_FIELD, PROV_FIELD = "chart", "prov"
# A cm-push form has one or two parts; a part's headers are a few hundred bytes.
MAX_PARTS = 8
MAX_PART_HEADERS = 8192
Handler = Callable[[web.Request], Awaitable[web.Response]]


def _cm_error(status: int, message: str, headers: dict[str, str] | None = None) -> web.Response:
    """ChartMuseum's error shape (handlers.go: c.JSON(status, gin.H{"error": ...}))."""
    return web.json_response({"error": message}, status=status, headers=headers)


def cm_errors(name: str) -> Callable[[Handler], Handler]:
    """Answer this route's errors in ChartMuseum's shape; registry errors go through the one translation
    table (translate.to_cnr), as ``name`` would be translated on the CNR API."""
    def wrap(handler: Handler) -> Handler:
        @functools.wraps(handler)
        async def run(request: web.Request) -> web.Response:
            try:
                return await handler(request)
            except upstream.RegistryError as exc:
                err = translate.to_cnr(exc, name, request.match_info)
            except errors.CnrError as exc:
                err = exc
            headers = {**(CHALLENGE if err.status == 401 else {}), **err.headers}
            return _cm_error(err.status, err.message, headers)
        return run
    return wrap


def _store(request: web.Request) -> Store:
    return request.config_dict[appkeys.STORE]


def _namespace(request: web.Request) -> str:
    return mapping.parse_package(request.match_info["ns"], "x").namespace


def _package(request: web.Request, name: str) -> Package:
    prefix = request.config_dict[appkeys.SETTINGS].repository_prefix.strip("/")
    return mapping.parse_package(request.match_info["ns"], name, prefix)


async def _index(request: web.Request) -> Index:
    return await _store(request).helm.index(_namespace(request))


async def _json(data: Any, status: int = 200) -> web.Response:
    """Index entries can be many: encoded off the loop."""
    body = await asyncio.to_thread(lambda: json.dumps(data, separators=(",", ":")).encode())
    return web.Response(body=body, status=status, content_type="application/json")


# -- reads (api.go getAllCharts, getChart, getChartVersion) ----------------------------------------------


def _int(request: web.Request, key: str, default: int, least: int, what: str) -> int:
    text = request.query.get(key)
    if text is None:
        return default
    try:
        value = int(text)
    except ValueError:
        value = least - 1
    if value < least:
        raise errors.InvalidUsage(f"{key} is not a valid {what} integer")  # handlers.go's messages
    return value


@cm_errors("cm_charts")
async def all_charts(request: web.Request) -> web.Response:
    """{name: [chart version, ...]}, chart names sorted, paged by offset/limit over the names."""
    offset = _int(request, "offset", 0, 0, "non-negative")
    limit = _int(request, "limit", -1, 1, "positive")
    entries = (await _index(request)).entries
    names = sorted(entries)
    names = names[offset:] if limit == -1 else names[offset:offset + limit]
    return await _json({n: entries[n] for n in names})


@cm_errors("cm_chart")
async def chart(request: web.Request) -> web.Response:
    versions = (await _index(request)).entries.get(request.match_info["name"])
    if not versions:
        raise errors.ResourceNotFound("chart not found")
    return await _json(versions)


def _version(index: Index, name: str, version: str) -> dict[str, Any]:
    """helm's IndexFile.Get as ChartMuseum calls it: an exact version, or "latest": the newest
    version without a pre-release (versions read loosely, as helm does). Version ranges are not supported."""
    versions = index.entries.get(name)
    if not versions:
        raise errors.ResourceNotFound("no chart name found")
    for entry in versions:  # newest first, as helm sorts them
        loose = mapping.helm_version(str(entry.get("version")))
        if entry.get("version") == version or (
                version == "latest" and loose is not None and "-" not in loose.split("+")[0]):
            return entry
    raise errors.ResourceNotFound(f"no chart version found for {name}-{version}")


@cm_errors("cm_chart_version")
async def chart_version(request: web.Request) -> web.Response:
    m = request.match_info
    return await _json(_version(await _index(request), m["name"], m["version"]))


# -- DELETE (api.go deleteChartVersion) -----------------------------------------------------------------


@cm_errors("delete_release")
async def delete_chart_version(request: web.Request) -> web.Response:
    """Deletes release <version> (media type helm) of the CNR package <ns>/<name>; when the index shows the
    chart in another package, 404 naming it (a DELETE never acts on a package it was not named)."""
    name, version = request.match_info["name"], request.match_info["version"]
    pkg = _package(request, name)
    index = await _index(request)
    entry = next((e for e in index.entries.get(name, []) if e.get("version") == version), None)
    if entry is None:
        raise errors.ResourceNotFound(f"no chart version found for {name}-{version}")
    where = index.files.get(entry["urls"][0].removeprefix("charts/"))
    if where is not None and where.package.full != pkg.full:
        raise errors.ResourceNotFound(
            f"chart {name} {version} is stored in the package {where.package.full}, not {pkg.full}: "
            f"delete it there (CNR API: DELETE /cnr/api/v1/packages/{where.package.full}/{version}/helm)")
    # The release (tag) holding this chart version: appr let a release carry a chart of another version,
    # and several releases the same one: then deleting one would leave the chart listed.
    holders = await _store(request).helm.holders(pkg, f"{name}-{version}.tgz")
    if len(holders) > 1:
        releases = sorted(str(mapping.tag_to_release(h.tag) or h.tag) for h in holders)
        raise errors.ResourceInUse(f"chart {name} {version} is held by the releases {', '.join(releases)} of "
                                   f"{pkg.full}: delete them through the CNR API")
    release = mapping.tag_to_release(where.tag) if where is not None else version
    if release is None or not mapping.is_release(release):
        raise errors.InvalidUsage(f"chart {name} {version} is not in a CNR release (its tag is not strict "
                                  "SemVer): delete its tag in the registry")
    await _store(request).write.delete(pkg, release, "helm")
    return web.json_response({"deleted": True})


# -- upload (handlers.go postRequestHandler, api.go uploadChartPackage) -------------------------------


def _form_parts(content_type: str, body: bytes | bytearray) -> dict[str, bytes]:
    """The file fields of a multipart/form-data body, by name (the first of each); bounded in parts."""
    match = re.search(r'boundary="?([^";]{1,200})"?', content_type)
    if not match:
        raise errors.InvalidUsage("multipart/form-data without a boundary")
    try:  # RFC 2046: a boundary is 7-bit ASCII
        delimiter = b"--" + match.group(1).encode("ascii")
    except UnicodeEncodeError:
        raise errors.InvalidUsage("the multipart boundary is not ASCII") from None
    # Searched in place: only the bounded part headers and the kept parts are copied, once each.
    start = body.find(delimiter)
    parts: dict[str, bytes] = {}
    count = 0
    while start != -1:
        head = start + len(delimiter)
        if body[head:head + 2] == b"--":
            return parts
        end = body.find(b"\r\n" + delimiter, head)
        if end == -1:
            break
        count += 1
        if count > MAX_PARTS:
            raise errors.InvalidUsage(f"more than {MAX_PARTS} parts in the form")
        first = head + 2 if body[head:head + 2] == b"\r\n" else head
        split = body.find(b"\r\n\r\n", first, min(end, first + MAX_PART_HEADERS))
        if split == -1:
            raise errors.InvalidUsage("a form part without headers")
        # The stdlib's header parser records a bad header as a defect (aiohttp's warns); name* is RFC 2231.
        param = BytesHeaderParser().parsebytes(bytes(body[first:split]) + b"\r\n").get_param(
            "name", header="content-disposition")
        name = None if param is None else collapse_rfc2231_value(param)
        if name is not None and name not in parts:
            parts[name] = bytes(memoryview(body)[split + 4:end])
        start = end + 2
    raise errors.InvalidUsage("the multipart body is not terminated by its closing boundary")


def parse_upload(content_type: str, body: bytes | bytearray, force: bool) -> tuple[PushInput | None, bytes | None]:
    """(the chart, the provenance file) of an upload: a raw .tgz, or a form's `chart` and/or `prov` fields.
    The chart is checked as a CNR helm push, and a provenance file must sign it. CPU-bound: run in a thread.

    Raises:
        InvalidUsage: neither field, not a chart, a chart version that is not strict SemVer, a provenance
            file that is not one or signs other bytes.
    """
    if content_type.split(";")[0].strip().lower() == "multipart/form-data":
        parts = _form_parts(content_type, body)
        if CHART_FIELD not in parts and PROV_FIELD not in parts:
            raise errors.InvalidUsage(f"no package or provenance file found in form fields {CHART_FIELD} "
                                      f"and {PROV_FIELD}")  # handlers.go's message
        blob, prov = parts.get(CHART_FIELD), parts.get(PROV_FIELD)
    else:
        blob, prov = bytes(body), None
    signed = None if prov is None else provenance.parse(prov)
    if blob is None:
        return None, prov
    if not blob:
        raise errors.InvalidUsage("the chart is empty")
    chart_yaml = archive.inspect_tarball(blob, "helm")
    if chart_yaml is None:
        raise errors.InvalidUsage("not a helm chart: no <chart>/Chart.yaml in the archive")
    if not isinstance(chart_yaml.get("name"), str):  # helm's chart.Metadata.Name; the index needs a string
        raise errors.InvalidUsage(f"Chart.yaml name {str(chart_yaml.get('name'))[:80]!r} is not a string")
    version = str(chart_yaml.get("version", ""))
    if not mapping.is_release(version):
        raise errors.InvalidUsage(f"chart version {version[:80]!r} is not strict SemVer 2.0, which cnr-oci "
                                  "needs for a release")
    digest = "sha256:" + hashlib.sha256(blob).hexdigest()
    if signed is not None:
        provenance.check_signs(signed, chart_yaml["name"], version, digest)
    return PushInput(release=version, media_type="helm", blob=blob, digest=digest, metadata=None, force=force,
                     chart=chart_yaml, prov=prov), None


def _overwrite_hint(request: web.Request) -> str:
    if request.config_dict[appkeys.SETTINGS].disable_force_overwrite:
        return " (this server does not overwrite: --disable-force-overwrite)"
    return "; upload with ?force to overwrite"


def _force(request: web.Request) -> bool:
    """ChartMuseum: `_, force := c.GetQuery("force")`, present means force, unless the server forbids it."""
    return "force" in request.query and not request.config_dict[appkeys.SETTINGS].disable_force_overwrite


@cm_errors("cm_upload")
async def upload(request: web.Request) -> web.Response:
    """Identity first (the registry must accept the caller's credentials, before a byte of the body is
    read), the body bounded, the chart checked off the loop, then push rights on <ns>/<chart name>."""
    namespace = _namespace(request)
    store = _store(request)
    await store.client.check_credentials()
    limit = request.config_dict[appkeys.SETTINGS].max_body_size
    if request.content_length is not None and request.content_length > limit:
        raise errors.PayloadTooLarge(f"the body exceeds the limit of {limit} bytes", {"limit": limit})
    force = _force(request)
    async with _push_slot(request):
        raw = await _read_body(request, limit)
        inp, prov = await asyncio.to_thread(parse_upload, request.headers.get("Content-Type", ""), raw, force)
        del raw
        if inp is None:
            assert prov is not None
            return await _attach(request, prov, force)
        assert inp.chart is not None  # parse_upload returns charts only
        pkg = _package(request, str(inp.chart["name"]))
        # The index keeps one file per chart name and version: one held by another package would hide this.
        where = (await store.helm.index(namespace)).files.get(f"{inp.chart['name']}-{inp.release}.tgz")
        if where is not None and where.package.full != pkg.full:
            raise errors.PackageExists(f"file already exists: {pkg.name}-{inp.release}.tgz is held by the "
                                       f"package {where.package.full}")
        async with store.write.push_rights(pkg) as session:
            try:
                await store.write.push(pkg, inp, session)
            except errors.PackageExists:
                raise errors.PackageExists(f"file already exists: {namespace}/{pkg.name} {inp.release}"
                                           + _overwrite_hint(request)) from None
    return web.json_response({"saved": True}, status=201)


async def _attach(request: web.Request, raw: bytes, force: bool) -> web.Response:
    """A provenance file alone: added to the release that holds the chart it signs (there is no other
    place for it in OCI: a layer needs its chart's manifest), as helm's provenance layer."""
    prov = provenance.parse(raw)
    index = await _index(request)
    where = index.files.get(prov.chart_file)
    if where is None:
        raise errors.ResourceNotFound(f"no chart {prov.chart_file[:200]} in this repository: upload the chart "
                                      "first, or the chart and its .prov in one form")
    pkg = _package(request, prov.name)
    if where.package.full != pkg.full:
        raise errors.ResourceNotFound(f"chart {prov.chart_file[:200]} is stored in the package "
                                      f"{where.package.full}, not {pkg.full}")
    release = mapping.tag_to_release(where.tag)
    if release is None or not mapping.is_release(release):
        raise errors.InvalidUsage(f"chart {prov.chart_file[:200]} is not in a CNR release (its tag is not "
                                  "strict SemVer)")
    provenance.check_signs(prov, prov.name, prov.version, where.digest)
    store = _store(request)
    async with store.write.push_rights(pkg):
        try:
            await store.write.attach_provenance(pkg, release, where.digest, prov.chart_file, raw, force)
        except errors.PackageExists:
            raise errors.PackageExists(f"file already exists: {prov.chart_file}.prov"
                                       + _overwrite_hint(request)) from None
    return web.json_response({"saved": True}, status=201)


@cm_errors("cm_upload")
async def upload_prov(request: web.Request) -> web.Response:
    """POST .../prov: a raw provenance file (handlers.go postProvenanceFileRequestHandler)."""
    await _store(request).client.check_credentials()
    if request.content_length is not None and request.content_length > provenance.MAX_PROV:
        raise errors.PayloadTooLarge(f"the body exceeds the limit of {provenance.MAX_PROV} bytes",
                                     {"limit": provenance.MAX_PROV})
    async with _push_slot(request):
        raw = bytes(await _read_body(request, provenance.MAX_PROV))
        return await _attach(request, raw, _force(request))


def setup_cm_routes(app: web.Application) -> None:
    for prefix in PREFIXES:
        base = prefix + "/{ns}/charts"
        app.router.add_get(base, all_charts)  # add_get answers HEAD too, without a body
        app.router.add_post(base, upload)
        app.router.add_post(prefix + "/{ns}/prov", upload_prov)
        app.router.add_get(base + "/{name}", chart)
        app.router.add_get(base + "/{name}/{version}", chart_version)
        app.router.add_delete(base + "/{name}/{version}", delete_chart_version)
