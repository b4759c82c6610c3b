"""`diff_changes` (what plans use) leaves unchanged resources as addresses only, and agrees with `diff`
(every noop as an object) on every resource: edits, drift, deletions, taint, --replace, forced
replacement, edited migrations. The CLI's counts on a targeted plan follow from it."""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from pathlib import Path

import pytest

from flux_plan.diff import diff, diff_changes
from flux_plan.errors import FluxError
from flux_plan.graph import DesiredGraph, build_graph
from flux_plan.model import ResourceState
from flux_plan.project import load_project

NO_FORCE: Callable[[str], frozenset[str]] = lambda _t: frozenset()  # noqa: E731


def _state_of(graph: DesiredGraph) -> dict[str, ResourceState]:
    return {a: ResourceState(type=r.type, attributes=json.loads(json.dumps(r.attributes)), dependencies=r.depends_on)
            for a, r in graph.resources.items()}


def _agree(desired: dict, current: dict, live: dict, force: Callable[[str], frozenset[str]] = NO_FORCE,
           replace: tuple[str, ...] = ()) -> tuple[dict[str, str], list[str]]:
    full = diff(desired, current, live, force, replace=replace)
    changes, unchanged = diff_changes(desired, current, live, force, replace=replace)
    assert [c.address for c in changes] == sorted(c.address for c in changes)
    assert sorted([*(c.address for c in changes), *unchanged]) == [c.address for c in full]
    by_full = {c.address: c for c in full}
    for c in changes:  # the same object as diff() makes, reasons and attribute paths included
        assert c.model_dump() == by_full[c.address].model_dump()
    for a in unchanged:
        assert by_full[a].action == "noop" and not by_full[a].reasons and not by_full[a].diffs
    return {c.address: c.action for c in changes}, unchanged


def test_unchanged_resources_are_addresses_only(tmp_path: Path, make_project: Callable[..., Path]) -> None:
    root = make_project(tmp_path, functions={f"f{i}": None for i in range(6)},
                        migrations={"001_a.sql": "CREATE TABLE a (id int);\n"})
    project = load_project(root)
    g = build_graph(project, project.stage("dev"), {"TOKEN": "1" * 64})
    state = _state_of(g)
    actions, unchanged = _agree(g.resources, state, {})
    assert actions == {} and len(unchanged) == len(g.resources) == 1 + 1 + 1 + 2 * 6

    # one of each kind of change; everything else stays an address
    state["function.f0"] = state["function.f0"].model_copy(update={"attributes": {
        **state["function.f0"].attributes, "digest": "old"}})
    state["function.f1"] = state["function.f1"].model_copy(update={"status": "tainted"})
    state["function.gone"] = ResourceState(type="function", attributes={"runtime": "deno"})
    live = {"function.f3": {**state["function.f3"].attributes, "timeout": 99},  # drift
            "route.POST_/f4": None}  # deleted outside flux
    actions, unchanged = _agree(g.resources, state, live,
                                force=lambda t: frozenset({"runtime"}) if t == "function" else frozenset(),
                                replace=("function.f2",))
    assert actions == {"function.f0": "update", "function.f1": "replace", "function.f2": "replace",
                       "function.f3": "update", "route.POST_/f4": "create", "function.gone": "delete"}
    assert "function.f5" in unchanged and "migration.001_a.sql" in unchanged and "api.dev" in unchanged

    # an attribute present as None on one side only is not "unchanged" by dict equality: the full
    # comparison decides (and finds nothing to do), as before
    state["function.f5"] = state["function.f5"].model_copy(update={"attributes": {
        **state["function.f5"].attributes, "extra": None}})
    actions, unchanged = _agree(g.resources, state, {})
    assert actions["function.f5"] == "noop" and "function.f5" not in unchanged


def test_edited_applied_migration_still_refused(tmp_path: Path, make_project: Callable[..., Path]) -> None:
    root = make_project(tmp_path, migrations={"001_a.sql": "CREATE TABLE a (id int);\n"})
    project = load_project(root)
    g = build_graph(project, project.stage("dev"), {})
    state = _state_of(g)
    state["migration.001_a.sql"] = state["migration.001_a.sql"].model_copy(update={"attributes": {
        **state["migration.001_a.sql"].attributes, "checksum": "0" * 64}})
    # even when the database reports the new checksum (live = desired), the edit is an error
    live = {"migration.001_a.sql": dict(g.resources["migration.001_a.sql"].attributes)}
    with pytest.raises(FluxError, match=r"schema/001_a\.sql: applied migration changed"):
        diff_changes(g.resources, state, live, NO_FORCE)


def test_targeted_plan_counts_unchanged_of_the_selection(tmp_path: Path, flux: Callable[..., tuple[int, str, str]],
                                                         make_project: Callable[..., Path]) -> None:
    root = make_project(tmp_path, functions={"a": None, "b": None, "c": None})
    rc, out, err = flux("apply", "--auto-approve", cwd=root)
    assert rc == 0, err
    rc, out, _ = flux("plan", "--json", cwd=root)
    doc = json.loads(out)
    assert rc == 0 and doc["changes"] == [] and doc["unchanged"] == 7
    index = root / "functions" / "b" / "index.ts"
    index.write_text(index.read_text().replace("ok: true", "ok: false"))
    rc, out, _ = flux("plan", "--json", "--target", "function.b", cwd=root)
    doc = json.loads(out)
    assert [(c["address"], c["action"]) for c in doc["changes"]] == [("function.b", "update")]
    assert doc["unchanged"] == 0  # function.b needs no other resource
    rc, out, _ = flux("plan", "--json", "--target", "route.POST_/b", cwd=root)
    doc = json.loads(out)  # the route needs the API and its function: both in the selection
    assert [(c["address"], c["action"]) for c in doc["changes"]] == [("function.b", "update")]
    assert doc["unchanged"] == 2 and doc["summary"] == {"add": 0, "change": 1, "destroy": 0}
    rc, out, _ = flux("plan", cwd=root)
    assert rc == 0 and re.search(r"Plan: 0 to add, 1 to change, 0 to destroy", out), out
