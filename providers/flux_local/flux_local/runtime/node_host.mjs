// Worker process of a function (node functions under node, deno functions under `deno run`: one process each, so
// flux.json `memory` is a real heap limit): speaks the worker channel as JSON lines on stdin/stdout.
// Started by host.ts under the Node permission model (fs reads limited to this file, the shared core.mjs and the
// bundle dir) with a scrubbed environment; the function's configured keys arrive in the init message.
// argv[2] is the path of the shared runtime (flux_plan/runtime/core.mjs), which lives in another package.
import { pathToFileURL } from "node:url";

const { createRuntime } = await import(pathToFileURL(process.argv[2]).href);

const writeOut = process.stdout.write.bind(process.stdout);
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
process.stdin.setEncoding("utf8");
process.stdin.on("data", (chunk) => {
  pending += chunk;
  let nl;
  while ((nl = pending.indexOf("\n")) >= 0) {
    const line = pending.slice(0, nl);
    pending = pending.slice(nl + 1);
    if (line) rt.onMessage(JSON.parse(line));
  }
});
process.stdin.on("end", () => process.exit(0));
