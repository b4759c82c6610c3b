"""A fast "is this document valid?" check for Flux's own JSON Schemas, so a scan that finds nothing
wrong never imports jsonschema (~100 ms of imports: referencing, attrs, rpds, specifications).

It understands only the keywords Flux's config schemas use. A schema with any other keyword gets no
fast check (`compile_accept` returns None), and whatever the check does not accept goes to the full
jsonschema validator, which produces the located, explained problems. So the fast path can only ever
say "valid" for documents jsonschema also finds valid (tests/core/test_scan_cache.py checks both agree).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

Check = Callable[[Any], bool]

_ANNOTATIONS = {"$schema", "$id", "$defs", "title", "description", "default", "examples", "$comment"}
_KNOWN = _ANNOTATIONS | {"type", "required", "additionalProperties", "properties", "pattern", "enum", "const",
                         "minimum", "maximum", "uniqueItems", "items", "minLength", "maxLength",
                         "propertyNames", "$ref", "if", "then", "else", "minItems", "maxItems",
                         "exclusiveMinimum", "exclusiveMaximum", "maxProperties", "minProperties", "not",
                         "contains"}


class _Unsupported(Exception):
    pass


def _is_type(value: Any, name: str) -> bool:
    if name == "object":
        return isinstance(value, dict)
    if name == "array":
        return isinstance(value, list)
    if name == "string":
        return isinstance(value, str)
    if name == "boolean":
        return isinstance(value, bool)
    if name == "null":
        return value is None
    if isinstance(value, bool):
        return False
    if name == "integer":
        return isinstance(value, int) or (isinstance(value, float) and value.is_integer())
    if name == "number":
        return isinstance(value, int | float)
    raise _Unsupported(name)


def _same(a: Any, b: Any) -> bool:
    """JSON equality: 1 == 1.0, but true is neither 1 nor 1.0."""
    if isinstance(a, bool) or isinstance(b, bool):
        return type(a) is type(b) and a == b
    if isinstance(a, int | float) and isinstance(b, int | float):
        return a == b
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, list):
        return isinstance(b, list) and len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))
    return type(a) is type(b) and a == b


def _compile(schema: Any, root: dict[str, Any]) -> Check:
    if schema is True:
        return lambda v: True
    if not isinstance(schema, dict) or set(schema) - _KNOWN:
        raise _Unsupported(str(schema)[:80])
    checks: list[Check] = []
    if "$ref" in schema:
        ref = schema["$ref"]
        if not isinstance(ref, str) or not ref.startswith("#/$defs/") or ref.count("/") != 2:
            raise _Unsupported(f"$ref {ref!r}")
        checks.append(_compile(root["$defs"][ref.rsplit("/", 1)[1]], root))
    if "const" in schema:
        const = schema["const"]
        checks.append(lambda v: _same(v, const))
    if "if" in schema:
        cond = _compile(schema["if"], root)
        then = _compile(schema.get("then", True), root)
        other = _compile(schema.get("else", True), root)
        checks.append(lambda v: then(v) if cond(v) else other(v))
    if "propertyNames" in schema:
        names = _compile(schema["propertyNames"], root)
        checks.append(lambda v: not isinstance(v, dict) or all(names(k) for k in v))
    if "type" in schema:
        types = schema["type"] if isinstance(schema["type"], list) else [schema["type"]]
        for t in types:
            _is_type(None, t)  # raises on an unknown type name
        checks.append(lambda v: any(_is_type(v, t) for t in types))
    if "enum" in schema:
        allowed = list(schema["enum"])
        checks.append(lambda v: any(_same(v, a) for a in allowed))
    if "pattern" in schema:
        rx = re.compile(schema["pattern"])
        checks.append(lambda v: not isinstance(v, str) or rx.search(v) is not None)
    if "minLength" in schema or "maxLength" in schema:
        lo, hi = schema.get("minLength", 0), schema.get("maxLength")
        checks.append(lambda v: not isinstance(v, str) or (lo <= len(v) and (hi is None or len(v) <= hi)))
    if "minimum" in schema or "maximum" in schema:
        mn, mx = schema.get("minimum"), schema.get("maximum")

        def bounds(v: Any) -> bool:
            if isinstance(v, bool) or not isinstance(v, int | float):
                return True
            return (mn is None or v >= mn) and (mx is None or v <= mx)

        checks.append(bounds)
    if "exclusiveMinimum" in schema or "exclusiveMaximum" in schema:
        xmn, xmx = schema.get("exclusiveMinimum"), schema.get("exclusiveMaximum")

        def open_bounds(v: Any) -> bool:
            if isinstance(v, bool) or not isinstance(v, int | float):
                return True
            return (xmn is None or v > xmn) and (xmx is None or v < xmx)

        checks.append(open_bounds)
    if "minItems" in schema or "maxItems" in schema:
        ilo, ihi = schema.get("minItems", 0), schema.get("maxItems")
        checks.append(lambda v: not isinstance(v, list) or (ilo <= len(v) and (ihi is None or len(v) <= ihi)))
    if "minProperties" in schema or "maxProperties" in schema:
        plo, phi = schema.get("minProperties", 0), schema.get("maxProperties")
        checks.append(lambda v: not isinstance(v, dict) or (plo <= len(v) and (phi is None or len(v) <= phi)))
    if "not" in schema:
        negated = _compile(schema["not"], root)
        checks.append(lambda v: not negated(v))
    if "contains" in schema:
        member = _compile(schema["contains"], root)
        checks.append(lambda v: not isinstance(v, list) or any(member(x) for x in v))
    if "required" in schema:
        req = list(schema["required"])
        checks.append(lambda v: not isinstance(v, dict) or all(k in v for k in req))
    if "properties" in schema or "additionalProperties" in schema:
        props = {k: _compile(s, root) for k, s in schema.get("properties", {}).items()}
        extra_schema = schema.get("additionalProperties", True)
        extra = extra_schema if extra_schema is False else _compile(extra_schema, root)

        def obj(v: Any) -> bool:
            if not isinstance(v, dict):
                return True
            for k, item in v.items():
                sub = props.get(k)
                if sub is None:
                    if extra is False or not extra(item):
                        return False
                elif not sub(item):
                    return False
            return True

        checks.append(obj)
    if "items" in schema:
        item_check = _compile(schema["items"], root)
        checks.append(lambda v: not isinstance(v, list) or all(item_check(x) for x in v))
    if schema.get("uniqueItems"):
        def unique(v: Any) -> bool:
            if not isinstance(v, list):
                return True
            return all(not _same(v[i], v[j]) for i in range(len(v)) for j in range(i))

        checks.append(unique)
    return lambda v: all(c(v) for c in checks)


def compile_accept(schema: Any) -> Check | None:
    """A function telling whether a document is valid, or None when the schema uses a keyword this
    module does not implement (the caller then always asks jsonschema)."""
    try:
        return _compile(schema, schema)
    except (_Unsupported, re.error, TypeError, KeyError):
        return None
