// Lambda Runtime API loop (custom runtime, used by the Deno layer's bootstrap): load the function
// module once, then next -> handler -> response/error until the sandbox is frozen or killed.
import { env } from "./aws.mjs";
import { makeHandler } from "./flux_handler.mjs";

const base = `http://${env("AWS_LAMBDA_RUNTIME_API")}/2018-06-01/runtime`;
const errorBody = (e) => JSON.stringify({ errorMessage: String(e?.message ?? e), errorType: e?.name || "Error" });

let handler;
try {
  const path = `${env("LAMBDA_TASK_ROOT") || "/var/task"}/${env("_HANDLER") || "index.mjs"}`;
  const mod = await import(new URL(`file://${path}`).href);
  if (typeof mod.handler === "function") {
    handler = mod.handler; // a node bundle: shim and node-postgres are inside it
  } else {
    const pg = (await import("./pg.mjs")).default; // the Deno layer ships node-postgres beside this file
    handler = makeHandler(mod.default, { runtime: globalThis.Deno ? "deno" : "node", pg });
  }
} catch (e) {
  console.error(JSON.stringify({ ts: new Date().toISOString(), level: "error", msg: "init failed", data: { error: String(e?.stack ?? e) } }));
  await fetch(`${base}/init/error`, { method: "POST", headers: { "Lambda-Runtime-Function-Error-Type": "Runtime.InitError" }, body: errorBody(e) });
  globalThis.Deno ? Deno.exit(1) : process.exit(1);
}

while (true) {
  const next = await fetch(`${base}/invocation/next`);
  const id = next.headers.get("lambda-runtime-aws-request-id");
  const deadline = Number(next.headers.get("lambda-runtime-deadline-ms") || 0);
  const event = await next.json();
  const context = {
    awsRequestId: id,
    invokedFunctionArn: next.headers.get("lambda-runtime-invoked-function-arn"),
    functionName: env("AWS_LAMBDA_FUNCTION_NAME"),
    getRemainingTimeInMillis: () => Math.max(0, deadline - Date.now()),
  };
  try {
    const result = await handler(event, context);
    await (await fetch(`${base}/invocation/${id}/response`, { method: "POST", body: JSON.stringify(result ?? null) })).text();
  } catch (e) {
    await (await fetch(`${base}/invocation/${id}/error`, {
      method: "POST", headers: { "Lambda-Runtime-Function-Error-Type": "Unhandled" }, body: errorBody(e),
    })).text();
  }
}
