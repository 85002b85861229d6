"""A classic helm chart repository per namespace: index.yaml entries and chart files, from the read model."""

from __future__ import annotations

import asyncio
import datetime as dt
import gzip
import hashlib
import json
import re
import time
from dataclasses import dataclass
from typing import Any

from cachetools import TTLCache

from cnr_oci import errors, helm, layout, mapping, schemas, upstream
from cnr_oci.auth import identity_key
from cnr_oci.catalog import Catalog
from cnr_oci.entries import parse_stored
from cnr_oci.layout import Manifest
from cnr_oci.mapping import Package
from cnr_oci.readmodel import TTL_ENTRIES, ReadModel

# Fields helm's repo.ChartVersion carries from Chart.yaml (chart.Metadata), as `helm repo index` writes them.
CHART_FIELDS = ("name", "home", "sources", "version", "description", "keywords", "maintainers", "icon",
                "apiVersion", "condition", "tags", "appVersion", "deprecated", "annotations", "kubeVersion",
                "dependencies", "type")
# A chart file name: <name>-<version>.tgz (a chart name has no "/"; helm allows "-" in both).
_FILE = re.compile(r"^(?P<stem>[^/]{1,400})\.tgz(?P<prov>\.prov)?$")
# Not releases or charts: channels, signatures, attestations.
_NOT_CHARTS = re.compile(r"^(channel-|sha256-)")


@dataclass(frozen=True)
class ChartFile:
    """Where one chart version of the index lives."""

    package: Package
    tag: str
    digest: str  # the .tgz layer's
    prov: str | None = None  # the provenance layer's (<file>.prov), if the release has one


@dataclass(frozen=True)
class Index:
    """A namespace's index.yaml as sent: bytes, gzipped bytes, ETag, and the chart files it names."""

    body: bytes
    gzipped: bytes
    etag: str
    files: dict[str, ChartFile]  # "<name>-<version>.tgz" -> where it is
    entries: dict[str, list[dict[str, Any]]]  # chart name -> index entries, newest first (the ChartMuseum API's)
    read_at: float  # when its oldest part was read from the registry (time.monotonic)


@dataclass(frozen=True)
class _Charts:
    """One package's chart versions as one identity sees them, and when they were read."""

    charts: list[tuple[dict[str, Any], ChartFile]]
    read_at: float


def _entry(config: dict[str, Any], digest: str, created: str | None, filename: str) -> dict[str, Any]:
    # With helm's field types: another tool's config may hold `appVersion: 1.1` or a maintainer's extra key,
    # which helm's strict index loader refuses, and with it the whole index.
    meta = helm.metadata(config)
    entry = {k: meta[k] for k in CHART_FIELDS if k in meta}
    entry["urls"] = [f"charts/{filename}"]
    entry["digest"] = digest.removeprefix("sha256:")
    entry["created"] = created or "1970-01-01T00:00:00Z"
    return entry


def _render(entries: dict[str, list[dict[str, Any]]]) -> tuple[bytes, bytes, str]:
    """index.yaml (and its gzip) as helm reads it, with each entry a JSON flow mapping (JSON is YAML, and
    json is 100 times faster than a YAML emitter: 5,000 entries in tens of ms, not 3 s). The ETag covers
    the entries, not the `generated` time. CPU-bound for thousands of entries: run in a thread."""
    lines = ["apiVersion: v1", "entries:" if entries else "entries: {}"]
    for name in sorted(entries):
        versions = entries[name]
        versions.sort(key=_version_key, reverse=True)
        key = _flow(name)
        lines.append(f"  {key}:" if len(key) <= _MAX_SIMPLE_KEY else f"  ? {key}\n  :")
        lines.extend(f"  - {_flow(e)}" for e in versions)
    text = "\n".join(lines) + "\n"
    etag = '"' + hashlib.sha256(text.encode()).hexdigest()[:32] + '"'
    body = (text + f"generated: \"{dt.datetime.now(dt.UTC).strftime('%Y-%m-%dT%H:%M:%SZ')}\"\n").encode()
    return body, gzip.compress(body, 6), etag


# Characters JSON leaves raw that YAML does not take raw in a quoted scalar: C1 controls and DEL are not
# printable, U+0085/2028/2029 are YAML 1.1 line breaks, U+FEFF is a BOM. Lone surrogates (a config's
# "\\ud800") are neither UTF-8 nor a YAML escape helm accepts: they become U+FFFD, as in Go strings.
_NOT_YAML = re.compile("[\x7f-\x9f\u2028\u2029\ufeff]")
_SURROGATE = re.compile("[\ud800-\udfff]")
# YAML allows an implicit key (`"k": v`) of at most 1024 characters; PyYAML and helm's parser refuse the
# document past that. Longer keys (a JSON string after "{" or ", " and before ": ") get YAML's explicit "? ".
_MAX_SIMPLE_KEY = 1000
_LONG_KEY = re.compile(r'(?:(?<=\{)|(?<=, ))("(?:[^"\\]|\\.){' + str(_MAX_SIMPLE_KEY - 2) + r',}": )')


def _flow(value: Any) -> str:
    """A value as a JSON flow node that YAML 1.1 and 1.2 parsers (helm's, PyYAML) read back unchanged."""
    text = json.dumps(value, ensure_ascii=False, separators=(", ", ": "), allow_nan=False, default=str)
    text = _NOT_YAML.sub(lambda m: f"\\u{ord(m.group()):04x}", _SURROGATE.sub("\ufffd", text))
    return _LONG_KEY.sub(r"? \1", text) if len(text) > _MAX_SIMPLE_KEY else text


def _version_key(entry: dict[str, Any]) -> tuple[int, Any, str]:
    """SemVer order as helm reads versions (loosely: 1.0 is 1.0.0), after the rest by text."""
    version = str(entry.get("version", ""))
    loose = mapping.helm_version(version)
    if loose is not None:
        return 1, mapping.semver_key(loose), version
    return 0, (), version


class HelmRepository:
    """index.yaml of a namespace, built from every chart the caller may read there (CNR, helm push, ORAS).

    Per identity, each package's chart versions are kept for ``cache_ttl`` and the rendered index as
    long as its oldest part. cnr-oci's own write to a package drops that package's part and the
    namespace's index: the next request re-reads that package alone and renders again.
    """

    def __init__(self, read: ReadModel, catalog: Catalog) -> None:
        self.read = read
        self.catalog = catalog
        ttl = max(read.cache_ttl, 0.0)
        self._indexes: TTLCache[tuple[str, str], Index] = TTLCache(TTL_ENTRIES // 100, ttl)
        self._packages: TTLCache[tuple[str, str], _Charts] = TTLCache(TTL_ENTRIES, ttl)
        # Writes, counted: a build or package read that began before a write to its namespace or repository
        # is neither cached nor shared with callers that come after the write. Kept longer than any read.
        self._writes = 0
        self._written: TTLCache[str, int] = TTLCache(TTL_ENTRIES, max(ttl, 600.0))
        read.on_forget.append(self._forget)

    def _forget(self, repo: str, tag: str | None) -> None:
        namespace = (mapping.package_from_repository(repo, self.read.prefix) or Package("", "")).namespace
        self._writes += 1
        self._written["repo:" + repo] = self._written["ns:" + namespace] = self._writes
        for key in [k for k in list(self._indexes.keys()) if k[1] == namespace]:
            self._indexes.pop(key, None)
        for pkey in [k for k in list(self._packages.keys()) if k[1] == repo]:
            self._packages.pop(pkey, None)

    async def index(self, namespace: str) -> Index:
        """The namespace's index; built once for concurrent callers of one identity."""
        key = (identity_key(), namespace)
        cached = self._indexes.get(key)
        if cached is None or time.monotonic() - cached.read_at > self.read.cache_ttl:
            start, written = self._writes, self._written.get("ns:" + namespace, -1)
            cached = await self.read.once(("helm-index", *key, written), lambda: self._build(namespace))
            if self._written.get("ns:" + namespace, -1) <= start:
                self._indexes[key] = cached
        return cached

    async def _build(self, namespace: str) -> Index:
        listed, listed_at = await self.catalog.packages_read_at()
        pkgs = [p for p in listed if p.namespace == namespace]
        found = await self.read.gather(self._package(p) for p in pkgs)
        entries: dict[str, list[dict[str, Any]]] = {}
        files: dict[str, ChartFile] = {}
        for part in found:
            for entry, where in part.charts:
                filename = entry["urls"][0].removeprefix("charts/")
                if filename in files:  # two packages hold one chart name and version: the first (by name) wins
                    continue
                files[filename] = where
                entries.setdefault(entry["name"], []).append(entry)
        body, gzipped, etag = await asyncio.to_thread(_render, entries)
        # As old as its oldest part, the catalog included: a package another tool creates shows within the TTL.
        return Index(body, gzipped, etag, files, entries, min([listed_at, *(p.read_at for p in found)]))

    async def _package(self, pkg: Package) -> _Charts:
        key = (identity_key(), self.read.repo(pkg))
        part = self._packages.get(key)
        if part is None:
            start, writes = time.monotonic(), self._writes
            part = _Charts(await self._charts(pkg), start)
            if self._written.get("repo:" + key[1], -1) <= writes:
                self._packages[key] = part
        return part

    async def _charts(self, pkg: Package) -> list[tuple[dict[str, Any], ChartFile]]:
        """The package's chart versions: every tag (strict SemVer or not, as helm allows) whose manifest is
        helm's layout with a chart config; nothing when the caller may not read the package."""
        repo = self.read.repo(pkg)
        try:
            tags = [t for t in await self.read.tags(repo) if not _NOT_CHARTS.match(t)]
        except (upstream.Unauthorized, upstream.Denied):
            return []
        manifests = await self.read.gather(self._chart_manifest(repo, t) for t in tags)
        charts = [(t, m) for t, m in zip(tags, manifests, strict=True)
                  if m is not None and (m.doc.get("config") or {}).get("mediaType") == layout.HELM_CONFIG
                  and layout.content_layer(m.doc) is not None]
        configs = await self.read.gather(self._config(repo, m.doc) for _, m in charts)
        out = []
        for (tag, m), config in zip(charts, configs, strict=True):
            layer = layout.content_layer(m.doc) or {}
            if config is None or not isinstance(layer.get("digest"), str):
                continue
            filename = f"{config['name']}-{config['version']}.tgz"
            entry = _entry(config, layer["digest"], layout.manifest_created(m.doc), filename)
            prov = (layout.prov_layer(m.doc) or {}).get("digest")
            out.append((entry, ChartFile(pkg, tag, layer["digest"], prov)))
        return out

    async def _chart_manifest(self, repo: str, tag: str) -> Manifest | None:
        """A tag's manifest; for a release that holds more than the chart (an index: beside a kpm, an
        image), its helm child, as the CNR API reads it."""
        top = await self.read.manifest(repo, tag)
        if top is None or top.doc.get("manifests") is None:
            return top
        helm_children = [d for d in layout.index_children(top)
                         if (d.get("annotations") or {}).get(layout.ANN_MEDIA_TYPE) == "helm"]
        children = helm_children or [d for d in layout.index_children(top) if layout.may_hold_package(d)]
        for child in children[:8]:
            found = await self.read.manifest(repo, child["digest"])
            if found is not None and (found.doc.get("config") or {}).get("mediaType") == layout.HELM_CONFIG:
                return found
        return None

    async def _config(self, repo: str, manifest: dict[str, Any]) -> dict[str, Any] | None:
        """A chart's config (Chart.yaml as JSON): from the manifest's copy when cnr-oci wrote one (its sha256
        must be the config's digest), else read; None when it is not one a helm index can carry."""
        desc = manifest["config"]
        copy = (manifest.get("annotations") or {}).get(layout.ANN_CHART)
        try:
            if isinstance(copy, str) and len(copy) <= layout.MAX_ANN_CHART \
                    and layout.sha256(raw := copy.encode("utf-8", "surrogatepass")) == desc.get("digest"):
                config = parse_stored(raw, schemas.CHART, f"{repo}@{desc.get('digest')}")
            else:
                config = await self.read.config(repo, desc, schemas.CHART)
        except upstream.RegistryError:
            return None
        name, version = config.get("name"), config.get("version")
        if not (isinstance(name, str) and isinstance(version, str) and name and version and "/" not in name):
            return None
        return config

    async def holders(self, pkg: Package, filename: str) -> list[ChartFile]:
        """Every release of the package holding ``<name>-<version>.tgz`` (appr let several releases hold
        one chart version; the index shows one of them)."""
        charts = (await self._package(pkg)).charts
        return [where for entry, where in charts if entry["urls"][0] == f"charts/{filename}"]

    async def chart(self, namespace: str, filename: str) -> tuple[Package, str]:
        """(package, blob digest) of ``<name>-<version>.tgz`` of the namespace's index, or of its
        ``.tgz.prov`` (helm's provenance layer of the same release).

        Raises:
            ResourceNotFound: the index names no such file.
        """
        match = _FILE.fullmatch(filename)
        found = None if match is None else (await self.index(namespace)).files.get(match["stem"] + ".tgz")
        digest = None if found is None else found.prov if match and match["prov"] else found.digest
        if found is None or digest is None:
            raise errors.ResourceNotFound(f"no chart file {filename[:200]!r} in {namespace}",
                                          {"namespace": namespace, "file": filename[:200]})
        return found.package, digest
