// Deno Worker bootstrap: one sandboxed Worker per function (read: its bundle dir only, no env, no run/write/ffi).
// The host sends {"t":"init", function, env, stage, bundle}; everything else lives in core.mjs.
import { createRuntime } from "./core.mjs";

const scope = self as unknown as {
  postMessage(m: unknown): void;
  onmessage: ((e: MessageEvent) => void) | null;
};

const rt = createRuntime({
  post: (m: unknown) => scope.postMessage(m),
  load: (bundle: string) => import("file://" + bundle.split("/").map(encodeURIComponent).join("/")),
});

scope.onmessage = (e: MessageEvent) => rt.onMessage(e.data);
