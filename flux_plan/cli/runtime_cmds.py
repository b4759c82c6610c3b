"""`flux invoke`, `flux logs`, `flux dev`, `flux migrations list|status|new`: argument parsing and
rendering only; the work is the provider's (invoke, logs), flux_local.dev's and flux_plan.migrations'."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import typer

from flux_plan.cli.views import LEVELS, view_for
from flux_plan.errors import FluxError
from flux_plan.units import parse_duration


def parse_payload(text: str) -> Any:
    """`'{...}'` or `@file.json`: the function's input, which must be a JSON object."""
    where = "--payload"
    if text.startswith("@"):
        path = Path(text[1:])
        where = str(path)
        try:
            text = path.read_text(encoding="utf-8")
        except OSError as exc:
            raise FluxError(f"{path}: cannot read the payload file: {exc.strerror}") from None
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise FluxError(f"{where}: invalid JSON at line {exc.lineno} column {exc.colno}: {exc.msg}",
                        hint='pass a JSON object, e.g. --payload \'{"name":"Ada"}\' or @payload.json') from None
    if not isinstance(value, dict):
        raise FluxError(f"{where}: the payload must be a JSON object (the function's input)")
    return value


def _workspace(stage: str | None) -> Any:
    from flux_plan.workspace import Workspace

    return Workspace.open_lenient(stage=stage)  # these commands deploy no code (DESIGN §6)


def _hook(ws: Any, name: str) -> Any:
    fn = getattr(ws.provider, name, None)
    if fn is None:
        raise FluxError(f"provider {ws.stage.provider!r} of stage {ws.stage.name} does not support `flux {name}`")
    return fn


def register(app: typer.Typer) -> None:
    @app.command()
    def invoke(
        function: str = typer.Argument(..., help="function name"),
        payload: str = typer.Option("{}", "--payload", "-p", help="JSON object, or @file.json"),
        stage: str | None = typer.Option(None, "--stage", "-s", envvar="FLUX_STAGE"),
        as_json: bool = typer.Option(False, "--json", help="machine-readable output"),
    ) -> None:
        """Call a function through its gateway route; print result, status, duration and request id."""
        view = view_for(as_json)
        ws = _workspace(stage)
        res = _hook(ws, "invoke")(function, parse_payload(payload))
        view.invoke_result(function, res)
        if res.status >= 400:
            raise typer.Exit(1)

    @app.command()
    def logs(
        function: str | None = typer.Argument(None, help="only this function"),
        follow: bool = typer.Option(False, "--follow", "-f", help="keep printing new records"),
        since: str | None = typer.Option(None, "--since", help="e.g. 10m, 2h"),
        request_id: str | None = typer.Option(None, "--request-id"),
        level: str = typer.Option("info", "--level", help="minimum level: debug, info, warn, error"),
        stage: str | None = typer.Option(None, "--stage", "-s", envvar="FLUX_STAGE"),
        as_json: bool = typer.Option(False, "--json", help="one JSON record per line"),
    ) -> None:
        """Structured logs of the stage (ctx.log records carry their request id)."""
        view = view_for(as_json)
        if level not in LEVELS:
            raise FluxError(f"--level {level!r}: unknown level", hint="use debug, info, warn or error")
        ws = _workspace(stage)
        names = sorted(spec.name for spec in ws.project.functions)
        if function is not None and function not in names:  # a typo must not look like "no logs yet"
            raise FluxError(f"unknown function {function!r}",
                            hint=f"functions of this project: {', '.join(names) or '(none)'}")
        records = _hook(ws, "logs")(function, since_s=parse_duration(since, "--since") if since else None,
                                    request_id=request_id, level=level, follow=follow)
        try:
            view.log_records(records)
        except KeyboardInterrupt:
            return

    @app.command()
    def dev(
        port: int | None = typer.Option(None, "--port", help="gateway port (default: the stage's, else free)"),
        stage: str | None = typer.Option(None, "--stage", "-s", envvar="FLUX_STAGE"),
    ) -> None:
        """Run the project locally in the foreground, watch files and hot-reload what changed."""
        ws = _workspace(stage)
        raise typer.Exit(_hook(ws, "dev")(port=port))

    migrations_app = typer.Typer(help="Schema migrations (schema/*.sql) and their history in the database.",
                                 no_args_is_help=True)
    app.add_typer(migrations_app, name="migrations")

    @migrations_app.command("list")
    def migrations_list(
        stage: str | None = typer.Option(None, "--stage", "-s", envvar="FLUX_STAGE"),
        as_json: bool = typer.Option(False, "--json"),
    ) -> None:
        """Migration files of the project, in the order they apply."""
        view = view_for(as_json)
        ws = _workspace(stage)
        view.migrations([{"version": m.version, "file": m.file, "checksum": m.checksum[:12]}
                         for m in ws.project.migrations])

    @migrations_app.command("status")
    def migrations_status(
        stage: str | None = typer.Option(None, "--stage", "-s", envvar="FLUX_STAGE"),
        as_json: bool = typer.Option(False, "--json"),
    ) -> None:
        """Each migration file against the stage database: applied, pending, or changed since applied."""
        from flux_plan.session import migration_status

        view = view_for(as_json)
        ws = _workspace(stage)
        rows = migration_status(ws.project.migrations, _applied_in_db(ws))
        view.migration_status(rows)
        if any(r["status"].startswith("CHANGED") for r in rows):
            raise typer.Exit(1)

    @migrations_app.command("new")
    def migrations_new(name: str = typer.Argument(..., help="what the migration does, e.g. add_tags")) -> None:
        """Create schema/NNN_<name>.sql with the next version number."""
        from flux_plan.workspace import find_root

        root = find_root()
        slug = re.sub(r"[^a-z0-9]+", "_", name.lower()).strip("_")
        if not slug:
            raise FluxError(f"migration name {name!r} has no letters or digits", hint="e.g. flux migrations new add_tags")
        schema = root / "schema"
        schema.mkdir(exist_ok=True)
        versions = [int(m.group(1)) for p in schema.glob("*.sql") if (m := re.match(r"^(\d+)_", p.name))]
        path = schema / f"{(max(versions) + 1 if versions else 1):03d}_{slug}.sql"
        path.write_text(f"-- {name}\n", encoding="utf-8")
        typer.echo(str(path.relative_to(root)))


def _applied_in_db(ws: Any) -> dict[int, Any] | None:
    """flux_migrations of the stage database by version, or None when it cannot be reached."""
    reader = getattr(ws.provider, "applied_migrations", None)
    return reader() if reader else None
