"""Desired resources vs recorded + refreshed state -> one `ResourceChange` per address, with the
attribute paths that differ (deepdiff) and a human reason for each.

Three inputs, because Terraform users expect both kinds of difference to show: `current` is what the
last apply recorded, `live` what the provider sees now (drift), `desired` what the project wants.
"""

from __future__ import annotations

from collections.abc import Callable, Collection
from typing import Any

from pydantic import BaseModel

from flux_plan.errors import FluxError
from flux_plan.model import Action, Resource, ResourceState

_FLUX_JSON_ATTRS = {"runtime", "route", "method", "async", "timeout", "memory", "concurrency"}
_NOUN = {"api": "API", "migration": "migration", "secret": "secret", "function": "function", "route": "route"}


class AttrDiff(BaseModel):
    path: str
    before: Any = None
    after: Any = None


class ResourceChange(BaseModel):
    address: str
    type: str
    action: Action
    diffs: list[AttrDiff] = []
    reasons: list[str] = []
    depends_on: list[str] = []
    resource: Resource | None = None  # desired; None for delete
    prior: ResourceState | None = None


def _path(parts: list[Any]) -> str:
    out = ""
    for p in parts:
        out += f"[{p}]" if isinstance(p, int) else (f".{p}" if out else str(p))
    return out


_SCALARS = (str, int, float, bool, type(None))


def attr_diffs(before: dict[str, Any] | None, after: dict[str, Any] | None) -> list[AttrDiff]:
    """Leaf-level differences with paths like `method`, `env_keys[1]`. Plain equality first, then the
    top-level keys: deepdiff (~80 ms of imports) is only paid when a list or object value changed; a
    new digest (an edit of one function) is a scalar change."""
    before, after = before or {}, after or {}
    if before == after:
        return []
    if not before or not after:
        keys = sorted(after or before)
        return [AttrDiff(path=k, before=before.get(k), after=after.get(k)) for k in keys]
    out: list[AttrDiff] = []
    for k in set(before) | set(after):
        if k in before and k in after:
            b, a = before[k], after[k]
            if type(b) is type(a) and b == a:
                continue
            if not (isinstance(b, _SCALARS) and isinstance(a, _SCALARS)):
                return deep_attr_diffs(before, after)
        out.append(AttrDiff(path=k, before=before.get(k), after=after.get(k)))
    out.sort(key=lambda d: d.path)
    return out


def deep_attr_diffs(before: dict[str, Any], after: dict[str, Any]) -> list[AttrDiff]:
    """Every leaf difference, nested ones included, by deepdiff."""
    from deepdiff import DeepDiff

    out: list[AttrDiff] = []
    tree = DeepDiff(before, after, view="tree", ignore_order=False)
    for levels in tree.values():
        for level in levels:
            t1 = None if type(level.t1).__name__ == "NotPresent" else level.t1
            t2 = None if type(level.t2).__name__ == "NotPresent" else level.t2
            out.append(AttrDiff(path=_path(level.path(output_format="list")), before=t1, after=t2))
    out.sort(key=lambda d: d.path)
    return out


def _fmt(v: Any) -> str:
    if isinstance(v, str):
        return v if len(v) <= 24 else v[:12] + "…"
    return repr(v) if not isinstance(v, bool) else str(v).lower()


def _config_reason(res: Resource, attr: str, before: Any, after: Any) -> str:
    src = res.source or res.address
    if res.type == "function" and attr == "digest":
        where = res.source.rsplit("/", 1)[0] + "/" if res.source else res.address
        return f"code changed in {where} (index.ts or a file it imports)"
    if res.type == "function" and attr in ("env_keys", "secrets"):
        what = "ctx.env keys" if attr == "env_keys" else "secrets"
        return f"code reads other {what}: {_fmt(before)} → {_fmt(after)}"
    if res.type == "secret" and attr == "fingerprint":
        return "secret rotated"
    if res.type == "function" and attr == "database":
        return "the stage's database URL changed (database_url_env)"
    if res.type == "route" and attr == "function":
        return f"route now served by function {after!r} (was {before!r})"
    return f"{src}: {attr} {_fmt(before)} → {_fmt(after)}"


def _drift_reason(attr: str, live_value: Any) -> str:
    """A provider reports a change Flux itself made out of band (e.g. `flux rollback`) as a live value
    starting with "by flux "; anything else is drift."""
    if isinstance(live_value, str) and live_value.startswith("by flux "):
        return f"{attr}: {live_value}"
    return f"drift: {attr} changed outside Flux"


def _top_changed(a: dict[str, Any], b: dict[str, Any]) -> list[str]:
    return sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k))


def _delete_reason(addr: str, prior: ResourceState, desired: dict[str, Resource]) -> str:
    if prior.type == "route":
        fn = prior.attributes.get("function")
        moved = [r for r in desired.values() if r.type == "route" and r.attributes.get("function") == fn]
        if moved:
            a = moved[0].attributes
            return f"function {fn!r} now serves {a.get('method')} {a.get('path')} ({moved[0].address})"
    if prior.type == "secret":
        return "secret no longer set (flux secrets unset)"
    return f"{_NOUN.get(prior.type, prior.type)} removed from project"


def diff(
    desired: dict[str, Resource],
    current: dict[str, ResourceState],
    live: dict[str, dict[str, Any] | None],
    force_replace: Callable[[str], frozenset[str]],
    *,
    replace: Collection[str] = (),
) -> list[ResourceChange]:
    """One change per address in `desired` or `current`, noops included, sorted by address.

    Raises FluxError (naming every file) when an applied migration's file changed: migrations are
    never silently re-run.
    """
    changes, unchanged = diff_changes(desired, current, live, force_replace, replace=replace)
    changes += [ResourceChange(address=a, type=desired[a].type, action="noop", resource=desired[a], prior=current[a],
                               depends_on=desired[a].depends_on) for a in unchanged]
    changes.sort(key=lambda c: c.address)
    return changes


def diff_changes(
    desired: dict[str, Resource],
    current: dict[str, ResourceState],
    live: dict[str, dict[str, Any] | None],
    force_replace: Callable[[str], frozenset[str]],
    *,
    replace: Collection[str] = (),
) -> tuple[list[ResourceChange], list[str]]:
    """As `diff`, but an unchanged resource (desired = recorded = live, nothing forced) is only its
    address in the second list: a plan over thousands of unchanged resources builds no object for
    them. The changes (noops with a reason included) are sorted by address."""
    changes: list[ResourceChange] = []
    unchanged: list[str] = []
    edited: list[str] = []
    for addr in sorted(set(desired) | set(current)):
        res, prior = desired.get(addr), current.get(addr)
        if (res is not None and prior is not None and prior.status != "tainted" and addr not in replace
                and res.attributes == live.get(addr, prior.attributes)
                and (res.type != "migration" or prior.attributes.get("checksum") in (None, res.attributes["checksum"]))):
            unchanged.append(addr)
            continue
        if res is None:
            assert prior is not None
            if prior.type == "migration":
                changes.append(ResourceChange(
                    address=addr, type=prior.type, action="noop", prior=prior, depends_on=prior.dependencies,
                    reasons=[f"schema/{addr.split('.', 1)[1]} removed from project: applied migrations are "
                             "never dropped (kept in state)"]))
                continue
            changes.append(ResourceChange(address=addr, type=prior.type, action="delete", prior=prior,
                                          depends_on=prior.dependencies, diffs=attr_diffs(prior.attributes, None),
                                          reasons=[_delete_reason(addr, prior, desired)]))
            continue
        if prior is None:
            changes.append(ResourceChange(address=addr, type=res.type, action="create", resource=res,
                                          depends_on=res.depends_on, diffs=attr_diffs(None, res.attributes),
                                          reasons=[f"new {_NOUN.get(res.type, res.type)}"]))
            continue
        if res.type == "migration" and prior.attributes.get("checksum") not in (None, res.attributes["checksum"]):
            edited.append(res.source or addr)
            continue
        has_live = addr in live
        base = live[addr] if has_live else prior.attributes
        if base is None:
            reason = ("database drifted: migration not recorded" if res.type == "migration"
                      else f"drift: {_NOUN.get(res.type, res.type)} deleted outside Flux")
            changes.append(ResourceChange(address=addr, type=res.type, action="create", resource=res, prior=prior,
                                          depends_on=res.depends_on, diffs=attr_diffs(None, res.attributes),
                                          reasons=[reason]))
            continue
        changed = _top_changed(base, res.attributes)
        reasons: list[str] = []
        for attr in changed:
            if attr == "digest" and res.type == "function" and _FLUX_JSON_ATTRS & set(changed):
                continue  # flux.json is part of the digest: its own reason says what changed
            if prior.attributes.get(attr) == res.attributes.get(attr):
                reasons.append(_drift_reason(attr, base.get(attr)))
            else:
                reasons.append(_config_reason(res, attr, prior.attributes.get(attr), res.attributes.get(attr)))
        action: Action = "update" if changed else "noop"
        forced = sorted(set(changed) & force_replace(res.type))
        if forced:
            action = "replace"
            reasons.append(f"{', '.join(forced)} cannot change in place")
        if addr in replace:
            action = "replace"
            reasons.append("replacement requested (--replace)")
        if prior.status == "tainted":
            action = "replace"
            reasons.append("tainted: a previous apply failed part-way")
        changes.append(ResourceChange(address=addr, type=res.type, action=action, resource=res, prior=prior,
                                      depends_on=res.depends_on, diffs=attr_diffs(base, res.attributes),
                                      reasons=reasons))
    if edited:
        files = ", ".join(edited)
        raise FluxError(
            f"{files}: applied migration changed (checksum differs from the one applied); "
            "Flux never re-runs a migration",
            hint="restore the file's applied content and put the change in a new migration (flux migrations new NAME)",
        )
    return changes, unchanged


def drift(current: dict[str, ResourceState], live: dict[str, dict[str, Any] | None]) -> list[ResourceChange]:
    """Resources whose live attributes differ from what state recorded (refresh-only report)."""
    out: list[ResourceChange] = []
    for addr in sorted(current):
        if addr not in live:
            continue
        prior, now = current[addr], live[addr]
        if now == prior.attributes:
            continue
        if now is None:
            out.append(ResourceChange(address=addr, type=prior.type, action="delete", prior=prior,
                                      depends_on=prior.dependencies, diffs=attr_diffs(prior.attributes, None),
                                      reasons=[f"drift: {_NOUN.get(prior.type, prior.type)} deleted outside Flux"]))
            continue
        changed = _top_changed(prior.attributes, now)
        out.append(ResourceChange(address=addr, type=prior.type, action="update", prior=prior,
                                  depends_on=prior.dependencies, diffs=attr_diffs(prior.attributes, now),
                                  reasons=[_drift_reason(a, now.get(a)) for a in changed]))
    return out
