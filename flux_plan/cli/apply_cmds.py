"""`flux apply | deploy | destroy`, `flux state ...` and `flux secrets ...`: argument handling and
rendering only; the work is in flux_plan.apply, flux_plan.state and flux_plan.secrets."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer

from flux_plan.cli.common import DirOption, LockTimeoutOption, StageOption, open_workspace, parse_duration
from flux_plan.cli.output import console, err_console, escape, is_tty, print_json
from flux_plan.errors import FluxError

if TYPE_CHECKING:
    from flux_plan.apply import ApplyEvent, ApplyResult
    from flux_plan.plan import Plan
    from flux_plan.workspace import Workspace

PROMPT = "Do you want to perform these actions? Only 'yes' will be accepted"
PAST = {"create": "created", "update": "updated", "replace": "replaced", "delete": "deleted", "read": "read"}
ParallelismOption = typer.Option(10, "--parallelism", "-p", min=1, max=256, envvar="FLUX_PARALLELISM",
                                 help="At most this many provider operations at once.")
AllowOutOfOrderOption = typer.Option(False, "--allow-out-of-order",
                                     help="Apply a new migration that sorts before one already applied.")
JsonOption = typer.Option(False, "--json", help="Stream one JSON object per line (events, then a summary).")


# -- rendering ------------------------------------------------------------------------------------


class Progress:
    """Apply events as plain lines (CI logs), a live progress bar on a terminal, or JSON lines."""

    def __init__(self, total: int, json_out: bool) -> None:
        self.json_out = json_out
        self.total = total
        self.done = 0
        self._live: Any = None
        if not json_out and is_tty() and total:
            from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeElapsedColumn
            from rich.progress import Progress as RichProgress

            self._live = RichProgress(TextColumn("[bold]Applying"), BarColumn(), MofNCompleteColumn(),
                                      TimeElapsedColumn(), TextColumn("{task.description}"),
                                      console=console(), transient=True)
            self._task = self._live.add_task("", total=total)
            self._live.start()

    def __call__(self, ev: ApplyEvent) -> None:
        if self.json_out:
            sys.stdout.write(json.dumps(ev.to_dict(), default=str) + "\n")
            sys.stdout.flush()
            return
        if ev.kind == "message":
            err_console().print(f"[yellow]{escape(ev.message or '')}[/]")
            return
        if ev.kind == "started":
            if self._live is not None:
                self._live.update(self._task, description=escape(f"{ev.action} {ev.address}"))
            return
        if ev.kind in ("finished", "failed", "skipped", "cancelled"):
            self.done += 1
            if self._live is not None:
                self._live.update(self._task, completed=self.done)
        if ev.kind == "finished":
            line, style = f"{ev.address}: {PAST.get(ev.action, ev.action)} ({ev.elapsed:.1f}s)", ""
        elif ev.kind == "failed":
            line, style = f"{ev.address}: {ev.action} failed after {ev.elapsed:.1f}s: {ev.error or ''}", "red"
        elif ev.kind == "skipped":
            line, style = f"{ev.address}: skipped ({ev.error or ''})", "yellow"
        elif ev.kind == "retrying":
            line, style = f"{ev.address}: transient error, retrying (attempt {ev.attempt})", "dim"
        else:
            return
        if self._live is None:  # plain lines: cheap enough for thousands of resources in CI logs
            sys.stdout.write(line + "\n")
        else:
            console().print(f"[{style}]{escape(line)}[/]" if style else escape(line))

    def close(self) -> None:
        if self._live is not None:
            self._live.stop()
            self._live = None


def _print_result(result: ApplyResult, *, json_out: bool, verb: str) -> None:
    counts = result.counts()
    added = sum(1 for r in result.results if r.status == "applied" and r.action in ("create", "replace"))
    changed = sum(1 for r in result.results if r.status == "applied" and r.action == "update")
    destroyed = sum(1 for r in result.results if r.status == "applied" and r.action in ("delete", "replace"))
    if json_out:
        sys.stdout.write(json.dumps({
            "event": "summary", "ok": result.ok, "interrupted": result.interrupted, "serial": result.serial,
            "added": added, "changed": changed, "destroyed": destroyed, **counts,
            "failures": [r.__dict__ for r in result.results if r.status != "applied"],
            "outputs": result.outputs,
        }, default=str) + "\n")
        sys.stdout.flush()
        return
    out = console()
    bad = [r for r in result.results if r.status != "applied"]
    if bad:
        if is_tty():
            from rich.table import Table

            table = Table("address", "action", "status", "elapsed", "error", title="Not applied")
            for r in bad:
                table.add_row(escape(r.address), r.action, r.status, f"{r.elapsed:.1f}s", escape(r.error or ""))
            out.print(table)
        else:
            out.print("Not applied:")
            for r in bad:
                out.print(f"  {escape(r.address)}  {r.action}  {r.status}  {r.elapsed:.1f}s  {escape(r.error or '')}")
    totals = f"{added} added, {changed} changed, {destroyed} destroyed"
    if result.interrupted:
        out.print(f"[bold yellow]{verb} interrupted.[/] State saved. Resources: {totals}; "
                  f"{counts['cancelled']} not started.")
    elif bad:
        out.print(f"[bold red]{verb} failed.[/] Resources: {totals}; {counts['failed']} failed, "
                  f"{counts['skipped']} skipped. What succeeded is in the state; fix the error and re-run.")
    else:
        out.print(f"[bold green]{verb} complete![/] Resources: {totals}.")
    if result.outputs:
        out.print("\nOutputs:\n")
        for k, v in result.outputs.items():
            out.print(f"{escape(k)} = {escape(json.dumps(v) if not isinstance(v, str) else v)}")


def _show_plan(plan: Plan, json_out: bool) -> None:
    if json_out:
        sys.stdout.write(json.dumps({"event": "plan", **plan.to_doc()}, default=str) + "\n")
        sys.stdout.flush()
        return
    from flux_plan.render import render_text

    render_text(plan)


def _confirm(what: str) -> None:
    """Ask for 'yes' on a terminal; refuse when nobody can answer (no terminal, or --input=false)."""
    from flux_plan.cli.output import input_disabled

    if input_disabled():
        raise FluxError(
            f"refusing to {what}: it needs a 'yes' and --input=false forbids asking. Nothing was changed.",
            hint="pass --auto-approve, or save a plan with `flux plan -o FILE` and run `flux apply FILE`",
        )
    if not sys.stdin.isatty():
        raise FluxError(
            f"refusing to {what} without confirmation: stdin is not a terminal",
            hint="pass --auto-approve, or save a plan with `flux plan -o FILE` and run `flux apply FILE`",
        )
    out = console()
    out.print(f"\n[bold]{PROMPT}[/]\n  Enter a value: ", end="")
    answer = sys.stdin.readline().strip()
    if answer != "yes":
        out.print(f"\n{what.capitalize()} cancelled.")
        raise typer.Exit(1)


def _run(ws: Workspace, plan: Plan, *, parallelism: int, lock_timeout: float, json_out: bool,
         saved: bool, verb: str) -> ApplyResult:
    from flux_plan.apply import apply_plan

    progress = Progress(sum(1 for c in plan.changes if c.action != "noop"), json_out)
    try:
        result = apply_plan(plan, ws, parallelism=parallelism, on_event=progress, lock_timeout=lock_timeout,
                            saved=saved)
    finally:
        progress.close()
    _print_result(result, json_out=json_out, verb=verb)
    return result


def _plan_and_apply(ws: Workspace, make: Callable[[], Plan], *, approve: bool, parallelism: int,
                    lock_timeout: float, json_out: bool, verb: str, what: str) -> ApplyResult:
    """Under one lock: recover, plan, show, confirm, apply (nobody can move the state in between)."""
    from flux_plan.session import plan_and_apply

    if json_out and not approve:
        raise FluxError("--json needs --auto-approve (a prompt cannot be answered in JSON mode)",
                        hint="add --auto-approve, or apply a saved plan file")
    return plan_and_apply(
        ws, make, operation=verb.lower(), show=lambda p: _show_plan(p, json_out),
        confirm=None if approve else (lambda p: _confirm(what)), parallelism=parallelism, lock_timeout=lock_timeout,
        run=lambda p: _run(ws, p, parallelism=parallelism, lock_timeout=lock_timeout, json_out=json_out,
                           saved=False, verb=verb))


def _exit(result: ApplyResult) -> None:
    if result.exit_code:
        raise typer.Exit(result.exit_code)


def _workspace(stage: str | None, directory: Path | None, json_out: bool, *, lenient: bool = False) -> Workspace:
    ws = open_workspace(stage, directory, lenient=lenient)
    if json_out:  # provider progress lines must not corrupt the JSON stream
        ws.log = lambda msg: err_console().print(escape(str(msg)))
    return ws


def _saved_workspace(plan: Plan, stage: str | None, directory: Path | None, json_out: bool,
                     planfile: Path) -> Workspace:
    """The plan's own project snapshot, in the project found from the current (or --dir) directory."""
    from flux_plan.workspace import Workspace

    here = open_workspace(stage or plan.stage, directory, lenient=True)
    if plan.project != here.project.name:
        raise FluxError(f"{planfile}: refusing to apply: the plan is for project {plan.project!r}, not "
                        f"{here.project.name!r}. Nothing was changed.", hint="run it in the plan's project")
    if stage is not None and stage != plan.stage:
        raise FluxError(f"{planfile}: refusing to apply: the plan is for stage {plan.stage!r}, not {stage!r}. "
                        "Nothing was changed.", hint=f"drop --stage or pass --stage {plan.stage}")
    ws = Workspace.for_plan(here.root, plan)
    if json_out:
        ws.log = lambda msg: err_console().print(escape(str(msg)))
    return ws


# -- commands -------------------------------------------------------------------------------------


def register(app: typer.Typer) -> None:
    @app.command()
    def apply(
        planfile: Path | None = typer.Argument(None, help="A plan saved with `flux plan -o FILE`."),
        auto_approve: bool = typer.Option(False, "--auto-approve", help="Skip the interactive approval."),
        target: list[str] = typer.Option([], "--target", help="Only this address and what it needs."),
        replace: list[str] = typer.Option([], "--replace", help="Force replacing this address."),
        refresh_only: bool = typer.Option(False, "--refresh-only",
                                          help="Only record drift (what the provider sees) into the state."),
        allow_out_of_order: bool = AllowOutOfOrderOption,
        parallelism: int = ParallelismOption,
        stage: str | None = StageOption,
        lock_timeout: str = LockTimeoutOption,
        json_out: bool = JsonOption,
        directory: Path | None = DirOption,
    ) -> None:
        """Reconcile the stage with the project (or apply exactly a saved plan)."""
        timeout = parse_duration(lock_timeout)
        if planfile is not None:
            from flux_plan.plan import Plan

            if target or replace or refresh_only or allow_out_of_order:
                raise FluxError("--target/--replace/--refresh-only/--allow-out-of-order cannot change a saved plan",
                                hint="pass them to `flux plan -o FILE` instead")
            from flux_plan.session import apply_saved

            plan = Plan.load(planfile)  # the seal is verified before anything else
            ws = _saved_workspace(plan, stage, directory, json_out, planfile)
            verb = "Destroy" if plan.destroy else "Apply"
            _exit(apply_saved(  # every other check also comes before anything is rendered
                ws, plan, str(planfile), show=lambda p: _show_plan(p, json_out), parallelism=parallelism,
                lock_timeout=timeout,
                run=lambda p: _run(ws, p, parallelism=parallelism, lock_timeout=timeout, json_out=json_out,
                                   saved=True, verb=verb)))
            return
        from flux_plan.plan import make_plan

        ws = _workspace(stage, directory, json_out)
        result = _plan_and_apply(ws, lambda: make_plan(ws, targets=target, replace=replace, refresh_only=refresh_only,
                                                       allow_out_of_order=allow_out_of_order),
                                 approve=auto_approve, parallelism=parallelism, lock_timeout=timeout,
                                 json_out=json_out, verb="Apply", what="apply")
        _exit(result)

    @app.command()
    def deploy(
        allow_out_of_order: bool = AllowOutOfOrderOption,
        stage: str | None = StageOption,
        parallelism: int = ParallelismOption,
        lock_timeout: str = LockTimeoutOption,
        json_out: bool = JsonOption,
        directory: Path | None = DirOption,
    ) -> None:
        """Plan and apply without asking; inside functions/<fn>/ only that function and what it needs."""
        from flux_plan.plan import make_plan
        from flux_plan.workspace import function_dir_of

        ws = _workspace(stage, directory, json_out)
        fn_dir = function_dir_of(ws.root)
        if fn_dir is not None and not json_out:
            console().print(f"Deploying only {escape(fn_dir)} and what it needs.")
        result = _plan_and_apply(ws, lambda: make_plan(ws, function_dir=fn_dir,
                                                                     allow_out_of_order=allow_out_of_order), approve=True,
                                 parallelism=parallelism, lock_timeout=parse_duration(lock_timeout),
                                 json_out=json_out, verb="Deploy", what="deploy")
        _exit(result)

    @app.command()
    def destroy(
        auto_approve: bool = typer.Option(False, "--auto-approve", help="Skip the interactive approval."),
        target: list[str] = typer.Option([], "--target", help="Only this address and what uses it."),
        parallelism: int = ParallelismOption,
        stage: str | None = StageOption,
        lock_timeout: str = LockTimeoutOption,
        json_out: bool = JsonOption,
        directory: Path | None = DirOption,
        purge: bool = typer.Option(False, "--purge", help="Also remove the stage's data: its database, async queue, "
                                   "logs and (docker) labelled volumes. Without it they are kept."),
    ) -> None:
        """Delete every resource of the stage, then stop what the provider runs for it (data kept unless --purge)."""
        from flux_plan.plan import make_plan

        if purge and target:
            raise FluxError("--purge removes the whole stage's data; it cannot be combined with --target. "
                            "Nothing was changed.", hint="run `flux destroy --purge` without --target")
        ws = _workspace(stage, directory, json_out, lenient=True)
        timeout = parse_duration(lock_timeout)
        result = _plan_and_apply(ws, lambda: make_plan(ws, destroy=True, targets=target, purge=purge),
                                 approve=auto_approve,
                                 parallelism=parallelism, lock_timeout=timeout, json_out=json_out,
                                 verb="Destroy", what="destroy")
        _exit(result)

    _register_state(app)
    _register_secrets(app)


def _register_state(app: typer.Typer) -> None:
    state_app = typer.Typer(help="Inspect and repair the recorded state (as in Terraform).", no_args_is_help=True)
    app.add_typer(state_app, name="state")

    @state_app.command("list")
    def state_list(
        json_out: bool = typer.Option(False, "--json"),
        stage: str | None = StageOption,
        directory: Path | None = DirOption,
    ) -> None:
        """Addresses recorded in the state."""
        st = open_workspace(stage, directory, lenient=True).state.load()
        if json_out:
            print_json({"serial": st.serial, "lineage": st.lineage, "resources": sorted(st.resources),
                        "pending": st.pending})
            return
        for addr in sorted(st.resources):
            suffix = "  (outcome unknown: refreshed on next apply)" if addr in st.pending else ""
            typer.echo(addr + suffix)

    @state_app.command("show")
    def state_show(
        address: str = typer.Argument(..., help="e.g. function.greet"),
        stage: str | None = StageOption,
        directory: Path | None = DirOption,
    ) -> None:
        """One resource as recorded: attributes, outputs, dependencies, status (JSON)."""
        ws = open_workspace(stage, directory, lenient=True)
        st = ws.state.load()
        if address not in st.resources:
            raise FluxError(f"{ws.state.describe()}: no resource {address!r} in the state",
                            hint="list addresses with `flux state list`")
        print_json({"address": address, **st.resources[address].model_dump(mode="json")})

    @state_app.command("rm")
    def state_rm(
        addresses: list[str] = typer.Argument(..., help="Addresses to forget (the real resources stay)."),
        stage: str | None = StageOption,
        lock_timeout: str = LockTimeoutOption,
        directory: Path | None = DirOption,
    ) -> None:
        """Forget resources without deleting them (the next plan would create them again)."""
        from flux_plan.session import state_rm as forget

        ws = open_workspace(stage, directory, lenient=True)
        new = forget(ws, addresses, parse_duration(lock_timeout))
        for a in addresses:
            typer.echo(f"Removed {a}")
        typer.echo(f"State serial {new.serial}.")

    @state_app.command("unlock")
    def state_unlock(
        lock_id: str = typer.Argument(..., help="The lock ID shown by the command that could not get the lock."),
        stage: str | None = StageOption,
        directory: Path | None = DirOption,
    ) -> None:
        """Release a stage lock left by a command that is gone (or hung)."""
        ws = open_workspace(stage, directory, lenient=True)
        holder = ws.state.backend.lock_info()
        ws.state.backend.unlock(lock_id, force=True)
        typer.echo(f"Released lock {lock_id}.")
        if holder is not None and holder.id == lock_id and not holder.is_stale():
            err_console().print(f"[yellow]Warning:[/] its holder may still run ({escape(holder.describe())}); "
                                "make sure it is stopped before changing the stage.")

    @state_app.command("pull")
    def state_pull(stage: str | None = StageOption, directory: Path | None = DirOption) -> None:
        """Print the state as JSON."""
        sys.stdout.write(open_workspace(stage, directory, lenient=True).state.load().to_bytes().decode())

    @state_app.command("push")
    def state_push(
        file: Path = typer.Argument(..., help="A state file (e.g. from `flux state pull`)."),
        force: bool = typer.Option(False, "--force", help="Accept another lineage or an older serial."),
        stage: str | None = StageOption,
        lock_timeout: str = LockTimeoutOption,
        directory: Path | None = DirOption,
    ) -> None:
        """Replace the state with FILE (refused when it is of another lineage or older, unless --force)."""
        ws = open_workspace(stage, directory, lenient=True)
        try:
            data = file.read_bytes()
        except OSError as exc:
            raise FluxError(f"{file}: cannot read ({exc.strerror})") from exc
        from flux_plan.session import state_push as push

        written = push(ws, data, str(file), force=force, lock_timeout=parse_duration(lock_timeout))
        typer.echo(f"Pushed {file} ({len(written.resources)} resources), state serial {written.serial}.")


def _register_secrets(app: typer.Typer) -> None:
    secrets_app = typer.Typer(help="Encrypted secrets and configuration of a stage.", no_args_is_help=True)
    app.add_typer(secrets_app, name="secrets")

    @secrets_app.command("set")
    def secrets_set(
        pairs: list[str] = typer.Argument(..., help="KEY=VALUE pairs."),
        stage: str | None = StageOption,
        directory: Path | None = DirOption,
    ) -> None:
        """Encrypt and store KEY=VALUE pairs (values are never printed)."""
        from flux_plan.secrets import check_key_name

        values: dict[str, str] = {}
        for pair in pairs:
            key, sep, value = pair.partition("=")
            if not sep:
                raise FluxError(f"{key!r}: expected KEY=VALUE", hint="e.g. flux secrets set API_KEY=abc123")
            values[check_key_name(key.strip())] = value
        ws = open_workspace(stage, directory, lenient=True)
        ws.secrets.set(values)
        typer.echo(f"Set {', '.join(sorted(values))} for stage {ws.stage.name} "
                   f"(encrypted in {ws.secrets.path.relative_to(ws.root)}). Run `flux deploy` to roll them out.")

    @secrets_app.command("list")
    def secrets_list(
        json_out: bool = typer.Option(False, "--json"),
        stage: str | None = StageOption,
        directory: Path | None = DirOption,
    ) -> None:
        """Names and fingerprints (never values)."""
        ws = open_workspace(stage, directory, lenient=True)
        items = [{"key": k, "fingerprint": ws.secrets.fingerprint(k)} for k in ws.secrets.keys()]  # noqa: SIM118
        if json_out:
            print_json({"stage": ws.stage.name, "secrets": items})
            return
        if not items:
            typer.echo(f"No secrets set for stage {ws.stage.name}.")
        for it in items:
            typer.echo(f"{it['key']}  {it['fingerprint'][:16]}")

    @secrets_app.command("unset")
    def secrets_unset(
        key: str = typer.Argument(...),
        stage: str | None = StageOption,
        directory: Path | None = DirOption,
    ) -> None:
        """Remove a secret."""
        ws = open_workspace(stage, directory, lenient=True)
        if not ws.secrets.unset(key):
            raise FluxError(f"secret {key!r} is not set for stage {ws.stage.name!r}",
                            hint="see the names with `flux secrets list`")
        typer.echo(f"Unset {key} for stage {ws.stage.name}.")

    @secrets_app.command("import")
    def secrets_import(
        file: Path = typer.Argument(..., help="A .env file: KEY=VALUE lines."),
        stage: str | None = StageOption,
        directory: Path | None = DirOption,
    ) -> None:
        """Set every KEY=VALUE of a .env file."""
        ws = open_workspace(stage, directory, lenient=True)
        keys = ws.secrets.import_file(file)
        typer.echo(f"Imported {len(keys)} key(s) for stage {ws.stage.name}: {', '.join(keys)}")
