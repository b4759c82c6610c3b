"""`flux rollback [FN] [--to VERSION]`: point a function's live alias back at its previous deployed
version, for providers with the optional `rollback(function, to_version)` hook (aws). Argument
handling and rendering only; the work is the provider's."""

from __future__ import annotations

from pathlib import Path

import typer

from flux_plan.cli.common import lock_seconds, open_workspace
from flux_plan.cli.options import DirOption, LockTimeoutOption, StageOption
from flux_plan.cli.views import view_for
from flux_plan.errors import FluxError, ProviderError


def register(app: typer.Typer) -> None:
    @app.command()
    def rollback(
        function: str | None = typer.Argument(None, help="Function to roll back (default: the one whose "
                                              "directory you are in, else every function of the stage)."),
        to: str | None = typer.Option(None, "--to", help="Exact version to switch to (default: the previous one)."),
        stage: str | None = StageOption,
        lock_timeout: str = LockTimeoutOption,
        directory: Path | None = DirOption,
        json_out: bool = typer.Option(False, "--json", help="Print the result as JSON."),
    ) -> None:
        """Switch functions back to their previously deployed version (atomic alias switch)."""
        from flux_plan.workspace import function_dir_of

        view = view_for(json_out)
        ws = open_workspace(stage, directory)
        hook = getattr(ws.provider, "rollback", None)
        if hook is None:
            raise FluxError(
                f"flux.project.json (stages.{ws.stage.name}): provider {ws.stage.provider!r} keeps no previous "
                "versions to roll back to",
                hint="deploy the previous code instead (e.g. git checkout + flux deploy)",
            )
        names = [f.name for f in ws.project.functions]
        if function is None:
            fn_dir = function_dir_of(ws.root)
            inside = [f.name for f in ws.project.functions if fn_dir and f.dir == fn_dir]
            targets = inside or names
        elif function not in names:
            raise FluxError(f"unknown function {function!r}", hint=f"functions: {', '.join(sorted(names))}")
        else:
            targets = [function]
        if to is not None and len(targets) != 1:
            raise FluxError("--to needs exactly one function", hint="name the function: flux rollback FN --to N")
        results = []
        with ws.state.locked("rollback", lock_seconds(lock_timeout)):
            for name in targets:
                try:
                    results.append(hook(name, to) if to is not None else hook(name))
                except ProviderError as exc:
                    raise FluxError(str(exc)) from exc
        view.rollbacks(ws.stage.name, results)
