"""`flux validate`, `flux plan` and `flux graph`: read-only commands (no lock taken)."""

from __future__ import annotations

from pathlib import Path

import typer

from flux_plan.cli.common import open_workspace, project_root
from flux_plan.cli.options import DirOption, LockTimeoutOption, StageOption
from flux_plan.cli.output import err_console, escape
from flux_plan.cli.views import view_for
from flux_plan.errors import FluxError


def register(app: typer.Typer) -> None:
    @app.command()
    def validate(
        json_out: bool = typer.Option(False, "--json", help="Machine-readable problems."),
        strict: bool = typer.Option(False, "--strict", help="Treat warnings as errors."),
        directory: Path | None = DirOption,
    ) -> None:
        """Scan and validate the project: every problem at once, with file and line."""
        from flux_plan.check import provider_problems, syntax_problems
        from flux_plan.project import scan

        view = view_for(json_out)
        root = project_root(directory)
        project, problems = scan(root)
        problems += provider_problems(project) + syntax_problems(root, project.functions)
        if strict:
            for p in problems:
                p.severity = "error"
        view.validation(project, problems)
        if any(p.severity == "error" for p in problems):
            raise typer.Exit(1)

    @app.command()
    def plan(
        out: Path | None = typer.Option(None, "-o", "--out", help="Save the plan for `flux apply FILE`."),
        json_out: bool = typer.Option(False, "--json", help="Print the plan as JSON (schemas/plan.schema.json)."),
        markdown: bool = typer.Option(False, "--markdown", help="Print a Markdown summary for a PR comment."),
        detailed_exitcode: bool = typer.Option(False, "--detailed-exitcode",
                                               help="Exit 2 when there are changes, 0 when none."),
        target: list[str] = typer.Option([], "--target", help="Only this address and what it needs."),
        replace: list[str] = typer.Option([], "--replace", help="Force replacing this address."),
        refresh_only: bool = typer.Option(False, "--refresh-only", help="Only report drift."),
        destroy: bool = typer.Option(False, "--destroy", help="Plan to delete everything of the stage."),
        purge: bool = typer.Option(False, "--purge", help="With --destroy: also remove the stage's data (as "
                                   "`flux destroy --purge`)."),
        stage: str | None = StageOption,
        lock_timeout: str = LockTimeoutOption,
        strict: bool = typer.Option(False, "--strict", help="Keys read but set nowhere are errors."),
        allow_out_of_order: bool = typer.Option(False, "--allow-out-of-order",
                                                help="Allow a new migration that sorts before an applied one."),
        directory: Path | None = DirOption,
    ) -> None:
        """Preview what apply would change: scan, refresh, diff."""
        from flux_plan.cli.plan_run import run_plan

        code = run_plan(out=out, json_out=json_out, markdown=markdown, detailed_exitcode=detailed_exitcode,
                        target=target, replace=replace, refresh_only=refresh_only, destroy=destroy, purge=purge,
                        stage=stage, lock_timeout=lock_timeout, strict=strict,
                        allow_out_of_order=allow_out_of_order, directory=directory)
        if code:
            raise typer.Exit(code)

    @app.command()
    def show(
        planfile: Path = typer.Argument(..., help="A plan saved with `flux plan -o FILE`."),
        json_out: bool = typer.Option(False, "--json", help="The plan document as JSON."),
        markdown: bool = typer.Option(False, "--markdown", help="A Markdown summary for a PR comment."),
    ) -> None:
        """Render a saved plan again (its seal is verified first), as `terraform show` does."""
        from flux_plan.plan import Plan

        view_for(json_out, markdown=markdown).saved_plan(Plan.load(planfile, action="show"))

    @app.command()
    def graph(
        fmt: str = typer.Option("dot", "--format", "-f", help="dot (Graphviz) or json."),
        stage: str | None = StageOption,
        directory: Path | None = DirOption,
    ) -> None:
        """Print the desired-state graph (resources and dependencies)."""
        from flux_plan.graph import build_graph

        if fmt not in ("dot", "json"):
            raise FluxError(f"--format {fmt!r}: unknown format", hint="use --format dot or --format json")
        view = view_for(fmt == "json")
        ws = open_workspace(stage, directory)
        try:
            fingerprints = {k: ws.secrets.fingerprint(k) for k in ws.secrets.keys()}  # noqa: SIM118
        except FluxError as exc:
            err_console().print(f"[yellow]Warning:[/] secrets not read ({escape(exc.message)})")
            fingerprints = {}
        view.graph(build_graph(ws.project, ws.stage, fingerprints))
