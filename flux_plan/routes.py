"""Route patterns (API Gateway v2 syntax: `{name}` is one path segment, `{name+}` the rest of the path) checked
at validate time, so a clash or an ambiguity is reported naming both files instead of one function silently
shadowing another at request time. The matching itself lives in the shared runtime (flux_plan/runtime/http.mjs):
literal paths first, then more literal segments, then non-greedy before greedy."""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Protocol

from flux_plan.errors import Problem

CONFIG_FILE = "flux.json"  # = project.CONFIG_FILE (project.py imports this module)


class Routed(Protocol):
    """What the route checks read of a function: a FunctionSpec, or the scan's record of one before any
    model is built (`flux validate` checks a project without importing pydantic)."""

    @property
    def name(self) -> str: ...
    @property
    def dir(self) -> str: ...
    @property
    def route(self) -> str: ...
    @property
    def method(self) -> str: ...


_PARAM = re.compile(r"^\{([A-Za-z_][A-Za-z0-9_]*)(\+?)\}$")


@dataclass(frozen=True)
class Segment:
    literal: str | None  # None: a parameter
    greedy: bool = False


def parse_route(route: str) -> tuple[list[Segment] | None, str | None]:
    """(segments, None) or (None, what is wrong)."""
    segs: list[Segment] = []
    names: set[str] = set()
    parts = route.rstrip("/").split("/")[1:] if route != "/" else []
    for i, part in enumerate(parts):
        if "{" not in part and "}" not in part:
            if part == "" and i < len(parts) - 1:
                return None, "empty path segment (//)"
            segs.append(Segment(part))
            continue
        m = _PARAM.match(part)
        if not m:
            return None, f"segment {part!r}: a parameter is a whole segment, {{name}} or {{name+}}"
        name, plus = m.group(1), m.group(2)
        if name in names:
            return None, f"parameter {{{name}}} appears twice"
        if plus and i != len(parts) - 1:
            return None, f"greedy parameter {{{name}+}} must be the last segment"
        names.add(name)
        segs.append(Segment(None, bool(plus)))
    return segs, None


def _compatible(a: Segment, b: Segment) -> bool:
    return a.literal is None or b.literal is None or a.literal == b.literal


def overlap(a: list[Segment], b: list[Segment]) -> bool:
    """Some path is matched by both routes."""
    ga, gb = bool(a) and a[-1].greedy, bool(b) and b[-1].greedy
    if not ga and not gb:
        return len(a) == len(b) and all(_compatible(x, y) for x, y in zip(a, b, strict=True))
    if ga and gb:
        n = min(len(a), len(b)) - 1
        return all(_compatible(x, y) for x, y in zip(a[:n], b[:n], strict=True))
    g, other = (a, b) if ga else (b, a)
    if len(other) < len(g):
        return False
    return all(_compatible(x, y) for x, y in zip(g[:-1], other[: len(g) - 1], strict=True))


def _rank(segs: list[Segment]) -> tuple[int, bool]:
    return sum(1 for s in segs if s.literal is not None), bool(segs) and segs[-1].greedy


def _shape(segs: list[Segment]) -> tuple[str, ...]:
    return tuple(s.literal if s.literal is not None else ("{+}" if s.greedy else "{}") for s in segs)


def _example(a: list[Segment], b: list[Segment]) -> str:
    """A path both routes match (for the message)."""
    out = []
    for i in range(max(len(a), len(b))):
        x = a[i] if i < len(a) else a[-1]
        y = b[i] if i < len(b) else b[-1]
        out.append(x.literal if x.literal is not None else y.literal if y.literal is not None else "x")
    return "/" + "/".join(out)


Parsed = tuple[Routed, list[Segment]]


def _candidate_pairs(parsed: list[Parsed]) -> list[tuple[Parsed, Parsed]]:
    """(later, earlier) pairs that could clash: same method and rank; for segment-only patterns also the same
    length and first segment (or a parameter there). Keeps a project of many patterned routes linear-ish."""
    groups: dict[tuple[Any, ...], list[tuple[int, Parsed]]] = {}
    for i, item in enumerate(parsed):
        spec, segs = item
        greedy = bool(segs) and segs[-1].greedy
        key = (spec.method, _rank(segs), None if greedy else len(segs))
        groups.setdefault(key, []).append((i, item))
    pairs: set[tuple[int, int]] = set()
    for items in groups.values():
        by_first: dict[str | None, list[int]] = {}
        for i, (_spec, segs) in items:
            first = segs[0].literal if segs and not (len(segs) == 1 and segs[0].greedy) else None
            by_first.setdefault(first, []).append(i)
        wild = by_first.get(None, [])
        for first, members in by_first.items():
            others = members if first is None else members + wild
            for x in members:
                for o in others:
                    if o != x:
                        pairs.add((max(x, o), min(x, o)))
    out = [(parsed[i], parsed[j]) for i, j in sorted(pairs)]
    return out


def route_problems(functions: Iterable[Routed]) -> list[Problem]:
    """Syntax errors in route patterns, and pairs of routes on one method that match the same paths with
    neither more specific than the other (`/a/{id}` vs `/a/{x}`; `/{a}/x` vs `/x/{b}`)."""
    problems: list[Problem] = []
    parsed: list[tuple[Routed, list[Segment]]] = []
    for spec in functions:
        cfg = f"{spec.dir}/{CONFIG_FILE}"
        segs, error = parse_route(spec.route)
        if error or segs is None:
            problems.append(Problem(cfg, f"route {spec.route}: {error}", json_path="$.route",
                                    hint='path parameters look like "/notes/{id}" or "/files/{path+}" (last segment)'))
            continue
        if any(s.literal is None for s in segs):
            # only patterns can be ambiguous: a literal path always has more literal segments than a pattern
            # that matches it, so it is the more specific one
            parsed.append((spec, segs))
    for (a, sa), (b, sb) in _candidate_pairs(parsed):
        if a.method != b.method or a.route == b.route:  # identical routes are reported by the project scan
            continue
        if not overlap(sa, sb) or _rank(sa) != _rank(sb):
            continue
        same = _shape(sa) == _shape(sb)
        why = "" if same else f": both match e.g. {_example(sa, sb)} and neither is more specific"
        problems.append(Problem(
            f"{a.dir}/{CONFIG_FILE}",
            f"route {a.method} {a.route} {'is the same route as' if same else 'is ambiguous with'} "
            f"{b.method} {b.route} of {b.name!r} ({b.dir}/{CONFIG_FILE}){why}",
            json_path="$.route", hint="rename the path so each request has exactly one function"))
    return problems


def fill_route(route: str, payload: object) -> tuple[str, object]:
    """The URL path of `route` for a `flux invoke` payload: `{name}` segments take (and remove) the payload's
    values, percent-encoded (`{name+}` keeps its slashes). A missing value is an error naming the route."""
    from urllib.parse import quote

    from flux_plan.errors import FluxError

    if "{" not in route:
        return route, payload
    rest = dict(payload) if isinstance(payload, dict) else {}
    out = []
    for part in route.split("/")[1:]:
        m = _PARAM.match(part)
        if not m:
            out.append(part)
            continue
        name, greedy = m.group(1), bool(m.group(2))
        if name not in rest or rest[name] in (None, ""):
            raise FluxError(f"route {route} needs a value for {{{name}}}",
                            hint=f'pass it in the payload, e.g. --payload \'{{"{name}": "..."}}\'')
        value = rest.pop(name)
        out.append(quote(value if isinstance(value, str) else json.dumps(value), safe="/" if greedy else ""))
    return "/" + "/".join(out), rest
