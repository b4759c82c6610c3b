"""The local stage's supervisor: `python -m flux_local.daemon --root R --stage S --project P`.

Owns, for one stage: the database (embedded PostgreSQL unless DATABASE_URL is set), the Deno host
(started with flux_local.runtime.host_command, restarted when it dies), the runtime table (functions +
routes + loaded secrets, persisted in runtime.json so a restart restores it), the log store, the durable
async queue, and an HTTP server on 127.0.0.1 with the control API (for the host: async enqueue only) and the
admin API (for the provider and the CLI). It never sits on the request path: the gateway, ctx.secrets and
ctx.db (postgres.js, as the stage's owner role) are inside the Deno host. It restarts the host and the
embedded PostgreSQL when either dies.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import json
import os
import secrets as pysecrets
import shutil
import signal
import socket
import socketserver
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from datetime import UTC, datetime
from http import HTTPStatus
from http.server import ThreadingHTTPServer
from pathlib import Path
from typing import Any

from flux_local.asyncqueue import AsyncQueue
from flux_local.logstore import LogStore, Masker
from flux_local.pg import EmbeddedPostgres, external_url
from flux_local.procs import ADMIN_REVISION, DAEMON_FILE, pid_alive

RUNTIME_FILE = "runtime.json"
LOCK_FILE = "daemon.lock"
MAX_BODY_BYTES = 6 * 1024 * 1024
DEFAULT_PORT = 8787
_MAX_LINE = 65536  # request line / header line
_MAX_HEADERS = 100


def _write_json_atomic(path: Path, doc: Any) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(doc, indent=2, sort_keys=True), encoding="utf-8")
    os.replace(tmp, path)


def port_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as a server binds: TIME_WAIT is no conflict
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _diag(msg: str) -> None:
    sys.stderr.write(f"{datetime.now(UTC).isoformat(timespec='seconds')} flux-daemon: {msg}\n")
    sys.stderr.flush()


def _die_with_parent() -> None:
    """preexec_fn of the host: the kernel sends it SIGTERM when the daemon dies, even by SIGKILL, so a
    crashed daemon never leaves a host holding the stage's port (Linux; elsewhere a no-op)."""
    if sys.platform.startswith("linux"):
        import ctypes

        with contextlib.suppress(OSError, AttributeError):
            ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


class _JsonHandler(socketserver.StreamRequestHandler):
    """HTTP/1.1 with keep-alive, JSON bodies only: all the control and admin APIs need.

    Not http.server's BaseHTTPRequestHandler: its header parsing (email.parser) and its replies in two
    writes cost ~100 us of every ctx.db.query, more than the query itself. Bodies travel with
    Content-Length (what fetch, urllib and http.client send); anything unexpected closes the connection."""

    daemon: Daemon
    # Each reply goes out in one write, but a request may still meet Nagle + delayed ACK: keep it off.
    disable_nagle_algorithm = True

    def handle(self) -> None:
        with contextlib.suppress(ConnectionError, TimeoutError):
            while self._one():
                pass

    def _one(self) -> bool:
        """Serve one request; False when the connection must close."""
        line = self.rfile.readline(_MAX_LINE + 1)
        if not line:
            return False
        parts = line.split()
        if len(line) > _MAX_LINE or len(parts) != 3 or not parts[2].startswith(b"HTTP/1."):
            return self._send(400, {"error": "bad request line"}, keep=False)
        method, target, version = (p.decode("latin-1") for p in parts)
        headers: dict[str, str] = {}
        for _ in range(_MAX_HEADERS):
            raw = self.rfile.readline(_MAX_LINE + 1)
            if raw in (b"\r\n", b"\n", b""):
                break
            name, sep, value = raw.partition(b":")
            if not sep or len(raw) > _MAX_LINE:
                return self._send(400, {"error": "bad header line"}, keep=False)
            headers[name.strip().lower().decode("latin-1")] = value.strip().decode("latin-1")
        else:
            return self._send(431, {"error": "too many headers"}, keep=False)
        conn = headers.get("connection", "").lower()
        keep = conn != "close" if version == "HTTP/1.1" else conn == "keep-alive"
        if "transfer-encoding" in headers:  # never sent by our clients; its body would desync the stream
            return self._send(411, {"error": "send the body with Content-Length"}, keep=False)
        if headers.get("expect", "").lower() == "100-continue":
            self.wfile.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        consumed = False

        def read_body(n: int) -> bytes:
            nonlocal consumed
            consumed = True
            return self.rfile.read(n)

        status, doc = self.daemon.serve(method, target, headers, read_body)
        if not consumed and headers.get("content-length", "0").strip() != "0":
            keep = False  # a body left unread (401, 413, bad length) would be parsed as the next request
        return self._send(status, doc, keep=keep)

    def _send(self, status: int, doc: Any, *, keep: bool) -> bool:
        data = json.dumps(doc).encode()
        try:
            phrase = HTTPStatus(status).phrase
        except ValueError:
            phrase = ""
        close = "" if keep else "Connection: close\r\n"
        head = (f"HTTP/1.1 {status} {phrase}\r\nContent-Type: application/json\r\n"
                f"Content-Length: {len(data)}\r\n{close}\r\n")
        self.wfile.write(head.encode("latin-1") + data)
        return keep


class HostDown(Exception):
    """The Deno host is not (yet) running."""


class Daemon:
    def __init__(self, root: Path, stage: str, project: str, *, state_dir: Path, port: int | None,
                 settings: dict[str, Any] | None = None, dotenv: dict[str, str] | None = None) -> None:
        self.root = root
        self.stage = stage
        self.project = project
        self.dir = state_dir
        self.settings = settings or {}
        self.requested_port = port
        self.dotenv = dotenv or {}
        self.token = pysecrets.token_urlsafe(32)
        self.admin_token = pysecrets.token_urlsafe(32)
        self.masker = Masker()
        self.logs = LogStore(self.dir / "logs", mask=self.masker)
        self.table_lock = threading.RLock()
        self._push_cond = threading.Condition()
        self._push_wanted = 0
        self._push_done = 0
        self._pushing = False
        # While an apply holds the table (PUT /admin/hold), edits wait for one push at its end instead
        # of one push of the whole table per coalesced edit: N resources cost O(N), not O(N^2).
        self._hold_pid: int | None = None
        self._held_edits = False
        # a function sees only the keys its entry names (env_keys: its code + flux.json secrets), as on AWS
        self.table: dict[str, Any] = {"functions": {}, "routes": {}, "secrets": {}}
        self.secret_values: dict[str, str] = {}
        self.schema: dict[str, dict[str, str]] | None = None
        self.pg: EmbeddedPostgres | None = None
        self.db_uri: str | None = None
        self.host: subprocess.Popen[bytes] | None = None
        self.host_ready = threading.Event()
        self.gateway_port: int | None = None
        self.admin_port: int | None = None
        self.stopping = threading.Event()
        self.server: ThreadingHTTPServer | None = None
        self.queue: AsyncQueue | None = None
        self._lock_fh: Any = None
        self.on_log: Any = None  # flux dev prints records live

    # -- lifecycle ----------------------------------------------------------------------------------
    def acquire_lock(self) -> bool:
        self.dir.mkdir(parents=True, exist_ok=True)
        self._lock_fh = open(self.dir / LOCK_FILE, "a+")  # noqa: SIM115 - held for the daemon's lifetime
        try:
            fcntl.flock(self._lock_fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            return False
        return True

    def start(self, *, restore: bool = True) -> None:
        """`restore`: serve runtime.json's table again (a deployed stage); `flux dev` builds its own."""
        (self.dir / DAEMON_FILE).unlink(missing_ok=True)  # we hold the lock: any such file is stale
        if restore:
            self._load_table()
        self._start_db()
        self._start_server()
        self.queue = AsyncQueue(self.dir / "queue", self._invoke_now, self._record)
        self._start_host()
        self.queue.start()
        threading.Thread(target=self._supervise, name="flux-supervise", daemon=True).start()
        if self.pg is not None:
            threading.Thread(target=self._watch_db, name="flux-watch-db", daemon=True).start()
        self._write_daemon_file()

    def stop(self) -> None:
        if self.stopping.is_set():
            return
        self.stopping.set()
        if self.queue:
            self.queue.stop()
        self._stop_host()
        if self.server:
            self.server.shutdown()
            self.server.server_close()
        if self.pg:
            self.pg.stop()
        (self.dir / DAEMON_FILE).unlink(missing_ok=True)

    def _write_daemon_file(self) -> None:
        doc = {
            "pid": os.getpid(),
            "revision": ADMIN_REVISION,
            "stage": self.stage,
            "control_port": self.server.server_address[1] if self.server else None,
            "gateway_port": self.gateway_port,
            "token": self.token,
            "host_pid": self.host.pid if self.host else None,
            "pg_pid": self.pg.pid if self.pg else None,
            # embedded only: the owner role's URI (with its password; this file is 0600, out of every sandbox)
            "db_uri": self.db_uri if self.pg else None,
            "started_at": datetime.now(UTC).isoformat(timespec="seconds"),
        }
        path = self.dir / DAEMON_FILE
        tmp = path.with_name(f".{path.name}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as fh:
            json.dump(doc, fh, indent=2)
        os.replace(tmp, path)

    # -- runtime table ------------------------------------------------------------------------------
    def _load_table(self) -> None:
        path = self.dir / RUNTIME_FILE
        if path.exists():
            doc = json.loads(path.read_text(encoding="utf-8"))
            for key in ("functions", "routes", "secrets"):
                self.table[key] = doc.get(key, {})
            self.table["cors"] = doc.get("cors")
        for key in list(self.table["secrets"]):
            self._load_secret(key)
        self._refresh_mask()

    def set_secrets(self, fingerprints: dict[str, str], dotenv: dict[str, str] | None = None) -> bool:
        """Load these secrets (and .env values) from the stores; True when any value the functions
        see changed. The caller pushes. Used by `flux dev`, which has no apply to do it per key."""
        with self.table_lock:
            before = (dict(self.secret_values), dict(self.dotenv))
            if dotenv is not None:
                self.dotenv = dict(dotenv)
            self.table["secrets"] = dict(fingerprints)
            self.secret_values = {}
            for key in fingerprints:
                self._load_secret(key)
            self._refresh_mask()
            return before != (self.secret_values, self.dotenv)

    def _save_table(self) -> None:
        _write_json_atomic(self.dir / RUNTIME_FILE, {"project": self.project, "stage": self.stage, **self.table})

    def _secret_store(self) -> Any:
        from flux_plan.secrets import SecretStore

        return SecretStore(self.root, self.project, self.stage)

    def _load_secret(self, key: str) -> bool:
        store = self._secret_store()
        if store.has(key):
            self.secret_values[key] = store.get(key)
            return True
        self.secret_values.pop(key, None)
        return False

    def _refresh_mask(self) -> None:
        self.masker.set_values([*self.secret_values.values(), *self.dotenv.values()])

    def env_for(self, fn: dict[str, Any]) -> dict[str, str]:
        """Values of the function's own keys (those its code names + its flux.json `secrets`) that are set;
        never other keys of .env.example or of the stage. Under `flux dev`, .env (local-only values) wins
        over the stage's secrets; a deployed stage has no .env."""
        env: dict[str, str] = {}
        for key in sorted(fn.get("env_keys", [])):
            value = self._value(key)
            if value is not None:
                env[key] = value
        return env

    def _value(self, key: str) -> str | None:
        return self.dotenv[key] if key in self.dotenv else self.secret_values.get(key)

    def host_config(self) -> dict[str, Any]:
        fns = self.table["functions"]
        functions = {
            name: {
                "runtime": fn["runtime"], "bundle": fn["bundle"], "digest": fn["digest"],
                "env": self.env_for(fn), "timeout_ms": fn.get("timeout_ms", 30000),
                "concurrency": fn.get("concurrency", 10), "queue_limit": fn.get("queue_limit", 100),
                "idle_ms": fn.get("idle_ms", 300000), "async": bool(fn.get("async")),
                "memory_mb": int(fn.get("memory", 256)),
                # entries written by an older flux have no `uses_db`: they keep ctx.db until updated
                "uses_db": bool(fn.get("uses_db", True)),
                # docker provider: the function's container (one channel per container)
                **({"endpoint": fn["endpoint"], "max_workers": 1} if fn.get("endpoint") else {}),
            }
            for name, fn in sorted(fns.items())
        }
        routes = [{"method": r["method"], "path": r["path"], "function": r["function"]}
                  for _, r in sorted(self.table["routes"].items()) if r["function"] in fns]
        return {"functions": functions, "routes": routes, "cors": self.table.get("cors")}

    def push(self) -> None:
        """Make the host serve the table as it is now; returns after its OK (atomic switch there).

        Call it without holding table_lock. Concurrent callers are coalesced: an apply edits many
        entries in parallel, and one push carries all edits made before it started, so N resources
        cost a few pushes of the table, not N (nor N log records "config applied")."""
        with self._push_cond:
            self._push_wanted += 1
            target = self._push_wanted
            while self._push_done < target:
                if self._pushing:
                    self._push_cond.wait()
                    continue
                self._pushing = True
                generation = self._push_wanted
                self._push_cond.release()
                try:
                    self._push_now()
                finally:
                    self._push_cond.acquire()
                    self._pushing = False
                    self._push_cond.notify_all()
                self._push_done = max(self._push_done, generation)

    def _push_unless_held(self) -> None:
        with self.table_lock:
            if self._hold_pid is not None:
                self._held_edits = True  # runtime.json is written by the push at the end, once
                return
        self.push()

    def _release_hold(self, pid: int | None) -> None:
        """End the hold (of `pid`, or any) and serve what was edited under it, in one push."""
        with self.table_lock:
            if self._hold_pid is None or (pid is not None and self._hold_pid != pid):
                return
            self._hold_pid = None
            edited, self._held_edits = self._held_edits, False
        if edited:
            self.push()

    def _watch_hold(self, pid: int) -> None:
        """An apply that dies (SIGKILL, crash) never releases its hold: release it for it."""
        while not self.stopping.is_set():
            with self.table_lock:
                if self._hold_pid != pid:
                    return
            if not pid_alive(pid):
                _diag(f"apply {pid} ended without releasing the table: serving its edits")
                with contextlib.suppress(Exception):
                    self._release_hold(pid)
                return
            time.sleep(0.2)

    def _push_now(self) -> None:
        with self.table_lock:
            self._save_table()
            config = self.host_config()
        if not self.host_ready.wait(timeout=30):
            raise HostDown("the Deno host is not running (see daemon.log)")
        self._host_call("PUT", "/config", config, timeout=60)

    # -- database -----------------------------------------------------------------------------------
    def _start_db(self) -> None:
        url = external_url(self.settings)
        if url:
            self.db_uri = url
        else:
            self.pg = EmbeddedPostgres(self.dir / "pg")
            self.db_uri = self.pg.start()

    def _watch_db(self) -> None:
        """Restart the embedded PostgreSQL when it dies (kill -9, OOM killer), with backoff; ctx.db answers
        "database error" until then, and works again without a redeploy. Its data dir is kept as it is."""
        delay = 0.5
        while not self.stopping.wait(delay):
            pg = self.pg
            if pg is None or pid_alive(pg.pid):
                delay = 0.5
                continue
            self._record({"level": "error", "function": None, "msg": "database exited; restarting",
                          "data": {"pg_pid": pg.pid}})
            try:
                self.db_uri = pg.start()  # same socket and role: the host's postgres.js pool reconnects
                self._write_daemon_file()
                self._record({"level": "info", "function": None, "msg": "database restarted",
                              "data": {"pg_pid": pg.pid}})
                delay = 0.5
            except Exception as exc:
                _diag(f"database restart failed: {type(exc).__name__}: {exc}")
                delay = min(delay * 2, 10)

    # -- host ---------------------------------------------------------------------------------------
    def _gateway_port(self) -> int:
        if self.gateway_port:
            return self.gateway_port
        port = self.requested_port
        if port is None:
            port = int(self.settings.get("port", DEFAULT_PORT) or 0)
        return port

    def _start_host(self) -> None:
        import deno

        from flux_local.runtime import host_command
        from flux_plan.paths import artifacts_dir

        assert self.server is not None
        port = self._gateway_port()
        if port and not port_free(port):
            raise RuntimeError(f"port {port} on 127.0.0.1 is already in use (another program, or another stage "
                               "on the same port); stop it, or set another \"port\" for this stage in "
                               "flux.project.json")
        node_bin = shutil.which("node") or "/usr/bin/node"
        db, socket_dir = self._host_db()
        config = {
            "stage": self.stage, "gateway_host": "127.0.0.1", "gateway_port": port,
            "admin_port": 0, "admin_token": self.admin_token,
            "control_url": f"http://127.0.0.1:{self.server.server_address[1]}", "control_token": self.token,
            "node_bin": node_bin, "max_body_bytes": MAX_BODY_BYTES, "project_root": str(self.root.resolve()),
            "deno_dir": str(self.dir / "deno-workers"), "db": db,
        }
        env = {k: v for k, v in os.environ.items() if k in ("PATH", "HOME", "LANG", "TMPDIR", "DENO_DIR")}
        env["FLUX_HOST_CONFIG"] = json.dumps(config)
        env["NO_COLOR"] = "1"  # deno's own error output lands in daemon.log: no escape codes
        cmd = host_command(deno.find_deno_bin(), artifacts_dir(self.root), node_bin=node_bin,
                           db_socket_dir=socket_dir)
        self.host_ready.clear()
        self.host = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=sys.stderr, stdin=subprocess.DEVNULL,
                                     env=env, cwd=str(self.dir), preexec_fn=_die_with_parent)
        assert self.host.stdout is not None
        deadline = time.monotonic() + 60
        line = b""
        while time.monotonic() < deadline:
            line = self.host.stdout.readline()
            if not line:
                break
            try:
                doc = json.loads(line)
            except json.JSONDecodeError:
                _diag(f"host: {line.decode(errors='replace').rstrip()}")
                continue
            if doc.get("event") == "ready":
                self.gateway_port = int(doc["gateway_port"])
                self.admin_port = int(doc["admin_port"])
                break
        else:
            line = b""
        if not self.admin_port or not line:
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.host.wait(timeout=2)
            code = self.host.poll()
            self._kill_host()
            raise RuntimeError("the Deno host did not start" + (f" (exit code {code})" if code is not None else ""))
        threading.Thread(target=self._pump_logs, args=(self.host,), name="flux-host-logs", daemon=True).start()
        self._host_call("PUT", "/config", self.host_config(), timeout=60)
        self.host_ready.set()
        self._record({"level": "info", "function": None, "msg": "runtime started",
                      "data": {"gateway_port": self.gateway_port, "functions": len(self.table["functions"])}})

    def _host_db(self) -> tuple[dict[str, Any] | None, str | None]:
        """ctx.db settings of the host: the embedded server's owner role over its socket, or DATABASE_URL as given."""
        if not self.db_uri:
            return None, None
        u = urllib.parse.urlsplit(self.db_uri)
        socket_dir = (urllib.parse.parse_qs(u.query).get("host") or [None])[0]
        if socket_dir is not None and not socket_dir.startswith("/"):
            socket_dir = None  # ?host=<name>: TCP
        if self.pg is None:
            return {"url": self.db_uri}, socket_dir
        assert socket_dir is not None
        return {"host": socket_dir, "port": u.port or 5432, "user": urllib.parse.unquote(u.username or ""),
                "password": urllib.parse.unquote(u.password or ""), "database": u.path.lstrip("/") or "postgres"}, \
            socket_dir

    def _pump_logs(self, proc: subprocess.Popen[bytes]) -> None:
        assert proc.stdout is not None
        for raw in proc.stdout:
            try:
                rec = json.loads(raw)
                if not isinstance(rec, dict):
                    raise ValueError
            except ValueError:
                rec = {"level": "info", "function": None, "msg": raw.decode(errors="replace").rstrip()}
            self._record(rec)

    def _record(self, rec: dict[str, Any]) -> None:
        rec.setdefault("stage", self.stage)
        for key in ("function", "request_id", "data"):
            rec.setdefault(key, None)
        self.logs.append(rec)
        if self.on_log:
            with contextlib.suppress(Exception):
                self.on_log(rec)

    def _host_call(self, method: str, path: str, body: Any = None, timeout: float = 30) -> Any:
        if not self.admin_port:
            raise HostDown("the Deno host is not running")
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(f"http://127.0.0.1:{self.admin_port}{path}", data=data, method=method,
                                     headers={"Authorization": f"Bearer {self.admin_token}",
                                              "Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=timeout) as resp:
                return json.loads(resp.read() or b"null")
        except urllib.error.HTTPError as exc:
            raw = exc.read()
            try:
                detail = json.loads(raw).get("error", raw.decode(errors="replace"))
            except (ValueError, AttributeError):
                detail = raw.decode(errors="replace")
            raise RuntimeError(f"host {method} {path}: HTTP {exc.code}: {detail}") from None

    def _invoke_now(self, function: str, request_id: str, payload: Any, attempt: int) -> tuple[int, Any]:
        if not self.host_ready.wait(timeout=30):
            raise HostDown("runtime not ready")
        fn = self.table["functions"].get(function)
        timeout = (fn or {}).get("timeout_ms", 30000) / 1000 + 10
        res = self._host_call("POST", f"/invoke/{function}",
                              {"request_id": request_id, "input": payload, "attempt": attempt}, timeout=timeout)
        return int(res.get("status", 500)), res.get("body")

    def _kill_host(self) -> None:
        proc = self.host
        if proc is None or proc.poll() is not None:
            return
        proc.terminate()
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)

    def _stop_host(self) -> None:
        proc = self.host
        self.host_ready.clear()
        if proc is None or proc.poll() is not None:
            return
        with contextlib.suppress(Exception):
            self._host_call("POST", "/shutdown", {}, timeout=10)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self._kill_host()

    def _supervise(self) -> None:
        """Restart the host when it dies (with backoff), restoring the table."""
        delay = 0.2
        while not self.stopping.is_set():
            proc = self.host
            if proc is None:
                time.sleep(0.2)
                continue
            code = proc.wait()
            if self.stopping.is_set():
                return
            self.host_ready.clear()
            self.admin_port = None
            self._record({"level": "error", "function": None,
                          "msg": f"runtime host exited with code {code}; restarting"})
            time.sleep(delay)
            try:
                self._start_host()
                self._write_daemon_file()
                delay = 0.2
            except Exception as exc:
                _diag(f"host restart failed: {exc}")
                delay = min(delay * 2, 10)

    # -- HTTP: control API (host) + admin API (provider / CLI) --------------------------------------
    def _start_server(self) -> None:
        class Handler(_JsonHandler):
            daemon = self

        class Server(ThreadingHTTPServer):
            daemon_threads = True

        self.server = Server(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, name="flux-control", daemon=True).start()

    def serve(self, method: str, path: str, headers: dict[str, str], read_body: Any) -> tuple[int, Any]:
        """One authenticated JSON request -> (status, doc). `read_body(n)` reads the request body."""
        if headers.get("authorization") != f"Bearer {self.token}":
            return 401, {"error": "unauthorized"}
        try:
            length = int(headers.get("content-length") or 0)
        except ValueError:
            return 400, {"error": "invalid Content-Length"}
        if length > MAX_BODY_BYTES:
            return 413, {"error": "body too large"}
        try:
            body = json.loads(read_body(length) or b"null") if length > 0 else None
        except ValueError:
            return 400, {"error": "invalid JSON body"}
        try:
            return self.route(method, path, body)
        except HostDown as exc:
            return 503, {"error": str(exc)}
        except Exception as exc:
            _diag(f"{method} {path} failed: {type(exc).__name__}: {exc}")
            return 500, {"error": f"{type(exc).__name__}: {exc}"}

    def route(self, method: str, path: str, body: Any) -> tuple[int, Any]:
        # Resource names travel percent-encoded (a route key like `POST_/a/b` holds slashes): split first.
        parts = [urllib.parse.unquote(p) for p in path.split("?", 1)[0].split("/") if p]
        body = body if isinstance(body, dict) else {}
        match method, parts:
            case "POST", ["v1", "async", "enqueue"]:
                assert self.queue is not None
                rid = str(body.get("request_id") or pysecrets.token_hex(8))
                self.queue.enqueue(str(body.get("function")), rid, body.get("input"))
                return 202, {"request_id": rid}
            case "GET", ["admin", "status"]:
                return 200, self.status()
            case ("PUT" | "DELETE") as verb, ["admin", ("functions" | "routes") as section, name]:
                with self.table_lock:
                    if verb == "PUT":
                        self.table[section][name] = body
                    else:
                        self.table[section].pop(name, None)
                self._push_unless_held()
                return 200, {"ok": True}
            case "PUT", ["admin", "secrets", key]:
                with self.table_lock:
                    if not self._load_secret(key):
                        return 404, {"error": f"secret {key} is not set (flux secrets set {key}=...)"}
                    self.table["secrets"][key] = body.get("fingerprint")
                    self._refresh_mask()
                self._push_unless_held()
                return 200, {"ok": True}
            case "DELETE", ["admin", "secrets", key]:
                with self.table_lock:
                    self.table["secrets"].pop(key, None)
                    self.secret_values.pop(key, None)
                self._push_unless_held()
                return 200, {"ok": True}
            case "PUT", ["admin", "hold"]:
                pid = body.get("pid")
                if not isinstance(pid, int) or not pid_alive(pid):
                    return 400, {"error": "hold needs the pid of the running apply"}
                with self.table_lock:
                    self._hold_pid = pid
                threading.Thread(target=self._watch_hold, args=(pid,), name="flux-hold", daemon=True).start()
                return 200, {"ok": True}
            case "DELETE", ["admin", "hold"]:
                self._release_hold(None)
                return 200, {"ok": True}
            case "POST", ["admin", "check", name]:  # load the function once before it takes traffic
                cfg = {"runtime": body.get("runtime"), "bundle": body.get("bundle"), "digest": body.get("digest"),
                       "env": self.env_for(body), "timeout_ms": body.get("timeout_ms", 30000), "async": False,
                       "memory_mb": int(body.get("memory", 256))}  # the host keeps this worker for the push
                res = self._host_call("POST", "/check", {"function": name, "config": cfg}, timeout=120)
                if isinstance(res, dict) and res.get("error"):
                    res["error"] = self.masker(str(res["error"]))  # a load error may quote a secret value
                return 200, res
            case "PUT", ["admin", "cors"]:  # the stage's CORS setting (api.<stage> attribute); null = none
                cors = body.get("cors")
                if cors is not None and not (isinstance(cors, dict) and isinstance(cors.get("allow_origins"), list)):
                    return 400, {"error": "cors must be null or an object with allow_origins: [...]"}
                with self.table_lock:
                    self.table["cors"] = cors
                self._push_unless_held()
                return 200, {"ok": True}
            case "POST", ["admin", "schema-changed"]:
                self.schema = None
                return 200, {"ok": True}
            case "POST", ["admin", "shutdown"]:
                threading.Thread(target=self._shutdown_soon, daemon=True).start()
                return 200, {"ok": True}
        return 404, {"error": f"no such endpoint: {method} {path}"}

    def _shutdown_soon(self) -> None:
        time.sleep(0.1)
        os.kill(os.getpid(), signal.SIGTERM)

    def status(self) -> dict[str, Any]:
        health: Any = None
        if self.host_ready.is_set():
            with contextlib.suppress(Exception):
                health = self._host_call("GET", "/health", timeout=5)
        return {
            "pid": os.getpid(), "stage": self.stage, "gateway_port": self.gateway_port,
            "host_pid": self.host.pid if self.host else None, "host_ready": self.host_ready.is_set(),
            "pg_pid": self.pg.pid if self.pg else None, "db_alive": (pid_alive(self.pg.pid) if self.pg else None),
            "functions": self.table["functions"], "routes": self.table["routes"],
            "secrets": self.table["secrets"], "cors": self.table.get("cors"), "health": health,
            "queue_pending": self.queue.pending_count() if self.queue else 0,
        }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="flux_local.daemon")
    ap.add_argument("--root", required=True)
    ap.add_argument("--stage", required=True)
    ap.add_argument("--project", required=True)
    ap.add_argument("--state-dir", required=True)
    ap.add_argument("--port", type=int, default=None)
    ap.add_argument("--settings", default="{}", help="the stage's provider settings as JSON")
    args = ap.parse_args(argv)
    d = Daemon(Path(args.root), args.stage, args.project, state_dir=Path(args.state_dir), port=args.port,
               settings=json.loads(args.settings))
    if not d.acquire_lock():
        _diag(f"another daemon already serves {d.dir}")
        return 3
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    try:
        d.start()
        _diag(f"ready: pid {os.getpid()}, gateway 127.0.0.1:{d.gateway_port}")
        while not stop.wait(0.5):
            pass
    except Exception as exc:
        _diag(f"failed: {type(exc).__name__}: {exc}")
        (d.dir / "daemon.error").write_text(f"{exc}\n", encoding="utf-8")
        d.stop()
        return 1
    d.stop()
    _diag("stopped")
    return 0


if __name__ == "__main__":
    sys.exit(main())
