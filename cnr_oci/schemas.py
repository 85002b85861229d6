"""The JSON Schemas in schemas/, loaded once and used for input and for what is stored."""

from __future__ import annotations

import functools
import json
import os
import re
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema

PUSH_REQUEST = "push-request"
CNR_CONFIG = "cnr-config"
CNR_MANIFEST = "cnr-manifest"
CHANNEL = "channel"
CHART = "chart"


def _schema_dir() -> Path:
    candidates = [
        os.environ.get("CNR_OCI_SCHEMAS", ""),
        str(Path(__file__).resolve().parent.parent / "schemas"),
        str(Path(sys.prefix) / "share" / "cnr-oci" / "schemas"),
    ]
    for c in candidates:
        if c and (Path(c) / f"{PUSH_REQUEST}.schema.json").is_file():
            return Path(c)
    raise RuntimeError("cannot find the schemas/ directory; set CNR_OCI_SCHEMAS")


def _pattern(validator: Any, pattern: str, instance: Any, schema: Any) -> Iterator[jsonschema.ValidationError]:
    """The "pattern" keyword as JSON Schema (ECMA-262) means it. Python's "$" also matches before a
    final newline, so "^1.0.0$" would let "1.0.0" plus a newline through; use the end of the string."""
    if not validator.is_type(instance, "string"):
        return
    if pattern.endswith("$") and not pattern.endswith("\\$"):
        pattern = pattern[:-1] + r"\Z"
    if re.search(pattern, instance) is None:
        yield jsonschema.ValidationError(f"{instance[:100]!r} does not match {pattern!r}")


@functools.cache
def validator(name: str) -> jsonschema.protocols.Validator:
    schema = json.loads((_schema_dir() / f"{name}.schema.json").read_text())
    base = jsonschema.validators.validator_for(schema)
    base.check_schema(schema)
    cls = jsonschema.validators.extend(base, {"pattern": _pattern})  # type: ignore[no-untyped-call]
    checked: jsonschema.protocols.Validator = cls(schema, format_checker=base.FORMAT_CHECKER)
    return checked


def first_error(name: str, doc: Any, best: bool = True) -> tuple[str, str] | None:
    """(field path, message) of the first schema violation, or None. best=False stops at the first
    error found instead of ranking them all (for documents that may hold very many)."""
    errs = validator(name).iter_errors(doc)
    err = jsonschema.exceptions.best_match(errs) if best else next(errs, None)
    if err is None:
        return None
    field = ".".join(str(p) for p in err.absolute_path)
    if not field and err.validator == "required":
        field = str(err.message).split("'")[1] if "'" in err.message else ""
    return field, err.message[:300]
