"""The `flux` command line: typer app. Command groups live in sibling modules, each only parsing
arguments and rendering results; the work happens in the core modules."""

from __future__ import annotations

import gc
import os
import sys
from typing import TYPE_CHECKING, Any

from flux_plan.errors import FluxError

if TYPE_CHECKING:
    import typer

_APP: typer.Typer | None = None


def _register(app: typer.Typer) -> None:
    from flux_plan.cli import apply_cmds, misc_cmds, plan_cmds, rollback_cmds, runtime_cmds

    for module in (misc_cmds, plan_cmds, apply_cmds, runtime_cmds, rollback_cmds):
        module.register(app)


def _flag(text: str, option: str) -> bool:
    value = text.strip().lower()
    if value in ("true", "1", "yes", "on"):
        return True
    if value in ("false", "0", "no", "off"):
        return False
    raise FluxError(f"{option}={text}: expected true or false", hint=f"e.g. {option}=false")


def _hoist_globals(args: list[str]) -> list[str]:
    """Terraform habit: `flux plan --no-color --input=false` (per command) means the global options."""
    front: list[str] = []
    rest: list[str] = []
    i = 0
    while i < len(args):
        a = args[i]
        if a == "--":
            rest += args[i:]
            break
        if a == "--no-color" or a.startswith("--input="):
            front.append(a)
        elif a == "--input" and i + 1 < len(args):
            front += [a, args[i + 1]]
            i += 1
        else:
            rest.append(a)
        i += 1
    return front + rest


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
    """Entry point: user mistakes (FluxError) print a message and exit 1, never a traceback; with
    --json the failure is also printed as JSON on stdout, so a pipeline parsing it sees why."""
    args = list(sys.argv[1:] if argv is None else argv)
    if args == ["version"]:
        # the command scripts ask most often, answered without building the typer app (typer parses
        # every option through pydantic: ~150 ms before any command runs)
        sys.stdout.write("\n".join(version_lines()) + "\n")
        return
    from flux_plan.cli.output import err_console

    # Pydantic reads every installed distribution's entry points (~50 ms) to find plugins when the first
    # model is defined; Flux uses none. PYDANTIC_DISABLE_PLUGINS= (empty) in the environment opts back in.
    os.environ.setdefault("PYDANTIC_DISABLE_PLUGINS", "__all__")
    # A plan of thousands of resources allocates hundreds of thousands of long-lived objects; with the
    # default thresholds the collector rescans them over and over (a third of a 5000-function no-op
    # plan). Collections still run, just far less often.
    gc.set_threshold(100_000, 20, 100)
    json_mode = "--json" in args[: args.index("--")] if "--" in args else "--json" in args
    try:
        from flux_plan.cli import fast

        if fast.enabled():  # help from its cache, validate of an unchanged project, plan/apply: no typer app built
            code = fast.try_help(args)
            if code is None:
                code = fast.try_validate(args)
            if code is None:
                code = fast.try_command(args)
            if code is not None:
                if code:
                    sys.exit(code)
                return
        from flux_plan.cli.common import check_single_dash

        check_single_dash(args)
        # With --json, click hands usage errors back (standalone_mode=False) so they are printed as JSON too;
        # it then returns the exit code instead of exiting.
        code = get_app()(args=_hoist_globals(args), prog_name="flux", standalone_mode=not json_mode)
        if isinstance(code, int) and code:
            sys.exit(code)
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
    except Exception as exc:
        if not _click_failure(exc):
            raise


def _click_failure(exc: Exception) -> bool:
    """A click usage error or abort reaching main() (only with --json): rendered as JSON like any failure."""
    import typer

    if isinstance(exc, typer.Abort):
        from flux_plan.cli.output import err_console

        err_console().print("Interrupted.")
        sys.exit(130)
    # click's usage errors (typer may bundle its own click): a formatted message and an exit code
    message, code = getattr(exc, "format_message", None), getattr(exc, "exit_code", None)
    if not callable(message) or not isinstance(code, int):
        return False
    err = FluxError(str(message()), hint=_usage_hint(exc))
    err.exit_code = code
    _fail(err, True)
    return True


def _usage_hint(exc: Exception) -> str:
    ctx = getattr(exc, "ctx", None)
    if ctx is not None:
        return f"see `{ctx.command_path} --help`"
    return "see `flux --help`"


def _fail(exc: FluxError, json_mode: bool) -> None:
    """The failure through the view the command picks from the same `--json` flag."""
    from flux_plan.cli.views import view_for

    view_for(json_mode).failure(exc)
    sys.exit(exc.exit_code)
