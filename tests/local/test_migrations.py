"""flux_plan.migrations on a real PostgreSQL: order, one transaction each, idempotent, failures roll
back and name the file and line, an edited applied migration is refused."""

from __future__ import annotations

import hashlib
from typing import Any

import psycopg
import pytest

from flux_plan import migrations
from flux_plan.errors import ProviderError
from flux_plan.model import Migration


def mig(version: int, name: str, sql: str) -> tuple[Migration, str]:
    file = f"{version:03d}_{name}.sql"
    return Migration(file=file, version=version, name=name, checksum=hashlib.sha256(sql.encode()).hexdigest(),
                     path=f"schema/{file}"), sql


def test_applies_in_order_and_records_history(db: psycopg.Connection[Any]) -> None:
    assert migrations.applied(db) == []
    m1 = mig(1, "create_todos", "CREATE TABLE todos (id bigserial PRIMARY KEY, title text NOT NULL);")
    m2 = mig(2, "add_due", "ALTER TABLE todos ADD COLUMN due_date date;\nCREATE INDEX ON todos (due_date);")
    for m, sql in (m1, m2):
        rec = migrations.apply(db, m, sql)
        assert rec.version == m.version and rec.checksum == m.checksum and rec.duration_ms >= 0
    history = migrations.applied(db)
    assert [(h.version, h.name, h.file) for h in history] == [(1, "create_todos", "001_create_todos.sql"),
                                                             (2, "add_due", "002_add_due.sql")]
    # idempotent: a crash between apply and the journal's `done` must not run it twice
    again = migrations.apply(db, *m1)
    assert again.applied_at == history[0].applied_at
    assert len(migrations.applied(db)) == 2


def test_failure_rolls_back_everything_and_names_file_and_line(db: psycopg.Connection[Any]) -> None:
    migrations.apply(db, *mig(1, "base", "CREATE TABLE a (id int);"))
    bad = mig(2, "broken", "CREATE TABLE b (id int);\nINSERT INTO a VALUES (1);\nSELECT nope FROM a;\n")
    with pytest.raises(ProviderError) as info:
        migrations.apply(db, *bad)
    msg = str(info.value)
    assert msg.startswith("schema/002_broken.sql:3: migration failed and was rolled back")
    assert 'column "nope" does not exist' in msg
    assert db.execute("SELECT to_regclass('b')").fetchone()[0] is None
    assert db.execute("SELECT count(*) FROM a").fetchone()[0] == 0
    assert [h.version for h in migrations.applied(db)] == [1]


def test_edited_applied_migration_is_refused(db: psycopg.Connection[Any]) -> None:
    migrations.apply(db, *mig(1, "base", "CREATE TABLE a (id int);"))
    with pytest.raises(ProviderError, match=r"already applied .* with different content"):
        migrations.apply(db, *mig(1, "base", "CREATE TABLE a (id bigint);"))
