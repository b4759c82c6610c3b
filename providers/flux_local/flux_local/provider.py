"""LocalProvider: the `local` entry of `flux.providers`.

Every resource lands in the stage's daemon (flux_local.daemon), which the first operation starts:
functions and routes go into its runtime table (pushed atomically to the Deno host), secrets are
(re)loaded from the SecretStore by the daemon (values never pass through here), migrations are applied
from this process straight to the stage database with flux_plan.migrations.

Function environment (decided here, the same rule as the AWS provider's IAM scoping): `ctx.env` holds,
of the keys the function's code names (`ctx.env.K`, `ctx.env["K"]`, destructuring, `ctx.secrets.get("K")`)
plus those its flux.json `secrets` lists, those that are set with `flux secrets set`; `ctx.secrets.get(K)`
answers the same keys, any other key (another function's, one built at run time) is "not set". Other keys
of `.env.example` are not granted, and `.env.example` values are examples, not defaults. `ctx.db` works
only for functions whose code names `ctx.db` (`uses_db`). `flux dev` also reads `.env`, whose values win over the stage's secrets (local
overrides). Every such value is masked in the log store (short values only as whole words).

A stopped daemon (reboot, crash) reads as `api.<stage>` gone, so the next `flux deploy` restarts it;
it serves its last table again from runtime.json and delivers what is left in its async queue.
"""

from __future__ import annotations

import contextlib
import json
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, TypeGuard

from flux_local.client import DaemonClient
from flux_local.procs import ADMIN_REVISION
from flux_local.table_entry import function_config
from flux_plan.errors import FluxError, ProviderError
from flux_plan.model import FunctionSpec, ProviderResult, Resource, ResourceState
from flux_plan.providers import InvokeResult, ProviderContext

# A bigger apply load-checks its functions ahead of the engine (see LocalProvider._start_prechecks): more than the host
# checks on their own (its CHECKED_KEEP_MAX), PRECHECK_PARALLEL in flight = two of the host's batches (BATCH_MAX 128),
# one being checked while the next collects (each a thread here and a request thread in the supervisor, idle meanwhile).
PRECHECK_MIN = 16
PRECHECK_PARALLEL = 256


def _q(name: str) -> str:
    """A resource name as one URL path segment (route names like `POST_/todos/x` contain slashes)."""
    return urllib.parse.quote(name, safe="")


class LocalProvider:
    name = "local"
    prechecks = True  # its function operations load-check in the host (see _start_prechecks)

    def __init__(self) -> None:
        self.ctx: ProviderContext | None = None
        self._start_lock = threading.Lock()
        self._offline_lock = threading.Lock()
        self._specs: dict[str, FunctionSpec] = {}
        self._prechecks: dict[str, Future[tuple[dict[str, Any], dict[str, Any]] | None]] = {}
        self._precheck_pool: ThreadPoolExecutor | None = None

    # -- wiring -------------------------------------------------------------------------------------
    def configure(self, ctx: ProviderContext) -> None:
        self.ctx = ctx
        self.client = DaemonClient(ctx.state_dir)
        self._specs = {spec.name: spec for spec in ctx.project.functions}  # a lookup per function resource

    def force_replace(self, resource_type: str) -> frozenset[str]:
        return frozenset()

    @property
    def _ctx(self) -> ProviderContext:
        if self.ctx is None:
            raise ProviderError("local provider used before configure()")
        return self.ctx

    @staticmethod
    def _needs_daemon(changes: list[tuple[str, str]]) -> bool:
        return any(action not in ("noop", "read", "delete") for _, action in changes)

    @staticmethod
    def _is_current(info: dict[str, Any] | None) -> TypeGuard[dict[str, Any]]:
        """A live daemon's daemon.json (client.info()) of this flux's admin revision."""
        return info is not None and info.get("revision") == ADMIN_REVISION

    def ensure_daemon(self, *, quiet: bool = False) -> dict[str, Any]:
        info = self.client.info()  # the common case (once per resource): no lock, a stat of daemon.json
        if self._is_current(info):
            return info
        with self._start_lock:
            info = self.client.info()
            if self._is_current(info):
                return info
            if info:  # a daemon of an older flux: restart it (it restores its table from runtime.json)
                if not quiet:
                    self._ctx.log("restarting the local runtime (flux was updated) ...")
                self.client.stop()
            ctx = self._ctx
            if not quiet:
                self._ctx.log(f"starting the local runtime of stage {ctx.stage.name} ...")
            return self.client.start(ctx.project.root, ctx.stage.name, ctx.project.name, ctx.stage.settings)

    def get_ready(self, changes: list[tuple[str, str]]) -> Callable[[], None] | None:
        """Start the stage's runtime in the background while the plan is checked and shown (an auto-approved apply
        follows): its start (the database's first initdb, the host) then overlaps that instead of coming before the
        first operation. Starting it changes nothing a plan reads: runtime.json's table is what it serves, as when
        before_apply starts it. Returns what stops it again when the apply does not happen."""
        if not self._needs_daemon(changes) or self._is_current(self.client.info()):
            return None
        self._ctx.log(f"starting the local runtime of stage {self._ctx.stage.name} ...")  # here: not mid-plan output
        started: list[bool] = []

        def start() -> None:
            with contextlib.suppress(Exception):  # before_apply starts it again, and says why it cannot
                self.ensure_daemon(quiet=True)
                started.append(True)

        thread = threading.Thread(target=start, name="flux-get-ready", daemon=True)
        thread.start()

        def undo() -> None:
            thread.join()
            if started:
                self.client.stop()

        return undo

    def dev(self, *, port: int | None = None) -> int:
        """`flux dev`: run the stage in the foreground with file watching (the Provider `dev` hook)."""
        from flux_local.dev import run_dev

        return run_dev(self._ctx.project.root, stage=self._ctx.stage.name, port=port)

    def _spec(self, name: str) -> FunctionSpec:
        self._ctx  # noqa: B018 (raises when not configured)
        spec = self._specs.get(name)
        if spec is not None:
            return spec
        raise ProviderError(f"function {name} is not in the project", address=f"function.{name}")

    def _db_uri(self) -> str | None:
        from flux_local.pg import external_url

        url = external_url(self._ctx.stage.settings)
        if url:
            return url
        info = self.client.info()
        return info.get("db_uri") if info else None

    # -- refresh ------------------------------------------------------------------------------------
    def read(self, address: str, prior: ResourceState) -> dict[str, Any] | None:
        return self.read_many({address: prior})[address]

    def read_many(self, items: dict[str, ResourceState]) -> dict[str, dict[str, Any] | None]:
        """One status call + one DB query for the whole state. A stopped daemon shows runtime.json."""
        table = self._table()
        applied = self.applied_migrations() if any(a.startswith("migration.") for a in items) else None
        out: dict[str, dict[str, Any] | None] = {}
        for addr, prior in items.items():
            kind, name = addr.split(".", 1)
            attrs = dict(prior.attributes)
            if kind == "function":
                fn = table["functions"].get(name)
                if fn is None:
                    out[addr] = None
                    continue
                attrs.update({"runtime": fn["runtime"], "digest": fn["digest"], "async": fn["async"],
                              "timeout": fn["timeout_ms"] // 1000, "concurrency": fn["concurrency"]})
                # the plain env it serves (an entry written before flux carried flux.json `env` has none: an update)
                attrs.pop("env", None)
                if fn.get("plain_env"):
                    attrs["env"] = dict(fn["plain_env"])
                out[addr] = attrs
            elif kind == "route":
                r = table["routes"].get(name)
                out[addr] = None if r is None else {**attrs, "method": r["method"], "path": r["path"],
                                                      "function": r["function"]}
            elif kind == "secret":
                fp = table["secrets"].get(name)
                out[addr] = None if fp is None else {**attrs, "fingerprint": fp}
            elif kind == "migration":
                if applied is None:  # database not reachable: nothing to compare against
                    out[addr] = attrs
                    continue
                row = applied.get(int(attrs.get("version", -1)))
                out[addr] = None if row is None else {**attrs, "file": row.file, "version": row.version,
                                                      "checksum": row.checksum}
            else:
                # api: exists while the daemon serves the stage. A stopped daemon (reboot, crash) shows
                # as "api will be created" so `flux deploy` restarts it; it restores runtime.json itself.
                if not table["running"]:
                    out[addr] = None
                    continue
                live_port = table.get("gateway_port")
                if attrs.get("port") and live_port and int(attrs["port"]) != int(live_port):
                    attrs["port"] = live_port  # serving elsewhere than configured: an update moves it
                if table.get("cors") is None:  # what the gateway enforces, so drift shows in the plan
                    attrs.pop("cors", None)
                else:
                    attrs["cors"] = table["cors"]
                out[addr] = attrs
        return out

    def _table(self) -> dict[str, Any]:
        info = self.client.info()
        if info is not None:
            try:  # a daemon of an older revision (restarted by the next apply) has only /admin/status
                table = self.client.ok("GET", "/admin/table" if self._is_current(info) else "/admin/status")
                return {**table, "running": True}
            except ProviderError:
                pass
        doc = self._read_runtime_file()
        if doc is not None:
            return {"functions": doc.get("functions", {}), "routes": doc.get("routes", {}),
                    "secrets": doc.get("secrets", {}), "cors": doc.get("cors"), "running": False}
        return {"functions": {}, "routes": {}, "secrets": {}, "running": False}

    def applied_migrations(self) -> dict[int, Any] | None:
        import psycopg

        from flux_plan import migrations

        uri = self._db_uri()
        if not uri:
            return None
        try:
            with psycopg.connect(uri, autocommit=True, connect_timeout=5) as conn:
                return {m.version: m for m in migrations.applied(conn)}
        except psycopg.Error:
            return None

    # -- changes ------------------------------------------------------------------------------------
    def before_apply(self, changes: list[tuple[str, str]]) -> None:
        # every edit below reaches the host as one delta message (O(1)), so an apply needs no hold of the table
        if self._needs_daemon(changes):
            self.ensure_daemon()
        names = sorted(addr.split(".", 1)[1] for addr, action in changes
                       if addr.startswith("function.") and action in ("create", "update", "replace"))
        if self.prechecks and len(names) > PRECHECK_MIN:
            self._start_prechecks([self._specs[n] for n in names if n in self._specs])

    def _start_prechecks(self, specs: list[FunctionSpec]) -> None:
        """Load-check every function of a big apply as soon as its bundle exists, PRECHECK_PARALLEL at a time.

        Each check is the same /admin/check the function's own operation makes (and that operation then takes its
        verdict, when the config it would send is the same): what changes is how many checks the host sees at
        once. Under the engine's parallelism (10) at most 10 wait at a time, so the host's batch checker loaded
        ~10 bundles per `deno run`; here it gets full batches while the engine does the rest."""
        self._precheck_pool = pool = ThreadPoolExecutor(max_workers=PRECHECK_PARALLEL, thread_name_prefix="flux-check")
        for spec in specs:
            self._prechecks[spec.name] = pool.submit(self._precheck, spec)

    def _deploy_config(self, spec: FunctionSpec) -> dict[str, Any]:
        """The table entry a function's operation sends (its bundle built first): what a precheck must check too."""
        return function_config(spec, str(self._ctx.artifacts.ensure(spec) / "index.mjs"))

    def _precheck(self, spec: FunctionSpec) -> tuple[dict[str, Any], dict[str, Any]] | None:
        try:  # any failure (a bundling error, the daemon gone) is left to the function's own operation to report
            cfg = self._deploy_config(spec)
            return cfg, self._check(spec.name, cfg)
        except Exception:
            return None

    def _end_prechecks(self) -> None:
        pool, self._precheck_pool = self._precheck_pool, None
        if pool is not None:  # an interrupted apply: checks nobody will take are not started
            pool.shutdown(wait=False, cancel_futures=True)
        self._prechecks.clear()

    def _checked(self, name: str, cfg: dict[str, Any]) -> dict[str, Any]:
        """The load check's verdict on `cfg`: the precheck's when it checked this very config, else one now."""
        fut = self._prechecks.pop(name, None)
        done = fut.result() if fut is not None else None
        if done is not None and done[0] == cfg:
            return done[1]
        return self._check(name, cfg)

    def _check(self, name: str, cfg: dict[str, Any]) -> dict[str, Any]:
        """The host loads the function once, outside the table: {ok, error?}."""
        return dict(self.client.ok("POST", f"/admin/check/{_q(name)}", cfg))

    def create(self, resource: Resource) -> ProviderResult:
        return self._put(resource)

    def update(self, resource: Resource, prior: ResourceState) -> ProviderResult:
        return self._put(resource)

    def _put(self, resource: Resource) -> ProviderResult:
        kind, name = resource.type, resource.name
        info = self.ensure_daemon()
        if kind == "api":
            want = resource.attributes.get("port")
            if want and int(want) != int(info["gateway_port"]):  # the configured port changed: move
                self.client.stop()
                info = self.ensure_daemon()
            self.client.ok("PUT", "/admin/cors", {"cors": resource.attributes.get("cors")})
            return ProviderResult(outputs={"url": f"http://127.0.0.1:{info['gateway_port']}"})
        if kind == "function":
            spec = self._spec(name)
            cfg = self._deploy_config(spec)
            # loaded once before the table changes: a broken module fails here and the old version keeps serving
            check = self._checked(name, cfg)
            if not check.get("ok"):
                raise ProviderError(f"{spec.dir}/index.ts: {check.get('error')} (fix it and deploy again; "
                                    f"the previous version, if any, keeps serving)", address=resource.address)
            self.client.ok("PUT", f"/admin/functions/{_q(name)}", cfg)
            return ProviderResult(outputs={"bundle": cfg["bundle"]})
        if kind == "route":
            a = resource.attributes
            self.client.ok("PUT", f"/admin/routes/{_q(name)}",
                           {"method": a["method"], "path": a["path"], "function": a["function"]})
            return ProviderResult()
        if kind == "secret":
            self.client.ok("PUT", f"/admin/secrets/{_q(name)}", {"fingerprint": resource.attributes.get("fingerprint")})
            return ProviderResult()
        if kind == "migration":
            self._migrate(resource)
            return ProviderResult()
        raise ProviderError(f"the local provider does not know resources of type {kind}", address=resource.address)

    def _migrate(self, resource: Resource) -> None:
        import psycopg

        from flux_plan import migrations

        mig = next((m for m in self._ctx.project.migrations if m.file == resource.name), None)
        if mig is None:
            raise ProviderError(f"schema/{resource.name} is not in the project", address=resource.address)
        uri = self._db_uri()
        if not uri:
            raise ProviderError("the stage database is not running", address=resource.address)
        sql = (self._ctx.project.root / mig.path).read_text(encoding="utf-8")
        with psycopg.connect(uri, autocommit=True, connect_timeout=10) as conn:
            migrations.apply(conn, mig, sql)
        if self.client.running():
            self.client.ok("POST", "/admin/schema-changed", {})

    def delete(self, address: str, prior: ResourceState) -> None:
        kind, name = address.split(".", 1)
        if kind in ("api", "migration") or not self.client.running():
            # migrations never drop anything; the api goes with destroy_stage; a stopped daemon has
            # nothing to serve, and its runtime.json is removed by destroy_stage.
            if kind in ("function", "route", "secret"):
                self._edit_offline(kind, name)
            return
        path = {"function": "functions", "route": "routes", "secret": "secrets"}[kind]
        self.client.ok("DELETE", f"/admin/{path}/{_q(name)}")

    def _edit_offline(self, kind: str, name: str) -> None:
        """Remove an entry from the runtime table while no daemon runs: one journal line, O(1) (deletes run in
        parallel: one lock); the next daemon folds it into runtime.json."""
        from flux_local import tablefile

        with self._offline_lock:
            if self._read_runtime_file() is None:
                return
            tablefile.append(self._ctx.state_dir, {"function": "functions", "route": "routes", "secret": "secrets"}[kind],
                             name, None)

    def _read_runtime_file(self) -> dict[str, Any] | None:
        from flux_local import tablefile

        path = self._ctx.state_dir / "runtime.json"
        try:
            doc = tablefile.read(self._ctx.state_dir)
        except (OSError, ValueError) as exc:
            raise ProviderError(f"{path}: unreadable runtime table ({exc}); delete the file, then "
                                "`flux deploy` recreates what it held") from None
        return doc if isinstance(doc, dict) else None

    def after_apply(self, resources: dict[str, ResourceState]) -> dict[str, Any]:
        self._end_prechecks()
        info = self.client.info()
        if info:  # fold the apply's journal lines into runtime.json: one rewrite per apply, not one per resource
            with contextlib.suppress(ProviderError):  # not folded: the journal still holds every change
                self.client.ok("POST", "/admin/save", {})
        return {"url": f"http://127.0.0.1:{info['gateway_port']}"} if info else {}

    # The stage's data: what plain `flux destroy` keeps (nothing is lost by accident) and `--purge` removes.
    DATA_DIRS = ("pg", "queue", "logs")

    def destroy_stage(self, *, purge: bool = False) -> None:
        """Stop the daemon (host, workers, database); keep the data (database dir, async queue, logs) unless `purge`."""
        import shutil

        from flux_local.pg import EmbeddedPostgres

        self.client.stop()
        # A daemon that was killed left its database running (the host dies with it): stop that too.
        EmbeddedPostgres(self._ctx.state_dir / "pg").stop()
        from flux_local import tablefile

        tablefile.remove(self._ctx.state_dir)
        if not purge:
            return
        if self.client.info() is not None or (self._ctx.state_dir / "pg" / "postmaster.pid").exists():
            raise ProviderError(f"{self._ctx.state_dir}: the stage's daemon or database is still running, so its "
                                "data was kept; stop it, then run `flux destroy --purge` again")
        removed = []
        for name in self.DATA_DIRS:
            path = self._ctx.state_dir / name
            try:
                if path.is_symlink() or path.is_file():
                    path.unlink()  # a link is removed, never followed
                elif path.exists():
                    shutil.rmtree(path)
                else:
                    continue
            except OSError as exc:
                raise ProviderError(f"{path}: could not remove the stage's {name} ({exc.strerror}); fix its "
                                    "permissions, then run `flux destroy --purge` again") from None
            removed.append(name)
        if removed:
            self._ctx.log(f"purged the stage's data: {', '.join(removed)} (under {self._ctx.state_dir})")

    # -- runtime commands ---------------------------------------------------------------------------
    def invoke(self, function: str, payload: Any, *, method: str | None = None) -> InvokeResult:
        """Call the function through its gateway route, exactly like an HTTP client would."""
        spec = self._spec_or_error(function)
        info = self.client.info()
        if info is None:
            raise FluxError(f"stage {self._ctx.stage.name} is not running", hint="run `flux deploy` first")
        method = (method or spec.method).upper()
        from flux_plan.routes import fill_route

        path, payload = fill_route(spec.route, payload)  # /notes/{id} + {"id": 5} -> /notes/5
        url = f"http://127.0.0.1:{info['gateway_port']}{path}"
        data = None
        if method in ("GET", "DELETE", "HEAD"):
            if isinstance(payload, dict) and payload:
                url += "?" + urllib.parse.urlencode({k: v if isinstance(v, str) else json.dumps(v)
                                                     for k, v in payload.items()})
        else:
            data = json.dumps(payload if payload is not None else {}).encode()
        from urllib.error import HTTPError, URLError
        from urllib.request import Request, urlopen

        req = Request(url, data=data, method=method, headers={"Content-Type": "application/json"})
        started = time.perf_counter()
        try:
            with urlopen(req, timeout=spec.timeout + 30) as resp:
                status, raw, headers = resp.status, resp.read(), dict(resp.headers)
        except HTTPError as exc:
            status, raw, headers = exc.code, exc.read(), dict(exc.headers)
        except URLError as exc:
            raise FluxError(f"could not reach the gateway at {url}: {exc.reason}",
                            hint="is the stage running? `flux deploy` starts it") from None
        duration = (time.perf_counter() - started) * 1000
        try:
            body: Any = json.loads(raw) if raw else None
        except ValueError:
            body = raw.decode(errors="replace")
        lower = {k.lower(): v for k, v in headers.items()}
        return InvokeResult(status=status, body=body, request_id=lower.get("x-flux-request-id"),
                            duration_ms=duration, headers=lower)

    def _spec_or_error(self, function: str) -> FunctionSpec:
        for spec in self._ctx.project.functions:
            if spec.name == function:
                return spec
        known = ", ".join(sorted(s.name for s in self._ctx.project.functions))
        raise FluxError(f"unknown function {function!r}", hint=f"functions of this project: {known}")

    def logs(self, function: str | None, *, since_s: float | None, request_id: str | None,
             level: str | None, follow: bool) -> Iterator[dict[str, Any]]:
        from flux_local import logstore

        return logstore.query(self._ctx.state_dir / "logs", function=function, since_s=since_s,
                              request_id=request_id, level=level, follow=follow)
