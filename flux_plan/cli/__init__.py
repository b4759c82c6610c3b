"""The `flux` command line: typer app. Command groups live in sibling modules, each only parsing
arguments and rendering results; the work happens in the core modules."""

from __future__ import annotations

import os
import sys

import typer

from flux_plan.errors import FluxError

app = typer.Typer(
    name="flux",
    help="Plan, diff and deploy serverless TypeScript functions.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    # Plain click help and usage errors: typer's rich formatter imports rich.markdown, pygments and
    # attrs (~90 ms), more than half of the 150 ms that `flux --help` may take.
    rich_markup_mode=None,
    context_settings={"help_option_names": ["-h", "--help"]},
)


def _register() -> None:
    from flux_plan.cli import apply_cmds, misc_cmds, plan_cmds, rollback_cmds, runtime_cmds

    for module in (misc_cmds, plan_cmds, apply_cmds, runtime_cmds, rollback_cmds):
        module.register(app)


@app.callback()
def _root() -> None:
    """Plan, diff and deploy serverless TypeScript functions."""


def main(argv: list[str] | None = None) -> None:
    """Entry point: user mistakes (FluxError) print a message and exit 1, never a traceback."""
    from flux_plan.cli.output import err_console, escape

    # Pydantic reads every installed distribution's entry points (~50 ms) to find plugins when the first
    # model is defined; Flux uses none. PYDANTIC_DISABLE_PLUGINS= (empty) in the environment opts back in.
    os.environ.setdefault("PYDANTIC_DISABLE_PLUGINS", "__all__")
    _register()
    try:
        app(args=argv, prog_name="flux")
    except FluxError as exc:
        err_console().print(f"[bold red]Error:[/] {escape(exc.render())}")
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        err_console().print("Interrupted.")
        sys.exit(130)
