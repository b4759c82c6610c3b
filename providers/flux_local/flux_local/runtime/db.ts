// ctx.db inside the host (DESIGN §8): a pooled postgres.js connected as the stage's owner role, statements compiled by
// the shared query.mjs (flux_plan/runtime) against the live schema. Its own module so that tests/local/test_query.py
// runs exactly this code against a real PostgreSQL (tests/fixtures/query_vectors.json).
import { compileQuery, QueryError, SCHEMA_SQL, schemaFromRows, wireArgs } from "flux:query";

export interface DbConfig {
  url?: string; // DATABASE_URL as the user gave it
  host?: string; // embedded: the socket directory
  port?: number;
  user?: string;
  password?: string;
  database?: string;
  max?: number;
}

// deno-lint-ignore no-explicit-any
type Sql = any;
// deno-lint-ignore no-explicit-any
type PostgresModule = { default: any };

/** postgres.js options: every default given, so that it reads no PG* variable of the (scrubbed) environment. */
export function pgOptions(db: DbConfig): Record<string, unknown> {
  const toNumber = (t: string) => {
    const n = Number(t);
    return Number.isSafeInteger(n) || (!Number.isInteger(n) && Number.isFinite(n)) ? n : t;
  };
  return {
    ...(db.url ? {} : { host: db.host, port: db.port ?? 5432, user: db.user, pass: db.password, database: db.database }),
    ...(db.url ? {} : { ssl: false }), // a DATABASE_URL's sslmode decides there
    max: db.max ?? 10, sslnegotiation: null, idle_timeout: 60, connect_timeout: 10,
    max_lifetime: null, max_pipeline: 100, backoff: 0.2, keep_alive: 60, prepare: true, debug: false, fetch_types: false,
    publications: "alltables", target_session_attrs: null, onnotice: () => {},
    // Parameters arrive as text (query.mjs wireArgs) and go to PostgreSQL as they are:
    // postgres.js would otherwise re-serialize them by the server's parameter types ("true" -> 'f' for a boolean,
    // JSON text encoded twice). Row values as the Python compiler's json_value gave them (the AWS shim's too): numbers for int8/numeric (when
    // exact), dates and timestamps as ISO text (+00:00 offsets), bytea as base64 (jsonValue).
    types: {
      flux_number: { to: 20, from: [20, 1700], serialize: asText, parse: toNumber },
      flux_bool: { to: 16, from: [16], serialize: (x: unknown) => typeof x === "string" ? x : x ? "t" : "f",
        parse: (t: string) => t === "t" },
      flux_json: { to: 114, from: [114, 3802], serialize: (x: unknown) => typeof x === "string" ? x : JSON.stringify(x),
        parse: (t: string) => JSON.parse(t) },
      flux_date: { to: 1082, from: [1082], serialize: asText, parse: (t: string) => t },
      flux_timestamp: { to: 1184, from: [1114, 1184], serialize: asText, parse: isoTimestamp },
      flux_bytea: { to: 17, from: [17], serialize: asText, parse: (t: string) => hexBytes(t) },
    },
  };
}

const asText = (x: unknown): string => (x instanceof Date ? x.toISOString() : String(x));
/** "2026-12-01 08:00:00.5+00" -> "2026-12-01T08:00:00.5+00:00" (Python's isoformat, as the AWS shim's rows) */
const isoTimestamp = (t: string): string => t.replace(" ", "T").replace(/([+-]\d\d)$/, "$1:00");
const hexBytes = (t: string): Uint8Array => {
  const hex = t.startsWith("\\x") ? t.slice(2) : t;
  const out = new Uint8Array(hex.length / 2);
  for (let i = 0; i < out.length; i++) out[i] = parseInt(hex.slice(2 * i, 2 * i + 2), 16);
  return out;
};

function jsonValue(v: unknown): unknown {
  if (v instanceof Date) return v.toISOString();
  if (v instanceof Uint8Array) return btoa(Array.from(v, (b) => String.fromCharCode(b)).join(""));
  return v;
}

/** ctx.db.query of one host: `loadDriver` imports postgres.js lazily (a stage without ctx.db never loads it);
 * `diag` gets driver failures for the host's stderr. query() resolves with JSON rows or rejects with the message
 * the function sees (compiler errors start "ctx.db.query: ", PostgreSQL's "database error: "). */
export function createDb(cfg: DbConfig | undefined, loadDriver: () => Promise<PostgresModule>,
  diag: (msg: string) => void = () => {}): { query(params: unknown): Promise<unknown[]>; end(): Promise<void> } {
  let sqlClient: Promise<Sql> | null = null;
  let dbSchema: Record<string, Record<string, string>> | null = null;

  function sql(): Promise<Sql> {
    const db = cfg;
    if (!db) return Promise.reject(new Error("ctx.db.query: this stage has no database"));
    return sqlClient ??= (async () => {
      const { default: postgres } = await loadDriver();
      return db.url ? postgres(db.url, pgOptions(db)) : postgres(pgOptions(db));
    })().catch((err) => {
      sqlClient = null;
      diag(`cannot load the PostgreSQL driver: ${err}`);
      throw new Error("ctx.db.query: the PostgreSQL driver (npm postgres) is not installed; run ./scripts/setup.sh");
    });
  }

  async function query(params: unknown): Promise<unknown[]> {
    const client = await sql();
    const readSchema = async () => (dbSchema = schemaFromRows(await client.unsafe(SCHEMA_SQL)) as Record<string, Record<string, string>>);
    let compiled: [string, unknown[]];
    try {
      compiled = compileQuery(params, dbSchema ?? await readSchema());
    } catch (err) {
      if (!(err instanceof QueryError)) throw err;
      compiled = compileQuery(params, await readSchema()); // a migration may have run since: look again once
    }
    const [text, args] = compiled;
    let rows: Record<string, unknown>[];
    try {
      rows = await client.unsafe(text, wireArgs(args), { prepare: true });
    } catch (err) {
      const e = err as { code?: string; message?: string };
      if (e.code === "42P01" || e.code === "42703") dbSchema = null; // undefined table/column: the schema changed
      throw new Error(`database error: ${e.message ?? String(err)}`);
    }
    return rows.map((row) => {
      const out: Record<string, unknown> = {};
      for (const k in row) out[k] = jsonValue(row[k]);
      return out;
    });
  }

  async function end(): Promise<void> {
    if (sqlClient) await (await sqlClient.catch(() => null))?.end({ timeout: 1 });
  }

  return { query, end };
}
