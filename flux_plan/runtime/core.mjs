// Worker-side runtime shared by the Deno worker bootstrap (worker.ts) and the Node host (node_host.mjs):
// builds FluxContext, runs the handler, speaks the worker channel (see docs: runtime protocol).
// Plain ESM with only `node:` imports so both Deno and Node load it unchanged.
import { AsyncLocalStorage } from "node:async_hooks";

const MARK = Symbol.for("flux.function");
const LEVELS = { log: "info", info: "info", warn: "warn", error: "error", debug: "debug" };

/** JSON-safe copy of log data (Errors, BigInts, cycles, functions) so posting it can never throw. */
function jsonSafe(value) {
  if (value === undefined) return null;
  const seen = new WeakSet();
  try {
    return JSON.parse(JSON.stringify(value, (_k, v) => {
      if (typeof v === "bigint") return v.toString();
      if (typeof v === "function" || typeof v === "symbol") return String(v);
      if (v instanceof Error) return { name: v.name, message: v.message, stack: v.stack };
      if (v !== null && typeof v === "object") {
        if (seen.has(v)) return "[Circular]";
        seen.add(v);
      }
      return v;
    }) ?? "null");
  } catch {
    return String(value);
  }
}

function errorMessage(err) {
  if (err instanceof Error) return err.message || err.name;
  if (typeof err === "string") return err;
  try {
    return JSON.stringify(err);
  } catch {
    return String(err);
  }
}

/**
 * @param {{post: (msg: object) => void, postResult?: (id: number, json: string) => void,
 *   load: (bundle: string) => Promise<any>, onEnv?: (env: object) => void}} io
 */
export function createRuntime(io) {
  const post = io.post;
  const als = new AsyncLocalStorage();
  let env = Object.freeze({});
  let fn = null;
  let fnName = "";
  const calls = new Map();
  let callSeq = 0;

  function record(requestId, level, args) {
    let msg = "";
    let rest = args;
    if (typeof args[0] === "string") {
      msg = args[0];
      rest = args.slice(1);
    }
    const data = rest.length === 0 ? null : jsonSafe(rest.length === 1 ? rest[0] : rest);
    post({ t: "log", request_id: requestId ?? null, level, msg, data });
  }

  function call(requestId, op, extra) {
    const id = ++callSeq;
    return new Promise((resolve, reject) => {
      calls.set(id, { resolve, reject });
      post({ t: "call", id, request_id: requestId, op, ...extra });
    });
  }

  class Secrets {
    constructor(rid) { this.rid = rid; }
    get(key) {
      if (typeof key !== "string" || key === "") return Promise.reject(new TypeError("ctx.secrets.get(key): key must be a non-empty string"));
      return call(this.rid, "secret", { key });
    }
  }
  class Db {
    constructor(rid) { this.rid = rid; }
    query(params) {
      if (params === null || typeof params !== "object") return Promise.reject(new TypeError("ctx.db.query(params): params must be an object"));
      return call(this.rid, "db", { params: jsonSafe(params) });
    }
  }
  // secrets/db objects are made on first use: most invocations never touch them (one allocation per request).
  class Ctx {
    #secrets = null;
    #db = null;
    constructor(rid) {
      this.requestId = rid;
    }
    get env() { return env; }
    get secrets() { return this.#secrets ??= new Secrets(this.requestId); }
    get db() { return this.#db ??= new Db(this.requestId); }
    log(...args) { record(this.requestId, "info", args); }
  }

  // console.* inside a function becomes a log record of the request that is running (AsyncLocalStorage keeps
  // concurrent invocations in one worker apart).
  for (const [name, level] of Object.entries(LEVELS)) {
    globalThis.console[name] = (...args) => record(als.getStore(), level, args);
  }

  async function init(m) {
    env = Object.freeze({ ...(m.env ?? {}) });
    fnName = m.function;
    io.onEnv?.(env);
    try {
      const mod = await io.load(m.bundle);
      const def = mod?.default;
      if (!def || def[MARK] !== true || typeof def.handler !== "function") {
        post({ t: "ready", ok: false, error: `function ${fnName} does not export defineFunction(...)` });
        return;
      }
      if (def.name !== fnName) {
        record(null, "warn", [`defineFunction name ${JSON.stringify(def.name)} differs from flux.json name ${JSON.stringify(fnName)}`]);
      }
      fn = def;
      post({ t: "ready", ok: true });
    } catch (err) {
      post({ t: "ready", ok: false, error: `function ${fnName} failed to load: ${errorMessage(err)}`, stack: err?.stack ?? null });
    }
  }

  function badInput(id, error) {
    post({ t: "result", id, ok: false, bad_input: true, error });
  }

  const postResult = io.postResult ?? ((id, json) => post({ t: "result", id, ok: true, json }));

  /** One invocation. `body` is the raw request body text (the gateway's fast path: parsing it here keeps JSON
   * work off the gateway thread); `input` is used when body is not a string (admin /invoke). */
  async function invoke(id, requestId, body, input) {
    if (typeof body === "string") {
      try {
        input = body === "" ? {} : JSON.parse(body);
      } catch (err) {
        badInput(id, `invalid JSON body: ${errorMessage(err)}`);
        return;
      }
      if (input === null || typeof input !== "object" || Array.isArray(input)) {
        badInput(id, "request body must be a JSON object");
        return;
      }
    }
    let value;
    try {
      value = await als.run(requestId, fn.handler, { input, ctx: new Ctx(requestId) });
    } catch (err) {
      post({ t: "result", id, ok: false, error: errorMessage(err), stack: err?.stack ?? null });
      return;
    }
    let json;
    try {
      json = JSON.stringify(value === undefined ? null : value);
    } catch (err) {
      post({ t: "result", id, ok: false, error: `handler result is not JSON-serializable: ${errorMessage(err)}`, stack: null });
      return;
    }
    postResult(id, json);
  }

  function onMessage(m) {
    switch (m.t) {
      case "invoke":
        invoke(m.id, m.request_id, m.body, m.input);
        break;
      case "reply": {
        const c = calls.get(m.id);
        if (!c) break;
        calls.delete(m.id);
        if (m.ok) c.resolve(m.value);
        else c.reject(new Error(m.error));
        break;
      }
      case "env":
        env = Object.freeze({ ...(m.env ?? {}) });
        io.onEnv?.(env);
        break;
      case "init":
        init(m);
        break;
    }
  }

  return { onMessage, invoke, record: (level, args) => record(als.getStore(), level, args) };
}
