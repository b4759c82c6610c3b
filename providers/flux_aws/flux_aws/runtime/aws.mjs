// Minimal AWS client for the Flux Lambda runtime (Node and Deno alike): SigV4 over fetch + WebCrypto,
// so neither runtime needs the AWS SDK in its bundle. Credentials come from the environment Lambda
// provides (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_SESSION_TOKEN).

const enc = new TextEncoder();

export function env(key) {
  if (globalThis.Deno) return globalThis.Deno.env.get(key);
  return globalThis.process?.env?.[key];
}

const hex = (buf) => [...new Uint8Array(buf)].map((b) => b.toString(16).padStart(2, "0")).join("");
const sha256 = async (data) => hex(await crypto.subtle.digest("SHA-256", typeof data === "string" ? enc.encode(data) : data));
async function hmac(key, data) {
  const k = await crypto.subtle.importKey("raw", typeof key === "string" ? enc.encode(key) : key, { name: "HMAC", hash: "SHA-256" }, false, ["sign"]);
  return crypto.subtle.sign("HMAC", k, enc.encode(data));
}
const uriEncode = (s) => encodeURIComponent(s).replace(/[!'()*]/g, (c) => "%" + c.charCodeAt(0).toString(16).toUpperCase());

function endpointFor(service, region) {
  return env(`AWS_ENDPOINT_URL_${service.toUpperCase().replace(/-/g, "_")}`) || env("AWS_ENDPOINT_URL") ||
    `https://${service}.${region}.amazonaws.com`;
}

/** One signed request. `segments`: the raw path segments (each URI-encoded once on the wire and, as
 * SigV4 wants for every service but S3, once more in the canonical request). */
export async function awsRequest({ service, method = "POST", segments = [], headers = {}, body = "" }) {
  const region = env("AWS_REGION") || env("AWS_DEFAULT_REGION") || "us-east-1";
  const base = new URL(endpointFor(service, region));
  const wirePath = (base.pathname.replace(/\/$/, "")) + "/" + segments.map(uriEncode).join("/");
  const canonicalPath = wirePath.split("/").map(uriEncode).join("/");
  const now = new Date();
  const amzDate = now.toISOString().replace(/[:-]|\.\d{3}/g, "");
  const day = amzDate.slice(0, 8);
  const payloadHash = await sha256(body);
  const h = { ...Object.fromEntries(Object.entries(headers).map(([k, v]) => [k.toLowerCase(), String(v)])) };
  h["host"] = base.host;
  h["x-amz-date"] = amzDate;
  h["x-amz-content-sha256"] = payloadHash;
  const token = env("AWS_SESSION_TOKEN");
  if (token) h["x-amz-security-token"] = token;
  const names = Object.keys(h).sort();
  const canonical = [method, canonicalPath, "", ...names.map((n) => `${n}:${h[n].trim()}`), "", names.join(";"), payloadHash].join("\n");
  const scope = `${day}/${region}/${service}/aws4_request`;
  const toSign = ["AWS4-HMAC-SHA256", amzDate, scope, await sha256(canonical)].join("\n");
  let key = await hmac("AWS4" + (env("AWS_SECRET_ACCESS_KEY") || ""), day);
  for (const part of [region, service, "aws4_request"]) key = await hmac(key, part);
  const signature = hex(await hmac(key, toSign));
  h["authorization"] = `AWS4-HMAC-SHA256 Credential=${env("AWS_ACCESS_KEY_ID") || ""}/${scope}, SignedHeaders=${names.join(";")}, Signature=${signature}`;
  delete h["host"];
  const resp = await fetch(new URL(wirePath, base), { method, headers: h, body: method === "GET" ? undefined : body });
  const text = await resp.text();
  if (resp.status >= 300) {
    let code = resp.headers.get("x-amzn-errortype") || "";
    try { code = JSON.parse(text).__type || code; } catch { /* not JSON */ }
    const err = new Error(`${service} ${resp.status} ${code.split(":")[0]}`);
    err.status = resp.status;
    err.code = code.split(":")[0].split("#").pop();
    throw err;
  }
  return { status: resp.status, text };
}

export async function getSecretValue(secretId) {
  const { text } = await awsRequest({
    service: "secretsmanager",
    headers: { "content-type": "application/x-amz-json-1.1", "x-amz-target": "secretsmanager.GetSecretValue" },
    body: JSON.stringify({ SecretId: secretId }),
  });
  return JSON.parse(text).SecretString;
}

export async function invokeEvent(functionArn, payload) {
  return awsRequest({
    service: "lambda",
    segments: ["2015-03-31", "functions", functionArn, "invocations"],
    headers: { "content-type": "application/json", "x-amz-invocation-type": "Event" },
    body: JSON.stringify(payload),
  });
}
