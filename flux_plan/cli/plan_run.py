"""The body of `flux plan`, typer-free: the typer command and the fast path (`fast.try_command`) both run it,
so a plan printed either way is the same plan."""

from __future__ import annotations

from pathlib import Path

from flux_plan.cli.common import lock_seconds, open_workspace
from flux_plan.cli.views import view_for
from flux_plan.errors import FluxError


def run_plan(*, out: Path | None = None, json_out: bool = False, markdown: bool = False,
             detailed_exitcode: bool = False, target: list[str] | None = None, replace: list[str] | None = None,
             refresh_only: bool = False, destroy: bool = False, purge: bool = False, stage: str | None = None,
             lock_timeout: str = "30s", strict: bool = False, allow_out_of_order: bool = False,
             directory: Path | None = None) -> int:
    """The exit code: 2 with --detailed-exitcode and changes, else 0 (failures raise FluxError)."""
    from flux_plan.plan import make_plan, pin

    target, replace = target or [], replace or []
    view = view_for(json_out, markdown=markdown)
    lock_seconds(lock_timeout)  # plan takes no lock; the flag is validated for scripts' sake
    if out is not None and (out.name in ("", ".", "..") or out.is_dir()):  # refused before any work
        raise FluxError(f"-o {str(out)!r}: not a file to save the plan to", hint="e.g. flux plan -o plan.json")
    if purge and (not destroy or target):
        raise FluxError("--purge goes with --destroy of the whole stage (no --target)",
                        hint="run `flux plan --destroy --purge`")
    ws = open_workspace(stage, directory)
    p = make_plan(ws, targets=target, replace=replace, refresh_only=refresh_only, destroy=destroy,
                  strict=strict, allow_out_of_order=allow_out_of_order, purge=purge)
    if out is not None:
        pin(ws, p)
        p.save(out)
    view.plan(p, saved_to=None if out is None else str(out))
    return 2 if detailed_exitcode and p.has_changes() else 0
