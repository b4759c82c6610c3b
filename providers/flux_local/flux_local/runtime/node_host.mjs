// Worker process of a function (node functions under node, deno functions under `deno run`: one process each, so
// flux.json `memory` is a real heap limit): speaks the worker channel as JSON lines on stdin/stdout.
// Started by host.ts under the Node permission model (fs reads limited to this file, the shared core.mjs and the
// bundle dir) with a scrubbed environment; the function's configured keys arrive in the init message.
// argv[2] is the path of the shared runtime (flux_plan/runtime/core.mjs), which lives in another package.
// Under Deno (deno functions) the channel uses Deno's own stdin/stdout and never touches `process`: Deno builds
// its node:process lazily, and the first touch costs tens of ms of cold start (measured: bench/gateway.py cold);
// node:process streams also add layers of stream machinery to every message (warm p50).
const DENO = typeof globalThis.Deno?.stdin?.read === "function" ? globalThis.Deno : null;
const fileUrl = (path) => "file://" + path.split("/").map(encodeURIComponent).join("/");

const { createRuntime } = await import(fileUrl(DENO ? DENO.args[0] : process.argv[2]));

const encoder = new TextEncoder();
const writeOut = DENO
  ? (text) => {
    const data = encoder.encode(text);
    for (let off = 0; off < data.length;) off += DENO.stdout.writeSync(data.subarray(off));
  }
  : process.stdout.write.bind(process.stdout);
let buf = [];
let scheduled = false;
/** resolves the read loop's wait for the answer to the chunk it read (Deno, see the loop at the end) */
let answeredChunk = null;
// Deno: the host keeps at most one unanswered batch per deno worker (host.ts NodeWorker, "adaptive batching"), so
// every chunk read from stdin is answered exactly once, ACK_HOPS microtask turns later: with the results of the
// handlers that finished by then (most that do no I/O) or a bare "ack" line. Node workers are not batched.
const ACK_HOPS = 8;
let hops = 0;
let ackDue = false;
function flush() {
  if (hops > 0) {
    hops--;
    queueMicrotask(flush);
    return;
  }
  scheduled = false;
  if (buf.length === 0) {
    if (!ackDue) return;
    buf.push('{"t":"ack"}');
  }
  const answered = ackDue;
  ackDue = false;
  const text = buf.join("\n") + "\n";
  buf = [];
  writeOut(text);
  if (answered) answeredChunk?.();
}
function schedule(extraHops) {
  hops = Math.max(hops, extraHops);
  if (!scheduled) {
    scheduled = true;
    queueMicrotask(flush);
  }
}
function post(m) {
  buf.push(JSON.stringify(m));
  schedule(0);
}

let envKeys = [];
const rt = createRuntime({
  post,
  load: (bundle) => import(fileUrl(bundle)),
  // npm libraries read process.env: give them exactly the function's keys, nothing of the host. Under Deno the env
  // is not writable (no --allow-env): ctx.env is what counts there.
  onEnv: DENO ? undefined : (env) => {
    for (const k of envKeys) delete process.env[k];
    Object.assign(process.env, env);
    envKeys = Object.keys(env);
  },
});

// Raw writes by the function must not corrupt the channel: they become log records.
function captureRawWrites(proc) {
  proc.stdout.write = (chunk) => {
    rt.record("info", [String(chunk).replace(/\n$/, "")]);
    return true;
  };
  proc.stderr.write = (chunk) => {
    rt.record("error", [String(chunk).replace(/\n$/, "")]);
    return true;
  };
}
const lazyProcess = DENO ? Object.getOwnPropertyDescriptor(globalThis, "process") : undefined;
if (lazyProcess?.get && lazyProcess.configurable) {
  // Deno: patched on the function's first touch of `process` (most never do), not at start
  Object.defineProperty(globalThis, "process", {
    configurable: true,
    enumerable: lazyProcess.enumerable,
    get() {
      const proc = lazyProcess.get.call(globalThis);
      Object.defineProperty(globalThis, "process", { configurable: true, writable: true, value: proc });
      captureRawWrites(proc);
      return proc;
    },
    set(value) { // a library's `globalThis.process = ...` (polyfills do that) replaces it, as before
      Object.defineProperty(globalThis, "process", { configurable: true, writable: true, value });
    },
  });
} else captureRawWrites(process);

let pending = "";
function onChunk(chunk) {
  pending += chunk;
  let nl;
  while ((nl = pending.indexOf("\n")) >= 0) {
    const line = pending.slice(0, nl);
    pending = pending.slice(nl + 1);
    if (line) rt.onMessage(JSON.parse(line));
  }
}
if (DENO) {
  const decoder = new TextDecoder();
  const rbuf = new Uint8Array(1 << 16);
  // The next read starts once this chunk is answered, not before: the host sends nothing until it reads the answer
  // (one unanswered batch per worker), and starting a read is not free (Deno reads stdin on a blocking-pool thread:
  // a dup of fd 0 and a thread wake-up per read). Started first, it sat between a request and its result at 1
  // connection (strace); now it runs while the host handles the result.
  const answer = (resolve) => (answeredChunk = resolve);
  for (;;) {
    const n = await DENO.stdin.read(rbuf);
    if (n === null) DENO.exit(0);
    ackDue = true;
    const answered = new Promise(answer);
    schedule(ACK_HOPS); // before dispatching: the answer must go out even if a message handler throws
    onChunk(decoder.decode(rbuf.subarray(0, n), { stream: true }));
    await answered;
    answeredChunk = null;
  }
} else {
  process.stdin.setEncoding("utf8");
  process.stdin.on("data", onChunk);
  process.stdin.on("end", () => process.exit(0));
}
