"""The core command sequences (flux_plan.session) in-process, on the test-only `record` provider: the CLI
is only a renderer around them."""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import pytest
from flux_record import world_resources

from flux_plan.errors import FluxError
from flux_plan.migrations import AppliedMigration
from flux_plan.model import Migration
from flux_plan.plan import Plan, make_plan, workspace_for
from flux_plan.session import apply_saved, migration_status, plan_and_apply, state_push, state_rm
from flux_plan.workspace import Workspace


@pytest.fixture
def ws(tmp_path: Path, make_project: Callable[..., Path], monkeypatch: pytest.MonkeyPatch) -> Workspace:
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))
    monkeypatch.delenv("FLUX_SECRETS_KEY", raising=False)
    monkeypatch.delenv("FLUX_PLAN_KEY", raising=False)
    root = make_project(tmp_path, functions={"a": None, "b": None})
    return Workspace.open(root)


class Refused(Exception):
    pass


def _refuse(plan: Plan) -> None:
    raise Refused(plan.summary())


def test_plan_and_apply_confirms_under_the_lock(ws: Workspace) -> None:
    shown: list[Plan] = []
    with pytest.raises(Refused):
        plan_and_apply(ws, lambda: make_plan(ws), operation="apply", show=shown.append, confirm=_refuse,
                       parallelism=2, lock_timeout=1)
    assert shown[0].summary() == {"add": 5, "change": 0, "destroy": 0}
    assert world_resources(ws.state_dir) == {} and ws.state.backend.lock_info() is None
    result = plan_and_apply(ws, lambda: make_plan(ws), operation="apply", show=shown.append, confirm=None,
                            parallelism=2, lock_timeout=1)
    assert result.ok and set(world_resources(ws.state_dir)) == {
        "api.dev", "function.a", "function.b", "route.POST_/a", "route.POST_/b"}


def test_apply_saved_checks_before_showing(ws: Workspace) -> None:
    from flux_plan.plan import pin

    plan = make_plan(ws)
    pin(ws, plan)
    path = ws.root / "p.json"
    plan.save(path)
    saved = Plan.load(path)
    plan_and_apply(ws, lambda: make_plan(ws, targets=["function.a"]), operation="apply", show=lambda p: None,
                   confirm=None, parallelism=2, lock_timeout=1)
    shown: list[Plan] = []
    with pytest.raises(FluxError, match="refusing to apply: saved plan is stale"):
        apply_saved(workspace_for(ws.root, saved), saved, "p.json", show=shown.append, parallelism=2,
                    lock_timeout=1)
    assert shown == [] and set(world_resources(ws.state_dir)) == {"function.a"}


def test_state_rm_and_push_rules(ws: Workspace) -> None:
    plan_and_apply(ws, lambda: make_plan(ws), operation="apply", show=lambda p: None, confirm=None,
                   parallelism=2, lock_timeout=1)
    before = ws.state.load()
    with pytest.raises(FluxError, match=r"no resource 'function\.zz'"):
        state_rm(ws, ["function.a", "function.zz"], 1)
    assert ws.state.load().resources == before.resources  # all or nothing
    after = state_rm(ws, ["function.a"], 1)
    assert "function.a" not in after.resources and after.serial == before.serial + 1
    old = before.model_copy(update={"serial": 0})
    with pytest.raises(FluxError, match="serial 0 is older than the stage's"):
        state_push(ws, old.to_bytes(), "old.json", force=False, lock_timeout=1)
    other = json.loads(before.to_bytes())
    other["lineage"] = "another-lineage"
    with pytest.raises(FluxError, match="lineage another-lineage differs"):
        state_push(ws, json.dumps(other).encode(), "other.json", force=False, lock_timeout=1)
    pushed = state_push(ws, old.to_bytes(), "old.json", force=True, lock_timeout=1)
    assert pushed.serial == after.serial + 1 and "function.a" in pushed.resources


def test_migration_status_rows() -> None:
    files = [Migration(file=f"00{v}_m.sql", version=v, name="m", checksum=f"c{v}", path=f"schema/00{v}_m.sql")
             for v in (1, 2, 3)]
    when = datetime(2026, 1, 1, tzinfo=UTC)
    applied = {1: AppliedMigration(1, "m", "001_m.sql", "c1", when, 5),
               2: AppliedMigration(2, "m", "002_m.sql", "edited", when, 5),
               9: AppliedMigration(9, "gone", "009_gone.sql", "c9", when, 1)}
    rows = migration_status(files, applied)
    assert [(r["file"], r["status"]) for r in rows] == [
        ("001_m.sql", "applied"), ("002_m.sql", "CHANGED after it was applied"), ("003_m.sql", "pending"),
        ("009_gone.sql", "applied, file missing")]
    assert {r["status"] for r in migration_status(files, None)} == {"unknown (database not running)"}
    assert len(applied) == 3  # the caller's rows are not consumed
