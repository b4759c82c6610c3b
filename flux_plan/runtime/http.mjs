// The HTTP contract of a Flux function (DESIGN §7), shared by every provider: the local gateway (host.ts), the
// worker runtime (core.mjs, deno and node), the Lambda shim (flux_handler.mjs) and the Docker runtime. One
// implementation so "what a returned Response becomes" and "which route matches" cannot differ between them.
// Plain ESM without imports: Deno, Node and esbuild load it unchanged.

/** A handler's return value is sent as it is when it is a fetch `Response` (duck-typed: a bundled polyfill or
 * a Response of another realm counts too). */
export function isResponse(v) {
  if (typeof Response !== "undefined" && v instanceof Response) return true;
  return v !== null && typeof v === "object" && typeof v.status === "number" && typeof v.arrayBuffer === "function" &&
    v.headers !== null && typeof v.headers === "object" && typeof v.headers.forEach === "function";
}

/** Response headers as [name, value] pairs, Set-Cookie kept one pair per cookie (Headers joins the others).
 * @param {Headers} headers
 * @returns {[string, string][]} */
export function headerPairs(headers) {
  /** @type {[string, string][]} */
  const out = [];
  headers.forEach((value, name) => {
    if (name !== "set-cookie") out.push([name, value]);
  });
  const cookies = typeof headers.getSetCookie === "function"
    ? headers.getSetCookie()
    : (headers.get("set-cookie") ? [headers.get("set-cookie")] : []);
  for (const c of cookies) out.push(["set-cookie", c]);
  return out;
}

/** Body types API Gateway carries as text; every other body is base64-encoded (isBase64Encoded). */
export function isTextType(contentType) {
  if (!contentType) return false;
  const t = contentType.split(";")[0].trim().toLowerCase();
  return t.startsWith("text/") || t === "application/json" || t === "application/javascript" ||
    t === "application/xml" || t === "application/x-www-form-urlencoded" || t === "image/svg+xml" ||
    t.endsWith("+json") || t.endsWith("+xml");
}

function base64(bytes) {
  if (globalThis.Buffer) return globalThis.Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength).toString("base64");
  let s = "";
  for (let i = 0; i < bytes.length; i += 0x8000) s += String.fromCharCode.apply(null, bytes.subarray(i, i + 0x8000));
  return btoa(s);
}

/** A returned Response as an API Gateway v2 (payload format 2.0) result: the body is read to the end (Lambda's
 * buffered mode), binary bodies base64-encoded, Set-Cookie moved to `cookies`. `extra` headers (request id) win. */
export async function toApiGatewayV2(res, extra = {}, head = false) {
  const headers = {};
  const cookies = [];
  for (const [k, v] of headerPairs(res.headers)) {
    if (k === "set-cookie") cookies.push(v);
    else headers[k] = v;
  }
  Object.assign(headers, extra);
  const bytes = head || res.body === null ? new Uint8Array(0) : new Uint8Array(await res.arrayBuffer());
  const out = { statusCode: res.status, headers };
  if (cookies.length) out.cookies = cookies;
  if (bytes.length === 0) {
    out.body = "";
    out.isBase64Encoded = false;
  } else if (isTextType(headers["content-type"])) {
    out.body = new TextDecoder().decode(bytes);
    out.isBase64Encoded = false;
  } else {
    out.body = base64(bytes);
    out.isBase64Encoded = true;
  }
  return out;
}

// ---------------------------------------------------------------------------------------------- routes
// API Gateway v2 syntax: `{name}` is one path segment, `{name+}` (last segment only) the rest of the path.
const PARAM = /^\{([A-Za-z_][A-Za-z0-9_]*)(\+?)\}$/;

/** A route path as a matcher: null for a literal path (looked up exactly), else {re, names, greedy, literals}. */
export function compileRoute(path) {
  const segs = path.split("/").slice(1);
  if (!segs.some((s) => s.includes("{"))) return null;
  const names = [];
  let greedy = false;
  let re = "^";
  segs.forEach((seg, i) => {
    const m = PARAM.exec(seg);
    if (!m) {
      re += "/" + seg.replace(/[.*+?^${}()|[\]\\]/g, "\\$&");
      return;
    }
    names.push(m[1]);
    if (m[2] === "+" && i === segs.length - 1) {
      greedy = true;
      re += "/(.+)";
    } else re += "/([^/]+)";
  });
  return { re: new RegExp(re + "$"), names, greedy, literals: segs.filter((s) => !PARAM.test(s)).length };
}

/** Path parameters of `path` under a compiled route, percent-decoded; null when it does not match.
 * @param {{re: RegExp, names: string[]}} compiled
 * @param {string} path
 * @returns {Record<string, string> | null} */
export function matchRoute(compiled, path) {
  const m = compiled.re.exec(path);
  if (!m) return null;
  /** @type {Record<string, string>} */
  const params = {};
  for (let i = 0; i < compiled.names.length; i++) {
    let v = m[i + 1];
    try {
      v = decodeURIComponent(v);
    } catch { /* malformed escape: the raw text */ }
    params[compiled.names[i]] = v;
  }
  return params;
}

/** Most specific first: more literal segments, then non-greedy before greedy (what API Gateway picks). */
export function compareRoutes(a, b) {
  return (b.literals - a.literals) || (Number(a.greedy) - Number(b.greedy));
}

/** `input` of one request: query string (GET/DELETE/HEAD) or JSON body, then the route's path parameters (they
 * win: the URL says which resource is addressed). */
export function mergeParams(input, params) {
  return params ? { ...input, ...params } : input;
}

// ---------------------------------------------------------------------------------------------- CORS
// The stage's `cors` setting has the fields of API Gateway v2's CorsConfiguration (snake_case).

function listHas(list, value, caseless) {
  if (!Array.isArray(list)) return false;
  if (list.includes("*")) return true;
  return caseless ? list.some((x) => String(x).toLowerCase() === value.toLowerCase()) : list.includes(value);
}

/** Headers for a response to `origin` (an actual request), or null when the origin is not allowed.
 * @param {any} cors
 * @param {string | null} origin
 * @returns {[string, string][] | null} */
export function corsHeaders(cors, origin) {
  if (!cors || !origin || !listHas(cors.allow_origins, origin, false)) return null;
  /** @type {[string, string][]} */
  const out = [];
  const wildcard = (cors.allow_origins ?? []).includes("*") && !cors.allow_credentials;
  out.push(["access-control-allow-origin", wildcard ? "*" : origin]);
  if (!wildcard) out.push(["vary", "Origin"]);
  if (cors.allow_credentials) out.push(["access-control-allow-credentials", "true"]);
  if (Array.isArray(cors.expose_headers) && cors.expose_headers.length) {
    out.push(["access-control-expose-headers", cors.expose_headers.join(", ")]);
  }
  return out;
}

/** The answer to a preflight (OPTIONS with Origin + Access-Control-Request-Method): {status, headers, error?}.
 * `routed` = methods served at the path. Refused preflights carry no allow-origin, so the browser blocks.
 * @param {any} cors
 * @param {string} origin
 * @param {string} method
 * @param {string | null} requestHeaders
 * @param {string[]} routed
 * @returns {{status: number, headers: [string, string][], error?: string}} */
export function corsPreflight(cors, origin, method, requestHeaders, routed) {
  const base = corsHeaders(cors, origin);
  if (!base) return { status: 403, headers: [["vary", "Origin"]], error: `origin ${origin} is not allowed by this stage's cors.allow_origins` };
  const m = method.toUpperCase();
  const methods = cors.allow_methods ?? ["*"];
  if (!listHas(methods, m, true) || !(routed.includes(m) || (m === "HEAD" && routed.includes("GET")))) {
    return { status: 403, headers: [["vary", "Origin"]], error: `method ${m} is not allowed here by this stage's cors.allow_methods` };
  }
  const headers = base.filter(([k]) => k !== "access-control-expose-headers");
  headers.push(["access-control-allow-methods", methods.includes("*") ? routed.join(", ") : methods.join(", ")]);
  const asked = (requestHeaders ?? "").split(",").map((s) => s.trim()).filter(Boolean);
  const allowed = cors.allow_headers ?? [];
  const refused = asked.filter((h) => !listHas(allowed, h, true) && !SAFELISTED.has(h.toLowerCase()));
  if (refused.length) {
    return { status: 403, headers: [["vary", "Origin"]], error: `request header(s) ${refused.join(", ")} are not allowed by this stage's cors.allow_headers` };
  }
  if (asked.length) headers.push(["access-control-allow-headers", asked.join(", ")]); // every one checked above
  if (typeof cors.max_age === "number") headers.push(["access-control-max-age", String(cors.max_age)]);
  return { status: 204, headers };
}

const SAFELISTED = new Set(["accept", "accept-language", "content-language", "content-type", "range"]);
