// The ctx.db.query compiler (the only one: local host and AWS shim): params -> ONE parameterised statement ($n
// placeholders). Names are checked against the live schema and quoted; values are always
// parameters. Pinned by tests/fixtures/query_vectors.json (tests/aws/test_query_port.py, tests/local/test_query.py).

const OPERATIONS = ["select", "insert", "update", "delete"];
const FILTER_OPS = ["eq", "neq", "gt", "gte", "lt", "lte", "in", "like", "is_null"];
const FIELDS = ["table", "operation", "columns", "filters", "values", "order", "limit", "returning", "all"];
const COMPARE = { eq: "=", neq: "<>", gt: ">", gte: ">=", lt: "<", lte: "<=" };
const JSON_TYPES = ["json", "jsonb"];
const ONLY_WITH = {
  columns: ["select"],
  order: ["select"],
  limit: ["select"],
  filters: ["select", "update", "delete"],
  values: ["insert", "update"],
  returning: ["insert", "update", "delete"],
  all: ["update", "delete"],
};
export const HIDDEN_TABLES = new Set(["flux_migrations"]);
const PREFIX = "ctx.db.query: ";

export class QueryError extends Error {
  constructor(message) {
    super(PREFIX + message);
    this.name = "QueryError";
  }
}

// Python's json.dumps(v, ensure_ascii=False): ", " and ": " separators, as the vectors' messages were written (the Python compiler's).
function q(v) {
  if (Array.isArray(v)) return "[" + v.map(q).join(", ") + "]";
  if (v !== null && typeof v === "object") return "{" + Object.entries(v).map(([k, x]) => `${JSON.stringify(k)}: ${q(x)}`).join(", ") + "}";
  if (v === undefined) return "null";
  return JSON.stringify(v);
}
const has = (o, k) => Object.prototype.hasOwnProperty.call(o, k);
const isObject = (v) => v !== null && typeof v === "object" && !Array.isArray(v);
export const ident = (name) => '"' + String(name).replace(/"/g, '""') + '"';

class Compiler {
  constructor(params, schema) {
    this.params = params;
    this.schema = schema;
    this.args = [];
    this.table = "";
    this.columns = {};
  }

  arg(value, column) {
    const ctype = this.columns[column];
    if (JSON_TYPES.includes(ctype)) {
      this.args.push(value === null || value === undefined ? null : JSON.stringify(value));
      return `$${this.args.length}::${ctype}`;
    }
    if (value !== null && typeof value === "object") {
      throw new QueryError(`column ${q(column)} of table ${q(this.table)} is ${ctype}: objects and arrays are only allowed in json/jsonb columns`);
    }
    this.args.push(value);
    return `$${this.args.length}`;
  }

  column(name, where) {
    if (typeof name !== "string" || !name) throw new QueryError(`${where} must be a column name (a non-empty string)`);
    if (!has(this.columns, name)) {
      throw new QueryError(`unknown column ${q(name)} in table ${q(this.table)} (columns: ${Object.keys(this.columns).join(", ")})`);
    }
    return ident(name);
  }

  columnList(value, field) {
    if (value === "*") return "*";
    if (!Array.isArray(value) || value.length === 0) throw new QueryError(`"${field}" must be a non-empty array of column names (or "*")`);
    return value.map((c, i) => this.column(c, `${field}[${i}]`)).join(", ");
  }

  compile() {
    const p = this.params;
    if (!isObject(p)) throw new QueryError("params must be an object like {table, operation, ...}");
    for (const key of Object.keys(p)) {
      if (!FIELDS.includes(key)) throw new QueryError(`unknown field ${q(key)} (allowed: ${FIELDS.join(", ")})`);
    }
    const table = p.table;
    if (typeof table !== "string" || !table) throw new QueryError('"table" must be a non-empty string');
    const op = p.operation;
    if (!OPERATIONS.includes(op)) throw new QueryError(`"operation" must be one of ${OPERATIONS.join(", ")} (got ${q(op)})`);
    for (const [key, ops] of Object.entries(ONLY_WITH)) {
      if (has(p, key) && !ops.includes(op)) throw new QueryError(`"${key}" is not allowed with operation ${op}`);
    }
    const visible = Object.fromEntries(Object.entries(this.schema).filter(([t]) => !HIDDEN_TABLES.has(t)));
    if (!has(visible, table)) {
      const known = Object.keys(visible).sort().join(", ") || "none yet: add a migration under schema/";
      throw new QueryError(`unknown table ${q(table)} (tables: ${known})`);
    }
    this.table = table;
    this.columns = visible[table];
    if (has(p, "all") && typeof p.all !== "boolean") throw new QueryError('"all" must be true or false');
    return this[`_${op}`](p);
  }

  where(p) {
    const filters = has(p, "filters") ? p.filters : [];
    if (!Array.isArray(filters)) throw new QueryError('"filters" must be an array of {column, op, value}');
    const parts = filters.map((f, i) => this.filter(f, i));
    return parts.length ? " WHERE " + parts.join(" AND ") : "";
  }

  filter(f, i) {
    const where = `filters[${i}]`;
    if (!isObject(f)) throw new QueryError(`${where} must be an object {column, op, value}`);
    for (const key of Object.keys(f)) {
      if (!["column", "op", "value"].includes(key)) throw new QueryError(`${where}: unknown field ${q(key)} (allowed: column, op, value)`);
    }
    const col = this.column(f.column, `${where}.column`);
    const op = f.op;
    if (!FILTER_OPS.includes(op)) throw new QueryError(`${where}.op must be one of ${FILTER_OPS.join(", ")} (got ${q(op)})`);
    const name = f.column;
    const value = has(f, "value") ? f.value : null;
    if (op === "is_null") {
      if (has(f, "value") && typeof value !== "boolean") {
        throw new QueryError(`${where}.value must be true (IS NULL) or false (IS NOT NULL) for op is_null`);
      }
      return value !== false ? `${col} IS NULL` : `${col} IS NOT NULL`;
    }
    if (!has(f, "value")) throw new QueryError(`${where}.value is required for op ${op}`);
    if (op === "in") {
      if (!Array.isArray(value)) throw new QueryError(`${where}.value must be an array for op in`);
      if (value.some((v) => v === null)) throw new QueryError(`${where}.value must not contain null (use op is_null)`);
      if (value.length === 0) return "FALSE";
      return `${col} IN (${value.map((v) => this.arg(v, name)).join(", ")})`;
    }
    if (value === null) throw new QueryError(`${where}.value is null: use op is_null to match missing values`);
    if (op === "like") {
      if (typeof value !== "string") throw new QueryError(`${where}.value must be a string for op like`);
      return `${col} LIKE ${this.arg(value, name)}`;
    }
    return `${col} ${COMPARE[op]} ${this.arg(value, name)}`;
  }

  returning(p) {
    return has(p, "returning") ? " RETURNING " + this.columnList(p.returning, "returning") : "";
  }

  guardAll(p, op) {
    const filters = p.filters;
    const empty = filters === undefined || filters === null || filters === false || filters === 0 || filters === "" ||
      (Array.isArray(filters) && filters.length === 0) || (isObject(filters) && Object.keys(filters).length === 0);
    if (empty && p.all !== true) {
      const verb = op === "update" ? "change" : "delete";
      throw new QueryError(`${op} without filters would ${verb} every row of ${q(this.table)}; pass all: true to allow it`);
    }
  }

  rowValues(row, where) {
    if (!isObject(row) || Object.keys(row).length === 0) throw new QueryError(`${where} must be a non-empty object {column: value}`);
    for (const c of Object.keys(row)) this.column(c, `${where} key`);
    return row;
  }

  _select(p) {
    const cols = has(p, "columns") ? this.columnList(p.columns, "columns") : "*";
    let text = `SELECT ${cols} FROM ${ident(this.table)}` + this.where(p);
    if (has(p, "order")) {
      const order = p.order;
      if (!Array.isArray(order) || order.length === 0) throw new QueryError('"order" must be a non-empty array of {column, direction}');
      const parts = order.map((o, i) => {
        if (!isObject(o)) throw new QueryError(`order[${i}] must be an object {column, direction}`);
        for (const key of Object.keys(o)) {
          if (!["column", "direction"].includes(key)) throw new QueryError(`order[${i}]: unknown field ${q(key)} (allowed: column, direction)`);
        }
        const direction = has(o, "direction") ? o.direction : "asc";
        if (direction !== "asc" && direction !== "desc") throw new QueryError(`order[${i}].direction must be "asc" or "desc" (got ${q(direction)})`);
        return `${this.column(o.column, `order[${i}].column`)} ${direction.toUpperCase()}`;
      });
      text += " ORDER BY " + parts.join(", ");
    }
    if (has(p, "limit")) {
      const limit = p.limit;
      if (typeof limit !== "number" || !Number.isInteger(limit) || limit < 0) throw new QueryError('"limit" must be a non-negative integer');
      this.args.push(limit);
      text += ` LIMIT $${this.args.length}`;
    }
    return [text, this.args];
  }

  _insert(p) {
    if (!has(p, "values")) throw new QueryError('"values" is required for operation insert');
    const values = p.values;
    const many = Array.isArray(values);
    const rows = many ? values : [values];
    if (rows.length === 0) throw new QueryError('"values" must be an object or a non-empty array of objects');
    const names = Object.keys(this.rowValues(rows[0], many ? "values[0]" : "values"));
    const tuples = rows.map((row, i) => {
      row = this.rowValues(row, many ? `values[${i}]` : "values");
      const keys = Object.keys(row);
      if (keys.length !== names.length || keys.some((k, j) => k !== names[j])) {
        throw new QueryError(`values[${i}] must have the same columns, in the same order, as values[0]`);
      }
      return "(" + names.map((c) => this.arg(row[c], c)).join(", ") + ")";
    });
    const cols = names.map(ident).join(", ");
    return [`INSERT INTO ${ident(this.table)} (${cols}) VALUES ${tuples.join(", ")}` + this.returning(p), this.args];
  }

  _update(p) {
    if (!has(p, "values")) throw new QueryError('"values" is required for operation update');
    const row = this.rowValues(p.values, "values");
    const sets = Object.entries(row).map(([c, v]) => `${ident(c)} = ${this.arg(v, c)}`).join(", ");
    this.guardAll(p, "update");
    return [`UPDATE ${ident(this.table)} SET ${sets}` + this.where(p) + this.returning(p), this.args];
  }

  _delete(p) {
    this.guardAll(p, "delete");
    return [`DELETE FROM ${ident(this.table)}` + this.where(p) + this.returning(p), this.args];
  }
}

/** params -> [sql with $1..$n placeholders, args as JSON values]. Throws QueryError. */
export function compileQuery(params, schema) {
  return new Compiler(params, schema).compile();
}

/** Every value as text of unknown type, as the Python compiler sent them: PostgreSQL types it from its column. */
export function wireArgs(args) {
  return args.map((v) => (v === null || v === undefined || typeof v === "string" ? v ?? null : typeof v === "boolean" ? (v ? "true" : "false") : JSON.stringify(v)));
}

export const SCHEMA_SQL = "SELECT table_name, column_name, data_type FROM information_schema.columns " +
  "WHERE table_schema = 'public' ORDER BY table_name, ordinal_position";

export function schemaFromRows(rows) {
  const schema = {};
  for (const r of rows) (schema[r.table_name] ??= {})[r.column_name] = r.data_type;
  return schema;
}
