// Batch load check of deno functions (host.ts, checkBatch): one `deno run` process loads several bundles in turn
// and reports, per function, what the worker's own init would (core.mjs loadModule). A worker process costs
// ~37 ms of CPU to start (mostly the kernel mapping deno), importing one more bundle into a running one ~1-2 ms:
// at apply sizes of hundreds of functions the checks were most of the apply's CPU.
// Same sandbox as a worker process: reads limited to the runtime files and the batch's bundle dirs, net only, no
// env/run/write/ffi/sys, a heap limit; no ctx at all (module top-level code never has one).
// Protocol: stdin, one JSON line {nonce, timeout_ms, functions: [{function, bundle}]}; stdout, one line per
// function: nonce + JSON {function, ok, error?, stack?}. The nonce keeps lines a module writes itself from
// passing as results. A function without a line (the process died: Deno.exit, heap limit) is checked on its own.
const fileUrl = (path) => "file://" + path.split("/").map(encodeURIComponent).join("/");
const { loadModule } = await import(fileUrl(Deno.args[0]));

const quiet = () => {};
for (const k of ["log", "info", "warn", "error", "debug", "trace", "dir", "table"]) globalThis.console[k] = quiet;

const encoder = new TextEncoder();
const writeSync = Deno.stdout.writeSync.bind(Deno.stdout);
function out(line) {
  const data = encoder.encode(line + "\n");
  for (let off = 0; off < data.length;) off += writeSync(data.subarray(off));
}

async function readRequest() {
  const decoder = new TextDecoder();
  const buf = new Uint8Array(1 << 16);
  let text = "";
  for (;;) {
    const n = await Deno.stdin.read(buf);
    if (n === null) break;
    text += decoder.decode(buf.subarray(0, n), { stream: true });
    if (text.includes("\n")) break;
  }
  return JSON.parse(text.split("\n", 1)[0]);
}

const req = await readRequest();
const nonce = String(req.nonce);
const timeoutMs = Number(req.timeout_ms) || 30000;
for (const { function: name, bundle } of req.functions) {
  let timer;
  const late = new Promise((resolve) => {
    timer = setTimeout(() => resolve({ ok: false, error: `function ${name} did not load within ${timeoutMs} ms`, stack: null }), timeoutMs);
  });
  const r = await Promise.race([loadModule((b) => import(fileUrl(b)), bundle, name), late]);
  clearTimeout(timer);
  out(nonce + JSON.stringify(r.ok ? { function: name, ok: true } : { function: name, ok: false, error: r.error, stack: r.stack }));
}
Deno.exit(0);
