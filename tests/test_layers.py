"""The package's architecture, as docs/architecture.md draws it: layers, what each may import, sizes."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "cnr_oci"

# Bottom to top. A module may import from lower layers, and from modules listed before it in its own.
LAYERS: list[tuple[str, list[str]]] = [
    ("vocabulary", ["errors", "settings", "metrics", "schemas", "safejson", "mapping", "auth", "requestctx"]),
    ("documents", ["layout", "helm", "provenance", "tarscan", "archive", "chartfiles"]),
    ("registry", ["challenge", "upstream", "transport", "blobs", "oci", "embedded", "locks",
                  "cnrsource"]),
    ("storage", ["entries", "releaselist", "blobcache", "readmodel", "release", "writepath", "channels", "catalog",
                 "helmrepo", "store", "migratereport", "migrate", "invalidation"]),
    ("http", ["translate", "wire", "appkeys", "streaming", "blobredirect", "bodies", "logsafe", "accesslog",
              "server", "uisession", "middleware", "ops", "ui", "uiauth", "routes", "helmroutes", "cmapi", "openapi",
              "apidocs"]),
    ("process", ["app", "workers", "migratecli", "cli", "__main__", "__init__"]),
]
RANK = {m: (i, j) for i, (_, mods) in enumerate(LAYERS) for j, m in enumerate(mods)}
MAX_MODULE_LINES = 350
MAX_CLASS_LINES = 250


def _tree(name: str) -> ast.Module:
    return ast.parse((PACKAGE / f"{name}.py").read_text())


def imports(name: str) -> set[str]:
    """The cnr_oci modules one module imports, at any depth (function-level imports included)."""
    found: set[str] = set()
    for node in ast.walk(_tree(name)):
        if isinstance(node, ast.ImportFrom) and node.module == "cnr_oci":
            found |= {a.name for a in node.names if a.name != "__version__"}
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("cnr_oci."):
            found.add(node.module.split(".")[1])
        elif isinstance(node, ast.Import):
            found |= {a.name.split(".")[1] for a in node.names if a.name.startswith("cnr_oci.")}
    return found - {name}


def test_every_module_has_a_place_in_the_layers():
    assert sorted(p.stem for p in PACKAGE.glob("*.py")) == sorted(RANK)


@pytest.mark.parametrize("name", sorted(RANK))
def test_a_module_imports_only_what_lies_below_it(name):
    wrong = sorted(m for m in imports(name) if RANK[m] >= RANK[name])
    assert not wrong, f"{name} ({LAYERS[RANK[name][0]][0]}) must not import {wrong}"


def test_below_http_nothing_knows_about_the_server_side_of_aiohttp():
    below = [m for _, mods in LAYERS[:4] for m in mods]
    for name in below:
        for node in ast.walk(_tree(name)):
            if isinstance(node, ast.ImportFrom) and node.module == "aiohttp":
                assert "web" not in {a.name for a in node.names}, name
            if isinstance(node, ast.ImportFrom):
                assert not (node.module or "").startswith("aiohttp.web"), name


@pytest.mark.parametrize("name", sorted(RANK))
def test_each_module_says_what_it_owns_and_stays_small(name):
    tree = _tree(name)
    doc = ast.get_docstring(tree)
    assert doc and len(doc.splitlines()[0]) > 10, f"{name} has no first line saying what it owns"
    lines = len((PACKAGE / f"{name}.py").read_text().splitlines())
    assert lines <= MAX_MODULE_LINES, f"{name} has {lines} lines"
    for node in ast.walk(tree):
        if isinstance(node, ast.ClassDef):
            size = (node.end_lineno or node.lineno) - node.lineno + 1
            assert size <= MAX_CLASS_LINES, f"{name}.{node.name} has {size} lines"
