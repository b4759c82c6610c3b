"""Command sequences of the core, so the CLI only parses and renders (and other front ends reuse them):

- `plan_and_apply`: under one stage lock, recover -> plan -> show -> confirm -> apply, so nobody moves
  the state between the plan the user approved and the apply;
- `apply_saved`: a saved plan's checks (seal already verified by `Plan.load`) before anything is shown;
- `state_rm` / `state_push`: the state surgery rules (Terraform's);
- `migration_status`: each migration file against the database's history.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

from flux_plan.errors import FluxError

if TYPE_CHECKING:
    from flux_plan.apply import ApplyEvent, ApplyResult
    from flux_plan.model import Migration
    from flux_plan.plan import Plan
    from flux_plan.state import State
    from flux_plan.workspace import Workspace

Show = Callable[["Plan"], None]
Confirm = Callable[["Plan"], None]  # raises (or exits) when the user does not approve


def plan_and_apply(ws: Workspace, make: Callable[[], Plan], *, operation: str, show: Show,
                   confirm: Confirm | None, parallelism: int, lock_timeout: float,
                   on_event: Callable[[ApplyEvent], None] | None = None,
                   run: Callable[[Plan], ApplyResult] | None = None) -> ApplyResult:
    """Recover, plan, show, confirm (unless `confirm` is None: auto-approved) and apply, all under the
    stage lock. `run` replaces the plain `apply_plan` call (e.g. to wrap it in a progress display)."""
    from flux_plan.apply import apply_plan

    with ws.state.locked(operation, lock_timeout):
        ws.state.recover(read=ws.provider.read)
        plan = make()
        show(plan)
        if plan.changes and confirm is not None:
            confirm(plan)
        if run is not None:
            return run(plan)
        return apply_plan(plan, ws, parallelism=parallelism, on_event=on_event, lock_timeout=lock_timeout)


def apply_saved(ws: Workspace, plan: Plan, where: str, *, show: Show, parallelism: int, lock_timeout: float,
                on_event: Callable[[ApplyEvent], None] | None = None,
                run: Callable[[Plan], ApplyResult] | None = None) -> ApplyResult:
    """Apply a saved plan exactly: every check first (state, stage, bundles, migrations, secrets), then
    show it, then apply it under the same lock."""
    from flux_plan.apply import apply_plan
    from flux_plan.plan import check_saved

    with ws.state.locked("destroy" if plan.destroy else "apply", lock_timeout):
        state = ws.state.recover(read=ws.provider.read)
        check_saved(plan, ws, state, where)
        show(plan)
        if run is not None:
            return run(plan)
        return apply_plan(plan, ws, parallelism=parallelism, on_event=on_event, lock_timeout=lock_timeout,
                          saved=True)


def state_rm(ws: Workspace, addresses: Iterable[str], lock_timeout: float) -> State:
    """Forget resources (the real ones stay); refuses, changing nothing, when any is not in the state."""
    addresses = list(addresses)
    with ws.state.locked("state rm", lock_timeout):
        st = ws.state.recover()
        missing = [a for a in addresses if a not in st.resources]
        if missing:
            raise FluxError(f"{ws.state.describe()}: no resource {', '.join(map(repr, missing))} in the state",
                            hint="list addresses with `flux state list`")
        resources = {a: r for a, r in st.resources.items() if a not in addresses}
        return ws.state.commit(st.model_copy(update={"resources": resources}))


def state_push(ws: Workspace, data: bytes, where: str, *, force: bool, lock_timeout: float) -> State:
    """Replace the stage's state with `data`: refused when it is another lineage or an older serial
    (unless `force`); the serial moves past both, so plans saved against the replaced state are stale."""
    with ws.state.locked("state push", lock_timeout):
        current = ws.state.recover()
        new = ws.state.parse(data, where)
        exists = current.serial > 0 or bool(current.resources)
        if exists and not force:
            if new.lineage != current.lineage:
                raise FluxError(f"{where}: lineage {new.lineage} differs from the stage's {current.lineage}",
                                hint="it is another state; pass --force to replace it anyway")
            if new.serial < current.serial:
                raise FluxError(f"{where}: serial {new.serial} is older than the stage's {current.serial}",
                                hint="pull the current state first, or pass --force")
        return ws.state.write_snapshot(new.model_copy(update={"serial": max(new.serial, current.serial) + 1}))


def migration_status(migrations: Iterable[Migration], applied: dict[int, Any] | None) -> list[dict[str, Any]]:
    """One row per migration file (applied / pending / CHANGED after it was applied / unknown when the
    database is not reachable), then the applied versions whose file is gone."""
    left = dict(applied) if applied is not None else None
    rows: list[dict[str, Any]] = []
    for m in migrations:
        row = left.pop(m.version, None) if left is not None else None
        if left is None:
            status = "unknown (database not running)"
        elif row is None:
            status = "pending"
        elif row.checksum != m.checksum:
            status = "CHANGED after it was applied"
        else:
            status = "applied"
        rows.append({"version": m.version, "file": m.file, "status": status,
                     "applied_at": row.applied_at.isoformat() if row else None,
                     "duration_ms": row.duration_ms if row else None})
    for row in (left or {}).values():
        rows.append({"version": row.version, "file": row.file, "status": "applied, file missing",
                     "applied_at": row.applied_at.isoformat(), "duration_ms": row.duration_ms})
    return rows
