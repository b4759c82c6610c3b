"""`flux dev`: the local runtime in the foreground, hot-reloading what changed.

Same pieces as a deployed stage (daemon, Deno host, embedded PostgreSQL) but in its own directory
(.flux/<stage>-dev/, own database, own lock) and on a free port when the stage's port is taken, so it
never corrupts or locks out a stage deployed with `flux apply`. On every change under functions/,
schema/, .env*, flux.project.json: rescan + validate (errors are printed, the old code keeps serving),
rebuild only functions whose digest moved, apply new migrations, push the table once.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

from rich.markup import escape

from flux_local.daemon import Daemon, port_free
from flux_local.provider import function_config
from flux_plan.cli.output import console, err_console
from flux_plan.errors import FluxError, ProviderError
from flux_plan.paths import stage_dir

WATCHED = ("functions", "schema", ".env", ".env.example", "flux.project.json")


def _print_record(rec: dict[str, Any]) -> None:
    from flux_plan.cli.runtime_cmds import format_record

    console().print(format_record(rec, color=True))


class DevSession:
    def __init__(self, root: Path, stage: str | None, port: int | None) -> None:
        from flux_plan.project import load_project
        from flux_plan.secrets import SecretStore, parse_dotenv

        self.root = root
        self.project = load_project(root)  # first scan must be valid: nothing to serve otherwise
        self.stage = self.project.stage(stage)
        dotenv_path = root / ".env"
        self.dotenv = parse_dotenv(dotenv_path) if dotenv_path.exists() else {}
        want = port if port is not None else int(self.stage.settings.get("port", 8787) or 0)
        if want and not port_free(want):
            err_console().print(f"port {want} is taken (a deployed stage?): using a free port instead")
            want = 0
        self.daemon = Daemon(root, self.stage.name, self.project.name,
                             state_dir=stage_dir(root, f"{self.stage.name}-dev"), port=want,
                             settings=self.stage.settings, dotenv=self.dotenv)
        self.secrets = SecretStore(root, self.project.name, self.stage.name)

    def start(self) -> None:
        if not self.daemon.acquire_lock():
            raise FluxError(f"{self.daemon.dir}: `flux dev` already runs for stage {self.stage.name}",
                            hint="stop the other `flux dev` (Ctrl-C) first")
        try:
            keys = self.secrets.keys()
        except FluxError:
            keys = []
        for key in keys:
            self.daemon.table["secrets"][key] = self.secrets.fingerprint(key)
        self.daemon.table["functions"] = {}
        self.daemon.table["routes"] = {}
        self.daemon.start()
        self.daemon.on_log = _print_record
        self.sync(self.project)

    def sync(self, project: Any) -> list[str]:
        """Make the running table match `project`; returns what changed (for the console)."""
        from flux_plan import migrations
        from flux_plan.artifacts import ArtifactStore

        changed: list[str] = []
        if project.migrations:
            import psycopg

            assert self.daemon.db_uri is not None
            with psycopg.connect(self.daemon.db_uri, autocommit=True) as conn:
                done = {m.version for m in migrations.applied(conn)}
                for mig in project.migrations:
                    if mig.version not in done:
                        migrations.apply(conn, mig, (self.root / mig.path).read_text(encoding="utf-8"))
                        changed.append(f"migration {mig.file}")
            self.daemon.schema = None
        store = ArtifactStore(self.root)
        table = self.daemon.table
        functions: dict[str, Any] = {}
        for spec in project.functions:
            old = table["functions"].get(spec.name)
            if old and old["digest"] == spec.source_digest:
                bundle = old["bundle"]
            else:
                bundle = str(store.ensure(spec) / "index.mjs")
                changed.append(f"function {spec.name}")
            functions[spec.name] = function_config(spec, bundle, project.env_example_keys)
        routes = {f"{s.method}_{s.route}": {"method": s.method, "path": s.route, "function": s.name}
                  for s in project.functions}
        removed = set(table["functions"]) - set(functions)
        changed += [f"removed {n}" for n in sorted(removed)]
        if changed or routes != table["routes"] or functions != table["functions"]:
            with self.daemon.table_lock:
                table["functions"], table["routes"] = functions, routes
                self.daemon.push()
        self.project = project
        return changed

    def print_routes(self) -> None:
        base = f"http://127.0.0.1:{self.daemon.gateway_port}"
        console().print(f"[bold]flux dev[/] serving stage {escape(self.stage.name)} at [cyan]{base}[/]")
        for spec in self.project.functions:
            mode = " (async)" if spec.async_ else ""
            console().print(f"  {spec.method:6} {base}{spec.route}  ->  {escape(spec.name)} [{spec.runtime}]{mode}")
        console().print("watching functions/, schema/, .env* — Ctrl-C to stop")

    def reload(self) -> None:
        from flux_plan.errors import ValidationFailed
        from flux_plan.project import load_project

        started = time.perf_counter()
        try:
            project = load_project(self.root)
            changed = self.sync(project)
        except ValidationFailed as exc:
            err_console().print(f"[bold red]invalid project, still serving the previous code:[/]\n{escape(exc.render())}")
            return
        except (FluxError, ProviderError) as exc:
            msg = exc.render() if isinstance(exc, FluxError) else str(exc)
            err_console().print(f"[bold red]reload failed, still serving the previous code:[/] {escape(msg)}")
            return
        if changed:
            ms = (time.perf_counter() - started) * 1000
            console().print(f"[green]reloaded[/] {escape(', '.join(changed))} in {ms:.0f} ms")

    def watch(self, stop: threading.Event) -> None:
        from watchfiles import watch

        paths = [str(self.root / p) for p in WATCHED if (self.root / p).exists()]
        for _changes in watch(*paths, debounce=40, step=20, stop_event=stop, rust_timeout=500,
                              yield_on_timeout=False):
            self.reload()


def run_dev(root: Path, *, stage: str | None, port: int | None) -> int:
    session = DevSession(root, stage, port)
    stop = threading.Event()
    try:
        session.start()
        session.print_routes()
        session.watch(stop)
    except KeyboardInterrupt:
        pass
    finally:
        stop.set()
        session.daemon.stop()
        console().print("flux dev stopped")
    return 0
