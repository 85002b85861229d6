"""A classic helm chart repository per namespace: index.yaml entries and chart files, from the read model."""

from __future__ import annotations

import asyncio
import datetime as dt
import gzip
import hashlib
import re
from dataclasses import dataclass
from typing import Any

import yaml
from cachetools import TTLCache

from cnr_oci import errors, layout, mapping, schemas, upstream
from cnr_oci.auth import identity_key
from cnr_oci.catalog import Catalog
from cnr_oci.mapping import Package
from cnr_oci.readmodel import TTL_ENTRIES, ReadModel

# Fields helm's repo.ChartVersion carries from Chart.yaml (chart.Metadata), as `helm repo index` writes them.
CHART_FIELDS = ("name", "home", "sources", "version", "description", "keywords", "maintainers", "icon",
                "apiVersion", "condition", "tags", "appVersion", "deprecated", "annotations", "kubeVersion",
                "dependencies", "type")
# A chart file name: <name>-<version>.tgz (a chart name has no "/"; helm allows "-" in both).
_FILE = re.compile(r"^(?P<stem>[^/]{1,400})\.tgz$")
# Not releases or charts: channels, signatures, attestations.
_NOT_CHARTS = re.compile(r"^(channel-|sha256-)")


@dataclass(frozen=True)
class ChartFile:
    """Where one chart version of the index lives."""

    package: Package
    tag: str
    digest: str  # the .tgz layer's


@dataclass(frozen=True)
class Index:
    """A namespace's index.yaml as sent: bytes, gzipped bytes, ETag, and the chart files it names."""

    body: bytes
    gzipped: bytes
    etag: str
    files: dict[str, ChartFile]  # "<name>-<version>.tgz" -> where it is
    entries: dict[str, list[dict[str, Any]]]  # chart name -> index entries, newest first (the ChartMuseum API's)


def _entry(config: dict[str, Any], digest: str, created: str | None, filename: str) -> dict[str, Any]:
    entry = {k: config[k] for k in CHART_FIELDS if config.get(k) not in (None, "", [], {})}
    entry["urls"] = [f"charts/{filename}"]
    entry["digest"] = digest.removeprefix("sha256:")
    entry["created"] = created or "1970-01-01T00:00:00Z"
    return entry


def _render(entries: dict[str, list[dict[str, Any]]]) -> tuple[bytes, bytes, str]:
    """index.yaml (and its gzip) as helm reads it; CPU-bound for thousands of entries (run in a thread)."""
    for versions in entries.values():
        versions.sort(key=_version_key, reverse=True)
    doc = {"apiVersion": "v1", "entries": dict(sorted(entries.items())),
           "generated": dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")}
    dumper: Any = getattr(yaml, "CSafeDumper", yaml.SafeDumper)
    body = yaml.dump(doc, Dumper=dumper, sort_keys=False, allow_unicode=True, default_flow_style=False).encode()
    etag = '"' + hashlib.sha256(yaml.dump(entries, Dumper=dumper, sort_keys=True).encode()).hexdigest()[:32] + '"'
    return body, gzip.compress(body, 6), etag


def _version_key(entry: dict[str, Any]) -> tuple[int, Any, str]:
    """SemVer order where the version is SemVer (helm sorts that way), after the rest by text."""
    version = str(entry.get("version", ""))
    if mapping.is_release(version):
        return 1, mapping.semver_key(version), version
    return 0, (), version


class HelmRepository:
    """index.yaml of a namespace, built from every chart the caller may read there (CNR, helm push, ORAS),
    cached per identity for ``cache_ttl`` and dropped at once by cnr-oci's own writes."""

    def __init__(self, read: ReadModel, catalog: Catalog) -> None:
        self.read = read
        self.catalog = catalog
        self._indexes: TTLCache[tuple[str, str], Index] = TTLCache(TTL_ENTRIES // 100, max(read.cache_ttl, 0.0))
        read.on_forget.append(self._forget)

    def _forget(self, repo: str, tag: str | None) -> None:
        namespace = (mapping.package_from_repository(repo, self.read.prefix) or Package("", "")).namespace
        for key in [k for k in list(self._indexes.keys()) if k[1] == namespace]:
            self._indexes.pop(key, None)

    async def index(self, namespace: str) -> Index:
        """The namespace's index; built once for concurrent callers of one identity."""
        key = (identity_key(), namespace)
        cached = self._indexes.get(key)
        if cached is None:
            cached = await self.read.once(("helm-index", *key), lambda: self._build(namespace))
            self._indexes[key] = cached
        return cached

    async def _build(self, namespace: str) -> Index:
        pkgs = [p for p in await self.catalog.packages() if p.namespace == namespace]
        found = await self.read.gather(self._charts(p) for p in pkgs)
        entries: dict[str, list[dict[str, Any]]] = {}
        files: dict[str, ChartFile] = {}
        for charts in found:
            for entry, where in charts:
                filename = entry["urls"][0].removeprefix("charts/")
                if filename in files:  # two packages hold one chart name and version: the first (by name) wins
                    continue
                files[filename] = where
                entries.setdefault(entry["name"], []).append(entry)
        body, gzipped, etag = await asyncio.to_thread(_render, entries)
        return Index(body, gzipped, etag, files, entries)

    async def _charts(self, pkg: Package) -> list[tuple[dict[str, Any], ChartFile]]:
        """The package's chart versions: every tag (strict SemVer or not, as helm allows) whose manifest is
        helm's layout with a chart config; nothing when the caller may not read the package."""
        repo = self.read.repo(pkg)
        try:
            tags = [t for t in await self.read.tags(repo) if not _NOT_CHARTS.match(t)]
        except (upstream.Unauthorized, upstream.Denied):
            return []
        manifests = await self.read.gather(self.read.manifest(repo, t) for t in tags)
        charts = [(t, m) for t, m in zip(tags, manifests, strict=True)
                  if m is not None and (m.doc.get("config") or {}).get("mediaType") == layout.HELM_CONFIG
                  and layout.content_layer(m.doc) is not None]
        configs = await self.read.gather(self._config(repo, m.doc["config"]) for _, m in charts)
        out = []
        for (tag, m), config in zip(charts, configs, strict=True):
            layer = layout.content_layer(m.doc) or {}
            if config is None or not isinstance(layer.get("digest"), str):
                continue
            filename = f"{config['name']}-{config['version']}.tgz"
            entry = _entry(config, layer["digest"], layout.manifest_created(m.doc), filename)
            out.append((entry, ChartFile(pkg, tag, layer["digest"])))
        return out

    async def _config(self, repo: str, desc: dict[str, Any]) -> dict[str, Any] | None:
        """A chart's config (Chart.yaml as JSON); None when it is not one a helm index can carry."""
        try:
            config = await self.read.config(repo, desc, schemas.CHART)
        except upstream.RegistryError:
            return None
        name, version = config.get("name"), config.get("version")
        if not (isinstance(name, str) and isinstance(version, str) and name and version and "/" not in name):
            return None
        return config

    async def chart(self, namespace: str, filename: str) -> ChartFile:
        """Where ``<name>-<version>.tgz`` of the namespace's index lives.

        Raises:
            ResourceNotFound: the index names no such file.
        """
        if not _FILE.fullmatch(filename):
            raise errors.ResourceNotFound(f"no chart file {filename[:200]!r} in {namespace}")
        found = (await self.index(namespace)).files.get(filename)
        if found is None:
            raise errors.ResourceNotFound(f"no chart file {filename[:200]!r} in {namespace}",
                                          {"namespace": namespace, "file": filename[:200]})
        return found
