"""`flux validate`, `flux plan` and `flux graph`: read-only commands (no lock taken)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import typer

from flux_plan.cli.common import (
    DirOption,
    LockTimeoutOption,
    StageOption,
    open_workspace,
    parse_duration,
    project_root,
)
from flux_plan.cli.output import console, err_console, escape, print_json
from flux_plan.errors import FluxError, Problem


def _problem_doc(p: Problem) -> dict[str, Any]:
    return {"file": p.file, "line": p.line, "column": p.column, "json_path": p.json_path, "severity": p.severity,
            "message": p.message, "hint": p.hint}


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

        root = project_root(directory)
        project, problems = scan(root)
        problems += provider_problems(project) + syntax_problems(root, project.functions)
        if strict:
            for p in problems:
                p.severity = "error"
        errors = [p for p in problems if p.severity == "error"]
        warnings = [p for p in problems if p.severity != "error"]
        if json_out:
            print_json({"valid": not errors, "errors": len(errors), "warnings": len(warnings),
                        "functions": len(project.functions), "migrations": len(project.migrations),
                        "problems": [_problem_doc(p) for p in problems]})
        else:
            out = console()
            for p in problems:
                color = "red" if p.severity == "error" else "yellow"
                text = escape(p.render()).replace(f": {p.severity}:", f": [{color}]{p.severity}[/]:", 1)
                out.print(text)
            if errors:
                out.print(f"[bold red]{len(errors)} error(s)[/], {len(warnings)} warning(s).")
            else:
                out.print(f"[green]Valid:[/] {len(project.functions)} function(s), {len(project.migrations)} "
                          f"migration(s), {len(warnings)} warning(s).")
        if errors:
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
        from flux_plan.plan import make_plan, pin
        from flux_plan.render import render_markdown, render_text

        parse_duration(lock_timeout)  # plan takes no lock; the flag is validated for scripts' sake
        if json_out and markdown:
            raise FluxError("--json and --markdown are exclusive", hint="pick one output format")
        if purge and (not destroy or target):
            raise FluxError("--purge goes with --destroy of the whole stage (no --target)",
                            hint="run `flux plan --destroy --purge`")
        ws = open_workspace(stage, directory)
        p = make_plan(ws, targets=target, replace=replace, refresh_only=refresh_only, destroy=destroy,
                      strict=strict, allow_out_of_order=allow_out_of_order, purge=purge)
        if out is not None:
            pin(ws, p)
            p.save(out)
        if json_out:
            print_json(p.to_doc())
        elif markdown:
            sys.stdout.write(render_markdown(p))
            sys.stdout.flush()
        else:
            render_text(p)
            if out is not None:
                console().print(f"\nSaved the plan to {escape(str(out))}. Apply exactly it with: "
                                f"flux apply {escape(str(out))}")
        if detailed_exitcode and p.has_changes():
            raise typer.Exit(2)

    @app.command()
    def show(
        planfile: Path = typer.Argument(..., help="A plan saved with `flux plan -o FILE`."),
        json_out: bool = typer.Option(False, "--json", help="The plan document as JSON."),
        markdown: bool = typer.Option(False, "--markdown", help="A Markdown summary for a PR comment."),
    ) -> None:
        """Render a saved plan again (its seal is verified first), as `terraform show` does."""
        from flux_plan.plan import Plan
        from flux_plan.render import render_markdown, render_text

        if json_out and markdown:
            raise FluxError("--json and --markdown are exclusive", hint="pick one output format")
        p = Plan.load(planfile, action="show")
        if json_out:
            doc = p.to_doc()
            doc.pop("snapshot", None)  # the pinned specs are for apply; --json shows what the plan does
            print_json(doc)
        elif markdown:
            sys.stdout.write(render_markdown(p))
            sys.stdout.flush()
        else:
            render_text(p)

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
        ws = open_workspace(stage, directory)
        try:
            fingerprints = {k: ws.secrets.fingerprint(k) for k in ws.secrets.keys()}  # noqa: SIM118
        except FluxError as exc:
            err_console().print(f"[yellow]Warning:[/] secrets not read ({escape(exc.message)})")
            fingerprints = {}
        g = build_graph(ws.project, ws.stage, fingerprints)
        if fmt == "json":
            print_json(g.to_json())
        else:
            sys.stdout.write(g.to_dot())
