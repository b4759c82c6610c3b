// The Flux function contract (DESIGN §7) on AWS Lambda: API Gateway v2 (payload 2.0) event ->
// input (body or query string, plus path parameters), handler result -> JSON 200, a returned Response
// -> its status/headers/body (http.mjs, shared with the local runtime), thrown error -> 500 with the
// request id (stack only in logs),
// invalid JSON -> 400, body over the limit -> 413; async functions answer 202 and re-invoke
// their own alias with InvocationType=Event (Lambda then retries and reports to the on-failure
// destination). ctx.log writes one JSON record per call to stdout, which Lambda ships to CloudWatch.
import { env, getSecretValue, invokeEvent } from "./aws.mjs";
import { compileQuery, QueryError, SCHEMA_SQL, schemaFromRows, wireArgs } from "./query.mjs";
import { isResponse, mergeParams, toApiGatewayV2 } from "./http.mjs";

const MARK = Symbol.for("flux.function");
const list = (v) => (v || "").split(",").map((s) => s.trim()).filter(Boolean);

function decodeBody(event) {
  const raw = event.body ?? "";
  if (!event.isBase64Encoded) return raw;
  if (globalThis.Buffer) return globalThis.Buffer.from(raw, "base64").toString("utf8");
  return new TextDecoder().decode(Uint8Array.from(atob(raw), (c) => c.charCodeAt(0)));
}

function json(status, body, requestId, extra = {}) {
  return {
    statusCode: status,
    headers: { "content-type": "application/json", "x-flux-request-id": requestId, ...extra },
    body: JSON.stringify(body),
  };
}

// Row values as the local host gives them (db.ts): numbers for int8/numeric (when exact), dates as
// the text PostgreSQL sends, timestamps as ISO strings, bytea as base64.
function typeParsers(pg) {
  const toNumber = (text) => {
    const n = Number(text);
    return Number.isSafeInteger(n) || (!Number.isInteger(n) && Number.isFinite(n)) ? n : text;
  };
  const custom = { 20: toNumber, 1700: toNumber, 1082: (t) => t };
  return { getTypeParser: (oid, format) => custom[oid] ?? pg.types.getTypeParser(oid, format) };
}

function jsonValue(v) {
  if (v instanceof Date) return v.toISOString();
  if (globalThis.Buffer && globalThis.Buffer.isBuffer(v)) return v.toString("base64");
  return v;
}

/** ctx.db on Lambda: one connection per sandbox (URL from Secrets Manager), the schema read from
 * information_schema once (and again when a name is unknown: a migration may have added it). */
function makeDb(pg, databaseUrl) {
  let client = null;
  let schema = null;
  const connect = async () => {
    if (client) return client;
    const c = new pg.Client({ connectionString: await databaseUrl(), types: typeParsers(pg) });
    c.on("error", () => { if (client === c) client = null; });
    await c.connect();
    client = c;
    return c;
  };
  const readSchema = async (c) => (schema = schemaFromRows((await c.query(SCHEMA_SQL)).rows));
  return Object.freeze({
    query: async (params) => {
      const c = await connect();
      let compiled;
      try {
        compiled = compileQuery(params, schema ?? (await readSchema(c)));
      } catch (e) {
        if (!(e instanceof QueryError)) throw e;
        compiled = compileQuery(params, await readSchema(c));
      }
      const [text, args] = compiled;
      const res = await c.query({ text, values: wireArgs(args) });
      return res.rows.map((row) => Object.fromEntries(Object.entries(row).map(([k, v]) => [k, jsonValue(v)])));
    },
  });
}

const TIMED_OUT = Symbol("timed out");
const MARGIN_MS = 250; // answer before Lambda's own timeout (and the integration's, which ends with it) fires

/** `promise`, or TIMED_OUT just before the invocation's deadline: the caller gets the contract's 504 with the
 * request id instead of API Gateway's bare error when Lambda kills the sandbox. */
function withDeadline(promise, context) {
  const left = context?.getRemainingTimeInMillis?.();
  if (typeof left !== "number" || !Number.isFinite(left) || left > 15 * 60 * 1000) return promise;
  let timer;
  const limit = new Promise((resolve) => { timer = setTimeout(() => resolve(TIMED_OUT), Math.max(0, left - MARGIN_MS)); });
  return Promise.race([promise, limit]).finally(() => clearTimeout(timer));
}

export function makeHandler(def, { runtime, pg } = {}) {
  if (!def || !def[MARK] || typeof def.handler !== "function") {
    throw new Error("the function module's default export must be defineFunction({...}) from @flux/functions");
  }
  const fnName = env("FLUX_FUNCTION") || def.name;
  if (def.name !== fnName) {
    throw new Error(`defineFunction name ${JSON.stringify(def.name)} differs from flux.json name ${JSON.stringify(fnName)} (make them equal)`);
  }
  const prefix = env("FLUX_SECRET_PREFIX") || "";
  const secretKeys = new Set([...list(env("FLUX_SECRET_KEYS")), ...list(env("FLUX_ENV_KEYS"))]);
  const envKeys = list(env("FLUX_ENV_KEYS"));
  const isAsync = env("FLUX_ASYNC") === "1";
  const maxBody = Number(env("FLUX_MAX_BODY_BYTES") || 1048576);
  const dbSecret = env("FLUX_DATABASE_SECRET") || "";
  // A warm sandbox re-reads its secrets after FLUX_SECRET_TTL_MS (default 5 s): a rotated secret reaches running
  // code without a redeploy, and a burst of requests costs one Secrets Manager read per key and window.
  const ttlMs = Number(env("FLUX_SECRET_TTL_MS") || 5000);
  const cache = new Map(); // key -> { value, at }
  let masks = [];
  let frozenEnv = null;
  let envAt = 0;

  const secret = async (key) => {
    if (!secretKeys.has(key)) throw new Error(`unknown secret ${JSON.stringify(key)} (not set for this stage, or not read by this function)`);
    const hit = cache.get(key);
    if (!hit || Date.now() - hit.at > ttlMs) {
      const value = await getSecretValue(prefix + key);
      cache.set(key, { value, at: Date.now() });
      if (value && value.length >= 4 && !masks.includes(value)) masks = [...masks, value];
    }
    return cache.get(key).value;
  };
  const dbUrl = async () => {
    const url = await getSecretValue(dbSecret);
    const pw = (() => { try { return decodeURIComponent(new URL(url).password); } catch { return ""; } })();
    if (pw.length >= 4) masks = [...masks, pw];
    return url;
  };
  const noDb = Object.freeze({
    query: async () => { throw new Error("ctx.db.query: no database is configured for this stage (set database_url_env and deploy with it)"); },
  });
  const db = pg && dbSecret ? makeDb(pg, dbUrl) : noDb;
  const mask = (text) => masks.reduce((t, m) => t.split(m).join("***"), text);

  const out = { log: console.log.bind(console), error: console.error.bind(console) };
  const write = (level, requestId, msg, data) => {
    const rec = { ts: new Date().toISOString(), level, function: fnName, request_id: requestId, msg, data };
    const line = mask(JSON.stringify(rec));
    if (level === "error") out.error(line); else out.log(line);
  };
  // The function's own console output becomes records with its level and the request id (one invocation at a
  // time per sandbox, so the current one is the request's): a custom runtime's stdout carries neither.
  let currentRid = null;
  const fmt = (args) => args.map((a) => (typeof a === "string" ? a : a instanceof Error ? String(a.stack ?? a)
    : (() => { try { return JSON.stringify(a); } catch { return String(a); } })())).join(" ");
  for (const [name, level] of [["log", "info"], ["info", "info"], ["debug", "debug"], ["warn", "warn"], ["error", "error"]]) {
    console[name] = (...args) => write(level, currentRid, fmt(args), null);
  }

  const loadEnv = async () => {
    if (frozenEnv && Date.now() - envAt <= ttlMs) return frozenEnv;
    const out = { ...JSON.parse(env("FLUX_PLAIN_ENV") || "{}") }; // flux.json `env`: plain values
    for (const k of envKeys) {
      try { out[k] = await secret(k); } catch (e) { if (e.code !== "ResourceNotFoundException") throw e; }
    }
    frozenEnv = Object.freeze(out);
    envAt = Date.now();
    return frozenEnv;
  };

  const run = async (input, requestId) => {
    const at = (level) => (...args) => {
      const msg = typeof args[0] === "string" ? args.shift() : "";
      write(level, requestId, msg, args.length === 0 ? null : args.length === 1 ? args[0] : args);
    };
    const log = at("info"); // ctx.log(...) is info; ctx.log.debug/info/warn/error choose the level
    Object.assign(log, { debug: at("debug"), info: log, warn: at("warn"), error: at("error") });
    const ctx = Object.freeze({
      log: Object.freeze(log),
      env: await loadEnv(),
      secrets: Object.freeze({ get: secret }),
      db,
      requestId,
    });
    return def.handler({ input, ctx });
  };

  /** The API Gateway result of one HTTP invocation + its access record (method, path, status, duration). */
  const http = async (event, context, requestId) => {
    const t0 = Date.now();
    const method = event?.requestContext?.http?.method ?? "POST";
    const out = await serve(event, context, requestId, method);
    write("info", requestId, "access", {
      method, path: event?.rawPath ?? event?.requestContext?.http?.path ?? null, status: out.statusCode,
      duration_ms: Date.now() - t0, request_id: requestId,
    });
    if (method === "HEAD") out.body = "";
    return out;
  };

  return async function handler(event, context = {}) {
    const requestId = (event && event.flux_async && event.request_id) || context.awsRequestId || crypto.randomUUID();
    currentRid = requestId;
    if (event && event.flux_health === true) {
      // Flux's health invocation of a new version before `live` moves to it: reaching here means the module
      // loaded and its defineFunction matched flux.json (makeHandler threw otherwise); the handler does not run.
      return { ok: true, function: fnName };
    }
    if (event && event.flux_async === true) {
      // Event invocation of an async function: errors propagate so Lambda retries / dead-letters.
      try {
        await run(event.input ?? {}, requestId);
        write("info", requestId, "async invocation done", null);
        return { ok: true, request_id: requestId };
      } catch (e) {
        write("error", requestId, "async handler failed", { error: String(e?.message ?? e), stack: String(e?.stack ?? "") });
        throw e;
      }
    }
    return http(event, context, requestId);
  };

  async function serve(event, context, requestId, method) {
    const raw = decodeBody(event || {});
    if (new TextEncoder().encode(raw).length > maxBody) {
      return json(413, { error: `request body is larger than ${maxBody} bytes`, request_id: requestId }, requestId);
    }
    let input = {};
    if (raw.trim() !== "") {
      try { input = JSON.parse(raw); } catch (e) {
        return json(400, { error: `invalid JSON body: ${String(e?.message ?? e)}`, request_id: requestId }, requestId);
      }
    } else if (event?.queryStringParameters) {
      input = { ...event.queryStringParameters };
    }
    if (input === null || typeof input !== "object" || Array.isArray(input)) {
      return json(400, { error: "request body must be a JSON object", request_id: requestId }, requestId);
    }
    input = mergeParams(input, event?.pathParameters ?? null);
    if (isAsync) {
      try {
        await invokeEvent(context.invokedFunctionArn, { flux_async: true, input, request_id: requestId });
      } catch (e) { // inside the handler's contract: a JSON 503 with the request id, never a bare 502
        write("error", requestId, "async enqueue failed", { error: String(e?.message ?? e) });
        return json(503, { error: "could not queue the request, retry later", request_id: requestId }, requestId);
      }
      write("info", requestId, "queued", null);
      return json(202, { request_id: requestId, status: "accepted" }, requestId);
    }
    const budget = Math.round(context?.getRemainingTimeInMillis?.() ?? 0);
    try {
      const result = await withDeadline(run(input, requestId), context);
      if (result === TIMED_OUT) {
        write("warn", requestId, "function timed out", { timeout_ms: budget });
        return json(504, { error: `function ${fnName} timed out after ${budget} ms`, request_id: requestId }, requestId);
      }
      if (isResponse(result)) return await toApiGatewayV2(result, { "x-flux-request-id": requestId }, method === "HEAD");
      return json(200, result ?? null, requestId);
    } catch (e) {
      write("error", requestId, "handler failed", { error: String(e?.message ?? e), stack: String(e?.stack ?? "") });
      return json(500, { error: "internal error", request_id: requestId }, requestId);
    }
  }
}
