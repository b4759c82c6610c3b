"""The `flux` command line: typer app. Command groups live in sibling modules, each only parsing
arguments and rendering results; the work happens in the core modules."""

from __future__ import annotations

import sys

import typer
from rich.markup import escape

from flux_plan.errors import FluxError

app = typer.Typer(
    name="flux",
    help="Plan, diff and deploy serverless TypeScript functions.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)


def _register() -> None:
    from flux_plan.cli import apply_cmds, misc_cmds, plan_cmds, rollback_cmds, runtime_cmds

    for module in (misc_cmds, plan_cmds, apply_cmds, runtime_cmds, rollback_cmds):
        module.register(app)


@app.callback()
def _root(
    no_color: bool = typer.Option(False, "--no-color", envvar="FLUX_NO_COLOR",
                                  help="No colors or styles in the output (also NO_COLOR)."),
    input_: str = typer.Option("true", "--input", envvar="FLUX_INPUT", metavar="true|false",
                               help="--input=false: never wait on stdin; fail where an answer is needed."),
) -> None:
    """Plan, diff and deploy serverless TypeScript functions."""
    from flux_plan.cli.output import configure

    configure(no_color=no_color, interactive=_flag(input_, "--input"))


def _flag(text: str, option: str) -> bool:
    value = text.strip().lower()
    if value in ("true", "1", "yes", "on"):
        return True
    if value in ("false", "0", "no", "off"):
        return False
    raise FluxError(f"{option}={text}: expected true or false", hint=f"e.g. {option}=false")


def main(argv: list[str] | None = None) -> None:
    """Entry point: user mistakes (FluxError) print a message and exit 1, never a traceback; with
    --json the failure is also printed as JSON on stdout, so a pipeline parsing it sees why."""
    from flux_plan.cli.output import err_console

    args = list(sys.argv[1:] if argv is None else argv)
    json_mode = "--json" in args[: args.index("--")] if "--" in args else "--json" in args
    try:
        from flux_plan.cli.common import check_single_dash

        check_single_dash(args)
        _register()
        app(args=args, prog_name="flux")
    except FluxError as exc:
        _fail(exc, json_mode)
    except RecursionError:
        _fail(FluxError("the input is nested too deeply to read",
                        hint="flatten the JSON file named by the command (a few levels are enough)"), json_mode)
    except OSError as exc:
        where = exc.filename or "a file"
        _fail(FluxError(f"{where}: {exc.strerror or exc}",
                        hint="check that the file and its directory (e.g. .flux/) are writable by you"), json_mode)
    except KeyboardInterrupt:
        err_console().print("Interrupted.")
        sys.exit(130)


def _fail(exc: FluxError, json_mode: bool) -> None:
    from flux_plan.cli.output import err_console, print_failure

    if json_mode:
        print_failure(exc)
    err_console().print(f"[bold red]Error:[/] {escape(exc.render())}")
    sys.exit(exc.exit_code)
