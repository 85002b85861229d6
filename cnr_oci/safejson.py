"""JSON parsing bounded in size, nesting and numbers: for request bodies and for what the registry holds."""

from __future__ import annotations

import json
import math
from typing import Any

from cnr_oci import errors

# JSON (push and login bodies) and Chart.yaml nest at most this deep. Real documents use a handful of
# levels; the cap keeps every later recursive walk (json.dumps, jsonschema, a read-back json.loads on the
# event loop, whose stack is already dozens of frames deep) far from Python's recursion limit of 1000.
MAX_DEPTH = 64


def load_json(raw: bytes | bytearray | str, what: str = "body", max_bytes: int | None = None) -> Any:
    """json.loads with the nesting bounded by MAX_DEPTH; any failure is InvalidUsage (400), a body over
    max_bytes PayloadTooLarge (413)."""
    if max_bytes is not None and len(raw) > max_bytes:
        raise errors.PayloadTooLarge(f"the {what} exceeds the limit of {max_bytes} bytes", {"limit": max_bytes})
    try:
        doc = json.loads(raw, parse_constant=_no_constant, parse_float=_finite)
    except RecursionError as exc:
        raise errors.InvalidUsage(f"the {what} nests JSON deeper than {MAX_DEPTH} levels",
                                  {"limit": MAX_DEPTH}) from exc
    except (ValueError, UnicodeDecodeError) as exc:
        raise errors.InvalidUsage(f"the {what} is not JSON: {exc}") from exc
    if _depth_exceeds(doc, MAX_DEPTH):
        raise errors.InvalidUsage(f"the {what} nests JSON deeper than {MAX_DEPTH} levels", {"limit": MAX_DEPTH})
    return doc


def _no_constant(name: str) -> Any:
    """NaN and Infinity are not JSON (RFC 8259); Python's json would store them as such."""
    raise ValueError(f"{name} is not a JSON number")


def _finite(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"{text[:40]} is out of range for a JSON number")
    return value


def _depth_exceeds(doc: Any, limit: int) -> bool:
    """True if containers nest deeper than limit; iterative, so it cannot itself recurse too deep."""
    if not isinstance(doc, (dict, list)):
        return False
    stack: list[tuple[Any, int]] = [(doc, 1)]
    while stack:
        obj, depth = stack.pop()
        if depth > limit:
            return True
        for child in obj.values() if isinstance(obj, dict) else obj:
            if isinstance(child, (dict, list)):
                stack.append((child, depth + 1))
    return False


# -- the push body ------------------------------------------------------------------------------------
