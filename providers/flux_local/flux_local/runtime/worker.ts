// Deno Worker bootstrap: one sandboxed Worker per function (read: its bundle dir only, no env, no run/write/ffi).
// The host sends {"t":"init", function, env, stage, bundle}; everything else lives in core.mjs
// (flux_plan/runtime, shared with the other providers).
//
// Wire format: see DenoWorker in host.ts (arrays of channel messages; invoke and ok-result packed flat).
// Batching (host.ts keeps at most one unacknowledged batch per worker): the host posts an array of channel
// messages; this side answers EVERY batch exactly once a few microtask turns after it arrived (results of
// handlers that finished by then, logs, calls — or [] as a bare acknowledgement), and later output (handlers
// that awaited I/O) goes out in further arrays. One array per wake-up of the other thread in both directions.
import { createRuntime } from "flux:core"; // flux_plan/runtime/core.mjs, via the host's import map

const scope = self as unknown as {
  postMessage(m: unknown): void;
  onmessage: ((e: MessageEvent) => void) | null;
};

// Microtask turns to wait before answering a batch: lets handlers that complete without I/O (a few awaits deep)
// ride along with the acknowledgement instead of costing another message.
const ACK_HOPS = 8;
let outBox: unknown[] = [];
let flushScheduled = false;
let ackDue = false;
let hops = 0;

function flush(): void {
  if (hops > 0) {
    hops--;
    queueMicrotask(flush);
    return;
  }
  flushScheduled = false;
  if (outBox.length === 0 && !ackDue) return;
  ackDue = false;
  const box = outBox;
  outBox = [];
  scope.postMessage(box);
}

function schedule(extraHops: number): void {
  hops = Math.max(hops, extraHops);
  if (flushScheduled) return;
  flushScheduled = true;
  queueMicrotask(flush);
}

const rt = createRuntime({
  post: (m: unknown) => {
    outBox.push(m);
    schedule(0);
  },
  postResult: (id: number, json: string) => {
    outBox.push(id, json);
    schedule(0);
  },
  load: (bundle: string) => import("file://" + bundle.split("/").map(encodeURIComponent).join("/")),
});

scope.onmessage = (e: MessageEvent) => {
  const d = e.data;
  ackDue = true;
  schedule(ACK_HOPS); // before dispatching: the answer must go out even if a message handler throws
  if (Array.isArray(d)) {
    for (let i = 0; i < d.length; i++) {
      const m = d[i];
      if (typeof m === "number") {
        rt.invoke(m, d[i + 1], d[i + 2]);
        i += 2;
      } else rt.onMessage(m);
    }
  } else rt.onMessage(d);
};
