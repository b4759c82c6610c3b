"""The local stage's supervisor: `python -m flux_local.daemon --root R --stage S --project P`.

Owns, for one stage: the database (embedded PostgreSQL unless DATABASE_URL is set), the Deno host
(started with flux_local.runtime.host_command, restarted when it dies), the runtime table (functions +
routes + loaded secrets, persisted as runtime.json + runtime.journal so a restart restores it: tablefile.py),
the log store, the durable async queue, and an HTTP server on 127.0.0.1 with the admin API (for the provider
and the CLI only). It talks to the host over the host's stdin/stdout (JSON lines, channel.py; protocol in
host.ts's header): the whole table once per host start, then one delta message per changed function, route,
secret or cors setting, so an apply of N resources is O(N) messages of O(1) each. It never sits on the request
path: the gateway, ctx.secrets and ctx.db (postgres.js, as the stage's owner role) are inside the Deno host.
It restarts the host and the embedded PostgreSQL when either dies.
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
import urllib.parse
from datetime import UTC, datetime
from http import HTTPStatus
from http.server import ThreadingHTTPServer
from pathlib import Path
from typing import Any

from flux_local import tablefile
from flux_local.asyncqueue import AsyncQueue
from flux_local.channel import HostChannel, HostDown, HostError, Waiter
from flux_local.logstore import LogStore, Masker
from flux_local.pg import EmbeddedPostgres, external_url
from flux_local.procs import ADMIN_REVISION, DAEMON_FILE, pid_alive

RUNTIME_FILE = tablefile.RUNTIME_FILE
LOCK_FILE = "daemon.lock"
MAX_BODY_BYTES = 6 * 1024 * 1024
DEFAULT_PORT = 8787
_MISSING = object()
_MAX_LINE = 65536  # request line / header line
_MAX_HEADERS = 100


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
        # in the host's environment (not a secret): finds a dead daemon's orphaned host by more than its PID
        self.host_tag = pysecrets.token_hex(16)
        self.masker = Masker()
        self.logs = LogStore(self.dir / "logs", mask=self.masker)
        self.table_lock = threading.RLock()
        # the live host's channel (None while it is down: edits then wait in the table for the next "load");
        # set, and written to for table ops, under table_lock, so the host sees edits in the table's order
        self._channel: HostChannel | None = None
        self._sent_env: dict[str, dict[str, str]] = {}  # env of each function as the host has it
        self.channel_sent: dict[str, int] = {}  # messages to the host by op, across host restarts (/admin/status)
        self._snapshot_bytes = 0
        # a function sees only the keys its entry names (env_keys: its code + flux.json secrets), as on AWS
        self.table: dict[str, Any] = {"functions": {}, "routes": {}, "secrets": {}}
        self.secret_values: dict[str, str] = {}
        self.schema: dict[str, dict[str, str]] | None = None
        self.pg: EmbeddedPostgres | None = None
        self.db_uri: str | None = None
        self.host: subprocess.Popen[bytes] | None = None
        self.host_ready = threading.Event()
        self.gateway_port: int | None = None
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
            "host_tag": self.host_tag,
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
        doc = tablefile.read(self.dir)
        if doc is not None:
            for key in ("functions", "routes", "secrets"):
                self.table[key] = doc.get(key, {})
            self.table["cors"] = doc.get("cors")
            self._save_table()  # fold the journal in
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
        self._snapshot_bytes = tablefile.save(self.dir, {"project": self.project, "stage": self.stage, **self.table})

    def _persist(self, section: str, name: str | None, value: Any) -> None:
        """One change to disk in O(1): a journal line, folded into runtime.json once the journal outgrows the
        table (and once per apply: POST /admin/save). Call with table_lock held."""
        if tablefile.append(self.dir, section, name, value) > 65536 + 2 * self._snapshot_bytes:
            self._save_table()

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

    @staticmethod
    def plain_env(fn: dict[str, Any]) -> dict[str, str]:
        """Its flux.json `env`: plain values in ctx.env (not answered by ctx.secrets.get, as on AWS). A key that is
        also a set secret takes the secret's value in ctx.env (the host's ctxEnv), and `flux plan` warns of it."""
        return {str(k): str(v) for k, v in (fn.get("plain_env") or {}).items()}

    def _value(self, key: str) -> str | None:
        return self.dotenv[key] if key in self.dotenv else self.secret_values.get(key)

    def fn_config(self, fn: dict[str, Any]) -> dict[str, Any]:
        """A table entry as the host's FnConfig (with the values of the keys it is granted)."""
        return {
            "runtime": fn["runtime"], "bundle": fn["bundle"], "digest": fn["digest"],
            "env": self.env_for(fn), "plain_env": self.plain_env(fn), "timeout_ms": fn.get("timeout_ms", 30000),
            "concurrency": fn.get("concurrency", 10), "queue_limit": fn.get("queue_limit", 100),
            "idle_ms": fn.get("idle_ms", 300000), "async": bool(fn.get("async")),
            "memory_mb": int(fn.get("memory", 256)),
            # entries written by an older flux have no `uses_db`: they keep ctx.db until updated
            "uses_db": bool(fn.get("uses_db", True)),
            # docker provider: the function's container (one channel per container)
            **({"endpoint": fn["endpoint"], "max_workers": 1} if fn.get("endpoint") else {}),
        }

    @staticmethod
    def _route_config(r: dict[str, Any]) -> dict[str, Any]:
        return {"method": r["method"], "path": r["path"], "function": r["function"]}

    def host_config(self) -> dict[str, Any]:
        """The whole table as the host's "load" message."""
        fns = self.table["functions"]
        functions = {name: self.fn_config(fn) for name, fn in sorted(fns.items())}
        routes = {key: self._route_config(r) for key, r in sorted(self.table["routes"].items())
                  if r["function"] in fns}
        return {"functions": functions, "routes": routes, "cors": self.table.get("cors")}

    def _load_doc(self) -> dict[str, Any]:
        doc = self.host_config()
        self._sent_env = {name: fc["env"] for name, fc in doc["functions"].items()}
        return doc

    def push(self) -> None:
        """Make the host serve the whole table as it is now (`flux dev`, which edits the table wholesale);
        returns after the host's OK. Call it without holding table_lock."""
        with self.table_lock:
            self._save_table()
            waiter = self._send_locked("load", self._load_doc)
        self._await_change(waiter)

    def change(self, section: str, name: str | None, value: Any) -> None:
        """One admin edit (value None: delete): the table, one journal line and one delta message to the host
        (which switches that function/route only), in one table_lock step; returns once the host serves it.
        A change the host refuses is undone here too (HostError): the table never holds what the host does not."""
        waiter: Waiter | None
        with self.table_lock:
            prev = self.table.get("cors") if section == "cors" else self.table[section].get(name, _MISSING)
            if section == "cors":
                self.table["cors"] = value
            elif value is None:
                self.table[section].pop(name, None)
            else:
                self.table[section][name] = value
            self._persist(section, name, value)
            if section == "functions":
                assert name is not None
                if value is None:
                    self._sent_env.pop(name, None)
                    waiter = self._send_locked("delete_function", lambda: {"name": name})
                else:
                    config = self.fn_config(value)

                    def put() -> dict[str, Any]:
                        self._sent_env[name] = config["env"]
                        return {"name": name, "config": config}

                    waiter = self._send_locked("put_function", put)
            elif section == "routes":
                waiter = (self._send_locked("delete_route", lambda: {"key": name}) if value is None else
                          self._send_locked("put_route", lambda: {"key": name, "route": self._route_config(value)}))
            elif section == "cors":
                waiter = self._send_locked("cors", lambda: {"cors": value})
            else:
                waiter = self._send_env_locked()
        try:
            self._await_change(waiter)
        except HostError:
            self._undo(section, name, value, prev)
            raise

    def _undo(self, section: str, name: str | None, value: Any, prev: Any) -> None:
        """Put back what a refused change replaced (unless a later edit replaced it since)."""
        with self.table_lock:
            now = self.table.get("cors") if section == "cors" else self.table[section].get(name, _MISSING)
            if now is not value and now != value:
                return
            restored = None if prev is _MISSING else prev
            if section == "cors":
                self.table["cors"] = restored
            elif restored is None:
                self.table[section].pop(name, None)
            else:
                self.table[section][name] = restored
            self._persist(section, name, restored)
            if section == "functions" and name is not None:
                if restored is None:
                    self._sent_env.pop(name, None)
                else:
                    self._sent_env[name] = self.env_for(restored)

    def _send_env_locked(self) -> Waiter | None:
        """After a secret changed: one "env" message with the functions whose values changed (none: no message)."""
        changed = {}
        for name, fn in self.table["functions"].items():
            env = self.env_for(fn)
            if self._sent_env.get(name) != env:
                changed[name] = env
        if not changed:
            return None

        def body() -> dict[str, Any]:
            self._sent_env.update(changed)
            return {"functions": changed}

        return self._send_locked("env", body)

    def _send_locked(self, op: str, body: Any) -> Waiter | None:
        """Send `op` with body() to the live host (table_lock held); None while no host is live (the next host's
        "load" carries the change)."""
        channel = self._channel
        if channel is None or channel.closed.is_set():
            return None
        return channel.send(op, body())

    def _await_change(self, waiter: Waiter | None, timeout: float = 60) -> None:
        """The host took the change; or it is down, and the next host loads the table, change included."""
        if waiter is not None:
            try:
                waiter.wait(timeout)
                return
            except HostDown:
                pass
        if not self.host_ready.wait(timeout=30):
            raise HostDown("the Deno host is not running (see daemon.log)")

    def _call(self, op: str, body: dict[str, Any], timeout: float) -> dict[str, Any]:
        channel = self._channel
        if channel is None:
            raise HostDown("the Deno host is not running")
        return channel.call(op, body, timeout)

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
            "node_bin": node_bin, "max_body_bytes": MAX_BODY_BYTES, "project_root": str(self.root.resolve()),
            "deno_dir": str(self.dir / "deno-workers"), "db": db,
        }
        env = {k: v for k, v in os.environ.items() if k in ("PATH", "HOME", "LANG", "TMPDIR", "DENO_DIR")}
        env["FLUX_HOST_CONFIG"] = json.dumps(config)
        env["NO_COLOR"] = "1"  # deno's own error output lands in daemon.log: no escape codes
        env["FLUX_SUPERVISOR"] = self.host_tag
        cmd = host_command(deno.find_deno_bin(), artifacts_dir(self.root), node_bin=node_bin,
                           db_socket_dir=socket_dir)
        self.host_ready.clear()
        self.host = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=sys.stderr, stdin=subprocess.PIPE,
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
            if isinstance(doc, dict) and doc.get("event") == "ready":
                self.gateway_port = int(doc["gateway_port"])
                break
        else:
            line = b""
        if not line:
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.host.wait(timeout=2)
            code = self.host.poll()
            self._kill_host()
            raise RuntimeError("the Deno host did not start" + (f" (exit code {code})" if code is not None else ""))
        channel = HostChannel(self.host, self._record, self._host_request, counter=self.channel_sent,
                              on_log_lines=self._record_lines)
        channel.start()
        with self.table_lock:
            self._channel = channel
            waiter = channel.send("load", self._load_doc())
        try:
            waiter.wait(60)
        except Exception:
            self._kill_host()
            raise
        self.host_ready.set()
        self._record({"level": "info", "function": None, "msg": "runtime started",
                      "data": {"gateway_port": self.gateway_port, "functions": len(self.table["functions"])}})

    def _host_db(self) -> tuple[dict[str, Any] | None, str | None]:
        """ctx.db settings of the host: the embedded server's owner role over its socket, or DATABASE_URL as given."""
        if not self.db_uri:
            return None, None
        u = urllib.parse.urlsplit(self.db_uri)
        hosts = urllib.parse.parse_qs(u.query).get("host")
        socket_dir = hosts[0] if hosts else None
        if socket_dir is not None and not socket_dir.startswith("/"):
            socket_dir = None  # ?host=<name>: TCP
        if self.pg is None:
            return {"url": self.db_uri}, socket_dir
        assert socket_dir is not None
        return {"host": socket_dir, "port": u.port or 5432, "user": urllib.parse.unquote(u.username or ""),
                "password": urllib.parse.unquote(u.password or ""), "database": u.path.lstrip("/") or "postgres"}, \
            socket_dir

    def _host_request(self, req: dict[str, Any]) -> dict[str, Any]:
        """A request of the host (an async route's call: into the durable queue); the reply's fields."""
        if req.get("op") != "enqueue":
            raise ValueError(f"unknown op {req.get('op')!r}")
        if self.queue is None:
            raise RuntimeError("the async queue is not available")
        rid = str(req.get("request_id") or pysecrets.token_hex(8))
        self.queue.enqueue(str(req.get("function")), rid, req.get("input"))
        return {"request_id": rid}

    def _record(self, rec: dict[str, Any]) -> None:
        rec.setdefault("stage", self.stage)
        for key in ("function", "request_id", "data"):
            rec.setdefault(key, None)
        self.logs.append(rec)
        if self.on_log:
            with contextlib.suppress(Exception):
                self.on_log(rec)

    def _record_lines(self, lines: list[bytes]) -> None:
        """The host's records of one read, as it wrote them (every field present): stored in one write, parsed
        only when `flux dev` prints them live."""
        if self.on_log:
            for raw in lines:
                with contextlib.suppress(ValueError):
                    rec = json.loads(raw)
                    if isinstance(rec, dict):
                        self._record(rec)
            return
        self.logs.append_lines(lines)

    def _invoke_now(self, function: str, request_id: str, payload: Any, attempt: int) -> tuple[int, Any]:
        if not self.host_ready.wait(timeout=30):
            raise HostDown("runtime not ready")
        fn = self.table["functions"].get(function)
        timeout = (fn or {}).get("timeout_ms", 30000) / 1000 + 10
        res = self._call("invoke", {"function": function, "request_id": request_id, "input": payload,
                                    "attempt": attempt}, timeout)
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
            self._call("shutdown", {}, 10)
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
            with self.table_lock:
                self._channel = None
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

    # -- HTTP: admin API (provider / CLI) -----------------------------------------------------------
    def _start_server(self) -> None:
        class Handler(_JsonHandler):
            daemon = self

        class Server(ThreadingHTTPServer):
            daemon_threads = True
            # an apply opens ~74 connections at once (64 load checks ahead + the engine's 10): past socketserver's
            # default backlog of 5, a connection's SYN is dropped and retried a second later (measured: 15-18 of
            # 74 concurrent connects took ~1 s; none with this)
            request_queue_size = socket.SOMAXCONN

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
        except HostError as exc:  # the host refused the change (and the table was put back)
            return 400, {"error": f"the runtime refused the change: {self.masker(str(exc))}"}
        except Exception as exc:
            _diag(f"{method} {path} failed: {type(exc).__name__}: {exc}")
            return 500, {"error": f"{type(exc).__name__}: {exc}"}

    def route(self, method: str, path: str, body: Any) -> tuple[int, Any]:
        # Resource names travel percent-encoded (a route key like `POST_/a/b` holds slashes): split first.
        parts = [urllib.parse.unquote(p) for p in path.split("?", 1)[0].split("/") if p]
        body = body if isinstance(body, dict) else {}
        match method, parts:
            case "GET", ["admin", "status"]:
                return 200, self.status()
            case "GET", ["admin", "table"]:
                return 200, self.table_doc()
            case ("PUT" | "DELETE") as verb, ["admin", ("functions" | "routes") as section, name]:
                self.change(section, name, body if verb == "PUT" else None)
                return 200, {"ok": True}
            case "PUT", ["admin", "secrets", key]:
                with self.table_lock:
                    if not self._load_secret(key):
                        return 404, {"error": f"secret {key} is not set (flux secrets set {key}=...)"}
                    self._refresh_mask()
                self.change("secrets", key, body.get("fingerprint"))
                return 200, {"ok": True}
            case "DELETE", ["admin", "secrets", key]:
                with self.table_lock:
                    self.secret_values.pop(key, None)
                self.change("secrets", key, None)
                return 200, {"ok": True}
            case "POST", ["admin", "save"]:  # the provider's after_apply: runtime.json once per apply
                with self.table_lock:
                    self._save_table()
                return 200, {"ok": True}
            case "POST", ["admin", "check", name]:  # load the function once before it takes traffic
                cfg = {"runtime": body.get("runtime"), "bundle": body.get("bundle"), "digest": body.get("digest"),
                       "env": self.env_for(body), "plain_env": self.plain_env(body),
                       "timeout_ms": body.get("timeout_ms", 30000), "async": False,
                       "memory_mb": int(body.get("memory", 256))}  # the host keeps this worker for the put
                try:
                    res = self._call("check", {"function": name, "config": cfg}, 120)
                except HostError as exc:
                    return 400, {"error": str(exc)}
                if res.get("loaded"):
                    return 200, {"ok": True}
                # a load error may quote a secret value
                return 200, {"ok": False, "error": self.masker(str(res.get("error")))}
            case "PUT", ["admin", "cors"]:  # the stage's CORS setting (api.<stage> attribute); null = none
                cors = body.get("cors")
                if cors is not None and not (isinstance(cors, dict) and isinstance(cors.get("allow_origins"), list)):
                    return 400, {"error": "cors must be null or an object with allow_origins: [...]"}
                self.change("cors", None, cors)
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

    def table_doc(self) -> dict[str, Any]:
        """What a refresh compares state with: the table the host serves, without status()'s round trip to
        the host for its health (at 5000 functions: 3 MB and ~150 ms against ~1 MB)."""
        with self.table_lock:
            return {"gateway_port": self.gateway_port, "functions": dict(self.table["functions"]),
                    "routes": dict(self.table["routes"]), "secrets": dict(self.table["secrets"]),
                    "cors": self.table.get("cors")}

    def status(self) -> dict[str, Any]:
        health: Any = None
        if self.host_ready.is_set():
            with contextlib.suppress(Exception):
                health = {"ok": True, "functions": self._call("health", {}, 5).get("functions")}
        return {
            "pid": os.getpid(), "stage": self.stage, "gateway_port": self.gateway_port,
            "host_pid": self.host.pid if self.host else None, "host_ready": self.host_ready.is_set(),
            "pg_pid": self.pg.pid if self.pg else None, "db_alive": (pid_alive(self.pg.pid) if self.pg else None),
            "functions": self.table["functions"], "routes": self.table["routes"],
            "secrets": self.table["secrets"], "cors": self.table.get("cors"), "health": health,
            "queue_pending": self.queue.pending_count() if self.queue else 0,
            "channel": {"sent": sum(self.channel_sent.values()), "by_op": dict(self.channel_sent)},
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
