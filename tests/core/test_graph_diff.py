"""Graph building and diffing on real scanned projects (no provider needed: state is given)."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from flux_plan.diff import attr_diffs, deep_attr_diffs, diff
from flux_plan.errors import FluxError
from flux_plan.graph import DesiredGraph, build_graph
from flux_plan.model import Resource, ResourceState
from flux_plan.project import load_project

NO_FORCE: Callable[[str], frozenset[str]] = lambda _t: frozenset()  # noqa: E731


def _state_of(graph: DesiredGraph) -> dict[str, ResourceState]:
    """What a successful apply of `graph` records."""
    return {a: ResourceState(type=r.type, attributes=json.loads(json.dumps(r.attributes)), dependencies=r.depends_on)
            for a, r in graph.resources.items()}


def _actions(changes: list) -> dict[str, str]:
    return {c.address: c.action for c in changes if c.action != "noop"}


@pytest.fixture
def todo(tmp_path: Path, make_project: Callable[..., Path]) -> Path:
    return make_project(
        tmp_path,
        functions={
            "greet": None,
            "list_todos": {"flux": {"name": "list_todos", "route": "/todos", "method": "GET"}},
            "reminder": {"code": 'import { defineFunction } from "@flux/functions";\n'
                                 'export default defineFunction({ name: "reminder", handler: async ({ ctx }) => '
                                 '({ t: await ctx.secrets.get("TOKEN"), u: ctx.env.UNSET }) });\n'},
        },
        migrations={"001_a.sql": "CREATE TABLE a (id int);", "002_b.sql": "ALTER TABLE a ADD COLUMN b int;"},
    )


def test_graph_resources_and_dependencies(todo: Path) -> None:
    project = load_project(todo)
    g = build_graph(project, project.stage("dev"), {"TOKEN": "f" * 64, "OTHER": "e" * 64})
    assert sorted(g.resources) == sorted([
        "api.dev", "migration.001_a.sql", "migration.002_b.sql", "secret.OTHER", "secret.TOKEN",
        "function.greet", "function.list_todos", "function.reminder",
        "route.POST_/greet", "route.GET_/todos", "route.POST_/reminder",
    ])
    assert g.dependencies("migration.002_b.sql") == ["migration.001_a.sql"]
    # A function depends on the secrets it reads that exist (UNSET is not in the store) and every migration.
    assert g.dependencies("function.reminder") == ["secret.TOKEN", "migration.001_a.sql", "migration.002_b.sql"]
    assert g.dependencies("route.GET_/todos") == ["api.dev", "function.list_todos"]
    assert g.resources["route.GET_/todos"].attributes == {"method": "GET", "path": "/todos",
                                                          "function": "list_todos", "async": False}
    assert g.resources["function.greet"].source == "functions/greet/flux.json"
    assert g.resources["secret.TOKEN"].attributes == {"fingerprint": "f" * 64}
    assert sorted(g.dependents("function.greet")) == ["route.POST_/greet"]
    assert g.closure(["route.POST_/reminder"]) == {
        "route.POST_/reminder", "api.dev", "function.reminder", "secret.TOKEN",
        "migration.001_a.sql", "migration.002_b.sql"}
    order = g.order()
    for addr in order:
        assert all(order.index(d) < order.index(addr) for d in g.dependencies(addr))
    dot = g.to_dot()
    assert dot.startswith("digraph flux {") and '"route.GET_/todos" -> "function.list_todos";' in dot
    doc = g.to_json()
    assert [r["address"] for r in doc["resources"]] == order


def test_unchanged_project_diffs_to_noops(todo: Path) -> None:
    project = load_project(todo)
    g = build_graph(project, project.stage("dev"), {"TOKEN": "f" * 64})
    changes = diff(g.resources, _state_of(g), {}, NO_FORCE)
    assert len(changes) == len(g.resources)
    assert _actions(changes) == {}


def test_each_edit_gives_exactly_its_action(todo: Path) -> None:
    before = load_project(todo)
    g0 = build_graph(before, before.stage("dev"), {"TOKEN": "f" * 64})
    state = _state_of(g0)

    idx = todo / "functions/greet/index.ts"
    idx.write_text(idx.read_text().replace("ok: true", "ok: false"))
    cfg = todo / "functions/list_todos/flux.json"
    cfg.write_text(json.dumps({"name": "list_todos", "route": "/todos", "method": "POST"}))
    (todo / "schema/003_c.sql").write_text("CREATE TABLE c (id int);")
    after = load_project(todo)
    g1 = build_graph(after, after.stage("dev"), {"TOKEN": "0" * 64})
    changes = {c.address: c for c in diff(g1.resources, state, {}, NO_FORCE)}
    assert _actions(list(changes.values())) == {
        "function.greet": "update",
        "function.list_todos": "update",
        "route.GET_/todos": "delete",
        "route.POST_/todos": "create",
        "secret.TOKEN": "update",
        "migration.003_c.sql": "create",
        # Every function depends on all migrations: a new migration is not an attribute change.
    }
    assert changes["function.greet"].reasons == ["code changed in functions/greet/ (index.ts or a file it imports)"]
    assert [d.path for d in changes["function.greet"].diffs] == ["digest"]
    lt = changes["function.list_todos"]
    assert lt.reasons == ["functions/list_todos/flux.json: method GET → POST"]
    # flux.json is part of the bundle digest, so the digest moves too; the reason names the cause.
    assert [(d.path, d.before, d.after) for d in lt.diffs if d.path != "digest"] == [("method", "GET", "POST")]
    assert changes["route.GET_/todos"].reasons == [
        "function 'list_todos' now serves POST /todos (route.POST_/todos)"]
    assert changes["secret.TOKEN"].reasons == ["secret rotated"]
    assert changes["migration.003_c.sql"].reasons == ["new migration"]
    assert "f" * 64 not in json.dumps([c.model_dump() for c in changes.values() if c.address != "secret.TOKEN"])


def test_new_and_removed_functions(todo: Path, write_function: Callable[..., Path]) -> None:
    p0 = load_project(todo)
    state = _state_of(build_graph(p0, p0.stage("dev"), {}))
    write_function(todo, "fresh")
    for f in (todo / "functions/greet").iterdir():
        f.unlink()
    (todo / "functions/greet").rmdir()
    p1 = load_project(todo)
    changes = diff(build_graph(p1, p1.stage("dev"), {}).resources, state, {}, NO_FORCE)
    assert _actions(changes) == {"function.fresh": "create", "route.POST_/fresh": "create",
                                 "function.greet": "delete", "route.POST_/greet": "delete"}
    by = {c.address: c for c in changes}
    assert by["function.greet"].reasons == ["function removed from project"]
    assert by["function.fresh"].reasons == ["new function"]
    assert by["function.greet"].resource is None and by["function.greet"].prior is not None


def test_force_replace_replace_flag_taint_and_drift(todo: Path) -> None:
    p0 = load_project(todo)
    g = build_graph(p0, p0.stage("dev"), {})
    state = _state_of(g)
    # runtime cannot change in place for this provider
    cfg = todo / "functions/greet/flux.json"
    cfg.write_text(json.dumps({"name": "greet", "runtime": "node"}))
    p1 = load_project(todo)
    g1 = build_graph(p1, p1.stage("dev"), {})
    state["function.list_todos"] = state["function.list_todos"].model_copy(update={"status": "tainted"})
    live = {
        "function.reminder": {**state["function.reminder"].attributes, "memory": 1024},  # changed by hand
        "route.GET_/todos": None,  # deleted by hand
    }
    force = lambda t: frozenset({"runtime"}) if t == "function" else frozenset()  # noqa: E731
    by = {c.address: c for c in diff(g1.resources, state, live, force, replace={"api.dev"})}
    assert by["function.greet"].action == "replace"
    assert "runtime cannot change in place" in by["function.greet"].reasons
    assert by["api.dev"].action == "replace" and by["api.dev"].reasons == ["replacement requested (--replace)"]
    assert by["function.list_todos"].action == "replace"
    assert by["function.reminder"].action == "update"
    assert by["function.reminder"].reasons == ["drift: memory changed outside Flux"]
    assert [(d.path, d.before, d.after) for d in by["function.reminder"].diffs] == [("memory", 1024, 256)]
    assert by["route.GET_/todos"].action == "create"
    assert by["route.GET_/todos"].reasons == ["drift: route deleted outside Flux"]


def test_migration_rules(todo: Path) -> None:
    p0 = load_project(todo)
    state = _state_of(build_graph(p0, p0.stage("dev"), {}))
    # The database lost the record of an applied migration: re-create it, say why.
    by = {c.address: c for c in diff(build_graph(p0, p0.stage("dev"), {}).resources, state,
                                      {"migration.002_b.sql": None}, NO_FORCE)}
    assert by["migration.002_b.sql"].action == "create"
    assert by["migration.002_b.sql"].reasons == ["database drifted: migration not recorded"]
    # A removed applied migration is kept: no action, a note.
    (todo / "schema/002_b.sql").unlink()
    p1 = load_project(todo)
    by = {c.address: c for c in diff(build_graph(p1, p1.stage("dev"), {}).resources, state, {}, NO_FORCE)}
    assert by["migration.002_b.sql"].action == "noop"
    assert "never dropped" in by["migration.002_b.sql"].reasons[0]
    # An edited applied migration is an error naming the file.
    (todo / "schema/002_b.sql").write_text("ALTER TABLE a ADD COLUMN b int;")
    (todo / "schema/001_a.sql").write_text("CREATE TABLE a (id bigint);")
    p2 = load_project(todo)
    with pytest.raises(FluxError) as exc:
        diff(build_graph(p2, p2.stage("dev"), {}).resources, state, {}, NO_FORCE)
    assert "schema/001_a.sql: applied migration changed" in exc.value.message
    assert "new migration" in (exc.value.hint or "")


def test_attr_diff_paths() -> None:
    before = {"method": "POST", "env_keys": ["A", "B"], "async": False}
    after = {"method": "GET", "env_keys": ["A", "C", "D"], "async": False}
    got = [(d.path, d.before, d.after) for d in attr_diffs(before, after)]
    assert got == [("env_keys[1]", "B", "C"), ("env_keys[2]", None, "D"), ("method", "POST", "GET")]
    assert attr_diffs(before, before) == []


@pytest.mark.parametrize("before, after", [
    ({"digest": "a" * 64, "memory": 256}, {"digest": "b" * 64, "memory": 256}),  # an edit: no deepdiff
    ({"a": 1, "b": None}, {"a": 1}),  # a key holding None vs no key
    ({"a": 1}, {"a": 1, "b": {"x": [1]}}),  # a new key holding an object
    ({"a": True, "b": 1}, {"a": 1, "b": 2}),  # bool vs int is a change (next to another one)
    ({"a": 1, "b": 1}, {"a": 1.0, "b": 2}),
    ({"cors": {"origins": ["x"]}, "n": 1}, {"cors": {"origins": ["y"]}, "n": 2}),  # nested: deepdiff
    ({"k": [1, 2]}, {"k": "12"}),
])
def test_attr_diffs_match_deepdiff(before: dict[str, Any], after: dict[str, Any]) -> None:
    """The scalar shortcut reports exactly what deepdiff reports."""
    assert attr_diffs(before, after) == deep_attr_diffs(before, after)


def test_graph_rejects_unknown_dependency() -> None:
    res = {"route.GET_/x": Resource(address="route.GET_/x", type="route", name="GET_/x", attributes={},
                                    depends_on=["function.gone"], source="functions/x/flux.json")}
    with pytest.raises(FluxError, match=r"depends on unknown resource function\.gone"):
        DesiredGraph(res)
