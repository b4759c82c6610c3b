// Flux local runtime host: the HTTP gateway, the channel to the Python supervisor, and one pool of workers per
// function: each deno function runs in a `deno run` process of its own (NodeWorker: its own V8 heap limit, the
// sandbox flags of that function), `node` processes for runtime "node"; sandboxed Deno Workers in this process only
// with host config "deno_threads" (DenoWorker).
//
// Python is never on the request path: a request is routed here and handed to a worker over its pipe (or an
// in-process channel). The raw body text goes to the worker, which parses it: that keeps JSON work off this thread.
// Performance notes (bench/gateway.py on 2 shared cores, ratios to a bare Deno.serve in one run; README "Local
// runtime" has the figures): a worker gets its requests in adaptive batches (one unanswered batch per worker), and
// the access records leave as one string per 4 ms flush, stored by the supervisor as written. What is left is the
// process hop itself: bare Deno.serve handing each request to a child deno over a pipe measures ~4x bare's p50 at 1
// connection, and ~60 us of CPU per request (host + worker) bounds throughput on 2 cores.
//
// Supervisor channel (DESIGN §8). The host's only listener is the gateway: the supervisor (daemon.py, flux_local/
// channel.py) talks to it over the host's stdin/stdout, which it owns anyway, as JSON lines (one object per line);
// diagnostics go to stderr.
//   stdout, first line: {"event":"ready","gateway_port":N}.
//   supervisor -> host (stdin): requests {"id":N,"op":OP,...}, each answered on stdout by {"reply_to":N,"ok":true,...}
//     or {"reply_to":N,"ok":false,"error":"..."}. Table ops run one after another in arrival order:
//       "load" {functions:{name:FnConfig}, routes:{key:RouteConfig} | [RouteConfig], cors} the whole table (once per
//         host start; `flux dev` reloads); pools whose code did not change are kept;
//       deltas, each switching only what it names (pools of other functions untouched; a request sees the table
//         before or after a delta, never half of one): "put_function" {name, config} (a replaced warm function is
//         pre-warmed first), "delete_function" {name}, "put_route" {key, route} (a route whose function is not there
//         yet waits for it), "delete_route" {key}, "env" {functions:{name:env}} (new secret values), "cors" {cors};
//     and "check" {function, config} -> {loaded, error?} (the apply-time load check: a worker of the function outside
//     the table), "invoke" {function, request_id, input} -> {status, body, headers?} (the async queue), "health" ->
//     {functions:{name:stats}}, "shutdown" (drain, exit). EOF on stdin (the supervisor died): shutdown.
//   host -> supervisor (stdout): replies as above; log records {ts, level, stage, function, request_id, msg, data}
//     (no id/op/reply_to; every record line starts `{"ts":`, nothing else does: the supervisor stores those lines
//     unparsed by that prefix, flux_local/channel.py); requests {"id":N,"op":"enqueue",function,request_id,input} (an async route's call), answered
//     on stdin by {"reply_to":N,"ok":true,"request_id":...}. The ids of the two directions are independent.

import {
  compareRoutes, compileRoute, corsHeaders, corsPreflight, matchRoute, mergeParams,
} from "flux:http"; // flux_plan/runtime/http.mjs, via the host's import map
import { createDb, type DbConfig } from "./db.ts"; // ctx.db: postgres.js + the shared query compiler

type Runtime = "deno" | "node";

interface HostConfig {
  stage: string;
  gateway_host: string;
  gateway_port: number;
  node_bin?: string;
  max_body_bytes?: number;
  project_root?: string; // stacks in the logs name files relative to it
  deno_threads?: boolean;
  db?: DbConfig; // ctx.db (the owner role of the stage database); absent: no database
  deno_dir?: string; // DENO_DIR of deno function processes (they run only .mjs: nothing is cached in it)
  max_warm_workers?: number; // idle warm workers kept stage-wide (least recently used ones stop first)
}

interface FnConfig {
  runtime: Runtime;
  bundle: string; // absolute path of the bundle's index.mjs
  digest: string;
  env: Record<string, string>; // the values of the secret keys it is granted (what ctx.secrets.get answers)
  plain_env?: Record<string, string>; // its flux.json `env`: plain values, in ctx.env only
  timeout_ms?: number;
  concurrency?: number;
  queue_limit?: number;
  idle_ms?: number;
  async?: boolean;
  uses_db?: boolean; // its code names ctx.db (false: ctx.db refused)
  memory_mb?: number; // flux.json `memory`: V8 heap limit of each of its worker processes (default 256)
  max_workers?: number; // workers of one function (default: min(concurrency, cores - 1), at least 1)
  per_worker?: number; // in-flight invocations on every worker before another worker is started
  endpoint?: { port: number; token: string }; // docker provider: the function's container on 127.0.0.1
}

/** ctx.env of a function: its flux.json `env`, then its granted secrets (a key in both takes the secret's value, as
 * on AWS; `flux plan` warns of it). */
function ctxEnv(fc: FnConfig): Record<string, string> {
  return fc.plain_env ? { ...fc.plain_env, ...(fc.env ?? {}) } : fc.env ?? {};
}

interface RouteConfig {
  method: string;
  path: string;
  function: string;
}

/** What a request ends with: HTTP status + JSON body text, or (a returned Response) status, headers, body. */
interface Outcome {
  status: number;
  json?: string;
  headers?: [string, string][];
  body?: BodyInit | null;
  retryAfter?: number;
}

/** Bytes of a Response body from the worker channel: Uint8Array (Deno Worker) or base64 text (node JSON lines). */
function bodyBytes(data: unknown): Uint8Array<ArrayBuffer> {
  if (data instanceof Uint8Array) return data as Uint8Array<ArrayBuffer>;
  const bin = atob(String(data));
  const out = new Uint8Array(bin.length);
  for (let i = 0; i < bin.length; i++) out[i] = bin.charCodeAt(i);
  return out;
}

interface Job {
  id: number;
  rid: string;
  body: string; // JSON text of the input object (raw request body on the fast path)
  deadline: number;
  resolve: (o: Outcome) => void;
  worker: WorkerHandle | null;
  done: boolean;
}

// deno-lint-ignore no-explicit-any
type Msg = any;

const CFG: HostConfig = JSON.parse(Deno.env.get("FLUX_HOST_CONFIG") ?? "{}");
const STAGE = CFG.stage ?? "dev";
const MAX_BODY = CFG.max_body_bytes ?? 6 * 1024 * 1024;
const WORKER_URL = new URL("./worker.ts", import.meta.url);
const NODE_HOST = decodeURIComponent(new URL("./node_host.mjs", import.meta.url).pathname);
const RUNTIME_DIR = decodeURIComponent(new URL(".", import.meta.url).pathname).replace(/\/$/, "");
/** the shared worker runtime (flux_plan/runtime/core.mjs), located through the import map of host_command() */
const CORE_PATH = decodeURIComponent(new URL(import.meta.resolve("flux:core")).pathname);
/** the HTTP contract (flux_plan/runtime/http.mjs, imported by core.mjs): node workers must read it too */
const HTTP_PATH = decodeURIComponent(new URL(import.meta.resolve("flux:http")).pathname);
const CORES = Math.max(1, navigator.hardwareConcurrency || 1);
/** deno functions as in-process Workers (faster, no memory limit: a runaway one kills the host) instead of
 * processes; only for benchmarks comparing the two (FLUX_HOST_CONFIG "deno_threads": true). */
const THREAD_WORKERS = CFG.deno_threads === true;
const DENO_DIR_OF_WORKERS = CFG.deno_dir ?? "/tmp/flux-deno-workers";
const JSON_TYPE = "application/json";
const SWEEP_MS = 20;
const COLD_START_MS = 10000; // longest wait for a worker to start before the request fails (504)

// ---------------------------------------------------------------------------------------------- logging
const encoder = new TextEncoder();
let logLines: string[] = [];
let logTimer: ReturnType<typeof setTimeout> | 0 = 0;

function writeStdout(text: string): void {
  const data = encoder.encode(text);
  let off = 0;
  while (off < data.length) off += Deno.stdout.writeSync(data.subarray(off));
}

function flushLogs(): void {
  if (logTimer) clearTimeout(logTimer);
  logTimer = 0;
  if (logLines.length === 0) return;
  const text = logLines.join("\n") + "\n";
  logLines = [];
  try {
    writeStdout(text);
  } catch (err) {
    diag(`cannot write logs: ${err}`);
  }
}

// Records wait up to LOG_FLUSH_MS for company: measured under load, a flush per event-loop turn (setTimeout 0, a
// node-compat Timeout each, + a write) was ~5% of the host's CPU; one per few ms is noise. A channel message
// flushes at once (channelSend), so a record written before it still leaves before it.
const LOG_FLUSH_MS = 4;
let lastMs = 0;
let lastIso = "";

/** `ts` of a record: one Date + toISOString per millisecond, not per record. */
function isoNow(): string {
  const ms = Date.now();
  if (ms !== lastMs) {
    lastMs = ms;
    lastIso = new Date(ms).toISOString();
  }
  return lastIso;
}

function pushLog(line: string): void {
  logLines.push(line);
  if (logLines.length >= 512) flushLogs();
  else if (!logTimer) logTimer = setTimeout(flushLogs, LOG_FLUSH_MS);
}

/** One JSON log record; records are written in batches (one write per LOG_FLUSH_MS at most, or per 512). */
function log(level: string, fn: string | null, rid: string | null, msg: string, data: unknown = null): void {
  pushLog(JSON.stringify({ ts: isoNow(), level, stage: STAGE, function: fn, request_id: rid, msg, data }));
}

function diag(msg: string): void {
  console.error(`flux-host: ${msg}`);
}

// ---------------------------------------------------------------------------------------------- request ids
const RID_PREFIX = Date.now().toString(36) + Array.from(crypto.getRandomValues(new Uint8Array(4)))
  .map((b) => b.toString(16).padStart(2, "0")).join("") + "-";
let ridSeq = 0;
/** Unique per host run (random prefix) and cheap: no UUID per request on the hot path. */
function newRequestId(): string {
  return RID_PREFIX + (++ridSeq).toString(36);
}

/** The generic 500 of a thrown error (DESIGN §7): never the error's message. */
function handlerFailed(fn: string): string {
  return `function ${fn} failed; its error is in flux logs under this request id`;
}

const PROJECT_ROOT = CFG.project_root ? CFG.project_root.replace(/\/$/, "") + "/" : null;
/** A source-mapped stack with project paths made relative (functions/<fn>/index.ts:line, as the user sees them). */
function projectStack(stack: unknown): string | null {
  if (typeof stack !== "string") return null;
  if (!PROJECT_ROOT) return stack;
  return stack.replaceAll("file://" + encodeURI(PROJECT_ROOT), "").replaceAll("file://" + PROJECT_ROOT, "")
    .replaceAll(PROJECT_ROOT, "");
}

function errorOutcome(status: number, rid: string, error: string): Outcome {
  return { status, json: JSON.stringify({ error, request_id: rid }) };
}

// ---------------------------------------------------------------------------------------------- workers
let workerSeq = 0;

/** One worker (Deno Worker or node process) of a pool; it may run several invocations concurrently. */
abstract class WorkerHandle {
  readonly seq = ++workerSeq;
  readonly inflight = new Map<number, Job>();
  /** streamed Response bodies still arriving: invocation id -> the stream the gateway is sending */
  readonly streams = new Map<number, ReadableStreamDefaultController<Uint8Array<ArrayBuffer>>>();
  state: "starting" | "ready" | "retired" | "dead" = "starting";
  readonly startedAt = performance.now();
  lastUsed = Date.now();

  constructor(readonly pool: Pool) {}

  abstract send(m: Msg): void;
  protected abstract kill(): void;

  /** Hands one invocation to the worker (the Deno transport packs it compactly, see DenoWorker). */
  sendInvoke(job: Job): void {
    this.send({ t: "invoke", id: job.id, request_id: job.rid, body: job.body });
  }

  /** A successful result (the common case; JSON text of the handler's value). */
  resultOk(id: number, json: string): void {
    const job = this.inflight.get(id);
    if (!job) return;
    this.inflight.delete(id);
    this.pool.finish(job, { status: 200, json });
    this.afterJob();
  }

  protected init(): void {
    this.send({
      t: "init", function: this.pool.name, env: ctxEnv(this.pool.fc), stage: STAGE, bundle: this.pool.fc.bundle,
    });
  }

  onMessage(m: Msg): void {
    switch (m.t) {
      case "result": {
        const job = this.inflight.get(m.id);
        if (!job) return;
        this.inflight.delete(m.id);
        let outcome: Outcome;
        if (m.ok) outcome = { status: 200, json: m.json ?? JSON.stringify(m.value ?? null) };
        else if (m.bad_input) outcome = errorOutcome(400, job.rid, m.error);
        else {
          // The message may carry anything the function held (secret values included): it goes to the logs (masked
          // by the supervisor's log store), the caller gets the request id and a generic message only.
          log("error", this.pool.name, job.rid, "handler failed", { error: m.error, stack: projectStack(m.stack) });
          outcome = errorOutcome(500, job.rid, handlerFailed(this.pool.name));
        }
        this.pool.finish(job, outcome);
        this.afterJob();
        break;
      }
      case "response": {
        const job = this.inflight.get(m.id);
        if (!job) return;
        this.inflight.delete(m.id);
        const first = m.body === null || m.body === undefined ? null : bodyBytes(m.body);
        let body: Outcome["body"] = first;
        if (m.more) {
          const id = m.id as number;
          body = new ReadableStream<Uint8Array<ArrayBuffer>>({
            start: (c) => {
              if (first) c.enqueue(first);
              this.streams.set(id, c);
            },
            cancel: () => {
              this.streams.delete(id);
              if (this.state !== "dead") this.send({ t: "cancel", id });
            },
          });
        }
        this.pool.finish(job, { status: m.status, headers: m.headers ?? [], body });
        this.afterJob();
        break;
      }
      case "chunk": {
        const c = this.streams.get(m.id);
        try {
          c?.enqueue(bodyBytes(m.data));
        } catch { /* the client went away */ }
        break;
      }
      case "end": {
        const c = this.streams.get(m.id);
        this.streams.delete(m.id);
        try {
          if (m.error) c?.error(new Error(String(m.error)));
          else c?.close();
        } catch { /* already cancelled */ }
        this.afterJob();
        break;
      }
      case "log":
        log(m.level ?? "info", this.pool.name, m.request_id ?? null, String(m.msg ?? ""), m.data ?? null);
        break;
      case "call":
        controlCall(this, m);
        break;
      case "ready":
        this.pool.onReady(this, m);
        break;
    }
  }

  /** Bookkeeping after a job left this worker: retire/idle handling. */
  afterJob(): void {
    this.lastUsed = Date.now();
    if (this.inflight.size === 0 && this.streams.size === 0 && this.state === "retired") this.stop();
  }

  /** Ends the worker on purpose (idle, drained, timed out): no crash report. */
  stop(): void {
    if (this.state === "dead") return;
    this.state = "dead";
    retired.delete(this);
    this.pool.detach(this);
    this.kill();
  }

  /** The worker died under us: its in-flight requests get 502, the pool replaces it on demand. `oom`: it went
   * over its memory limit (the 502 names the limit). */
  crashed(reason: string, oom = false): void {
    if (this.state === "dead") return;
    const wasStarting = this.state === "starting";
    this.state = "dead";
    retired.delete(this);
    this.pool.detach(this);
    this.kill();
    const rids = [...this.inflight.values()].map((j) => j.rid);
    log("error", this.pool.name, rids[0] ?? null, oom ? "worker exceeded its memory limit" : "worker crashed",
      { reason, worker: this.seq, requests: rids, memory_mb: memoryMb(this.pool.fc) });
    const why = oom
      ? `function ${this.pool.name} exceeded its memory limit (${memoryMb(this.pool.fc)} MB, flux.json "memory")`
      : `function ${this.pool.name} crashed while handling the request`;
    for (const job of this.inflight.values()) this.pool.finish(job, errorOutcome(502, job.rid, why));
    this.inflight.clear();
    for (const c of this.streams.values()) {
      try {
        c.error(new Error(`function ${this.pool.name} crashed while streaming its response`));
      } catch { /* already closed */ }
    }
    this.streams.clear();
    if (wasStarting) {
      this.pool.loadDetail = `function ${this.pool.name} crashed while starting: ${reason}`; // the load check's
      this.pool.startFailed(this, 502, `function ${this.pool.name} crashed while starting (details in flux logs)`);
    }
  }
}

class DenoWorker extends WorkerHandle {
  private readonly w: Worker;

  constructor(pool: Pool) {
    super(pool);
    const bundleDir = bundleDirOf(pool.fc);
    // The sandbox: only its own bundle is readable; env values arrive in the init message.
    this.w = new Worker(WORKER_URL, {
      type: "module",
      name: `flux:${pool.name}#${this.seq}`,
      deno: {
        permissions: {
          read: [bundleDir], env: false, net: true, write: false, run: false, ffi: false, sys: false, import: false,
        },
      },
    } as WorkerOptions);
    // Adaptive batching (like Nagle): at most one batch is unacknowledged per worker. A message goes out at once
    // when the worker is idle (no added latency); while the worker is busy with a batch, new messages collect and
    // leave together when it answers. Every cross-thread message costs a wake-up of the other thread (measured:
    // the dominant per-request cost), so under load N requests share one wake-up and one structured clone.
    // Wire format of a batch (private to host.ts <-> worker.ts): an array whose entries are channel messages
    // (objects, as in the protocol) except for the two hot messages, packed flat to keep structured clone and
    // allocation per request minimal: invoke = 3 entries `id, request_id, body` (id is a number), and a successful
    // result = 2 entries `id, json`. Measured: see bench/gateway.py.
    this.w.onmessage = (e: MessageEvent) => {
      const d = e.data;
      this.unacked = false;
      if (Array.isArray(d)) {
        for (let i = 0; i < d.length; i++) {
          const m = d[i];
          if (typeof m === "number") this.resultOk(m, d[++i]);
          else this.onMessage(m);
        }
      } else this.onMessage(d);
      if (this.outBox.length && !this.flushScheduled) this.scheduleFlush();
    };
    this.w.onerror = (e: ErrorEvent) => {
      e.preventDefault(); // an uncaught error in a function must never take the host down
      this.crashed(e.message || "uncaught error");
    };
    this.w.onmessageerror = () => this.crashed("undecodable message from worker");
    this.init();
  }

  private outBox: Msg[] = [];
  private flushScheduled = false;
  /** a batch was posted and the worker has not answered since (it answers every batch, with [] if need be) */
  private unacked = false;
  private readonly flush = (): void => {
    this.flushScheduled = false;
    if (this.state === "dead" || this.outBox.length === 0) return;
    const box = this.outBox;
    this.outBox = [];
    this.unacked = true;
    this.w.postMessage(box);
  };

  private scheduleFlush(): void {
    this.flushScheduled = true;
    queueMicrotask(this.flush);
  }

  send(m: Msg): void {
    this.outBox.push(m);
    if (!this.unacked && !this.flushScheduled) this.scheduleFlush();
  }

  override sendInvoke(job: Job): void {
    this.outBox.push(job.id, job.rid, job.body);
    if (!this.unacked && !this.flushScheduled) this.scheduleFlush();
  }

  protected kill(): void {
    this.w.terminate();
  }
}

/** The lines of a process pipe, handed to `onLine` as they arrive (empty ones skipped, a last unterminated one at
 * the end); `afterChunk`: called once the lines of each chunk read are handled. Ends quietly when the process goes. */
async function readLines(stream: ReadableStream<Uint8Array>, onLine: (l: string) => void,
  afterChunk?: () => void): Promise<void> {
  let pending = "";
  // a plain reader + streaming TextDecoder: no TransformStream stage (and its promise hops) per chunk; BYOB into
  // one reused buffer: the default reader allocates (and zero-fills) 64 KiB per read (memset was ~4% of the
  // host's CPU at 1 connection, perf)
  const reader = stream.getReader({ mode: "byob" });
  const decoder = new TextDecoder();
  let buf = new Uint8Array(1 << 16);
  try {
    for (;;) {
      const { value, done } = await reader.read(buf);
      if (done || !value) break;
      pending += decoder.decode(value, { stream: true });
      buf = new Uint8Array(value.buffer);
      let nl: number;
      while ((nl = pending.indexOf("\n")) >= 0) {
        const line = pending.slice(0, nl);
        pending = pending.slice(nl + 1);
        if (line) onLine(line);
      }
      afterChunk?.();
    }
  } catch {
    // the process went away: its caller learns why from the process status
  }
  if (pending) onLine(pending);
}

/** The directory of a function's bundle: the only files its sandbox may read besides Flux's runtime. */
function bundleDirOf(fc: FnConfig): string {
  return fc.bundle.replace(/\/[^/]*$/, "");
}

function memoryMb(fc: FnConfig): number {
  return Math.max(16, Math.floor(fc.memory_mb ?? 256));
}

/** V8's report of a heap over its --max-old-space-size (node: "FATAL ERROR: ... heap limit ... out of memory"). */
const OOM_RE = /heap limit|heap out of memory|Fatal JavaScript out of memory/i;

/** A function in its own OS process (every node function; every deno function, see the constructor), speaking the
 * worker channel as JSON lines over stdin/stdout (node_host.mjs, which Deno runs unchanged too). */
class NodeWorker extends WorkerHandle {
  private readonly child: Deno.ChildProcess;
  private readonly writer: WritableStreamDefaultWriter<Uint8Array>;
  private outBuf: string[] = [];
  private flushScheduled = false;
  private stderrTail: string[] = [];

  constructor(pool: Pool) {
    super(pool);
    const bundleDir = bundleDirOf(pool.fc);
    const heap = `--max-old-space-size=${memoryMb(pool.fc)}`;
    // Node 20 permission model: fs reads limited to the runtime files + the bundle; no child processes, no
    // worker threads, no addons; environment scrubbed (the function's keys come in the init message).
    // Deno functions run as `deno run` processes with the same reads, net only, no env/run/write/ffi/sys (the
    // function's keys come in the init message, as for Workers).
    // Why processes for deno too: a V8 heap limit is per process (Deno Workers have none: one runaway Worker
    // took the whole host down with "Fatal JavaScript out of memory"); a process over its limit dies alone.
    const [cmd, args] = pool.fc.runtime === "node"
      ? [CFG.node_bin || "node", [
        "--experimental-permission", "--no-warnings", "--enable-source-maps", heap,
        // one flag per path: node 20.x does not split a comma-separated list reliably
        `--allow-fs-read=${RUNTIME_DIR}/node_host.mjs`, `--allow-fs-read=${CORE_PATH}`, `--allow-fs-read=${HTTP_PATH}`,
        `--allow-fs-read=${bundleDir}/*`,
        NODE_HOST, CORE_PATH,
      ]]
      : [Deno.execPath(), [
        "run", "--quiet", "--no-prompt", "--no-config", "--no-lock", `--v8-flags=${heap}`,
        `--allow-read=${NODE_HOST},${CORE_PATH},${HTTP_PATH},${bundleDir}`, "--allow-net",
        NODE_HOST, CORE_PATH,
      ]];
    this.child = new Deno.Command(cmd, {
      args, cwd: bundleDir, clearEnv: true, // PATH only so that a denied subprocess reads NotCapable, not NotFound
      env: pool.fc.runtime === "node" ? {} : { DENO_DIR: DENO_DIR_OF_WORKERS, PATH: "/usr/bin:/bin" },
      stdin: "piped", stdout: "piped", stderr: "piped",
    }).spawn();
    this.writer = this.child.stdin.getWriter();
    this.batched = pool.fc.runtime === "deno";
    readLines(this.child.stdout, (line) => {
      let m: Msg;
      try {
        m = JSON.parse(line);
      } catch {
        log("info", pool.name, null, line);
        return;
      }
      this.onMessage(m);
    }, this.batched ? this.acked : undefined);
    readLines(this.child.stderr, (line) => {
      this.stderrTail.push(line);
      if (this.stderrTail.length > 20) this.stderrTail.shift();
    });
    this.child.status.then((s) => {
      const tail = this.stderrTail.join("\n").trim();
      this.crashed(`${pool.fc.runtime} exited with code ${s.code}${s.signal ? ` (${s.signal})` : ""}${tail ? `: ${tail}` : ""}`,
        OOM_RE.test(tail));
    });
    this.init();
  }

  send(m: Msg): void {
    this.outBuf.push(JSON.stringify(m));
    if (this.flushScheduled || this.unacked) return;
    this.flushScheduled = true;
    queueMicrotask(this.flush);
  }

  // Deno workers: adaptive batching (as DenoWorker's): at most one unacknowledged batch per worker. The worker
  // answers every chunk it reads, a few microtask turns later (node_host.mjs: the results ready by then, or an
  // "ack" line); lines sent meanwhile leave together when it does. An idle worker gets a message at once; under
  // load N requests share one write, one read and one wake-up on each side. Measured before: one pipe write per
  // request (WHATWG stream write + syscall here, a blocking-pool thread hop per read in the worker).
  private readonly batched: boolean;
  private unacked = false;
  private readonly flush = (): void => {
    this.flushScheduled = false;
    if (this.outBuf.length === 0) return;
    const text = this.outBuf.join("\n") + "\n";
    this.outBuf = [];
    if (this.batched) this.unacked = true;
    this.writer.write(encoder.encode(text)).catch(() => {});
  };

  /** Something was read from the worker after a batch (its answer, or a line written before it read the batch:
   * an early ack costs one more write at most, never a stall). */
  private readonly acked = (): void => {
    this.unacked = false;
    if (this.outBuf.length && !this.flushScheduled) this.flush();
  };

  protected kill(): void {
    try {
      this.child.kill("SIGKILL");
    } catch {
      // already gone
    }
  }
}

/** A function running in its own container (docker provider): the node worker channel (JSON lines) over one TCP
 * connection to 127.0.0.1:<port>, opened with the container's token. See flux_docker/runtime/container_worker.mjs. */
class RemoteWorker extends WorkerHandle {
  private conn: Deno.TcpConn | null = null;
  private outBuf: string[] = [];
  private flushScheduled = false;
  private closed = false;

  constructor(pool: Pool) {
    super(pool);
    const ep = pool.fc.endpoint!;
    this.outBuf.push(JSON.stringify({ t: "hello", token: ep.token }));
    this.init();
    Deno.connect({ hostname: "127.0.0.1", port: ep.port }).then((conn) => {
      if (this.closed) {
        conn.close();
        return;
      }
      conn.setNoDelay(true);
      this.conn = conn;
      this.flushNow();
      this.readLoop(conn);
    }, (err) => this.crashed(`cannot reach the container of ${pool.name} on 127.0.0.1:${ep.port}: ${err.message}`));
  }

  private async readLoop(conn: Deno.TcpConn): Promise<void> {
    let pending = "";
    try {
      for await (const chunk of conn.readable.pipeThrough(new TextDecoderStream())) {
        pending += chunk;
        let nl: number;
        while ((nl = pending.indexOf("\n")) >= 0) {
          const line = pending.slice(0, nl);
          pending = pending.slice(nl + 1);
          if (!line) continue;
          let m: Msg;
          try {
            m = JSON.parse(line);
          } catch {
            log("info", this.pool.name, null, line);
            continue;
          }
          this.onMessage(m);
        }
      }
    } catch {
      // connection reset: reported below
    }
    if (!this.closed) this.crashed(`the container of ${this.pool.name} closed its channel`);
  }

  private flushNow(): void {
    this.flushScheduled = false;
    if (!this.conn || this.outBuf.length === 0) return;
    const data = encoder.encode(this.outBuf.join("\n") + "\n");
    this.outBuf = [];
    const conn = this.conn;
    (async () => {
      for (let off = 0; off < data.length;) off += await conn.write(data.subarray(off));
    })().catch(() => {});
  }

  send(m: Msg): void {
    this.outBuf.push(JSON.stringify(m));
    if (this.flushScheduled || !this.conn) return;
    this.flushScheduled = true;
    queueMicrotask(() => this.flushNow());
  }

  protected kill(): void {
    this.closed = true;
    try {
      this.conn?.close();
    } catch {
      // already closed
    }
  }
}

// ---------------------------------------------------------------------------------------------- pools
const livePools = new Set<Pool>();
/** Pools the sweeper visits: those with workers or jobs (added on spawn and on every run, dropped once empty). An idle
 * stage of 5000 functions, sweeping every pool 50 times a second, kept the host at ~3% of a core doing nothing. */
const sweepable = new Set<Pool>();

/** Workers of one function at one digest: cold start, concurrency cap + bounded queue, timeouts, scale to zero. */
class Pool {
  workers: WorkerHandle[] = [];
  /** admitted jobs waiting for a worker to become ready (cold start) */
  waiting: Job[] = [];
  /** jobs over the concurrency cap */
  queue: Job[] = [];
  active = 0;
  draining = false;
  /** why the last worker failed to start (the load check at apply time reports it) */
  loadError: string | null = null;
  loadDetail: string | null = null;
  private readyWaiters: Array<() => void> = [];

  constructor(readonly name: string, public fc: FnConfig) {
    livePools.add(this);
  }

  get concurrency(): number {
    return Math.max(1, this.fc.concurrency ?? 10);
  }
  get queueLimit(): number {
    return Math.max(0, this.fc.queue_limit ?? 64);
  }
  get timeoutMs(): number {
    return Math.max(1, this.fc.timeout_ms ?? 30000);
  }
  get idleMs(): number {
    return Math.max(0, this.fc.idle_ms ?? 60000);
  }
  get maxWorkers(): number {
    // Default: one core is left to the gateway thread. Measured on 2 cores (bench/gateway.py --variants): one
    // worker gets bigger batches and costs ~20% less CPU per request than two, which fight the gateway for CPU.
    return Math.max(1, this.fc.max_workers ?? Math.min(this.concurrency, CORES - 1));
  }
  get perWorker(): number {
    return Math.max(1, this.fc.per_worker ?? 8);
  }

  /** Runs one invocation; resolves with the HTTP outcome (never rejects). */
  run(rid: string, body: string): Promise<Outcome> {
    sweepable.add(this);
    return new Promise((resolve) => {
      const job: Job = { id: ++jobSeq, rid, body, deadline: Date.now() + this.timeoutMs, resolve, worker: null, done: false };
      if (this.active < this.concurrency) this.admit(job);
      else if (this.queue.length < this.queueLimit) this.queue.push(job);
      else {
        job.done = true;
        resolve(this.overloaded(rid));
      }
    });
  }

  private admit(job: Job): void {
    this.active++;
    let best: WorkerHandle | null = null;
    let starting = false;
    for (const w of this.workers) {
      if (w.state === "ready") {
        if (!best || w.inflight.size < best.inflight.size) best = w;
      } else if (w.state === "starting") starting = true;
    }
    const saturated = !best || best.inflight.size >= this.perWorker;
    if (saturated && !starting && this.workers.length < this.maxWorkers) this.spawn();
    if (best) this.sendTo(best, job);
    else {
      // waiting for a cold start is not the handler's time either (the deadline restarts in sendTo), but a worker
      // that never comes up must not hold the request forever
      job.deadline = Date.now() + Math.max(this.timeoutMs, COLD_START_MS);
      this.waiting.push(job);
    }
  }

  /** Over the cap with a full queue (or queued for a whole timeout): 503 at once, the handler never ran. */
  overloaded(rid: string): Outcome {
    const o = errorOutcome(503, rid, `function ${this.name} is at its concurrency limit (${this.concurrency} running, ${this.queueLimit} queued); retry later`);
    o.retryAfter = 1;
    return o;
  }

  private sendTo(w: WorkerHandle, job: Job): void {
    job.worker = w;
    job.deadline = Date.now() + this.timeoutMs; // time spent queued or waiting for a cold start is not the handler's
    w.inflight.set(job.id, job);
    w.sendInvoke(job);
  }

  spawn(): WorkerHandle {
    const w = this.fc.endpoint ? new RemoteWorker(this)
      : this.fc.runtime === "node" || !THREAD_WORKERS ? new NodeWorker(this) : new DenoWorker(this);
    this.workers.push(w);
    sweepable.add(this);
    return w;
  }

  /** Starts one worker ahead of traffic (used when a deploy replaces a warm function). */
  prewarm(): Promise<void> {
    if (this.workers.some((w) => w.state === "ready")) return Promise.resolve();
    const p = new Promise<void>((r) => this.readyWaiters.push(r));
    if (!this.workers.some((w) => w.state === "starting")) this.spawn();
    return p;
  }

  onReady(w: WorkerHandle, m: Msg): void {
    if (w.state !== "starting") return;
    if (m.ok === false) {
      log("error", this.name, this.waiting[0]?.rid ?? null, "function failed to initialize", { error: m.error, stack: projectStack(m.stack) });
      w.stop();
      // a module that threw while loading: its message is the function's (may hold secrets), not ours
      const own = String(m.error).startsWith(`function ${this.name} failed to load`);
      this.loadDetail = String(m.error); // for the deployer's load check (masked by the daemon), never a caller
      this.startFailed(w, 500, own ? `function ${this.name} failed to load (the error is in flux logs)` : String(m.error));
      return;
    }
    w.state = "ready";
    log("info", this.name, this.waiting[0]?.rid ?? null, "cold start", {
      ms: Math.round((performance.now() - w.startedAt) * 10) / 10, worker: w.seq, runtime: this.fc.runtime,
    });
    for (const r of this.readyWaiters.splice(0)) r();
    const jobs = this.waiting.splice(0);
    for (const job of jobs) if (!job.done) this.sendTo(w, job);
  }

  /** A starting worker failed: the requests waiting for it fail too (no retry storm on a broken bundle). */
  startFailed(_w: WorkerHandle, status: number, error: string): void {
    this.loadError = error;
    for (const r of this.readyWaiters.splice(0)) r();
    if (this.workers.some((x) => x.state === "starting" || x.state === "ready")) {
      const ready = this.workers.find((x) => x.state === "ready");
      if (ready) for (const job of this.waiting.splice(0)) if (!job.done) this.sendTo(ready, job);
      return;
    }
    for (const job of this.waiting.splice(0)) this.finish(job, errorOutcome(status, job.rid, error));
  }

  detach(w: WorkerHandle): void {
    const i = this.workers.indexOf(w);
    if (i >= 0) this.workers.splice(i, 1);
  }

  finish(job: Job, outcome: Outcome): void {
    if (job.done) return;
    job.done = true;
    this.active--;
    job.resolve(outcome);
    while (this.active < this.concurrency && this.queue.length > 0) {
      const next = this.queue.shift()!;
      if (!next.done) this.admit(next);
    }
    if (this.draining) this.maybeDrained();
  }

  /** Called by the sweeper: timeouts (504; the worker is retired) and scale to zero. */
  sweep(now: number): void {
    if (this.queue.length && this.queue[0].deadline <= now) {
      this.queue = this.queue.filter((j) => {
        if (j.deadline > now) return true;
        j.done = true;
        j.resolve(this.overloaded(j.rid));
        return false;
      });
    }
    if (this.waiting.length) {
      this.waiting = this.waiting.filter((j) => {
        if (j.done) return false;
        if (j.deadline > now) return true;
        this.finish(j, this.timeoutOutcome(j));
        return false;
      });
    }
    for (const w of [...this.workers]) {
      for (const job of w.inflight.values()) {
        if (job.deadline > now) continue;
        w.inflight.delete(job.id);
        this.finish(job, this.timeoutOutcome(job));
        if (w.state === "ready" || w.state === "starting") {
          // a handler that overran may be stuck in a loop: no new work for this worker; ended once empty
          w.state = "retired";
          this.detach(w);
          retired.add(w);
          log("warn", this.name, job.rid, "worker retired after a timeout", { worker: w.seq, timeout_ms: this.timeoutMs });
        }
        w.afterJob();
      }
      if (w.state === "ready" && w.inflight.size === 0 && w.streams.size === 0 && now - w.lastUsed >= this.idleMs) {
        w.stop();
        if (this.workers.length === 0) log("info", this.name, null, "scaled to zero", { idle_ms: this.idleMs });
      }
    }
  }

  private timeoutOutcome(job: Job): Outcome {
    log("warn", this.name, job.rid, "function timed out", { timeout_ms: this.timeoutMs });
    return errorOutcome(504, job.rid, `function ${this.name} timed out after ${this.timeoutMs} ms`);
  }

  /** New limits / env from a config push for the same digest: env goes to the running workers. */
  update(fc: FnConfig): void {
    const envChanged = JSON.stringify(ctxEnv(fc)) !== JSON.stringify(ctxEnv(this.fc));
    this.fc = fc;
    if (envChanged) for (const w of this.workers) w.send({ t: "env", env: ctxEnv(fc) });
    while (this.active < this.concurrency && this.queue.length > 0) this.admit(this.queue.shift()!);
  }

  /** Replaced by a deploy: finish what was accepted, then end every worker. */
  drain(): void {
    this.draining = true;
    this.maybeDrained();
  }

  private maybeDrained(): void {
    if (this.active > 0 || this.queue.length > 0) return;
    for (const w of [...this.workers]) w.stop();
    livePools.delete(this);
  }

  stats(): Record<string, unknown> {
    return { digest: this.fc.digest, workers: this.workers.length, busy: this.active, queued: this.queue.length };
  }
}

let jobSeq = 0;

// Workers retired after a timeout keep their other in-flight jobs (no longer in a pool's `workers`) until those end.
const retired = new Set<WorkerHandle>();

/** Idle warm workers kept across the whole stage. Every worker is a process of ~40 MB RSS: without a bound, an apply
 * of 5000 functions (each load check's worker becomes that function's warm worker) held 5000 processes until their
 * idle timeout and exhausted a 24 GiB machine. Over the bound, the least recently used idle ones stop (the next
 * request to that function is a cold start, as after scale to zero). */
const MAX_WARM = Math.max(1, Math.floor(CFG.max_warm_workers ?? 64));

function trimWarm(): void {
  let ready = 0;
  const idle: WorkerHandle[] = [];
  for (const p of sweepable) {
    if (!livePools.has(p)) continue;
    for (const w of p.workers) {
      if (w.state !== "ready") continue;
      ready++;
      if (w.inflight.size === 0 && w.streams.size === 0) idle.push(w);
    }
  }
  if (ready <= MAX_WARM) return;
  idle.sort((a, b) => a.lastUsed - b.lastUsed);
  for (const w of idle) {
    if (ready <= MAX_WARM) break;
    w.stop();
    ready--;
    log("info", w.pool.name, null, "warm worker stopped", { reason: "max_warm_workers", max_warm_workers: MAX_WARM });
  }
}

setInterval(() => {
  const now = Date.now();
  for (const p of sweepable) {
    if (!livePools.has(p)) {
      sweepable.delete(p);
      continue;
    }
    p.sweep(now);
    if (p.workers.length === 0 && p.queue.length === 0 && p.waiting.length === 0) sweepable.delete(p);
  }
  trimWarm();
  for (const w of retired) {
    for (const job of w.inflight.values()) {
      if (job.deadline > now) continue;
      w.inflight.delete(job.id);
      w.pool.finish(job, errorOutcome(504, job.rid, `function ${w.pool.name} timed out after ${w.pool.timeoutMs} ms`));
    }
    w.afterJob();
  }
}, SWEEP_MS);

// ---------------------------------------------------------------------------------------------- ctx services
// Answered in this process (DESIGN §8): ctx.secrets.get from the function's granted keys in the table the supervisor
// pushed (fc.env: nothing else is granted), ctx.db through a pooled postgres.js connected as the stage's owner role,
// compiled by the shared query.mjs. No Python and no extra socket hop on a secret read or a query.

const db = createDb(CFG.db, () => import("flux:postgres"), diag);
const dbQuery = db.query;

async function controlCall(w: WorkerHandle, m: Msg): Promise<void> {
  let reply: Msg;
  const fc = w.pool.fc;
  try {
    if (m.op === "secret") {
      const env = fc.env ?? {};
      if (typeof m.key !== "string" || !Object.hasOwn(env, m.key)) {
        throw new Error(`secret ${m.key} is not set (flux secrets set ${m.key}=...)`);
      }
      reply = { t: "reply", id: m.id, ok: true, value: env[m.key] };
    } else if (m.op === "db") {
      if (fc.uses_db === false) {
        throw new Error("ctx.db is not available to this function: its code does not name ctx.db " +
          "(write ctx.db.query(...) in the function's own code, then flux apply)");
      }
      reply = { t: "reply", id: m.id, ok: true, value: await dbQuery(m.params) };
    } else throw new Error(`unknown operation ${m.op}`);
  } catch (err) {
    reply = { t: "reply", id: m.id, ok: false, error: (err as Error).message };
  }
  if (w.state !== "dead") w.send(reply);
}

async function enqueueAsync(fn: string, rid: string, input: unknown): Promise<Outcome> {
  try {
    const doc = await channelRequest({ op: "enqueue", function: fn, request_id: rid, input });
    return { status: 202, json: JSON.stringify({ request_id: doc.request_id ?? rid }) };
  } catch (err) {
    return errorOutcome(503, rid, `could not queue the request: ${(err as Error).message}`);
  }
}

// ---------------------------------------------------------------------------------------------- routing table
interface Route {
  pool: Pool;
  async: boolean;
}
/** A route with path parameters (`/notes/{id}`, greedy `/files/{path+}`: API Gateway v2 syntax). */
interface PatternRoute {
  method: string;
  path: string;
  m: { re: RegExp; names: string[]; greedy: boolean; literals: number };
  route: Route;
  key?: string; // the supervisor's route key (a delta removes it by that key)
}
/** The stage's `cors` setting (fields of API Gateway v2's CorsConfiguration). */
interface Cors {
  allow_origins: string[];
  allow_methods?: string[];
  allow_headers?: string[];
  expose_headers?: string[];
  max_age?: number;
  allow_credentials?: boolean;
}
interface Table {
  pools: Map<string, Pool>;
  routes: Map<string, Route>; // "METHOD /path" of literal paths
  allow: Map<string, string>; // "/path" -> "GET, POST" (literal paths)
  patterns: PatternRoute[]; // most specific first
  cors: Cors | null;
}

let table: Table = { pools: new Map(), routes: new Map(), allow: new Map(), patterns: [], cors: null };

function normPath(p: string): string {
  return p.length > 1 && p.endsWith("/") ? p.slice(0, -1) : p;
}

let configChain: Promise<unknown> = Promise.resolve();

// Every route the supervisor gave, by its key, and the keys of each function's routes: a delta re-points only the
// routes of the function it changes. Routes whose function is absent are kept here and served once it arrives.
let routeConfigs = new Map<string, RouteConfig>();
let routeKeysOf = new Map<string, Set<string>>();

function validFn(name: string, fc: FnConfig): FnConfig {
  if (!fc || (fc.runtime !== "deno" && fc.runtime !== "node") || typeof fc.bundle !== "string" || !fc.bundle.startsWith("/")) {
    throw new BadRequest(`functions.${name}: runtime must be deno|node and bundle an absolute path`);
  }
  return fc;
}

function validRoute(key: string, r: RouteConfig): RouteConfig {
  if (!r || typeof r.method !== "string" || typeof r.path !== "string" || typeof r.function !== "string") {
    throw new BadRequest(`routes.${key}: method, path and function must be strings`);
  }
  return r;
}

function validCors(cors: unknown): Cors | null {
  if (cors === undefined || cors === null) return null;
  if (typeof cors !== "object" || !Array.isArray((cors as Cors).allow_origins)) {
    throw new BadRequest("cors must be an object with allow_origins: [...]");
  }
  return cors as Cors;
}

/** Same code (the pool and its warm workers stay; only limits/env change). */
function sameCode(a: FnConfig, b: FnConfig): boolean {
  return a.digest === b.digest && a.bundle === b.bundle && a.runtime === b.runtime &&
    JSON.stringify(a.endpoint ?? null) === JSON.stringify(b.endpoint ?? null);
}

function setAllow(t: Table, path: string, method: string, add: boolean): void {
  const ms = new Set((t.allow.get(path) ?? "").split(", ").filter(Boolean));
  if (add) ms.add(method);
  else ms.delete(method);
  if (ms.size) t.allow.set(path, [...ms].sort().join(", "));
  else t.allow.delete(path);
}

/** Serves route `key` in `t` when its function is there (literal paths in a map, patterns in specificity order). */
function addRoute(t: Table, key: string, r: RouteConfig): void {
  const pool = t.pools.get(r.function);
  if (!pool) return;
  const method = String(r.method).toUpperCase();
  const path = normPath(String(r.path));
  const route = { pool, async: !!pool.fc.async };
  const m = compileRoute(path);
  if (m) {
    let i = 0;
    while (i < t.patterns.length && compareRoutes(t.patterns[i].m, m) <= 0) i++;
    t.patterns.splice(i, 0, { method, path, m, route, key });
    return;
  }
  t.routes.set(`${method} ${path}`, route);
  setAllow(t, path, method, true);
}

function removeRoute(t: Table, key: string, r: RouteConfig): void {
  const method = String(r.method).toUpperCase();
  const path = normPath(String(r.path));
  const i = t.patterns.findIndex((p) => p.key === key);
  if (i >= 0) t.patterns.splice(i, 1);
  else if (t.routes.delete(`${method} ${path}`)) setAllow(t, path, method, false);
}

/** Re-points the routes of function `name` at its current pool (or unroutes them when it is gone). */
function rerouteFunction(name: string): void {
  for (const key of routeKeysOf.get(name) ?? []) {
    const r = routeConfigs.get(key)!;
    removeRoute(table, key, r);
    addRoute(table, key, r);
  }
}

function indexRoute(key: string, r: RouteConfig, add: boolean): void {
  let keys = routeKeysOf.get(r.function);
  if (add) {
    if (!keys) routeKeysOf.set(r.function, keys = new Set());
    keys.add(key);
  } else if (keys) {
    keys.delete(key);
    if (!keys.size) routeKeysOf.delete(r.function);
  }
}

/** "load": builds the new table (reusing pools whose code did not change), pre-warms replaced warm functions, then
 * swaps it in with one assignment: requests already routed finish on the old pools, which then drain. */
async function applyConfig(doc: Msg): Promise<void> {
  if (!doc || typeof doc.functions !== "object" || !doc.routes || typeof doc.routes !== "object") {
    throw new BadRequest('config must be {"functions": {...}, "routes": {...}}');
  }
  const cors = validCors(doc.cors);
  const given: [string, RouteConfig][] = Array.isArray(doc.routes)
    ? (doc.routes as RouteConfig[]).map((r) => [`${r?.method} ${r?.path}`, r])
    : Object.entries(doc.routes as Record<string, RouteConfig>);
  const old = table;
  const pools = new Map<string, Pool>();
  const warmups: Promise<void>[] = [];
  for (const [name, fc] of Object.entries(doc.functions as Record<string, FnConfig>)) {
    validFn(name, fc);
    const prev = old.pools.get(name);
    if (prev && sameCode(prev.fc, fc)) {
      prev.update(fc);
      pools.set(name, prev);
      adoptChecked(name, { ...fc, digest: "" }); // a check of unchanged code (new limits or env): its pool ends
    } else {
      const pool = adoptChecked(name, fc) ?? new Pool(name, fc);
      pools.set(name, pool);
      if (prev && prev.workers.some((w) => w.state === "ready")) warmups.push(pool.prewarm());
    }
  }
  const next: Table = { pools, routes: new Map(), allow: new Map(), patterns: [], cors };
  const configs = new Map<string, RouteConfig>();
  for (const [key, r] of given) {
    validRoute(key, r);
    if (!pools.has(r.function)) throw new BadRequest(`route ${r.method} ${r.path}: unknown function ${r.function}`);
    configs.set(key, r);
    addRoute(next, key, r);
  }
  if (warmups.length) {
    await Promise.race([Promise.all(warmups), new Promise((r) => setTimeout(r, 15000))]);
  }
  table = next;
  routeConfigs = configs;
  routeKeysOf = new Map();
  for (const [key, r] of configs) indexRoute(key, r, true);
  for (const [name, pool] of old.pools) if (pools.get(name) !== pool) pool.drain();
  log("debug", null, null, "config applied", { functions: pools.size, routes: next.routes.size + next.patterns.length });
}

// Deltas: each changes the live table in place in one synchronous step (a request looks its route up synchronously,
// so it sees the table before or after a change, never half of one) and touches only the pool and routes it names.
async function putFunction(name: string, fc: FnConfig): Promise<void> {
  validFn(name, fc);
  const prev = table.pools.get(name);
  if (prev && sameCode(prev.fc, fc)) {
    const wasAsync = !!prev.fc.async;
    prev.update(fc);
    adoptChecked(name, { ...fc, digest: "" }); // a check of unchanged code (new limits or env): its pool ends
    if (wasAsync !== !!fc.async) rerouteFunction(name);
    return;
  }
  const pool = adoptChecked(name, fc) ?? new Pool(name, fc);
  if (prev && prev.workers.some((w) => w.state === "ready")) {
    await Promise.race([pool.prewarm(), new Promise((r) => setTimeout(r, 15000))]);
  }
  table.pools.set(name, pool);
  rerouteFunction(name);
  prev?.drain();
}

function deleteFunction(name: string): void {
  const prev = table.pools.get(name);
  if (!prev) return;
  table.pools.delete(name);
  rerouteFunction(name);
  prev.drain();
}

function putRoute(key: string, r: RouteConfig): void {
  validRoute(key, r);
  deleteRoute(key);
  r = { method: r.method, path: r.path, function: r.function };
  routeConfigs.set(key, r);
  indexRoute(key, r, true);
  addRoute(table, key, r);
}

function deleteRoute(key: string): void {
  const old = routeConfigs.get(key);
  if (!old) return;
  routeConfigs.delete(key);
  indexRoute(key, old, false);
  removeRoute(table, key, old);
}

class BadRequest extends Error {}

/** The route serving `method path`: a literal path first, then the most specific pattern. */
function lookup(t: Table, method: string, path: string): { route: Route; params: Record<string, string> | null } | null {
  const r = t.routes.get(method + " " + path);
  if (r) return { route: r, params: null };
  for (const p of t.patterns) {
    if (p.method !== method) continue;
    const params = matchRoute(p.m, path);
    if (params) return { route: p.route, params };
  }
  return null;
}

/** Methods served at `path` (for 405 Allow and preflights); HEAD goes with GET. */
function methodsAt(t: Table, path: string): string[] {
  const out = new Set<string>((t.allow.get(path) ?? "").split(", ").filter(Boolean));
  for (const p of t.patterns) if (!out.has(p.method) && p.m.re.test(path)) out.add(p.method);
  if (out.has("GET")) out.add("HEAD");
  return [...out].sort();
}

// ---------------------------------------------------------------------------------------------- gateway
// Measured (deno 2.9): `new Response(text, {headers: {"content-type": ...}})` takes a fast path (~0.15 us) while
// any other header object goes through the generic record conversion (~2-3 us, about a fifth of the gateway's own
// per-request cost); setting the request id on the constructed response is ~0.3 us.
const JSON_HEADERS = { "content-type": JSON_TYPE };
const INIT_200: ResponseInit = { status: 200, headers: JSON_HEADERS };
const NULL_BODY = new Set([101, 103, 204, 205, 304]);

/** The HTTP response of an outcome. `head`: HEAD request (headers only); `cors`: headers for an allowed origin. */
function reply(o: Outcome, rid: string, allow?: string, head = false, cors: [string, string][] | null = null,
  gatewayCors = false): Response {
  let res: Response;
  if (o.json !== undefined) {
    res = head
      ? new Response(null, { status: o.status, headers: { ...JSON_HEADERS, "content-length": String(encoder.encode(o.json).length) } })
      : new Response(o.json, o.status === 200 ? INIT_200 : { status: o.status, headers: JSON_HEADERS });
  } else {
    // a returned Response: its status, headers and body (bytes or a stream) as the function made them
    const body = head || NULL_BODY.has(o.status) ? null : o.body ?? null;
    if (head && o.body instanceof ReadableStream) o.body.cancel().catch(() => {});
    res = new Response(body, { status: o.status, headers: o.headers ?? [] });
  }
  const h = res.headers;
  h.set("x-flux-request-id", rid);
  if (allow) h.set("allow", allow);
  if (o.retryAfter) h.set("retry-after", String(o.retryAfter));
  if (gatewayCors && o.headers) {
    // the stage's cors setting decides, not the function (as API Gateway ignores an integration's CORS headers)
    for (const [k] of o.headers) if (k.startsWith("access-control-")) h.delete(k);
  }
  if (cors) for (const [k, v] of cors) k === "vary" ? h.append(k, v) : h.set(k, v);
  return res;
}

/** Reads at most MAX_BODY bytes; null when the body is larger (413). */
async function readBody(req: Request): Promise<string | null> {
  const cl = req.headers.get("content-length");
  if (cl !== null) {
    if (Number(cl) > MAX_BODY) return null;
    return await req.text();
  }
  if (!req.body) return "";
  const chunks: Uint8Array[] = [];
  let size = 0;
  for await (const chunk of req.body) {
    size += chunk.byteLength;
    if (size > MAX_BODY) return null;
    chunks.push(chunk);
  }
  const all = new Uint8Array(size);
  let off = 0;
  for (const c of chunks) {
    all.set(c, off);
    off += c.byteLength;
  }
  return new TextDecoder().decode(all);
}

function queryInput(url: string, q: number, params: Record<string, string> | null): string {
  if (q < 0 && !params) return "{}";
  const input: Record<string, string> = {};
  if (q >= 0) for (const [k, v] of new URLSearchParams(url.slice(q + 1))) input[k] = v;
  return JSON.stringify(mergeParams(input, params));
}

/** JSON body text -> input object, or the 400 message. */
function parseInput(body: string): { input?: Record<string, unknown>; error?: string } {
  let input: unknown;
  try {
    input = body === "" ? {} : JSON.parse(body);
  } catch (err) {
    return { error: `invalid JSON body: ${(err as Error).message}` };
  }
  if (input === null || typeof input !== "object" || Array.isArray(input)) return { error: "request body must be a JSON object" };
  return { input: input as Record<string, unknown> };
}

/** Routes and runs one request: [outcome, function name (null when none was routed), Allow header]. */
async function handle(req: Request, t: Table, rid: string, method: string, path: string, url: string, q: number,
): Promise<[Outcome, string | null, string?]> {
  const found = lookup(t, method, path) ?? (method === "HEAD" ? lookup(t, "GET", path) : null);
  if (!found) {
    const allowed = methodsAt(t, path);
    if (allowed.length) {
      if (t.cors) allowed.push("OPTIONS");
      const list = allowed.join(", ");
      return [errorOutcome(405, rid, `method ${method} not allowed on ${path} (allowed: ${list})`), null, list];
    }
    return [errorOutcome(404, rid, `no function is routed at ${method} ${path}`), null];
  }
  const { route, params } = found;
  const fn = route.pool.name;
  let body: string | null;
  if (method === "GET" || method === "DELETE" || method === "HEAD") body = queryInput(url, q, params);
  else {
    try {
      body = await readBody(req);
    } catch {
      return [errorOutcome(400, rid, "could not read the request body"), fn];
    }
    if (body === null) return [errorOutcome(413, rid, `request body is larger than ${MAX_BODY} bytes`), fn];
    if (params) {
      const p = parseInput(body);
      if (p.error) return [errorOutcome(400, rid, p.error), fn];
      body = JSON.stringify(mergeParams(p.input, params));
    }
  }
  if (route.async) {
    const p = parseInput(body);
    if (p.error) return [errorOutcome(400, rid, p.error), fn];
    return [await enqueueAsync(fn, rid, p.input), fn];
  }
  return [await route.pool.run(rid, body), fn];
}

async function gateway(req: Request): Promise<Response> {
  const t0 = performance.now();
  const rid = newRequestId();
  const url = req.url;
  const s = url.indexOf("/", url.indexOf("//") + 2);
  const q = url.indexOf("?", s);
  const path = normPath(q < 0 ? url.slice(s) : url.slice(s, q));
  const method = req.method;
  const t = table; // one snapshot per request: a deploy never mixes two tables in one request
  let res: Response;
  let fn: string | null = null;
  const origin = t.cors ? req.headers.get("origin") : null;
  const preflight = origin !== null && method === "OPTIONS" ? req.headers.get("access-control-request-method") : null;
  if (preflight !== null && !lookup(t, "OPTIONS", path)) {
    // CORS preflight: answered here, the function never sees it
    const routed = methodsAt(t, path);
    if (!routed.length) res = reply(errorOutcome(404, rid, `no function is routed at ${path}`), rid);
    else {
      const p = corsPreflight(t.cors, origin!, preflight, req.headers.get("access-control-request-headers"), routed);
      res = p.status === 204
        ? reply({ status: 204, headers: [], body: null }, rid, undefined, false, p.headers)
        : reply(errorOutcome(p.status, rid, p.error!), rid, undefined, false, p.headers);
    }
  } else {
    const [o, name, allow] = await handle(req, t, rid, method, path, url, q);
    fn = name;
    res = reply(o, rid, allow, method === "HEAD", origin !== null ? corsHeaders(t.cors, origin) : null, t.cors !== null);
  }
  // one access record per request (the stream of a streamed body may still be running)
  accessLog(fn, rid, method, path, res.status, Math.round((performance.now() - t0) * 100) / 100);
  return res;
}

const STAGE_JSON = JSON.stringify(STAGE);
const fnJson = new Map<string, string>();
/** The access record: the same JSON as log("info", fn, rid, "access", {method, path, status, duration_ms,
 * request_id}) (same fields, same order), built as one string (measured: stringifying the nested object per
 * request was the largest item of the gateway's own JS at 1 connection). */
function accessLog(fn: string | null, rid: string, method: string, path: string, status: number, ms: number): void {
  let f = fn === null ? "null" : fnJson.get(fn);
  if (f === undefined) {
    if (fnJson.size > 10000) fnJson.clear();
    fnJson.set(fn!, f = JSON.stringify(fn));
  }
  const r = JSON.stringify(rid);
  pushLog(`{"ts":"${isoNow()}","level":"info","stage":${STAGE_JSON},"function":${f},"request_id":${r},` +
    `"msg":"access","data":{"method":${JSON.stringify(method)},"path":${JSON.stringify(path)},"status":${status},` +
    `"duration_ms":${ms},"request_id":${r}}}`);
}

// ---------------------------------------------------------------------------------------------- load check
/** Pools started by checkFunction and not yet taken into the table: name -> pool (its worker stays warm). */
const checkedPools = new Map<string, { pool: Pool; timer: ReturnType<typeof setTimeout> }>();
/** How long a checked worker waits for the config push that takes it in (an apply pushes right after its checks). */
const CHECKED_KEEP_MS = 120000;
/** Checked workers kept at once (the newest): an apply of 1000 functions must not hold 1000 idle processes. */
const CHECKED_KEEP_MAX = 16;

/** Load check at apply time: report whether the module loaded: a throw on load, a missing defineFunction, or a
 * name differing from flux.json fails the deploy instead of every request (DESIGN §7). One check is a worker of
 * its own (checkAlone, kept as the first warm worker); many at once go in batches (batchCheck). Called by the
 * supervisor's channel ("check"). */
async function checkFunction(name: string, fc: FnConfig): Promise<{ ok: boolean; error?: string }> {
  const now = Date.now();
  recentChecks.push(now);
  while (recentChecks.length && recentChecks[0] < now - BATCH_WINDOW_MS) recentChecks.shift();
  if (fc.runtime === "deno" && !fc.endpoint && recentChecks.length > CHECKED_KEEP_MAX) {
    const r = await batchCheck(name, fc);
    if (r) return r; // null: the batch's process died before reaching this function: checked on its own below
  }
  return await checkAlone(name, fc);
}

// ---- batch load checks: an apply of many functions (more than CHECKED_KEEP_MAX checks within BATCH_WINDOW_MS)
// checks the deno ones in batches, several bundles per `deno run` of checker.mjs, instead of one worker process
// each. Those checks keep no warm worker (beyond CHECKED_KEEP_MAX they would be stopped anyway, see trimWarm): the
// function cold-starts on its first request. Measured on 2 cores: a worker process start is ~37 ms of CPU, an import
// into a running checker ~1-2 ms; the checks were two thirds of the CPU of a local create-apply. Checking the same
// 1000 bundles with checker.mjs by hand: 1.46-1.75 CPU-s in batches of 32, 0.89 of 64, 0.65 of 128, 0.67 of 256, 0.77
// of 512 (a bigger batch holds more modules in one isolate): 128. A batch whose process dies (Deno.exit, the heap
// limit) leaves its unchecked functions to checkAlone, so a bigger batch costs more only in that rare case.
const BATCH_WINDOW_MS = 3000;
const BATCH_MAX = 128;
const BATCH_COLLECT_MS = 25;
const CHECKER = decodeURIComponent(new URL("./checker.mjs", import.meta.url).pathname);
const recentChecks: number[] = [];
type Checked = { ok: boolean; error?: string } | null;
const batchQueue: { name: string; fc: FnConfig; resolve: (r: Checked) => void }[] = [];
let batchTimer: ReturnType<typeof setTimeout> | 0 = 0;

/** Checker processes at once: while one runs, new checks queue up and go together in the next batch (measured at
 * 1000 functions: two at once, or a 5 ms collection window, gave many batches of one or two, a process each). */
const CHECKERS_MAX = 1;
let checkersRunning = 0;

function batchCheck(name: string, fc: FnConfig): Promise<Checked> {
  return new Promise((resolve) => {
    batchQueue.push({ name, fc, resolve });
    if (!batchTimer && checkersRunning < CHECKERS_MAX) batchTimer = setTimeout(nextBatch, BATCH_COLLECT_MS);
  });
}

function nextBatch(): void {
  clearTimeout(batchTimer);
  batchTimer = 0;
  while (checkersRunning < CHECKERS_MAX && batchQueue.length) {
    checkersRunning++;
    runBatch(batchQueue.splice(0, BATCH_MAX)).finally(() => {
      checkersRunning--;
      nextBatch();
    });
  }
}

async function runBatch(batch: typeof batchQueue): Promise<void> {
  const results = new Map<string, Checked>();
  log("debug", null, null, "load check batch", { functions: batch.length });
  try {
    const dirs = new Set(batch.map((b) => bundleDirOf(b.fc)));
    const heap = Math.max(...batch.map((b) => memoryMb(b.fc)));
    const timeoutMs = Math.max(3 * COLD_START_MS, ...batch.map((b) => b.fc.timeout_ms ?? 30000));
    const child = new Deno.Command(Deno.execPath(), {
      args: [
        "run", "--quiet", "--no-prompt", "--no-config", "--no-lock", `--v8-flags=--max-old-space-size=${heap}`,
        `--allow-read=${[CHECKER, CORE_PATH, HTTP_PATH, ...dirs].join(",")}`, "--allow-net", CHECKER, CORE_PATH,
      ],
      cwd: RUNTIME_DIR, clearEnv: true, env: { DENO_DIR: DENO_DIR_OF_WORKERS, PATH: "/usr/bin:/bin" },
      stdin: "piped", stdout: "piped", stderr: "null",
    }).spawn();
    const nonce = crypto.randomUUID();
    const w = child.stdin.getWriter();
    await w.write(encoder.encode(JSON.stringify({
      nonce, timeout_ms: timeoutMs, functions: batch.map((b) => ({ function: b.name, bundle: b.fc.bundle })),
    }) + "\n"));
    await w.close().catch(() => {});
    const killer = setTimeout(() => child.kill("SIGKILL"), timeoutMs * batch.length + COLD_START_MS);
    await readLines(child.stdout, (line) => {
      if (!line.startsWith(nonce)) return;
      const r = JSON.parse(line.slice(nonce.length));
      if (!r.ok) log("error", r.function, null, "function failed to initialize", { error: r.error, stack: projectStack(r.stack) });
      results.set(r.function, r.ok ? { ok: true } : { ok: false, error: String(r.error) });
    });
    clearTimeout(killer);
    await child.status;
  } catch (err) {
    diag(`batch load check failed: ${err}`);
  }
  for (const b of batch) b.resolve(results.get(b.name) ?? null);
}

/** The load check of one function in a worker of its own, kept as its first warm worker (see adoptChecked). */
async function checkAlone(name: string, fc: FnConfig): Promise<{ ok: boolean; error?: string }> {
  const pool = new Pool(name, { ...fc, max_workers: 1 });
  const limit = Math.max(3 * COLD_START_MS, fc.timeout_ms ?? 30000); // starting is not the handler's timeout
  let timer: ReturnType<typeof setTimeout> | undefined;
  await Promise.race([pool.prewarm(), new Promise((r) => (timer = setTimeout(r, limit)))]);
  clearTimeout(timer);
  const ok = pool.workers.some((w) => w.state === "ready");
  if (!ok) {
    const error = pool.loadDetail ?? pool.loadError ?? `function ${name} did not start within ${limit} ms`;
    pool.drain();
    return { ok: false, error };
  }
  checkedPools.get(name)?.pool.drain(); // an older check of the same function that nobody took
  clearTimeout(checkedPools.get(name)?.timer);
  const entry = {
    pool,
    timer: setTimeout(() => {
      if (checkedPools.get(name) !== entry) return;
      checkedPools.delete(name);
      pool.drain();
    }, CHECKED_KEEP_MS),
  };
  checkedPools.delete(name);
  checkedPools.set(name, entry);
  for (const [oldest, e] of checkedPools) {
    if (checkedPools.size <= CHECKED_KEEP_MAX) break;
    checkedPools.delete(oldest);
    clearTimeout(e.timer);
    e.pool.drain();
  }
  return { ok: true };
}

/** The checked pool of `name` when it runs exactly this code with these process flags (bundle, digest,
 * runtime, memory limit); taken out of the waiting list. Limits and env come from `fc` (Pool.update). */
function adoptChecked(name: string, fc: FnConfig): Pool | null {
  const entry = checkedPools.get(name);
  if (!entry) return null;
  checkedPools.delete(name);
  clearTimeout(entry.timer);
  const p = entry.pool;
  if (fc.endpoint || p.draining || p.fc.digest !== fc.digest || p.fc.bundle !== fc.bundle ||
    p.fc.runtime !== fc.runtime || memoryMb(p.fc) !== memoryMb(fc)) {
    p.drain();
    return null;
  }
  p.update(fc);
  return p;
}

// ---------------------------------------------------------------------------------------------- supervisor channel
/** One line to the supervisor, after the log records written before it (same stdout, same order). */
function channelSend(m: Msg): void {
  logLines.push(JSON.stringify(m));
  flushLogs();
}

let nextRequest = 0;
const awaiting = new Map<number, { resolve: (m: Msg) => void; reject: (e: Error) => void }>();

/** A request to the supervisor (enqueue): rejects on its error reply, or after 30 s without one. */
function channelRequest(m: Msg): Promise<Msg> {
  const id = ++nextRequest;
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => {
      awaiting.delete(id);
      reject(new Error("the supervisor did not answer"));
    }, 30000);
    awaiting.set(id, {
      resolve: (r) => (clearTimeout(timer), resolve(r)),
      reject: (e) => (clearTimeout(timer), reject(e)),
    });
    channelSend({ ...m, id });
  });
}

/** Table ops run one after another, in the order they arrived (a put_function may wait for a pre-warm). */
function chained(f: () => unknown): Promise<unknown> {
  const run = configChain.then(f);
  configChain = run.catch(() => {});
  return run;
}

/** The "check" op: checkFunction (above) on the channel. */
async function loadCheck(m: Msg): Promise<Record<string, unknown>> {
  const fc = m?.config as FnConfig;
  const name = String(m?.function ?? "");
  if (!name || !fc || (fc.runtime !== "deno" && fc.runtime !== "node") || typeof fc.bundle !== "string") {
    throw new BadRequest('check needs {"function": name, "config": {runtime, bundle, ...}}');
  }
  const r = await checkFunction(name, fc);
  return r.ok ? { loaded: true } : { loaded: false, error: r.error };
}

/** An invocation outside HTTP (the async queue, flux invoke's fallback): status, body (JSON when it says so). */
async function invokeOp(m: Msg): Promise<Record<string, unknown>> {
  const name = String(m.function);
  const pool = table.pools.get(name);
  if (!pool) throw new BadRequest(`unknown function ${name}`);
  const rid = typeof m.request_id === "string" && m.request_id ? m.request_id : newRequestId();
  const o = await pool.run(rid, JSON.stringify(m.input ?? {}));
  if (o.json !== undefined) return { status: o.status, body: JSON.parse(o.json) };
  // a returned Response: its text (JSON when it says so) and headers
  const text = await new Response(o.body ?? null).text();
  const headers = Object.fromEntries(o.headers ?? []);
  let body: unknown = text;
  if (/^application\/(.+\+)?json/i.test(headers["content-type"] ?? "")) {
    try {
      body = JSON.parse(text);
    } catch { /* not JSON after all: the text */ }
  }
  return { status: o.status, headers, body };
}

async function channelOp(m: Msg): Promise<Record<string, unknown>> {
  switch (m.op) {
    case "load":
      await chained(() => applyConfig(m));
      return {};
    case "put_function":
      await chained(() => putFunction(String(m.name), m.config));
      return {};
    case "delete_function":
      await chained(() => deleteFunction(String(m.name)));
      return {};
    case "put_route":
      await chained(() => putRoute(String(m.key), m.route));
      return {};
    case "delete_route":
      await chained(() => deleteRoute(String(m.key)));
      return {};
    case "env":
      await chained(() => {
        for (const [name, env] of Object.entries((m.functions ?? {}) as Record<string, Record<string, string>>)) {
          const pool = table.pools.get(name);
          if (pool) pool.update({ ...pool.fc, env });
        }
      });
      return {};
    case "cors":
      await chained(() => {
        table.cors = validCors(m.cors);
      });
      return {};
    case "check":
      return await loadCheck(m);
    case "invoke":
      return await invokeOp(m);
    case "health": {
      const functions: Record<string, unknown> = {};
      for (const [name, pool] of table.pools) functions[name] = pool.stats();
      return { functions };
    }
    case "shutdown":
      setTimeout(shutdown, 0);
      return {};
  }
  throw new BadRequest(`unknown op ${JSON.stringify(m.op)}`);
}

async function onChannelLine(line: string): Promise<void> {
  let m: Msg;
  try {
    m = JSON.parse(line);
  } catch {
    diag(`channel: not JSON: ${line.slice(0, 200)}`);
    return;
  }
  if (!m || typeof m !== "object") return;
  if (typeof m.reply_to === "number") {
    const w = awaiting.get(m.reply_to);
    awaiting.delete(m.reply_to);
    if (m.ok) w?.resolve(m);
    else w?.reject(new Error(String(m.error ?? "refused")));
    return;
  }
  try {
    channelSend({ ...await channelOp(m), reply_to: m.id, ok: true });
  } catch (err) {
    if (!(err instanceof BadRequest || err instanceof SyntaxError)) diag(`channel ${m.op}: ${(err as Error).stack ?? err}`);
    channelSend({ reply_to: m.id, ok: false, error: (err as Error).message });
  }
}

/** Reads the supervisor's lines from stdin; its end (the supervisor died or closed it) shuts the host down. */
async function readChannel(): Promise<void> {
  const decoder = new TextDecoder();
  let rest = "";
  try {
    for await (const chunk of Deno.stdin.readable) {
      rest += decoder.decode(chunk, { stream: true });
      let i: number;
      while ((i = rest.indexOf("\n")) >= 0) {
        const line = rest.slice(0, i);
        rest = rest.slice(i + 1);
        if (line.trim()) void onChannelLine(line);
      }
    }
  } catch (err) {
    diag(`channel: ${err}`);
  }
  void shutdown();
}

// ---------------------------------------------------------------------------------------------- lifecycle
let shuttingDown = false;

async function shutdown(): Promise<void> {
  if (shuttingDown) return;
  shuttingDown = true;
  const deadline = Date.now() + 10000;
  for (const pool of table.pools.values()) pool.drain();
  while (Date.now() < deadline && [...livePools].some((p) => p.active > 0 || p.queue.length > 0)) {
    await new Promise((r) => setTimeout(r, 20));
  }
  for (const p of livePools) for (const w of [...p.workers]) w.stop();
  log("info", null, null, "runtime host stopped", null);
  flushLogs();
  Deno.exit(0);
}

const onError = (err: unknown): Response => {
  diag(`request failed: ${(err as Error)?.stack ?? err}`);
  return new Response(JSON.stringify({ error: "internal error in the gateway" }), { status: 500, headers: { "content-type": JSON_TYPE } });
};

const gw = Deno.serve({ hostname: CFG.gateway_host || "127.0.0.1", port: CFG.gateway_port ?? 0, onListen() {}, onError }, gateway);
Deno.addSignalListener("SIGTERM", () => void shutdown());
Deno.addSignalListener("SIGINT", () => void shutdown());
writeStdout(JSON.stringify({ event: "ready", gateway_port: gw.addr.port }) + "\n");
void readChannel();
