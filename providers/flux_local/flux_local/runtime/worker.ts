// Deno Worker bootstrap: one sandboxed Worker per function (read: its bundle dir only, no env, no run/write/ffi).
// The host sends {"t":"init", function, env, stage, bundle}; everything else lives in core.mjs.
// Both directions batch: a message is either one channel message or an array of them (all messages produced in
// one microtask checkpoint travel together: one structured clone and one wake-up of the other thread).
import { createRuntime } from "./core.mjs";

const scope = self as unknown as {
  postMessage(m: unknown): void;
  onmessage: ((e: MessageEvent) => void) | null;
};

let outBox: unknown[] = [];
let flushScheduled = false;
function flush(): void {
  flushScheduled = false;
  const box = outBox;
  outBox = [];
  scope.postMessage(box.length === 1 ? box[0] : box);
}

const rt = createRuntime({
  post: (m: unknown) => {
    outBox.push(m);
    if (flushScheduled) return;
    flushScheduled = true;
    queueMicrotask(flush);
  },
  load: (bundle: string) => import("file://" + bundle.split("/").map(encodeURIComponent).join("/")),
});

scope.onmessage = (e: MessageEvent) => {
  const d = e.data;
  if (Array.isArray(d)) for (let i = 0; i < d.length; i++) rt.onMessage(d[i]);
  else rt.onMessage(d);
};
