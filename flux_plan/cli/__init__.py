"""The `flux` command line: typer app. Command groups live in sibling modules, each only parsing
arguments and rendering results; the work happens in the core modules."""

from __future__ import annotations

import os
import sys
from typing import TYPE_CHECKING, Any

from flux_plan.errors import FluxError

if TYPE_CHECKING:
    import typer

_APP: typer.Typer | None = None


def _root() -> None:
    """Plan, diff and deploy serverless TypeScript functions."""


def _register(app: typer.Typer) -> None:
    from flux_plan.cli import apply_cmds, misc_cmds, plan_cmds, rollback_cmds, runtime_cmds

    for module in (misc_cmds, plan_cmds, apply_cmds, runtime_cmds, rollback_cmds):
        module.register(app)


def get_app() -> typer.Typer:
    """The typer app with every command, built on first use (`flux version` answers without it)."""
    global _APP
    if _APP is None:
        import typer

        app = typer.Typer(
            name="flux",
            help="Plan, diff and deploy serverless TypeScript functions.",
            no_args_is_help=True,
            add_completion=False,
            pretty_exceptions_enable=False,
            # Plain click help and usage errors: typer's rich formatter imports rich.markdown, pygments
            # and attrs (~90 ms), more than half of the 150 ms that `flux --help` may take.
            rich_markup_mode=None,
            context_settings={"help_option_names": ["-h", "--help"]},
        )
        app.callback()(_root)
        _register(app)
        _APP = app
    return _APP


def __getattr__(name: str) -> Any:
    if name == "app":  # `from flux_plan.cli import app` keeps working
        return get_app()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def version_lines() -> list[str]:
    """`flux version`: the version and the installed providers (from the discovery cache)."""
    from flux_plan import __version__
    from flux_plan.providers import available_providers

    return [f"flux {__version__}", *(f"  provider {n}: {ep.value}" for n, ep in available_providers().items())]


def main(argv: list[str] | None = None) -> None:
    """Entry point: user mistakes (FluxError) print a message and exit 1, never a traceback."""
    if (sys.argv[1:] if argv is None else argv) == ["version"]:
        # the command scripts ask most often, answered without building the typer app (typer parses
        # every option through pydantic: ~150 ms before any command runs)
        sys.stdout.write("\n".join(version_lines()) + "\n")
        return
    from flux_plan.cli.output import err_console, escape

    # Pydantic reads every installed distribution's entry points (~50 ms) to find plugins when the first
    # model is defined; Flux uses none. PYDANTIC_DISABLE_PLUGINS= (empty) in the environment opts back in.
    os.environ.setdefault("PYDANTIC_DISABLE_PLUGINS", "__all__")
    app = get_app()
    try:
        app(args=argv, prog_name="flux")
    except FluxError as exc:
        err_console().print(f"[bold red]Error:[/] {escape(exc.render())}")
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        err_console().print("Interrupted.")
        sys.exit(130)
