"""The bodies of `flux apply | deploy | destroy`, typer-free: the typer commands and the fast path
(`fast.try_command`) both run them, so an apply started either way is the same apply."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from flux_plan.cli.common import lock_seconds, open_workspace
from flux_plan.cli.views import View, view_for
from flux_plan.errors import FluxError

if TYPE_CHECKING:
    from flux_plan.apply import ApplyResult
    from flux_plan.plan import Plan
    from flux_plan.workspace import Workspace


def _run(ws: Workspace, plan: Plan, view: View, *, parallelism: int, lock_timeout: float, saved: bool,
         verb: str) -> ApplyResult:
    from flux_plan.apply import apply_plan

    progress = view.progress(sum(1 for c in plan.changes if c.action != "noop"))
    try:
        result = apply_plan(plan, ws, parallelism=parallelism, on_event=progress, lock_timeout=lock_timeout,
                            saved=saved)
    finally:
        progress.close()
    view.apply_result(result, verb)
    return result


def _plan_and_apply(ws: Workspace, make: Callable[[], Plan], view: View, *, approve: bool, parallelism: int,
                    lock_timeout: float, verb: str, what: str) -> ApplyResult:
    """Under one lock: recover, plan, show, confirm, apply (nobody can move the state in between)."""
    from flux_plan.session import plan_and_apply

    confirm = view.confirmer(approve, what)  # refuses before the lock when nobody can answer
    return plan_and_apply(
        ws, make, operation=verb.lower(), show=view.apply_plan, confirm=confirm, parallelism=parallelism,
        lock_timeout=lock_timeout,
        run=lambda p: _run(ws, p, view, parallelism=parallelism, lock_timeout=lock_timeout, saved=False, verb=verb))


def _workspace(stage: str | None, directory: Path | None, view: View, *, lenient: bool = False) -> Workspace:
    return view.bind(open_workspace(stage, directory, lenient=lenient))


def _saved_workspace(plan: Plan, stage: str | None, directory: Path | None, view: View,
                     planfile: Path) -> Workspace:
    """The plan's own project snapshot, in the project found from the current (or --dir) directory."""
    from flux_plan.plan import workspace_for

    here = open_workspace(stage or plan.stage, directory, lenient=True)
    if plan.project != here.project.name:
        raise FluxError(f"{planfile}: refusing to apply: the plan is for project {plan.project!r}, not "
                        f"{here.project.name!r}. Nothing was changed.", hint="run it in the plan's project")
    if stage is not None and stage != plan.stage:
        raise FluxError(f"{planfile}: refusing to apply: the plan is for stage {plan.stage!r}, not {stage!r}. "
                        "Nothing was changed.", hint=f"drop --stage or pass --stage {plan.stage}")
    return view.bind(workspace_for(here.root, plan))



def run_apply(*, planfile: Path | None = None, auto_approve: bool = False, target: list[str] | None = None,
              replace: list[str] | None = None, refresh_only: bool = False, allow_out_of_order: bool = False,
              parallelism: int = 10, stage: str | None = None, lock_timeout: str = "30s", json_out: bool = False,
              directory: Path | None = None) -> int:
    """`flux apply`: the exit code (failures of the command itself raise FluxError)."""
    target, replace = target or [], replace or []
    view = view_for(json_out)
    timeout = lock_seconds(lock_timeout)
    if planfile is not None:
        from flux_plan.plan import Plan

        if target or replace or refresh_only or allow_out_of_order:
            raise FluxError("--target/--replace/--refresh-only/--allow-out-of-order cannot change a saved plan",
                            hint="pass them to `flux plan -o FILE` instead")
        from flux_plan.session import apply_saved

        plan = Plan.load(planfile)  # the seal is verified before anything else
        ws = _saved_workspace(plan, stage, directory, view, planfile)
        verb = "Destroy" if plan.destroy else "Apply"
        return apply_saved(  # every other check also comes before anything is rendered
            ws, plan, str(planfile), show=view.apply_plan, parallelism=parallelism, lock_timeout=timeout,
            run=lambda p: _run(ws, p, view, parallelism=parallelism, lock_timeout=timeout, saved=True, verb=verb),
        ).exit_code
    from flux_plan.plan import make_plan

    ws = _workspace(stage, directory, view)
    result = _plan_and_apply(ws, lambda: make_plan(ws, targets=target, replace=replace, refresh_only=refresh_only,
                                                   allow_out_of_order=allow_out_of_order, get_ready=auto_approve),
                             view, approve=auto_approve, parallelism=parallelism, lock_timeout=timeout,
                             verb="Apply", what="apply")
    return result.exit_code


def run_deploy(*, allow_out_of_order: bool = False, stage: str | None = None, parallelism: int = 10,
               lock_timeout: str = "30s", json_out: bool = False, directory: Path | None = None) -> int:
    """`flux deploy`: the exit code."""
    from flux_plan.plan import make_plan
    from flux_plan.workspace import function_dir_of

    view = view_for(json_out)
    ws = _workspace(stage, directory, view)
    fn_dir = function_dir_of(ws.root)
    if fn_dir is not None:
        view.note(f"Deploying only {fn_dir} and what it needs.")
    result = _plan_and_apply(ws, lambda: make_plan(ws, function_dir=fn_dir, allow_out_of_order=allow_out_of_order,
                                                   get_ready=True), view,
                             approve=True, parallelism=parallelism, lock_timeout=lock_seconds(lock_timeout),
                             verb="Deploy", what="deploy")
    return result.exit_code


def run_destroy(*, auto_approve: bool = False, target: list[str] | None = None, parallelism: int = 10,
                stage: str | None = None, lock_timeout: str = "30s", json_out: bool = False,
                directory: Path | None = None, purge: bool = False) -> int:
    """`flux destroy`: the exit code."""
    from flux_plan.plan import make_plan

    target = target or []
    if purge and target:
        raise FluxError("--purge removes the whole stage's data; it cannot be combined with --target. "
                        "Nothing was changed.", hint="run `flux destroy --purge` without --target")
    view = view_for(json_out)
    ws = _workspace(stage, directory, view, lenient=True)
    timeout = lock_seconds(lock_timeout)
    result = _plan_and_apply(ws, lambda: make_plan(ws, destroy=True, targets=target, purge=purge), view,
                             approve=auto_approve, parallelism=parallelism, lock_timeout=timeout,
                             verb="Destroy", what="destroy")
    return result.exit_code
