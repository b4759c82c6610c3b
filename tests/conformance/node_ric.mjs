// Test stand-in for AWS's Node.js runtime interface client (the nodejs20.x runtime itself): load the handler named
// by _HANDLER ("index.handler" -> index.mjs/index.js, export `handler`) from LAMBDA_TASK_ROOT, prefix console
// output the way the real client does ("<ISO time>\t<request id>\t<LEVEL>\t<text>"), and loop next -> response |
// error over the Lambda Runtime API. It knows nothing of Flux: the shim inside the bundle does the rest.
import { existsSync } from "node:fs";
import { format } from "node:util";

const base = `http://${process.env.AWS_LAMBDA_RUNTIME_API}/2018-06-01/runtime`;
const root = process.env.LAMBDA_TASK_ROOT || "/var/task";
const [file, exportName] = (process.env._HANDLER || "index.handler").split(".");
let currentId = "undefined";
for (const [name, level, stream] of [["log", "INFO", "stdout"], ["info", "INFO", "stdout"], ["debug", "DEBUG", "stdout"],
  ["warn", "WARN", "stderr"], ["error", "ERROR", "stderr"]]) {
  console[name] = (...args) => {
    const text = format(...args).replace(/\n/g, "\r");
    process[stream].write(`${new Date().toISOString()}\t${currentId}\t${level}\t${text}\n`);
  };
}
const errorBody = (e) => JSON.stringify({ errorMessage: String(e?.message ?? e), errorType: e?.name || "Error" });

let handler;
try {
  const path = [".mjs", ".js", ".cjs"].map((ext) => `${root}/${file}${ext}`).find((p) => existsSync(p));
  if (!path) throw new Error(`Runtime.ImportModuleError: Cannot find module '${file}'`);
  handler = (await import(`file://${path}`))[exportName];
  if (typeof handler !== "function") throw new Error(`Runtime.HandlerNotFound: ${file}.${exportName} is undefined`);
} catch (e) {
  console.error(String(e?.stack ?? e));
  await fetch(`${base}/init/error`, { method: "POST", headers: { "Lambda-Runtime-Function-Error-Type": "Runtime.InitError" }, body: errorBody(e) });
  process.exit(1);
}

while (true) {
  const next = await fetch(`${base}/invocation/next`);
  const id = next.headers.get("lambda-runtime-aws-request-id");
  const deadline = Number(next.headers.get("lambda-runtime-deadline-ms") || 0);
  const event = await next.json();
  currentId = id;
  const context = {
    awsRequestId: id,
    invokedFunctionArn: next.headers.get("lambda-runtime-invoked-function-arn"),
    functionName: process.env.AWS_LAMBDA_FUNCTION_NAME,
    getRemainingTimeInMillis: () => Math.max(0, deadline - Date.now()),
  };
  try {
    const result = await handler(event, context);
    await (await fetch(`${base}/invocation/${id}/response`, { method: "POST", body: JSON.stringify(result ?? null) })).text();
  } catch (e) {
    console.error(String(e?.stack ?? e));
    await (await fetch(`${base}/invocation/${id}/error`, {
      method: "POST", headers: { "Lambda-Runtime-Function-Error-Type": "Unhandled" }, body: errorBody(e),
    })).text();
  }
}
