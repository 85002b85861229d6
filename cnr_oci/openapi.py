"""The OpenAPI 3.1 document of the whole HTTP surface, built from Python tables (schemas/openapi.json is its
committed rendering: `python -m cnr_oci.openapi > schemas/openapi.json`; a test keeps the two equal)."""

from __future__ import annotations

import functools
import json
import sys
from typing import Any

from cnr_oci import __version__, schemas, uiauth

J = dict[str, Any]
PKG = "/api/v1/packages/{ns}/{name}"
CM = "/{ns}/charts"
DESCRIPTION = """cnr-oci speaks the CNR / appr app-registry API and stores everything in an OCI registry.

* The CNR API is served twice: under `/cnr` (the prefix `/.well-known/app-registry-uri.json` announces) and
  at the root (the two `servers`). Every CNR path is also answered with a trailing slash.
* The operational routes, the OpenAPI document and the helm repository are served at the root only.
* HEAD: `/`, the operational, helm, ChartMuseum and UI routes answer it as GET (no body); the other CNR
  routes answer 405 (`Allow: GET`).
* Credentials: `Authorization: Basic ...`, or the token `POST /api/v1/users/login` returns (sent bare, as
  appr sends it, or as `Bearer`). Each registry request is made as the caller: the registry decides.
* CNR errors are `{"code", "message", "details", "error": {"code", "message", "details"}}` (flat for
  appr, nested for operator-courier); the ChartMuseum API answers `{"error": "..."}`.
See docs/api.md for the semantics of each endpoint."""

# Why each error status arises; every CNR route can meet the registry's failures (401/403/404/501/502/503).
WHY = {
    400: "Invalid usage: a malformed request (bad JSON, a bad name or parameter).",
    401: "No credentials, or the registry refused them (`WWW-Authenticate: Basic`).",
    403: "The registry does not let this identity do this.",
    404: "No such package, release, channel, blob or route.",
    405: "The path exists, the method does not (`Allow` lists the methods).",
    408: "The request body came too slowly.",
    409: "The release exists (push without `force`), or is in use.",
    413: "The body is larger than --max-body-size.",
    415: "A compressed request body (Content-Encoding) is refused.",
    422: "An invalid release, media type, name or parameter value.",
    500: "An unexpected error (its request id is in the details and the log).",
    501: "The registry does not support this operation (for example deletion).",
    502: "The registry answered something that is not a valid answer.",
    503: "The registry (or the lock store) is unavailable, or too many pushes are in progress (`Retry-After`).",
}
READ = (400, 401, 403, 404, 405, 415, 422, 500, 501, 502, 503)
WRITE = (*READ, 408, 409, 413)


def _ref(kind: str, name: str) -> J:
    return {"$ref": f"#/components/{kind}/{name}"}


def _json(schema: J, description: str = "OK") -> J:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _op(op_id: str, summary: str, ok: dict[int, J], errs: tuple[int, ...] = READ, tag: str = "CNR",
        kind: str = "Cnr", **extra: Any) -> J:
    responses = {str(s): r for s, r in ok.items()}
    responses |= {str(s): _ref("responses", f"{kind}{s}") for s in sorted(errs)}
    return {"operationId": op_id, "summary": summary, "tags": [tag], "responses": responses, **extra}


def _param(name: str, where: str = "path", description: str = "", **schema: Any) -> J:
    p: J = {"name": name, "in": where, "schema": schema or {"type": "string"}}
    if where == "path":
        p["required"] = True
    if description:
        p["description"] = description
    return p


P_NS = _param("ns", description="namespace (an OCI path component)")
P_NAME = _param("name", description="package name")
P_RELEASE = _param("release", description="release: a SemVer 2.0 version")
P_MEDIA = _param("media_type", description="media type: kpm, helm, docker-compose, ...; `-` for any")
P_CHANNEL = _param("channel")
P_FORMAT = _param("format", "query", "`json`: the JSON form, as the `/json` suffix", type="string", enum=["json"])
P_REDIRECT = _param("redirect", "query", "with --blob-redirect: `false` asks for the streamed bytes")
# Bodies that are not JSON have no schema: OpenAPI 3.1 describes raw bytes by their media type alone.
BINARY: J = {"application/x-gzip": {}}
ANY: J = {}
HEADER: J = {"schema": {"type": "string"}}
TARBALL = {"description": "The package's .tar.gz (Content-Disposition: its file name), verified against its digest",
           "headers": {"Content-Disposition": HEADER}, "content": BINARY}
REDIRECT = {"description": "With --blob-redirect: the registry's storage URL (`Location`)",
            "headers": {"Location": {"required": True, "schema": {"type": "string"}}}}


def _cnr_paths() -> J:
    """The CNR API (E1 to E18 and login), as served under both servers."""
    pkg, rel = [P_NS, P_NAME], [P_NS, P_NAME, P_RELEASE, P_MEDIA]
    manifests = {"type": "array", "items": _ref("schemas", "Manifest")}
    pull_json = _json(_ref("schemas", "PullDocument"), "The JSON pull document: the blob base64ed")
    return {
        "/": {"get": _op("index", "An HTML page with the appr discovery meta tag", {200: {
            "description": "HTML", "content": {"text/html": ANY}}}, (404, 500))},
        "/version": {"get": _op("version", "E1: versions of the APIs and of cnr-oci", {200: _json(
            _ref("schemas", "Version"))}, (500,))},
        "/.well-known/app-registry-uri.json": {"get": _op("well_known", "E2: discovery", {200: _json(
            _ref("schemas", "Discovery"))}, (500,))},
        "/api/v1/users/login": {"post": _op(
            "login", "E3: exchange a user name and password for a token", {200: _json(_ref("schemas", "Token"))},
            (400, 401, 403, 408, 413, 415, 500, 502, 503),
            requestBody={"required": True, "content": {"application/json": {"schema": _ref("schemas", "Login")}}})},
        "/api/v1/packages": {"get": _op(
            "list_packages", "E5: packages the caller can read, streamed in name order",
            {200: _json({"type": "array", "items": _ref("schemas", "PackageSummary")})},
            parameters=[_param("namespace", "query"), _param("query", "query", "substring of the name"),
                        _param("media_type", "query"), _param("offset", "query", type="integer", minimum=0),
                        _param("limit", "query", type="integer", minimum=0)])},
        "/api/v1/packages/search": {"get": _op(
            "search", "E6: package names containing q", {200: _json({"type": "array", "items": {"type": "string"}})},
            parameters=[_param("q", "query")])},
        PKG: {"parameters": pkg,
              "get": _op("list_manifests", "E8: every manifest of a package",
                         {200: _json(manifests)}, parameters=[_param("media_type", "query")]),
              "post": _op("push", "E7: push a release", {200: _json(_ref("schemas", "Status"))}, WRITE,
                          parameters=[_param("force", "query", "overwrite an existing release")],
                          requestBody={"required": True, "content": {"application/json": {
                              "schema": _ref("schemas", "PushRequest")}}})},
        PKG + "/{release}": {"parameters": [P_NS, P_NAME, P_RELEASE], "get": _op(
            "release_manifests", "E9: the manifests of one release", {200: _json(manifests)})},
        PKG + "/{release}/{media_type}": {
            "parameters": rel,
            "get": _op("show", "E10: one manifest, its channels and manifest digest",
                       {200: _json(_ref("schemas", "ShownManifest"))}),
            "delete": _op("delete_release", "E11: delete a release", {200: _json(_ref("schemas", "Deleted"))},
                          (*READ, 409))},
        PKG + "/{release}/{media_type}/pull": {"parameters": rel, "get": _op(
            "pull", "E12: the package's .tar.gz", {200: TARBALL | {"content": BINARY | {
                "application/json": pull_json["content"]["application/json"]}}, 307: REDIRECT},
            READ, parameters=[P_FORMAT, P_REDIRECT])},
        PKG + "/{release}/{media_type}/pull/json": {"parameters": rel, "get": _op(
            "pull_json", "E12: the JSON pull document", {200: pull_json}, READ)},
        PKG + "/blobs/sha256/{digest}": {"parameters": [*pkg, _param("digest", pattern="^[a-f0-9]{64}$")], "get": _op(
            "blob", "E13: a blob by digest", {200: TARBALL | {"content": BINARY | {
                "application/json": pull_json["content"]["application/json"]}}, 307: REDIRECT},
            READ, parameters=[P_FORMAT, P_REDIRECT])},
        PKG + "/blobs/sha256/{digest}/json": {"parameters": [*pkg, _param("digest", pattern="^[a-f0-9]{64}$")],
                                              "get": _op("blob_json", "E13: a blob as JSON", {200: pull_json},
                                                         READ)},
        PKG + "/channels": {"parameters": pkg, "get": _op(
            "list_channels", "E14: the package's channels", {200: _json({"type": "array", "items": _ref(
                "schemas", "Channel")})})},
        PKG + "/channels/{channel}": {
            "parameters": [*pkg, P_CHANNEL],
            "get": _op("show_channel", "E15: one channel", {200: _json(_ref("schemas", "Channel"))}),
            "delete": _op("delete_channel", "E18: delete a channel", {200: _json(_ref("schemas", "ChannelDeleted"))},
                          (*READ, 409))},
        PKG + "/channels/{channel}/{release}": {
            "parameters": [*pkg, P_CHANNEL, P_RELEASE],
            "post": _op("add_channel_release", "E16: add a release to a channel (creating it), make it current",
                        {200: _json(_ref("schemas", "Channel"))}, WRITE),
            "delete": _op("remove_channel_release", "E17: remove a release from a channel",
                          {200: _json(_ref("schemas", "ChannelReleaseRemoved"))}, (*READ, 409))},
    }


ROOT_ONLY = [{"url": "/"}]


def _root_paths() -> J:
    """Operational routes, this document, and the classic helm repository: at the root only."""
    text = {"text/plain": ANY}
    yaml = {"application/x-yaml": ANY}
    chart = {"application/x-gzip": BINARY["application/x-gzip"],
             "application/pgp-signature": ANY}
    index_headers = {"ETag": HEADER, "Cache-Control": HEADER}
    paths: J = {
        "/healthz": {"get": _op("healthz", "Liveness", {200: _json(_ref("schemas", "Health"))}, (500,), "ops")},
        "/readyz": {"get": _op("readyz", "Readiness: the registry answers", {
            200: _json(_ref("schemas", "Health")), 503: _json(_ref("schemas", "Health"), "Not ready")}, (500,),
            "ops")},
        "/metrics": {"get": _op("metrics", "Prometheus metrics", {200: {"description": "OK", "content": text}},
                                (500,), "ops")},
        "/openapi.json": {"get": _op("openapi", "This document", {200: _json({"type": "object"})}, (500,), "ops")},
        "/api-docs": {"get": _op("api_docs", "This document, rendered (Swagger UI)", {200: {
            "description": "HTML", "content": {"text/html": ANY}}}, (500,), "ops")},
        "/api-docs/{file}": {"get": _op("api_docs_asset", "Swagger UI's assets", {200: {"description": "OK"}},
                                        (404, 500), "ops", parameters=[_param("file")])},
        "/helm/{ns}/index.yaml": {"get": _op(
            "helm_index", "The classic helm repository index of a namespace, as the caller may read it", {
                200: {"description": "index.yaml (gzip when accepted)", "headers": index_headers, "content": yaml},
                304: {"description": "Not modified (If-None-Match)", "headers": index_headers}},
            tag="helm", parameters=[P_NS])},
        "/helm/{ns}/charts/{file}": {"get": _op(
            "helm_chart", "A chart file the index names (.tgz), or its provenance (.tgz.prov)", {
                200: {"description": "The file, verified against its digest", "content": chart}, 307: REDIRECT},
            tag="helm", parameters=[P_NS, _param("file"), P_REDIRECT])},
    }
    for item in paths.values():
        item["servers"] = ROOT_ONLY
    return paths


def _cm_paths() -> J:
    """ChartMuseum's API, under both of its prefixes (`helm cm-push` posts to /api/helm without a context path)."""
    def cm(op_id: str, summary: str, ok: dict[int, J], errs: tuple[int, ...] = READ, **extra: Any) -> J:
        return _op(op_id, summary, ok, errs, "chartmuseum", "Cm", **extra)

    saved = {201: _json(_ref("schemas", "CmSaved"), "Saved")}
    upload = {"content": {"application/gzip": ANY,
                          "application/octet-stream": ANY,
                          "multipart/form-data": {"schema": {"type": "object", "properties": {
                              "chart": {"type": "string", "contentMediaType": "application/gzip"},
                              "prov": {"type": "string"}}}}}, "required": True}
    force = _param("force", "query", "present: overwrite (unless --disable-force-overwrite)")
    versions = {"type": "array", "items": _ref("schemas", "ChartVersion")}
    paths: J = {}
    for prefix, tag in (("/helm/api", ""), ("/api/helm", "_api")):
        paths |= {
            prefix + CM: {"parameters": [P_NS],
                          "get": cm("cm_charts" + tag, "Every chart and its versions, paged over chart names",
                                    {200: _json({"type": "object", "additionalProperties": versions})},
                                    parameters=[_param("offset", "query", type="integer", minimum=0),
                                                _param("limit", "query", type="integer", minimum=1)]),
                          "post": cm("cm_upload" + tag, "Upload a chart (raw .tgz, or a form with chart and/or prov)",
                                     saved, WRITE, parameters=[force], requestBody=upload)},
            prefix + "/{ns}/prov": {"parameters": [P_NS], "post": cm(
                "cm_upload_prov" + tag, "Upload a provenance file for a chart already uploaded", saved, WRITE,
                parameters=[force], requestBody={"required": True, "content": {
                    "application/pgp-signature": ANY,
                    "application/octet-stream": ANY}})},
            prefix + CM + "/{name}": {"parameters": [P_NS, P_NAME], "get": cm(
                "cm_chart" + tag, "The versions of one chart", {200: _json(versions)})},
            prefix + CM + "/{name}/{version}": {
                "parameters": [P_NS, P_NAME, _param("version", description="a chart version, or `latest`")],
                "get": cm("cm_chart_version" + tag, "One chart version", {200: _json(_ref("schemas", "ChartVersion"))}),
                "delete": cm("cm_delete" + tag, "Delete a chart version (its CNR release)",
                             {200: _json(_ref("schemas", "CmDeleted"), "Deleted")}, (*READ, 409))},
        }
    for item in paths.values():
        item["servers"] = ROOT_ONLY
    return paths


def _stored(name: str, title: str) -> J:
    """A JSON Schema of schemas/, as a component: its own "#/$defs/..." refs rebased under the component."""
    schema = json.loads((schemas._schema_dir() / f"{name}.schema.json").read_text())
    schema.pop("$schema", None)
    schema.pop("$id", None)
    text = json.dumps(schema).replace('"#/$defs/', f'"#/components/schemas/{title}/$defs/')
    return dict(json.loads(text))


def _obj(props: J, required: list[str] | None = None, extra: bool = False) -> J:
    return {"type": "object", "properties": props, "required": list(props) if required is None else required,
            **({} if extra else {"additionalProperties": False})}


STR, STRS = {"type": "string"}, {"type": "array", "items": {"type": "string"}}
NULLABLE_STR = {"type": ["string", "null"]}


def _schemas() -> J:
    inner = _obj({"code": STR, "message": STR, "details": {"type": "object"}})
    manifest = _obj({
        "package": STR, "release": STR, "created_at": NULLABLE_STR, "metadata": {"description": "as pushed"},
        "mediaType": {"type": "string", "pattern": r"^application/vnd\.cnr\.package-manifest\..+\.v1\.json$"},
        "content": _obj({"mediaType": STR, "size": {"type": ["integer", "null"]},
                         "digest": {"type": "string", "pattern": "^[a-f0-9]{64}$"}, "urls": STRS})})
    return {
        "CnrError": {**_obj({**inner["properties"], "error": inner}),
                     "description": "The CNR error envelope (wire.error_body): flat, and nested under error"},
        "CmError": _obj({"error": STR}),
        "Version": _obj({"appr-api": STR, "cnr-api": STR, "cnr-oci": STR}),
        "Discovery": _obj({"version": STR, "uri_prefix": STR}),
        "Login": _obj({"user": _obj({"username": {"type": "string", "minLength": 1}, "password": STR}, extra=True)},
                      extra=True),
        "Token": _obj({"token": STR}),
        "PackageSummary": _obj({
            "name": STR, "namespace": STR, "releases": STRS, "default": STR, "manifests": STRS,
            "visibility": {"const": "public"}, "created_at": NULLABLE_STR, "updated_at": NULLABLE_STR,
            "channels": {"type": "null"}}),
        "PushRequest": _stored("push-request", "PushRequest"),
        "Status": _obj({"status": {"const": "ok"}}),
        "Manifest": manifest,
        "ShownManifest": {**manifest, "properties": {**manifest["properties"], "channels": STRS, "digest": STR},
                          "required": [*manifest["required"], "channels", "digest"]},
        "PullDocument": _obj({"package": STR, "release": STR, "media_type": STR, "filename": STR,
                              "blob": {"type": "string", "contentEncoding": "base64"}},
                             ["package", "release", "filename", "blob"]),
        "Deleted": _obj({"status": {"const": "deleted"}, "package": STR, "release": STR}),
        "Channel": _stored("channel", "Channel"),
        "ChannelReleaseRemoved": _obj({"status": {"const": "deleted"}, "package": STR, "name": STR, "release": STR}),
        "ChannelDeleted": _obj({"channel": STR, "package": STR, "action": {"const": "delete"}}),
        "Health": _obj({"status": {"enum": ["ok", "ready", "not ready"]}, "reason": STR}, ["status"]),
        "Chart": _stored("chart", "Chart"),
        "ChartVersion": {"description": "An index.yaml entry: Chart.yaml's fields, urls, digest, created",
                         "allOf": [_ref("schemas", "Chart"), _obj(
                             {"urls": STRS, "digest": STR, "created": STR}, extra=True)]},
        "CmSaved": _obj({"saved": {"const": True}}),
        "CmDeleted": _obj({"deleted": {"const": True}}),
    }


def _responses() -> J:
    found: J = {}
    for status, why in WHY.items():
        headers: J = {}
        if status == 401:
            headers["WWW-Authenticate"] = {"schema": STR, "description": 'Basic realm="cnr-oci"'}
        if status == 405:
            headers["Allow"] = {"schema": STR}
        if status == 503:
            headers["Retry-After"] = {"schema": STR, "description": "when too many pushes are in progress"}
        for kind in ("Cnr", "Cm"):
            found[f"{kind}{status}"] = {**_json(_ref("schemas", f"{kind}Error"), why),
                                        **({"headers": headers} if headers else {})}
    return found


@functools.cache
def document() -> J:
    """The OpenAPI 3.1 document of every route cnr-oci serves."""
    paths = {**_cnr_paths(), **_root_paths(), **_cm_paths(), **uiauth.openapi_paths()}
    return {
        "openapi": "3.1.0",
        "info": {"title": "cnr-oci", "version": __version__, "description": DESCRIPTION,
                 "license": {"name": "Apache-2.0", "identifier": "Apache-2.0"}},
        "servers": [{"url": "/", "description": "the CNR API at the root"},
                    {"url": "/cnr", "description": "the CNR API under /cnr"}],
        "tags": [{"name": "CNR", "description": "The CNR / appr app-registry API (E1 to E18)"},
                 {"name": "helm", "description": "The classic helm chart repository"},
                 {"name": "chartmuseum", "description": "ChartMuseum's chart manipulation API"},
                 {"name": "ops", "description": "Operational routes and this document"},
                 {"name": "ui", "description": "The package browser (HTML pages)"}],
        "paths": paths,
        "components": {"schemas": _schemas(), "responses": _responses(),
                       "securitySchemes": {"basic": {"type": "http", "scheme": "basic"},
                                           "token": {"type": "apiKey", "in": "header", "name": "Authorization"}}},
        "security": [{}, {"basic": []}, {"token": []}],
    }


def rendered() -> str:
    """The document as committed in schemas/openapi.json."""
    return json.dumps(document(), indent=1) + "\n"


def operation_ids() -> set[str]:
    return {op["operationId"] for item in document()["paths"].values() for op in item.values()
            if isinstance(op, dict) and "operationId" in op}


if __name__ == "__main__":
    sys.stdout.write(rendered())
