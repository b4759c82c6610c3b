// Worker-side runtime shared by the Deno worker bootstrap (worker.ts) and the Node host (node_host.mjs):
// builds FluxContext, runs the handler, speaks the worker channel (see docs: runtime protocol).
// Plain ESM with only `node:` imports so both Deno and Node load it unchanged.
import { AsyncLocalStorage } from "node:async_hooks";
import { headerPairs, isResponse } from "./http.mjs";

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

function toBase64(bytes) {
  if (globalThis.Buffer) return globalThis.Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength).toString("base64");
  let s = "";
  for (let i = 0; i < bytes.length; i += 0x8000) s += String.fromCharCode.apply(null, bytes.subarray(i, i + 0x8000));
  return btoa(s);
}

const TICK = Symbol("tick");
const nextTurn = () => new Promise((r) => setTimeout(() => r(TICK), 0));

function concat(chunks) {
  if (chunks.length === 1) return chunks[0];
  const all = new Uint8Array(chunks.reduce((n, c) => n + c.byteLength, 0));
  let off = 0;
  for (const c of chunks) {
    all.set(c, off);
    off += c.byteLength;
  }
  return all;
}

/**
 * @param {{post: (msg: object) => void, postResult?: (id: number, json: string) => void,
 *   load: (bundle: string) => Promise<any>, onEnv?: (env: object) => void, rawBytes?: boolean}} io
 *   rawBytes: the channel carries Uint8Array (structured clone); otherwise body bytes travel as base64 text.
 */
/**
 * Loads a function's bundle and checks it the way every provider does (DESIGN §7): the default export came from
 * defineFunction and its name is the flux.json name. Shared by the worker's init and the local provider's batch
 * load check (providers/flux_local/flux_local/runtime/checker.mjs), so both report the same errors.
 * @returns {Promise<{ok: true, def: any} | {ok: false, error: string, stack: string | null}>}
 */
export async function loadModule(load, bundle, fnName) {
  try {
    const mod = await load(bundle);
    const def = mod?.default;
    if (!def || def[MARK] !== true || typeof def.handler !== "function") {
      return { ok: false, error: `function ${fnName} does not export defineFunction(...)`, stack: null };
    }
    if (def.name !== fnName) {
      return { ok: false, error: `function ${fnName}: defineFunction name ${JSON.stringify(def.name)} differs from flux.json name ${JSON.stringify(fnName)} (make them equal)`, stack: null };
    }
    return { ok: true, def };
  } catch (err) {
    return { ok: false, error: `function ${fnName} failed to load: ${errorMessage(err)}`, stack: err?.stack ?? null };
  }
}

export function createRuntime(io) {
  const post = io.post;
  const als = new AsyncLocalStorage();
  let env = Object.freeze({});
  let fn = null;
  let fnName = "";
  const calls = new Map();
  let callSeq = 0;
  const streams = new Map(); // invocation id -> reader of a streamed Response body still being sent
  const bytesOut = io.rawBytes ? (b) => b : toBase64;

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
  // ctx.log(...) is level info; ctx.log.debug/info/warn/error(...) choose the level (made on first use, like
  // secrets/db: most invocations never log).
  function makeLog(rid) {
    const logFn = (...args) => record(rid, "info", args);
    logFn.debug = (...args) => record(rid, "debug", args);
    logFn.info = logFn;
    logFn.warn = (...args) => record(rid, "warn", args);
    logFn.error = (...args) => record(rid, "error", args);
    return Object.freeze(logFn);
  }
  // secrets/db objects are made on first use: most invocations never touch them (one allocation per request).
  class Ctx {
    #secrets = null;
    #db = null;
    #log = null;
    constructor(rid) {
      this.requestId = rid;
    }
    get env() { return env; }
    get secrets() { return this.#secrets ??= new Secrets(this.requestId); }
    get db() { return this.#db ??= new Db(this.requestId); }
    get log() { return this.#log ??= makeLog(this.requestId); }
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
    const r = await loadModule(io.load, m.bundle, fnName);
    if (r.ok) fn = r.def;
    post(r.ok ? { t: "ready", ok: true } : { t: "ready", ok: false, error: r.error, stack: r.stack });
  }

  function badInput(id, error) {
    post({ t: "result", id, ok: false, bad_input: true, error });
  }

  const postResult = io.postResult ?? ((id, json) => post({ t: "result", id, ok: true, json }));

  /** One invocation. `body` is the raw request body text (the gateway's fast path: parsing it here keeps JSON
   * work off the gateway thread); `input` is used when body is not a string (admin /invoke). */
  /** A returned Response: head + body in one message when the body is complete at once (text, bytes, JSON),
   * otherwise head, then one "chunk" message per chunk as the stream yields it, then "end". */
  async function sendResponse(id, res) {
    const status = res.status;
    const headers = headerPairs(res.headers);
    if (res.body === null) {
      post({ t: "response", id, status, headers, body: null });
      return;
    }
    const reader = res.body.getReader();
    const chunks = [];
    let pending = reader.read();
    try {
      while (true) {
        const r = await Promise.race([pending, nextTurn()]);
        if (r === TICK) break; // the stream waits on something: send what there is and stream the rest
        if (r.done) {
          post({ t: "response", id, status, headers, body: chunks.length ? bytesOut(concat(chunks)) : null });
          return;
        }
        if (r.value?.byteLength) chunks.push(r.value);
        pending = reader.read();
      }
    } catch (err) {
      post({ t: "result", id, ok: false, error: `response body failed: ${errorMessage(err)}`, stack: err?.stack ?? null });
      return;
    }
    post({ t: "response", id, status, headers, body: chunks.length ? bytesOut(concat(chunks)) : null, more: true });
    streams.set(id, reader);
    try {
      while (true) {
        const r = await pending;
        if (r.done) break;
        if (r.value?.byteLength) post({ t: "chunk", id, data: bytesOut(r.value) });
        pending = reader.read();
      }
      post({ t: "end", id });
    } catch (err) {
      record(null, "error", [`response body of request ${id} failed`, { error: errorMessage(err) }]);
      post({ t: "end", id, error: errorMessage(err) });
    } finally {
      streams.delete(id);
    }
  }

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
    if (isResponse(value)) {
      await als.run(requestId, sendResponse, id, value);
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
      case "cancel": // the client went away: stop reading the function's stream
        streams.get(m.id)?.cancel().catch(() => {});
        streams.delete(m.id);
        break;
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
