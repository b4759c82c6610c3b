/**
 * @flux/functions — the SDK every Flux function imports.
 *
 * Flux resolves this module at bundle time (it is never fetched from a registry). It holds no runtime
 * machinery: the host builds `ctx` and only needs `defineFunction` to mark the default export so a
 * module that forgot it is refused with a clear message instead of failing on the first request.
 */

/** Marker the runtime checks on a module's default export (global registry: survives bundling). */
export const FLUX_FUNCTION: unique symbol = Symbol.for("flux.function") as never;

/** A JSON value as it travels in request bodies, results and query values. */
export type Json = string | number | boolean | null | Json[] | { [key: string]: Json };

/** Operators of a `ctx.db.query` filter (ANDed together). */
export type FilterOp = "eq" | "neq" | "gt" | "gte" | "lt" | "lte" | "in" | "like" | "is_null";

/** One filter: scalar `value`; an array for `in`; a pattern for `like`; a boolean for `is_null` (default true). */
export interface Filter {
  column: string;
  op: FilterOp;
  value?: unknown;
}

export interface OrderBy {
  column: string;
  direction?: "asc" | "desc";
}

/** Parameters of `ctx.db.query`: compiled by Flux into ONE parameterised SQL statement. */
export interface QueryParams {
  table: string;
  operation: "select" | "insert" | "update" | "delete";
  /** select only; default all columns. */
  columns?: string[] | "*";
  /** select, update, delete. */
  filters?: Filter[];
  /** insert: a row or rows with the same keys; update: the columns to set. */
  values?: Record<string, unknown> | Record<string, unknown>[];
  order?: OrderBy[];
  limit?: number;
  /** insert, update, delete: columns of the affected rows to return (default: none). */
  returning?: string[] | "*";
  /** Required (true) for update/delete without filters: refuses accidental full-table writes. */
  all?: boolean;
}

/** Log levels of `flux logs` (`--level` shows that level and above; the default is info). */
export type LogLevel = "debug" | "info" | "warn" | "error";

/**
 * Structured logging with the current request id. The first string argument is the message, the rest the data.
 * `ctx.log(...)` is level info; `ctx.log.debug/info/warn/error(...)` choose the level.
 */
export interface Logger {
  (...args: unknown[]): void;
  debug(...args: unknown[]): void;
  info(...args: unknown[]): void;
  warn(...args: unknown[]): void;
  error(...args: unknown[]): void;
}

/** Runtime context handed to every invocation. */
export interface FluxContext {
  /** Structured log record with the current request id: first string argument = message, rest = data. */
  readonly log: Logger;
  /** Configured keys of the project (frozen). */
  readonly env: Readonly<Record<string, string | undefined>>;
  readonly secrets: {
    /** Value from the provider's secret store; rejects when the key is not set. */
    get(key: string): Promise<string>;
  };
  readonly db: {
    query<Row = Record<string, unknown>>(params: QueryParams): Promise<Row[]>;
  };
  /** Id of the request being served (also in the `x-flux-request-id` response header). */
  readonly requestId: string;
}

export interface HandlerArgs<Input = Record<string, unknown>> {
  /**
   * JSON body of the HTTP request (query string values for GET/DELETE), merged with the route's path
   * parameters: `"route": "/notes/{id}"` + `GET /notes/42?x=1` -> `{ id: "42", x: "1" }` (the path wins).
   */
  input: Input;
  ctx: FluxContext;
}

/**
 * What a handler returns: a plain JSON value (sent as JSON with status 200), or a fetch `Response` sent as it is —
 * its status, headers and body (text, bytes or a stream), e.g. `new Response("not found", { status: 404 })` or
 * `Response.json({ id }, { status: 201, headers: { "x-note": id } })`. On AWS, binary bodies are base64-encoded
 * for API Gateway and a streamed body is read to its end.
 */
export type HandlerResult = Json | Response | void | undefined;

export type Handler<Input = Record<string, unknown>, Result = unknown> = (
  args: HandlerArgs<Input>,
) => Result | Promise<Result>;

export interface FunctionDefinition<Input = Record<string, unknown>, Result = unknown> {
  /** Must equal the `name` of the function's flux.json. */
  name: string;
  handler: Handler<Input, Result>;
}

export type FluxFunction<Input = Record<string, unknown>, Result = unknown> =
  & Readonly<FunctionDefinition<Input, Result>>
  & { readonly [FLUX_FUNCTION]: true };

/** Declares a function: validates its shape early and marks it for the runtime. */
export function defineFunction<Input = Record<string, any>, Result = unknown>(
  definition: FunctionDefinition<Input, Result>,
): FluxFunction<Input, Result> {
  if (definition === null || typeof definition !== "object") {
    throw new TypeError("defineFunction expects an object { name, handler }");
  }
  if (typeof definition.name !== "string" || definition.name.length === 0) {
    throw new TypeError("defineFunction: `name` must be a non-empty string (the name in flux.json)");
  }
  if (typeof definition.handler !== "function") {
    throw new TypeError(`defineFunction(${definition.name}): \`handler\` must be a function`);
  }
  return Object.freeze({ ...definition, [FLUX_FUNCTION]: true as const });
}
