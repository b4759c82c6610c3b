"""`flux invoke`, `flux logs`, `flux dev`, `flux migrations list|status|new`: argument parsing and
rendering only; the work is the provider's (invoke, logs), flux_local.dev's and flux_plan.migrations'."""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path
from typing import Any

import typer

from flux_plan.cli.output import console, escape, is_tty, print_json
from flux_plan.errors import FluxError
from flux_plan.logfmt import format_record
from flux_plan.units import parse_duration

_LEVEL_STYLE = {"debug": "dim", "info": "cyan", "warn": "yellow", "error": "bold red"}  # = logfmt's levels


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
        ws = _workspace(stage)
        res = _hook(ws, "invoke")(function, parse_payload(payload))
        failed = res.status >= 400
        if as_json:
            print_json({"function": function, "status": res.status, "ok": not failed, "body": res.body,
                        "request_id": res.request_id, "duration_ms": round(res.duration_ms, 2)})
        else:
            body = json.dumps(res.body, indent=2, ensure_ascii=False)
            sys.stdout.write(body + "\n")
            sys.stdout.flush()
            color = "red" if failed else "green"
            console().print(f"[{color}]status {res.status}[/] in {res.duration_ms:.1f} ms, "
                            f"request id {escape(str(res.request_id))}", highlight=False)
        if failed:
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
        if level not in _LEVEL_STYLE:
            raise FluxError(f"--level {level!r}: unknown level", hint="use debug, info, warn or error")
        ws = _workspace(stage)
        names = sorted(spec.name for spec in ws.project.functions)
        if function is not None and function not in names:  # a typo must not look like "no logs yet"
            raise FluxError(f"unknown function {function!r}",
                            hint=f"functions of this project: {', '.join(names) or '(none)'}")
        records = _hook(ws, "logs")(function, since_s=parse_duration(since, "--since") if since else None,
                                    request_id=request_id, level=level, follow=follow)
        color = is_tty() and not as_json
        try:
            for rec in records:
                if as_json:
                    sys.stdout.write(json.dumps(rec, ensure_ascii=False, default=str) + "\n")
                    sys.stdout.flush()
                elif color:
                    console().print(format_record(rec, color=True))
                else:
                    sys.stdout.write(format_record(rec, color=False) + "\n")
                    sys.stdout.flush()
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
        ws = _workspace(stage)
        rows = [{"version": m.version, "file": m.file, "checksum": m.checksum[:12]} for m in ws.project.migrations]
        if as_json:
            print_json(rows)
            return
        for r in rows:
            typer.echo(f"{r['version']:>4}  {r['file']}  {r['checksum']}")
        if not rows:
            typer.echo("no migrations (add schema/001_<name>.sql, or run `flux migrations new NAME`)")

    @migrations_app.command("status")
    def migrations_status(
        stage: str | None = typer.Option(None, "--stage", "-s", envvar="FLUX_STAGE"),
        as_json: bool = typer.Option(False, "--json"),
    ) -> None:
        """Each migration file against the stage database: applied, pending, or changed since applied."""
        ws = _workspace(stage)
        from flux_plan.session import migration_status

        rows = migration_status(ws.project.migrations, _applied_in_db(ws))
        if as_json:
            print_json(rows)
            return
        for r in rows:
            when = f"  {r['applied_at'][:19]}" if r["applied_at"] else ""
            typer.echo(f"{r['version']:>4}  {r['file']:<40} {r['status']}{when}")
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
