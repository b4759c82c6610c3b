"""`ctx.db.query(params)` -> ONE parameterised SQL statement.

Names (table, columns) are never taken from input as SQL: they are checked against the live schema
and quoted as identifiers; every value travels as a `$n` parameter. The SQL uses PostgreSQL's native
`$n` placeholders so the exact same text runs through psycopg's RawCursor here and through node-pg in
the AWS provider's JS port, which is checked against tests/fixtures/query_vectors.json.

Values are sent as text of unknown type (`wire_args`), exactly like node-pg does, so PostgreSQL
infers each parameter's type from the column it meets: `'2026-12-01'` becomes a date, `'true'` a
boolean. json/jsonb columns get an explicit cast and their value as JSON text.
"""

from __future__ import annotations

import base64
import datetime as dt
import decimal
import functools
import json
import uuid
from collections.abc import Mapping, Sequence
from typing import Any

from psycopg import sql

Schema = Mapping[str, Mapping[str, str]]  # table -> {column: data_type}, in column order

OPERATIONS = ("select", "insert", "update", "delete")
FILTER_OPS = ("eq", "neq", "gt", "gte", "lt", "lte", "in", "like", "is_null")
FIELDS = ("table", "operation", "columns", "filters", "values", "order", "limit", "returning", "all")
_COMPARE = {"eq": "=", "neq": "<>", "gt": ">", "gte": ">=", "lt": "<", "lte": "<="}
_JSON_TYPES = ("json", "jsonb")
_ONLY_WITH = {
    "columns": ("select",),
    "order": ("select",),
    "limit": ("select",),
    "filters": ("select", "update", "delete"),
    "values": ("insert", "update"),
    "returning": ("insert", "update", "delete"),
    "all": ("update", "delete"),
}
# Tables the runtime keeps for itself: invisible to ctx.db.query.
HIDDEN_TABLES = frozenset({"flux_migrations"})
PREFIX = "ctx.db.query: "


class QueryError(ValueError):
    """The params are wrong (shape, unknown table/column, unsafe update): the caller's mistake."""

    def __init__(self, message: str) -> None:
        super().__init__(PREFIX + message)


def _q(v: Any) -> str:
    return json.dumps(v, ensure_ascii=False)


@functools.lru_cache(maxsize=4096)
def ident(name: str) -> str:
    """A quoted identifier, rendered by psycopg's sql.Identifier (no connection needed).

    Cached: rendering costs ~1 us a name, several per query, and the names are the schema's (checked
    against it before they get here), so the cache stays small."""
    return sql.Identifier(name).as_string(None)


class _Compiler:
    def __init__(self, params: Any, schema: Schema) -> None:
        self.params = params
        self.schema = schema
        self.args: list[Any] = []
        self.table = ""
        self.columns: Mapping[str, str] = {}

    def arg(self, value: Any, column: str) -> str:
        """A placeholder for `value`; json columns get their cast and the value as JSON text."""
        ctype = self.columns[column]
        if ctype in _JSON_TYPES:
            text = None if value is None else json.dumps(value, ensure_ascii=False, separators=(",", ":"))
            self.args.append(text)
            return f"${len(self.args)}::{ctype}"
        if isinstance(value, dict | list):
            raise QueryError(
                f"column {_q(column)} of table {_q(self.table)} is {ctype}: objects and arrays are only "
                "allowed in json/jsonb columns"
            )
        self.args.append(value)
        return f"${len(self.args)}"

    def column(self, name: Any, where: str) -> str:
        if not isinstance(name, str) or not name:
            raise QueryError(f"{where} must be a column name (a non-empty string)")
        if name not in self.columns:
            known = ", ".join(self.columns)
            raise QueryError(f"unknown column {_q(name)} in table {_q(self.table)} (columns: {known})")
        return ident(name)

    def column_list(self, value: Any, field: str) -> str:
        if value == "*":
            return "*"
        if not isinstance(value, list) or not value:
            raise QueryError(f'"{field}" must be a non-empty array of column names (or "*")')
        return ", ".join(self.column(c, f"{field}[{i}]") for i, c in enumerate(value))

    def compile(self) -> tuple[str, list[Any]]:
        p = self.params
        if not isinstance(p, dict):
            raise QueryError("params must be an object like {table, operation, ...}")
        for key in p:
            if key not in FIELDS:
                raise QueryError(f"unknown field {_q(key)} (allowed: {', '.join(FIELDS)})")
        table = p.get("table")
        if not isinstance(table, str) or not table:
            raise QueryError('"table" must be a non-empty string')
        op = p.get("operation")
        if op not in OPERATIONS:
            raise QueryError(f'"operation" must be one of {", ".join(OPERATIONS)} (got {_q(op)})')
        for key, ops in _ONLY_WITH.items():
            if key in p and op not in ops:
                raise QueryError(f'"{key}" is not allowed with operation {op}')
        if table in HIDDEN_TABLES or table not in self.schema:
            visible = (t for t in self.schema if t not in HIDDEN_TABLES)
            known = ", ".join(sorted(visible)) or "none yet: add a migration under schema/"
            raise QueryError(f"unknown table {_q(table)} (tables: {known})")
        self.table, self.columns = table, self.schema[table]
        if "all" in p and not isinstance(p["all"], bool):
            raise QueryError('"all" must be true or false')
        return getattr(self, f"_{op}")(p)

    # -- pieces -------------------------------------------------------------------------------------
    def where(self, p: dict[str, Any]) -> str:
        filters = p.get("filters", [])
        if not isinstance(filters, list):
            raise QueryError('"filters" must be an array of {column, op, value}')
        parts = [self.filter(f, i) for i, f in enumerate(filters)]
        return " WHERE " + " AND ".join(parts) if parts else ""

    def filter(self, f: Any, i: int) -> str:
        where = f"filters[{i}]"
        if not isinstance(f, dict):
            raise QueryError(f"{where} must be an object {{column, op, value}}")
        for key in f:
            if key not in ("column", "op", "value"):
                raise QueryError(f"{where}: unknown field {_q(key)} (allowed: column, op, value)")
        col = self.column(f.get("column"), f"{where}.column")
        op = f.get("op")
        if op not in FILTER_OPS:
            raise QueryError(f"{where}.op must be one of {', '.join(FILTER_OPS)} (got {_q(op)})")
        name = f["column"]
        value = f.get("value")
        if op == "is_null":
            if "value" in f and not isinstance(value, bool):
                raise QueryError(f"{where}.value must be true (IS NULL) or false (IS NOT NULL) for op is_null")
            return f"{col} IS NULL" if value is not False else f"{col} IS NOT NULL"
        if "value" not in f:
            raise QueryError(f"{where}.value is required for op {op}")
        if op == "in":
            if not isinstance(value, list):
                raise QueryError(f"{where}.value must be an array for op in")
            if any(v is None for v in value):
                raise QueryError(f"{where}.value must not contain null (use op is_null)")
            if not value:
                return "FALSE"
            return f"{col} IN ({', '.join(self.arg(v, name) for v in value)})"
        if value is None:
            raise QueryError(f"{where}.value is null: use op is_null to match missing values")
        if op == "like":
            if not isinstance(value, str):
                raise QueryError(f"{where}.value must be a string for op like")
            return f"{col} LIKE {self.arg(value, name)}"
        return f"{col} {_COMPARE[op]} {self.arg(value, name)}"

    def returning(self, p: dict[str, Any]) -> str:
        if "returning" not in p:
            return ""
        return " RETURNING " + self.column_list(p["returning"], "returning")

    def guard_all(self, p: dict[str, Any], op: str) -> None:
        if not p.get("filters") and p.get("all") is not True:
            verb = "change" if op == "update" else "delete"
            raise QueryError(
                f"{op} without filters would {verb} every row of {_q(self.table)}; pass all: true to allow it"
            )

    def row_values(self, row: Any, where: str) -> dict[str, Any]:
        if not isinstance(row, dict) or not row:
            raise QueryError(f"{where} must be a non-empty object {{column: value}}")
        for c in row:
            self.column(c, f"{where} key")
        return row

    # -- operations ---------------------------------------------------------------------------------
    def _select(self, p: dict[str, Any]) -> tuple[str, list[Any]]:
        cols = self.column_list(p["columns"], "columns") if "columns" in p else "*"
        text = f"SELECT {cols} FROM {ident(self.table)}" + self.where(p)
        if "order" in p:
            order = p["order"]
            if not isinstance(order, list) or not order:
                raise QueryError('"order" must be a non-empty array of {column, direction}')
            parts = []
            for i, o in enumerate(order):
                if not isinstance(o, dict):
                    raise QueryError(f"order[{i}] must be an object {{column, direction}}")
                for key in o:
                    if key not in ("column", "direction"):
                        raise QueryError(f"order[{i}]: unknown field {_q(key)} (allowed: column, direction)")
                direction = o.get("direction", "asc")
                if direction not in ("asc", "desc"):
                    raise QueryError(f'order[{i}].direction must be "asc" or "desc" (got {_q(direction)})')
                parts.append(f"{self.column(o.get('column'), f'order[{i}].column')} {direction.upper()}")
            text += " ORDER BY " + ", ".join(parts)
        if "limit" in p:
            limit = p["limit"]
            if isinstance(limit, bool) or not isinstance(limit, int) or limit < 0:
                raise QueryError('"limit" must be a non-negative integer')
            self.args.append(limit)
            text += f" LIMIT ${len(self.args)}"
        return text, self.args

    def _insert(self, p: dict[str, Any]) -> tuple[str, list[Any]]:
        if "values" not in p:
            raise QueryError('"values" is required for operation insert')
        values = p["values"]
        rows = values if isinstance(values, list) else [values]
        if not rows:
            raise QueryError('"values" must be an object or a non-empty array of objects')
        many = isinstance(values, list)
        first = self.row_values(rows[0], "values[0]" if many else "values")
        names = list(first)
        tuples = []
        for i, row in enumerate(rows):
            row = self.row_values(row, f"values[{i}]" if many else "values")
            if list(row) != names:
                raise QueryError(f"values[{i}] must have the same columns, in the same order, as values[0]")
            tuples.append("(" + ", ".join(self.arg(row[c], c) for c in names) + ")")
        cols = ", ".join(ident(c) for c in names)
        text = f"INSERT INTO {ident(self.table)} ({cols}) VALUES {', '.join(tuples)}" + self.returning(p)
        return text, self.args

    def _update(self, p: dict[str, Any]) -> tuple[str, list[Any]]:
        if "values" not in p:
            raise QueryError('"values" is required for operation update')
        row = self.row_values(p["values"], "values")
        sets = ", ".join(f"{ident(c)} = {self.arg(v, c)}" for c, v in row.items())
        self.guard_all(p, "update")
        text = f"UPDATE {ident(self.table)} SET {sets}" + self.where(p) + self.returning(p)
        return text, self.args

    def _delete(self, p: dict[str, Any]) -> tuple[str, list[Any]]:
        self.guard_all(p, "delete")
        text = f"DELETE FROM {ident(self.table)}" + self.where(p) + self.returning(p)
        return text, self.args


def compile_query(params: Any, schema: Schema) -> tuple[str, list[Any]]:
    """params -> (sql with $1..$n placeholders, args as JSON values). Raises QueryError."""
    return _Compiler(params, schema).compile()


# -- running it ---------------------------------------------------------------------------------------


def wire_args(args: Sequence[Any]) -> list[str | None]:
    """Every value as text of unknown type (what node-pg sends): PostgreSQL types it from its column."""
    out: list[str | None] = []
    for v in args:
        if v is None or isinstance(v, str):
            out.append(v)
        elif type(v) is int:
            out.append(str(v))  # what json.dumps gives, without its encoder set-up
        elif isinstance(v, bool):
            out.append("true" if v else "false")
        else:
            out.append(json.dumps(v))
    return out


_AS_IS = frozenset({type(None), bool, int, float, str, dict, list})


def json_value(v: Any) -> Any:
    """A PostgreSQL value as JSON: numeric -> number, timestamps -> ISO strings, json -> as is."""
    if v is None or isinstance(v, bool | int | float | str | dict | list):
        return v
    if isinstance(v, decimal.Decimal):
        return int(v) if v == v.to_integral_value() and abs(v) < 2**53 else float(v)
    if isinstance(v, dt.datetime | dt.date | dt.time):
        return v.isoformat()
    if isinstance(v, dt.timedelta):
        return v.total_seconds()
    if isinstance(v, uuid.UUID):
        return str(v)
    if isinstance(v, bytes | bytearray | memoryview):
        return base64.b64encode(bytes(v)).decode()
    if isinstance(v, tuple):
        return [json_value(x) for x in v]
    return str(v)


def read_schema(conn: Any) -> dict[str, dict[str, str]]:
    """Tables and columns of the `public` schema, from information_schema, in column order."""
    rows = conn.execute(
        "SELECT table_name, column_name, data_type FROM information_schema.columns "
        "WHERE table_schema = 'public' ORDER BY table_name, ordinal_position"
    ).fetchall()
    schema: dict[str, dict[str, str]] = {}
    for table, column, dtype in rows:
        schema.setdefault(table, {})[column] = dtype
    return schema


def run_query(conn: Any, params: Any, schema: Schema) -> list[dict[str, Any]]:
    """Compile and execute on `conn` (autocommit); rows as JSON objects. Raises QueryError/psycopg.Error."""
    import psycopg

    text, args = compile_query(params, schema)
    with psycopg.RawCursor(conn) as cur:
        cur.execute(text, wire_args(args))
        desc = cur.description  # built anew on each access: read it once
        if desc is None:
            return []
        names = [d.name for d in desc]
        as_is = _AS_IS  # most values are already JSON: skip the call for them
        return [{n: v if type(v) in as_is else json_value(v) for n, v in zip(names, row, strict=True)}
                for row in cur.fetchall()]
