"""ctx.db.query as the local host runs it (flux_local/runtime/db.ts: the shared flux_plan/runtime/query.mjs +
postgres.js) against the shared vectors and a real PostgreSQL: every compiled statement runs, names are never
injectable, rows come back as JSON. The compiler's statements themselves are pinned by tests/aws/test_query_port.py
(node and deno); this file runs them."""

from __future__ import annotations

import json
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema
import psycopg
import pytest
from flux_local.runtime import db_import_map, deno_bin, runtime_dir
from psycopg.conninfo import conninfo_to_dict

from flux_plan.paths import schema_path
from flux_plan.runtime import import_map_flag

VECTORS = json.loads((Path(__file__).parents[1] / "fixtures" / "query_vectors.json").read_text())
CASES = VECTORS["cases"]
DDL = """
CREATE TABLE todos (id bigserial PRIMARY KEY, title text NOT NULL DEFAULT '', done boolean NOT NULL DEFAULT false,
  created_at timestamptz NOT NULL DEFAULT now(), due_date date, meta jsonb, score numeric);
CREATE TABLE users (id uuid PRIMARY KEY, email text, name text);
CREATE TABLE flux_migrations (version integer, name text, checksum text, applied_at timestamptz,
  duration_ms integer);
"""
# Runs a list of steps in order through createDb (the host's ctx.db) and prints one result per step:
# {"params": ...} -> {"rows": [...]} or {"error": message}; {"exec": sql} runs raw SQL (test fixtures only).
RUNNER = """
import { createDb } from "DB_TS";
const doc = JSON.parse(await Deno.readTextFile(Deno.args[0]));
const load = () => import("flux:postgres");
const db = createDb({ ...doc.db, max: 2 }, load);
const raw = (await load()).default({ ...doc.db, pass: doc.db.password, max: 1, onnotice: () => {} });
const out = [];
for (const step of doc.steps) {
  if ("exec" in step) { await raw.unsafe(step.exec); out.push({ ok: true }); continue; }
  try { out.push({ rows: await db.query(step.params) }); }
  catch (e) { out.push({ error: e.message }); }
}
await db.end();
await raw.end({ timeout: 1 });
console.log(JSON.stringify(out));
"""


@pytest.fixture
def db_url(pg_server: str) -> Iterator[str]:
    """A fresh database on the shared server (its URL for postgres.js), dropped afterwards."""
    name = f"t_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(pg_server, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    uri = pg_server.replace("/postgres?", f"/{name}?")
    with psycopg.connect(uri, autocommit=True) as conn:
        conn.execute(DDL)
    try:
        yield uri
    finally:
        with psycopg.connect(pg_server, autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def run_steps(url: str, steps: list[dict[str, Any]], tmp_path: Path) -> list[dict[str, Any]]:
    """The steps through the host's ctx.db code under deno (the host's import map: flux:query, flux:postgres)."""
    script = tmp_path / "run_query.ts"
    script.write_text(RUNNER.replace("DB_TS", (runtime_dir() / "db.ts").as_uri()))
    doc = tmp_path / "steps.json"
    info = conninfo_to_dict(url)  # the embedded server as the host gets it: socket dir, port, role, password
    cfg = {"host": info["host"], "port": int(info.get("port") or 5432), "user": info["user"],
           "password": info["password"], "database": info["dbname"]}
    doc.write_text(json.dumps({"db": cfg, "steps": steps}))
    cmd = [deno_bin(), "run", "--quiet", "--no-config", "--no-lock", import_map_flag(db_import_map()),
           "--allow-all", str(script), str(doc)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    results: list[dict[str, Any]] = json.loads(proc.stdout)
    assert len(results) == len(steps)
    return results


def test_vectors_cover_every_operation_and_filter_op() -> None:
    ok = [c for c in CASES if "sql" in c]
    assert {c["params"]["operation"] for c in ok} == {"select", "insert", "update", "delete"}
    ops = {f["op"] for c in ok for f in c["params"].get("filters", [])}
    assert ops == {"eq", "neq", "gt", "gte", "lt", "lte", "in", "like", "is_null"}
    assert len(CASES) >= 30


def test_valid_vectors_match_the_json_schema() -> None:
    schema = json.loads(schema_path("query").read_text())
    validator = jsonschema.Draft202012Validator(schema)
    for case in CASES:
        if "sql" in case:
            assert not list(validator.iter_errors(case["params"])), case["name"]


def test_every_vector_runs_on_postgresql(db_url: str, tmp_path: Path) -> None:
    reset = {"exec": "TRUNCATE todos, users RESTART IDENTITY; INSERT INTO todos (title) VALUES ('one'), ('two')"}
    steps: list[dict[str, Any]] = []
    for case in CASES:
        steps += [reset, {"params": case["params"]}]
    results = run_steps(db_url, steps, tmp_path)[1::2]
    for case, got in zip(CASES, results, strict=True):
        if "error" in case:
            assert got == {"error": case["error"]}, case["name"]  # the compiler refused: nothing ran
        else:
            assert "rows" in got, (case["name"], got)


def test_rows_are_json_and_injection_attempts_are_inert(db_url: str, tmp_path: Path) -> None:
    hostile = "x'); DROP TABLE todos; --"
    steps = [
        {"params": {"table": "todos", "operation": "insert", "returning": "*",
                    "values": {"title": hostile, "due_date": "2026-12-01", "meta": {"k": [1, 2]}, "score": "2.5"}}},
        {"params": {"table": "todos", "operation": "select", "columns": ["title"],
                    "filters": [{"column": "title", "op": "eq", "value": hostile}]}},
        {"params": {"table": "todos", "operation": "select",
                    "filters": [{"column": "title", "op": "eq", "value": "' OR '1'='1"}]}},
        {"params": {"table": 'todos" ; DROP TABLE todos; --', "operation": "select"}},
        {"params": {"table": "todos", "operation": "select", "columns": ["id, pg_sleep(1)"]}},
        {"params": {"table": "todos", "operation": "select", "order": [{"column": "id; DROP TABLE todos"}]}},
        {"params": {"table": "flux_migrations", "operation": "select"}},
    ]
    ins, found, none, *bad, hidden = run_steps(db_url, steps, tmp_path)
    row = ins["rows"][0]
    assert row["title"] == hostile and row["due_date"] == "2026-12-01" and row["meta"] == {"k": [1, 2]}
    assert row["score"] == 2.5 and isinstance(row["id"], int)
    assert row["created_at"][10] == "T" and row["created_at"].endswith("+00:00")
    assert found == {"rows": [{"title": hostile}]}
    assert none == {"rows": []}
    for b in bad:
        assert b["error"].startswith("ctx.db.query: unknown "), b
    assert hidden["error"].startswith("ctx.db.query: unknown table"), hidden
    with psycopg.connect(db_url) as conn:
        assert conn.execute("SELECT count(*) FROM todos").fetchone() == (1,)


def test_update_and_delete_need_filters_or_all(db_url: str, tmp_path: Path) -> None:
    steps = [
        {"exec": "INSERT INTO todos (title) VALUES ('a'), ('b')"},
        {"params": {"table": "todos", "operation": "delete"}},
        {"params": {"table": "todos", "operation": "update", "values": {"done": True}, "all": True,
                    "returning": ["done"]}},
        {"params": {"table": "todos", "operation": "delete", "all": True}},
    ]
    _, refused, updated, deleted = run_steps(db_url, steps, tmp_path)
    assert "pass all: true" in refused["error"]
    assert updated == {"rows": [{"done": True}, {"done": True}]}
    assert deleted == {"rows": []}
    with psycopg.connect(db_url) as conn:
        assert conn.execute("SELECT count(*) FROM todos").fetchone() == (0,)


def test_a_database_error_names_postgresql_and_nothing_is_half_written(db_url: str, tmp_path: Path) -> None:
    steps = [{"params": {"table": "todos", "operation": "insert", "values": [{"title": "ok"}, {"title": None}]}}]
    (got,) = run_steps(db_url, steps, tmp_path)
    assert got["error"].startswith("database error: ") and "title" in got["error"]
    with psycopg.connect(db_url) as conn:
        assert conn.execute("SELECT count(*) FROM todos").fetchone() == (0,)
