"""The query compiler against the shared vectors (also the AWS JS port's contract) and against a real
PostgreSQL: every compiled statement runs, names are never injectable, rows come back as JSON."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import jsonschema
import psycopg
import pytest

from flux_plan.paths import schema_path
from flux_plan.query import QueryError, compile_query, read_schema, run_query

VECTORS = json.loads((Path(__file__).parents[1] / "fixtures" / "query_vectors.json").read_text())
CASES = VECTORS["cases"]
DDL = """
CREATE TABLE todos (id bigserial PRIMARY KEY, title text NOT NULL DEFAULT '', done boolean NOT NULL DEFAULT false,
  created_at timestamptz NOT NULL DEFAULT now(), due_date date, meta jsonb, score numeric);
CREATE TABLE users (id uuid PRIMARY KEY, email text, name text);
CREATE TABLE flux_migrations (version integer, name text, checksum text, applied_at timestamptz,
  duration_ms integer);
"""


@pytest.mark.parametrize("case", CASES, ids=[c["name"] for c in CASES])
def test_vector(case: dict[str, Any]) -> None:
    if "error" in case:
        with pytest.raises(QueryError) as info:
            compile_query(case["params"], VECTORS["schema"])
        assert str(info.value) == case["error"]
    else:
        assert compile_query(case["params"], VECTORS["schema"]) == (case["sql"], case["args"])


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


def test_every_compiled_vector_runs_on_postgresql(db: psycopg.Connection[Any]) -> None:
    db.execute(DDL)
    db.execute("INSERT INTO todos (title) VALUES ('one'), ('two')")
    schema = read_schema(db)
    assert list(schema["todos"]) == list(VECTORS["schema"]["todos"])
    for case in CASES:
        if "sql" not in case:
            continue
        with db.transaction(force_rollback=True):
            run_query(db, case["params"], schema)


def test_rows_are_json_and_injection_attempts_are_inert(db: psycopg.Connection[Any]) -> None:
    db.execute(DDL)
    schema = read_schema(db)
    hostile = "x'); DROP TABLE todos; --"
    rows = run_query(db, {"table": "todos", "operation": "insert",
                          "values": {"title": hostile, "due_date": "2026-12-01", "meta": {"k": [1, 2]}, "score": "2.5"},
                          "returning": "*"}, schema)
    assert rows[0]["title"] == hostile
    assert rows[0]["due_date"] == "2026-12-01"
    assert rows[0]["meta"] == {"k": [1, 2]}
    assert rows[0]["score"] == 2.5 and isinstance(rows[0]["id"], int)
    assert rows[0]["created_at"].startswith(rows[0]["created_at"][:4]) and "T" in rows[0]["created_at"]
    json.dumps(rows)
    found = run_query(db, {"table": "todos", "operation": "select", "columns": ["title"],
                           "filters": [{"column": "title", "op": "eq", "value": hostile}]}, schema)
    assert found == [{"title": hostile}]
    assert run_query(db, {"table": "todos", "operation": "select",
                          "filters": [{"column": "title", "op": "eq", "value": "' OR '1'='1"}]}, schema) == []
    for bad in ({"table": 'todos" ; DROP TABLE todos; --', "operation": "select"},
                {"table": "todos", "operation": "select", "columns": ["id, pg_sleep(1)"]},
                {"table": "todos", "operation": "select", "order": [{"column": "id; DROP TABLE todos"}]}):
        with pytest.raises(QueryError, match=r"unknown (table|column)"):
            run_query(db, bad, schema)
    assert db.execute("SELECT count(*) FROM todos").fetchone()[0] == 1


def test_update_and_delete_need_filters_or_all(db: psycopg.Connection[Any]) -> None:
    db.execute(DDL)
    db.execute("INSERT INTO todos (title) VALUES ('a'), ('b')")
    schema = read_schema(db)
    with pytest.raises(QueryError, match="pass all: true"):
        run_query(db, {"table": "todos", "operation": "delete"}, schema)
    assert db.execute("SELECT count(*) FROM todos").fetchone()[0] == 2
    rows = run_query(db, {"table": "todos", "operation": "update", "values": {"done": True}, "all": True,
                          "returning": ["done"]}, schema)
    assert rows == [{"done": True}, {"done": True}]
    assert run_query(db, {"table": "todos", "operation": "delete", "all": True}, schema) == []
    assert db.execute("SELECT count(*) FROM todos").fetchone()[0] == 0
