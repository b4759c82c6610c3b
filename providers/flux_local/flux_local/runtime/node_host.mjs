// Worker process of a function (node functions under node, deno functions under `deno run`: one process each, so
// flux.json `memory` is a real heap limit): speaks the worker channel as JSON lines on stdin/stdout.
// Started by host.ts under the Node permission model (fs reads limited to this file, the shared core.mjs and the
// bundle dir) with a scrubbed environment; the function's configured keys arrive in the init message.
// argv[2] is the path of the shared runtime (flux_plan/runtime/core.mjs), which lives in another package.
import { pathToFileURL } from "node:url";

const { createRuntime } = await import(pathToFileURL(process.argv[2]).href);

// Under Deno the channel uses Deno's own stdin/stdout: node:process streams there add layers of stream machinery
// to every message (measured: bench/gateway.py warm p50).
const DENO = typeof globalThis.Deno?.stdin?.read === "function" ? globalThis.Deno : null;
const encoder = new TextEncoder();
const writeOut = DENO
  ? (text) => {
    const data = encoder.encode(text);
    for (let off = 0; off < data.length;) off += DENO.stdout.writeSync(data.subarray(off));
  }
  : process.stdout.write.bind(process.stdout);
let buf = [];
let scheduled = false;
function flush() {
  scheduled = false;
  const text = buf.join("\n") + "\n";
  buf = [];
  writeOut(text);
}
function post(m) {
  buf.push(JSON.stringify(m));
  if (!scheduled) {
    scheduled = true;
    queueMicrotask(flush);
  }
}

let envKeys = [];
const rt = createRuntime({
  post,
  load: (bundle) => import(pathToFileURL(bundle).href),
  onEnv: (env) => {
    // npm libraries read process.env: give them exactly the function's keys, nothing of the host. Under Deno
    // (deno functions run this file too) the env is not writable (no --allow-env): ctx.env is what counts.
    try {
      for (const k of envKeys) delete process.env[k];
      Object.assign(process.env, env);
      envKeys = Object.keys(env);
    } catch {
      envKeys = [];
    }
  },
});

// Raw writes by the function must not corrupt the channel: they become log records.
process.stdout.write = (chunk) => {
  rt.record("info", [String(chunk).replace(/\n$/, "")]);
  return true;
};
process.stderr.write = (chunk) => {
  rt.record("error", [String(chunk).replace(/\n$/, "")]);
  return true;
};

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
  const buf = new Uint8Array(1 << 16);
  for (;;) {
    const n = await DENO.stdin.read(buf);
    if (n === null) DENO.exit(0);
    onChunk(decoder.decode(buf.subarray(0, n), { stream: true }));
  }
} else {
  process.stdin.setEncoding("utf8");
  process.stdin.on("data", onChunk);
  process.stdin.on("end", () => process.exit(0));
}
