// Flux worker inside a docker container: the same worker channel node functions speak over stdio (core.mjs), over
// one TCP connection from the Flux runtime host on 127.0.0.1 instead. Runs unchanged under Deno and Node.
//
// argv: <port>; the channel token comes in FLUX_CHANNEL_TOKEN (removed from the environment before any function
// code loads; an env var, unlike argv, is not readable by other users of the machine). A connection must open with {"t":"hello","token":...} (host networking: any local process
// could connect) and then carries JSON lines both ways, exactly the node worker protocol (init, invoke, env, reply /
// ready, result, log, call). {"t":"ping","token":...} is answered with {"t":"pong"} and closed (health check).
// One runtime per connection; a new host connection replaces the previous one (core.mjs owns the global console).
// ctx.secrets / ctx.db are "call" messages answered by the host: no credential ever enters the container.
import net from "node:net";
import { pathToFileURL } from "node:url";
import { createRuntime } from "./core.mjs";

const portArg = globalThis.Deno ? Deno.args[0] : process.argv[2];
const port = Number(portArg);
const token = process.env.FLUX_CHANNEL_TOKEN ?? "";
delete process.env.FLUX_CHANNEL_TOKEN;
if (!port || !token) {
  console.error("usage: FLUX_CHANNEL_TOKEN=... container_worker.mjs <port>");
  process.exit(2);
}

const writeOut = process.stdout.write.bind(process.stdout);
const writeErr = process.stderr.write.bind(process.stderr);
let current = null; // {socket, rt}

function attach(socket) {
  if (current) current.socket.destroy();
  let buf = [];
  let scheduled = false;
  const post = (m) => {
    buf.push(JSON.stringify(m));
    if (scheduled) return;
    scheduled = true;
    queueMicrotask(() => {
      scheduled = false;
      const text = buf.join("\n") + "\n";
      buf = [];
      if (!socket.destroyed) socket.write(text);
    });
  };
  const rt = createRuntime({
    post,
    load: (bundle) => import(pathToFileURL(bundle).href),
    onEnv: (env) => {
      for (const k of Object.keys(process.env)) if (!(k in env) && !BASE_ENV.has(k)) delete process.env[k];
      Object.assign(process.env, env);
    },
  });
  const me = { socket, rt };
  current = me;
  socket.on("close", () => {
    if (current === me) current = null;
  });
  return (line) => {
    const m = JSON.parse(line);
    // the bundle lives at /app in the image, whatever path the host knows it by
    if (m.t === "init") m.bundle = "/app/index.mjs";
    rt.onMessage(m);
  };
}

const BASE_ENV = new Set(Object.keys(process.env));

// Raw writes by the function become log records of the running request (like node_host.mjs).
process.stdout.write = (chunk) => {
  if (current) current.rt.record("info", [String(chunk).replace(/\n$/, "")]);
  else writeOut(chunk);
  return true;
};
process.stderr.write = (chunk) => {
  if (current) current.rt.record("error", [String(chunk).replace(/\n$/, "")]);
  else writeErr(chunk);
  return true;
};

const server = net.createServer((socket) => {
  socket.setNoDelay(true);
  socket.setEncoding("utf8");
  let pending = "";
  let handle = null;
  socket.on("error", () => socket.destroy());
  socket.on("data", (chunk) => {
    pending += chunk;
    let nl;
    while ((nl = pending.indexOf("\n")) >= 0) {
      const line = pending.slice(0, nl);
      pending = pending.slice(nl + 1);
      if (!line) continue;
      if (handle) {
        try {
          handle(line);
        } catch (err) {
          writeErr(`flux-container: bad message: ${err}\n`);
        }
        continue;
      }
      let m;
      try {
        m = JSON.parse(line);
      } catch {
        socket.destroy();
        return;
      }
      if (!m || m.token !== token) {
        socket.destroy();
        return;
      }
      if (m.t === "ping") {
        socket.end(JSON.stringify({ t: "pong" }) + "\n");
        return;
      }
      if (m.t !== "hello") {
        socket.destroy();
        return;
      }
      handle = attach(socket);
    }
  });
});
// docker stop (SIGTERM; PID 1 ignores it without a handler): exit once the host closed its channel, i.e. after
// the host drained the requests it had routed here (an update swaps containers without failing a request).
process.on("SIGTERM", () => {
  server.close();
  if (!current) process.exit(0);
  current.socket.on("close", () => process.exit(0));
});

server.listen(port, "127.0.0.1", () => writeOut(`flux-container: listening on 127.0.0.1:${port}\n`));
server.on("error", (err) => {
  writeErr(`flux-container: cannot listen on 127.0.0.1:${port}: ${err.message}\n`);
  process.exit(3);
});
