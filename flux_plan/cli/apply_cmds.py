"""`flux apply | deploy | destroy`, `flux state ...` and `flux secrets ...`: argument handling and
rendering only; the work is in flux_plan.apply, flux_plan.state and flux_plan.secrets."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING

import typer

from flux_plan.cli.common import lock_seconds, open_workspace
from flux_plan.cli.options import DirOption, LockTimeoutOption, StageOption
from flux_plan.cli.output import err_console, escape, print_json
from flux_plan.cli.views import view_for
from flux_plan.errors import FluxError

if TYPE_CHECKING:
    pass

ParallelismOption = typer.Option(10, "--parallelism", "-p", min=1, max=256, envvar="FLUX_PARALLELISM",
                                 help="At most this many provider operations at once.")
AllowOutOfOrderOption = typer.Option(False, "--allow-out-of-order",
                                     help="Apply a new migration that sorts before one already applied.")
JsonOption = typer.Option(False, "--json", help="Stream one JSON object per line (events, then a summary).")


def _exit(code: int) -> None:
    if code:
        raise typer.Exit(code)


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
        from flux_plan.cli.apply_run import run_apply

        _exit(run_apply(planfile=planfile, auto_approve=auto_approve, target=target, replace=replace,
                        refresh_only=refresh_only, allow_out_of_order=allow_out_of_order, parallelism=parallelism,
                        stage=stage, lock_timeout=lock_timeout, json_out=json_out, directory=directory))

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
        from flux_plan.cli.apply_run import run_deploy

        _exit(run_deploy(allow_out_of_order=allow_out_of_order, stage=stage, parallelism=parallelism,
                         lock_timeout=lock_timeout, json_out=json_out, directory=directory))

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
        from flux_plan.cli.apply_run import run_destroy

        _exit(run_destroy(auto_approve=auto_approve, target=target, parallelism=parallelism, stage=stage,
                          lock_timeout=lock_timeout, json_out=json_out, directory=directory, purge=purge))

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
        view = view_for(json_out)
        view.state_list(open_workspace(stage, directory, lenient=True).state.load())

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
        new = forget(ws, addresses, lock_seconds(lock_timeout))
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

        written = push(ws, data, str(file), force=force, lock_timeout=lock_seconds(lock_timeout))
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
        view = view_for(json_out)
        ws = open_workspace(stage, directory, lenient=True)
        items = [{"key": k, "fingerprint": ws.secrets.fingerprint(k)} for k in ws.secrets.keys()]  # noqa: SIM118
        view.secrets_list(ws.stage.name, items)

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
