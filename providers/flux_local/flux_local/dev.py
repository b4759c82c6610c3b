"""`flux dev`: the local runtime in the foreground, hot-reloading what changed.

Same pieces as a deployed stage (daemon, Deno host, embedded PostgreSQL) but in its own directory
(.flux/<stage>-dev/, own database, own lock) and on a free port when the stage's port is taken, so it
never corrupts or locks out a stage deployed with `flux apply`. On every change under functions/,
schema/, .env*, flux.project.json and the stage's secrets: rescan + validate (errors are printed, the
old code keeps serving), rebuild only functions whose digest moved, apply new migrations, reload
secrets and .env values, push the table once.
"""

from __future__ import annotations

import signal
import threading
import time
from pathlib import Path
from typing import Any

from rich.markup import escape

from flux_local.daemon import Daemon, port_free
from flux_local.table_entry import function_config
from flux_plan.errors import FluxError, ProviderError
from flux_plan.logfmt import console, err_console, format_record
from flux_plan.paths import stage_dir

TREES = ("functions", "schema")  # watched recursively
TOP_FILES = frozenset({".env", ".env.example", "flux.project.json", *TREES})  # watched in the root only
SECRETS_FILE = "secrets.enc"
# watchfiles yields once no new change arrived for this long: an editor's save (write/rename bursts) lands within
# a few ms, and every ms here is save -> new code latency (bench/dev_reload.py)
WATCH_STEP_MS = 5


def _print_record(rec: dict[str, Any]) -> None:
    console().print(format_record(rec, color=True), highlight=False)


def _tree_filter(change: Any, path: str) -> bool:
    """Source edits only: not node_modules, editor swap files or dot-dirs inside functions/."""
    parts = Path(path).parts
    return "node_modules" not in parts and not any(p.startswith(".") for p in parts[-1:]) \
        and not path.endswith(("~", ".swp", ".swx"))


class DevSession:
    def __init__(self, root: Path, stage: str | None, port: int | None) -> None:
        from flux_plan.project import load_project
        from flux_plan.secrets import SecretStore

        self.root = root
        self.project = load_project(root)  # first scan must be valid: nothing to serve otherwise
        self.stage = self.project.stage(stage)
        want = port if port is not None else int(self.stage.settings.get("port", 8787) or 0)
        if want and not port_free(want):
            err_console().print(f"port {want} is taken (a deployed stage?): using a free port instead")
            want = 0
        self.daemon = Daemon(root, self.stage.name, self.project.name,
                             state_dir=stage_dir(root, f"{self.stage.name}-dev"), port=want,
                             settings=self.stage.settings)
        self.secrets = SecretStore(root, self.project.name, self.stage.name)
        self._reload_lock = threading.Lock()
        self._warned: set[str] = set()

    # -- configuration values -------------------------------------------------------------------------
    def _dotenv(self) -> dict[str, str]:
        from flux_plan.secrets import parse_dotenv

        path = self.root / ".env"
        return parse_dotenv(path) if path.is_file() else {}

    def _fingerprints(self) -> dict[str, str]:
        try:
            names = self.secrets.keys()  # a SecretStore, not a dict
            return {key: self.secrets.fingerprint(key) for key in names}
        except FluxError as exc:  # e.g. secrets.enc exists but its key is missing: serve without them
            self._warn("secrets", f"secrets of stage {self.stage.name} are not available: {exc.render()}")
            return {}

    def _warn(self, key: str, msg: str) -> None:
        if key not in self._warned:
            self._warned.add(key)
            err_console().print(f"[yellow]warning:[/] {escape(msg)}")

    # -- lifecycle ------------------------------------------------------------------------------------
    def start(self) -> None:
        if not self.daemon.acquire_lock():
            raise FluxError(f"{self.daemon.dir}: `flux dev` already runs for stage {self.stage.name}",
                            hint="stop the other `flux dev` (Ctrl-C) first")
        self.daemon.set_secrets(self._fingerprints(), self._dotenv())
        self.daemon.start(restore=False)
        self.daemon.on_log = _print_record
        self.sync(self.project, force_push=True)

    def sync(self, project: Any, *, force_push: bool = False) -> list[str]:
        """Make the running table match `project`; returns what changed (for the console)."""
        from flux_plan.artifacts import ArtifactStore

        changed = self._migrate(project)
        if self.daemon.set_secrets(self._fingerprints(), self._dotenv()):
            changed.append("secrets/.env values")
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
            functions[spec.name] = function_config(spec, bundle)
        routes = {f"{s.method}_{s.route}": {"method": s.method, "path": s.route, "function": s.name}
                  for s in project.functions}
        changed += [f"removed {n}" for n in sorted(set(table["functions"]) - set(functions))]
        if force_push or changed or routes != table["routes"] or functions != table["functions"]:
            with self.daemon.table_lock:
                table["functions"], table["routes"] = functions, routes
            self.daemon.push()
        self.project = project
        return changed

    def _migrate(self, project: Any) -> list[str]:
        """Apply migrations the dev database has not seen; an edited applied one is reported, not re-run."""
        import psycopg

        from flux_plan import migrations

        if not project.migrations:
            return []
        changed: list[str] = []
        assert self.daemon.db_uri is not None
        with psycopg.connect(self.daemon.db_uri, autocommit=True) as conn:
            done = {m.version: m for m in migrations.applied(conn)}
            for mig in project.migrations:
                row = done.get(mig.version)
                if row is None:
                    migrations.apply(conn, mig, (self.root / mig.path).read_text(encoding="utf-8"))
                    changed.append(f"migration {mig.file}")
                elif row.checksum != mig.checksum:
                    self._warn(f"mig:{mig.file}:{mig.checksum}",
                               f"{mig.path} changed after it was applied to the dev database; it is not "
                               "re-run (add a new migration instead, or delete .flux/"
                               f"{self.stage.name}-dev/pg to start the dev database over)")
        if changed:
            self.daemon.schema = None
        return changed

    def print_routes(self) -> None:
        base = f"http://127.0.0.1:{self.daemon.gateway_port}"
        console().print(f"[bold]flux dev[/] serving stage {escape(self.stage.name)} at [cyan]{base}[/]",
                        highlight=False)
        for spec in self.project.functions:
            mode = " (async)" if spec.async_ else ""
            console().print(f"  {spec.method:6} {base}{spec.route}  ->  {escape(spec.name)} "
                            f"\\[{spec.runtime}]{mode}", highlight=False)
        console().print("watching functions/, schema/, .env*, flux.project.json — Ctrl-C to stop")

    def reload(self) -> None:
        from flux_plan.errors import ValidationFailed
        from flux_plan.project import load_project

        with self._reload_lock:
            started = time.perf_counter()
            try:
                project = load_project(self.root)
                changed = self.sync(project)
            except ValidationFailed as exc:
                err_console().print("[bold red]invalid project, still serving the previous code:[/]\n"
                                    f"{escape(exc.render())}")
                return
            except (FluxError, ProviderError) as exc:
                msg = exc.render() if isinstance(exc, FluxError) else str(exc)
                err_console().print(f"[bold red]reload failed, still serving the previous code:[/] {escape(msg)}")
                return
            if changed:
                ms = (time.perf_counter() - started) * 1000
                console().print(f"[green]reloaded[/] {escape(', '.join(changed))} in {ms:.0f} ms", highlight=False)

    # -- watching ---------------------------------------------------------------------------------------
    def watch(self, stop: threading.Event) -> None:
        """Two watchers: source trees recursively, and the root + the stage dir for single files.

        Single files are not watched by path: editors save by rename, which ends a file watch."""
        from watchfiles import watch

        secrets_dir = stage_dir(self.root, self.stage.name)
        secrets_dir.mkdir(parents=True, exist_ok=True)
        trees_stop = threading.Event()

        def top_filter(change: Any, path: str) -> bool:
            p = Path(path)
            if p.parent == secrets_dir:
                return p.name == SECRETS_FILE
            return p.parent == self.root and p.name in TOP_FILES

        def watch_trees() -> None:
            while not stop.is_set():
                trees_stop.clear()
                paths = [str(self.root / t) for t in TREES if (self.root / t).is_dir()]
                if not paths:
                    trees_stop.wait(0.5)
                    continue
                for _ in watch(*paths, watch_filter=_tree_filter, debounce=40, step=WATCH_STEP_MS,
                               stop_event=_Either(stop, trees_stop), rust_timeout=500, yield_on_timeout=False,
                               raise_interrupt=False):
                    self.reload()

        tree_thread = threading.Thread(target=watch_trees, name="flux-dev-watch", daemon=True)
        tree_thread.start()
        for changes in watch(str(self.root), str(secrets_dir), watch_filter=top_filter, recursive=False,
                             debounce=40, step=WATCH_STEP_MS, stop_event=stop, rust_timeout=500, yield_on_timeout=False,
                             raise_interrupt=True):
            if any(Path(p).name in TREES for _, p in changes):
                trees_stop.set()  # functions/ or schema/ appeared or went: watch the new set
            self.reload()
        tree_thread.join(timeout=2)


class _Either:
    """A stop event for watchfiles that is set when either of two events is."""

    def __init__(self, a: threading.Event, b: threading.Event) -> None:
        self.a, self.b = a, b

    def is_set(self) -> bool:
        return self.a.is_set() or self.b.is_set()


def run_dev(root: Path, *, stage: str | None, port: int | None) -> int:
    session = DevSession(root, stage, port)
    stop = threading.Event()
    # A closed terminal (SIGHUP) or a `kill` (SIGTERM) must stop everything like Ctrl-C does.
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, signal.default_int_handler)
    try:
        session.start()
        session.print_routes()
        session.watch(stop)
    except KeyboardInterrupt:
        pass
    except ProviderError as exc:  # e.g. a migration failed on start: a message, not a traceback
        raise FluxError(str(exc), hint="fix it and run `flux dev` again") from None
    except RuntimeError as exc:  # the runtime could not start
        raise FluxError(f"flux dev could not start the local runtime: {exc}") from None
    finally:
        stop.set()
        session.daemon.stop()
        console().print("flux dev stopped")
    return 0
