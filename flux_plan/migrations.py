"""Migration runner shared by every provider: schema/*.sql applied once each, in order, recorded in
`flux_migrations`. Each migration runs in its own transaction together with its bookkeeping row, so a
failure leaves nothing half-applied and the history never lies."""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from flux_plan.errors import ProviderError
from flux_plan.model import Migration

TABLE = "flux_migrations"
_CREATE = (
    f"CREATE TABLE IF NOT EXISTS {TABLE} ("
    " version integer PRIMARY KEY,"
    " name text NOT NULL,"
    " file text NOT NULL,"
    " checksum text NOT NULL,"
    " applied_at timestamptz NOT NULL DEFAULT now(),"
    " duration_ms integer NOT NULL)"
)
# Serialises concurrent appliers (two `flux apply`, or apply + dev) on one database.
_LOCK_KEY = 0x666C7578  # "flux"


@dataclass(frozen=True)
class AppliedMigration:
    version: int
    name: str
    file: str
    checksum: str
    applied_at: datetime
    duration_ms: int


def applied(conn: Any) -> list[AppliedMigration]:
    """Rows of flux_migrations in version order; [] when the table does not exist yet."""
    exists = conn.execute("SELECT to_regclass(%s)", (TABLE,)).fetchone()[0]
    if exists is None:
        return []
    rows = conn.execute(
        f"SELECT version, name, file, checksum, applied_at, duration_ms FROM {TABLE} ORDER BY version"
    ).fetchall()
    return [AppliedMigration(*row) for row in rows]


def _line_of(sql: str, position: int | None) -> int | None:
    if not position:
        return None
    return sql.count("\n", 0, max(0, position - 1)) + 1


def apply(conn: Any, migration: Migration, sql: str) -> AppliedMigration:
    """Run one migration in its own transaction and record it; idempotent for the same checksum.

    Raises ProviderError naming the file, the PostgreSQL error and its line when the SQL fails (the
    transaction is rolled back), or when a migration of that version was applied with other content.
    """
    import psycopg

    where = migration.path or f"schema/{migration.file}"
    started = time.monotonic()
    try:
        with conn.transaction():
            conn.execute(_CREATE)
            conn.execute("SELECT pg_advisory_xact_lock(%s)", (_LOCK_KEY,))
            row = conn.execute(
                f"SELECT version, name, file, checksum, applied_at, duration_ms FROM {TABLE} WHERE version = %s",
                (migration.version,),
            ).fetchone()
            if row is not None:
                done = AppliedMigration(*row)
                if done.checksum != migration.checksum:
                    raise ProviderError(
                        f"{where}: version {migration.version} was already applied from {done.file} with "
                        "different content; never edit an applied migration, add a new file instead",
                        address=f"migration.{migration.file}",
                    )
                return done
            try:
                conn.execute(sql)
            except psycopg.Error as exc:
                diag = exc.diag
                line = _line_of(sql, int(diag.statement_position) if diag.statement_position else None)
                loc = f"{where}:{line}" if line else where
                msg = diag.message_primary or str(exc).strip()
                raise ProviderError(
                    f"{loc}: migration failed and was rolled back: {msg}",
                    address=f"migration.{migration.file}",
                ) from None
            duration_ms = int((time.monotonic() - started) * 1000)
            rec = conn.execute(
                f"INSERT INTO {TABLE} (version, name, file, checksum, duration_ms) VALUES (%s, %s, %s, %s, %s) "
                "RETURNING version, name, file, checksum, applied_at, duration_ms",
                (migration.version, migration.name, migration.file, migration.checksum, duration_ms),
            ).fetchone()
            return AppliedMigration(*rec)
    except psycopg.Error as exc:  # failures around the migration itself (connection lost, lock, ...)
        raise ProviderError(f"{where}: migration failed: {str(exc).strip()}",
                            address=f"migration.{migration.file}") from None


apply_migration = apply  # the name docs/ARCHITECTURE.md uses
