"""Talking to a stage's daemon from the CLI process: find it (daemon.json, stale-pid aware), start it
detached, call its admin API, stop it and make sure nothing it started is left running."""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

from flux_local.procs import DAEMON_FILE, pid_alive, stop_pid
from flux_plan.errors import ProviderError, TransientProviderError
from flux_plan.filelocks import file_lock


def _is_daemon(pid: int) -> bool:
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return pid_alive(pid)
    return b"flux_local.daemon" in cmdline


def _environ_has(pid: int, needle: str) -> bool:
    try:
        return needle.encode() in Path(f"/proc/{pid}/environ").read_bytes()
    except OSError:
        return False


def _kill(pid: int, timeout: float = 5) -> None:
    """SIGTERM, then SIGKILL after `timeout`: for processes we started (checked by the caller)."""
    stop_pid(pid, ((signal.SIGTERM, timeout), (signal.SIGKILL, 5.0)))


def reap_orphans(info: dict[str, Any]) -> None:
    """What a dead daemon left running: its Deno host (identified by the daemon's tag in the host's
    environment, FLUX_SUPERVISOR, never by name, so a reused PID is left alone)."""
    host = info.get("host_pid")
    tag = info.get("host_tag")
    if host and tag and pid_alive(host) and _environ_has(int(host), f"FLUX_SUPERVISOR={tag}"):
        _kill(int(host))


class DaemonClient:
    """Why it caches: an apply makes a few admin calls per resource from several threads; re-reading daemon.json
    and /proc for each, and a new TCP connection for each, cost more than the daemon's work. daemon.json is
    re-read when it changes (stat), and each thread keeps one keep-alive connection to the admin API."""

    def __init__(self, state_dir: Path) -> None:
        self.dir = state_dir
        self._cached: tuple[tuple[int, int, int], dict[str, Any]] | None = None
        self._local = threading.local()

    def info(self) -> dict[str, Any] | None:
        """daemon.json of a live daemon; None (and the stale file removed) when it is not running."""
        path = self.dir / DAEMON_FILE
        try:
            st = path.stat()
        except OSError:
            return None
        key = (st.st_ino, st.st_mtime_ns, st.st_size)
        cached = self._cached
        if cached is not None and cached[0] == key and pid_alive(cached[1].get("pid")):
            return cached[1]
        try:
            doc = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None
        pid = doc.get("pid")
        if pid and pid_alive(pid) and _is_daemon(pid):
            self._cached = (key, doc)
            return doc
        reap_orphans(doc)  # stale: the daemon died without cleaning up
        path.unlink(missing_ok=True)
        return None

    def _connection(self, port: int, timeout: float) -> tuple[http.client.HTTPConnection, bool]:
        """This thread's keep-alive connection to the admin API on `port`; (conn, reused)."""
        conn: http.client.HTTPConnection | None = getattr(self._local, "conn", None)
        if conn is not None and conn.port == port:
            conn.timeout = timeout
            if conn.sock is not None:
                conn.sock.settimeout(timeout)
            return conn, True
        if conn is not None:
            conn.close()
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
        self._local.conn = conn
        return conn, False

    def _drop_connection(self) -> None:
        conn = getattr(self._local, "conn", None)
        self._local.conn = None
        if conn is not None:
            conn.close()

    def running(self) -> bool:
        return self.info() is not None

    def call(self, method: str, path: str, body: Any = None, *, timeout: float = 120) -> tuple[int, Any]:
        info = self.info()
        if info is None:
            raise TransientProviderError(f"the local runtime of {self.dir} is not running")
        data = json.dumps(body).encode() if body is not None else b""
        headers = {"Authorization": f"Bearer {info['token']}", "Content-Type": "application/json"}
        for attempt in (1, 2):
            conn, reused = self._connection(int(info["control_port"]), timeout)
            try:
                conn.request(method, path, body=data, headers=headers)
                resp = conn.getresponse()
                raw = resp.read()
                if resp.will_close:
                    self._drop_connection()
            except (http.client.RemoteDisconnected, BrokenPipeError, ConnectionResetError) as exc:
                self._drop_connection()
                # a kept-alive connection the daemon closed (it restarted): every admin call is idempotent
                if reused and attempt == 1:
                    continue
                raise TransientProviderError(f"local runtime unreachable: {exc}") from None
            except (OSError, http.client.HTTPException) as exc:
                self._drop_connection()
                raise TransientProviderError(f"local runtime unreachable: {exc}") from None
            try:
                return resp.status, json.loads(raw or b"null")
            except ValueError:
                return resp.status, {"error": f"HTTP {resp.status}"}
        raise AssertionError("unreachable")

    def ok(self, method: str, path: str, body: Any = None) -> Any:
        status, doc = self.call(method, path, body)
        if status >= 500:
            raise TransientProviderError(f"local runtime: {doc.get('error') if isinstance(doc, dict) else doc}")
        if status >= 400:
            raise ProviderError(f"local runtime: {doc.get('error') if isinstance(doc, dict) else doc}")
        return doc

    def start(self, root: Path, stage: str, project: str, settings: dict[str, Any], *,
              port: int | None = None, timeout: float = 90) -> dict[str, Any]:
        """Start the daemon detached (own session, survives this command) unless it runs already."""
        self.dir.mkdir(parents=True, exist_ok=True)
        with file_lock(self.dir / "daemon.start.lock", timeout=timeout):
            info = self.info()
            if info:
                return info
            (self.dir / "daemon.error").unlink(missing_ok=True)
            cmd = [sys.executable, "-m", "flux_local.daemon", "--root", str(root), "--stage", stage,
                   "--project", project, "--state-dir", str(self.dir), "--settings", json.dumps(settings)]
            if port is not None:
                cmd += ["--port", str(port)]
            log = open(self.dir / "daemon.log", "ab")  # noqa: SIM115 - handed to the child
            try:
                proc = subprocess.Popen(cmd, stdout=log, stderr=log, stdin=subprocess.DEVNULL,
                                        start_new_session=True, cwd=str(root), close_fds=True)
            finally:
                log.close()
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline:
                info = self.info()
                if info and info.get("pid") == proc.pid:
                    return info
                if proc.poll() is not None:
                    err = self.dir / "daemon.error"
                    why = err.read_text(encoding="utf-8").strip() if err.exists() else f"exit code {proc.returncode}"
                    raise ProviderError(f"the local runtime failed to start: {why} (see {self.dir / 'daemon.log'})")
                time.sleep(0.1)
            self._terminate(proc.pid)
            raise ProviderError(f"the local runtime did not start within {timeout:.0f}s (see {self.dir / 'daemon.log'})")

    def stop(self, timeout: float = 30) -> None:
        """Graceful shutdown; then SIGTERM/SIGKILL of the daemon's process group; no process is left."""
        info = self.info()
        if info is None:
            return
        pid = int(info["pid"])
        with contextlib.suppress(ProviderError):
            self.call("POST", "/admin/shutdown", {}, timeout=10)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and pid_alive(pid):
            time.sleep(0.1)
        if pid_alive(pid):
            self._terminate(pid)
        reap_orphans(info)
        (self.dir / DAEMON_FILE).unlink(missing_ok=True)

    @staticmethod
    def _terminate(pid: int) -> None:
        for sig in (signal.SIGTERM, signal.SIGKILL):
            try:
                os.killpg(pid, sig)
            except (ProcessLookupError, PermissionError):
                return
            for _ in range(50):
                if not pid_alive(pid):
                    return
                time.sleep(0.1)
