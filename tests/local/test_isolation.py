"""Functions are isolated from everything but ctx (issue 17), tried the way an attacker would, through the
real CLI, daemon, Deno host, node workers and embedded PostgreSQL:

- secrets are scoped per function as on AWS (keys its code names + flux.json `secrets`, nothing else of
  .env.example, nothing for a key built at run time); ctx.db only for code that names ctx.db;
- a thrown error containing a secret reaches the caller as a generic 500 with the request id; the message
  (masked) and a stack pointing at functions/<fn>/index.ts are in `flux logs`;
- the stage's PostgreSQL admits no login without its password, from a node or a deno function, on any
  socket or port; the password files are out of the functions' reach; ctx.db keeps working;
- a function over its flux.json `memory` loses its own request (502 naming the limit) and its worker, while
  the host and the other functions keep serving (a prober sees zero failures);
- bundling refuses imports of .flux/, .env and files outside the project, naming file:line, and leaves
  nothing behind."""

from __future__ import annotations

import json
import threading
import urllib.parse
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from local_lib import Project, _stop_everything, new_todo
from test_provider_e2e import add_function, http, logs, wait_for

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("local-isolation")]

TOKEN = "tok-initial-1234"  # REMINDER_WEBHOOK_TOKEN: send_reminder names it, nothing below does
APP = "todo-isolation"  # APP_NAME

# names no key at all; tries every key of .env.example by a run-time name, through both ctx APIs
NOSY = """import { defineFunction } from "@flux/functions";
export default defineFunction({ name: "__FN__", handler: async ({ ctx }) => {
  const keys = ["APP", "REMINDER_WEBHOOK"].map((p) => p + (p === "APP" ? "_NAME" : "_TOKEN"));
  const got: Record<string, unknown> = { env: Object.keys(ctx.env) };
  for (const k of keys) {
    got[k] = (ctx.env as Record<string, string>)[k] ?? null;
    try { got["get_" + k] = await ctx.secrets.get(k); } catch (e) { got["get_" + k] = "ERR " + (e as Error).message; }
  }
  return got;
} });
"""
# names APP_NAME in its code, and REMINDER_WEBHOOK_TOKEN only in flux.json `secrets`
NAMED = """import { defineFunction } from "@flux/functions";
export default defineFunction({ name: "named", handler: async ({ ctx }) => {
  const k = ["REMINDER", "WEBHOOK", "TOKEN"].join("_");
  return { app: ctx.env.APP_NAME, listed: (await ctx.secrets.get(k)).length, env: Object.keys(ctx.env).sort() };
} });
"""
# reaches the database without naming it in its code
SNEAKY_DB = """import { defineFunction } from "@flux/functions";
export default defineFunction({ name: "sneaky_db", handler: async ({ ctx }) => {
  const c = ctx as unknown as Record<string, { query(p: unknown): Promise<unknown> }>;
  try { return { rows: await c["d" + "b"].query({ table: "todos", operation: "select", limit: 1 }) }; }
  catch (e) { return { error: (e as Error).message }; }
} });
"""
THROWER = """import { defineFunction } from "@flux/functions";

export default defineFunction({
  name: "__FN__",
  handler: async ({ ctx }) => {
    const token = ctx.env.APP_NAME;
    throw new Error(`failed with key ${token}`);
  },
});
"""

# speaks the PostgreSQL wire protocol: a StartupMessage for `user`, then reads what the server answers
PG_PROBE = """import { defineFunction } from "@flux/functions";
import net from "node:net";
import fs from "node:fs";

function probe(opts: Record<string, unknown>, user: string): Promise<string> {
  return new Promise((resolve) => {
    const body = new TextEncoder().encode(`user\\0${user}\\0database\\0postgres\\0\\0`);
    const msg = new Uint8Array(8 + body.length);
    const dv = new DataView(msg.buffer);
    dv.setInt32(0, msg.length);
    dv.setInt32(4, 196608);
    msg.set(body, 8);
    let done = false;
    let sock: net.Socket | null = null;
    const finish = (r: string) => { if (!done) { done = true; try { sock?.destroy(); } catch { /* closed */ } resolve(r); } };
    try {
      sock = net.connect(opts as net.NetConnectOpts, () => sock!.write(msg));
    } catch (e) {
      return finish("error: " + (e as Error).message);
    }
    sock.on("data", (d: Uint8Array) => {
      const kind = String.fromCharCode(d[0]);
      if (kind === "R") {
        const code = new DataView(d.buffer, d.byteOffset).getInt32(5);
        finish(code === 0 ? "AUTHENTICATED" : `password required (${code})`);
      } else if (kind === "E") finish("refused: " + new TextDecoder().decode(d.subarray(5)).replace(/\\0/g, " "));
      else finish("other: " + kind);
    });
    sock.on("error", (e: Error) => finish("error: " + e.message));
    setTimeout(() => finish("timeout"), 5000);
  });
}

export default defineFunction({ name: "__FN__", handler: async ({ input }) => {
  const out: Record<string, string> = {};
  for (const user of ["postgres", "flux_app", "root"]) {
    for (const path of input.sockets as string[]) out[`${path} as ${user}`] = await probe({ path }, user);
    for (const port of input.ports as number[]) out[`127.0.0.1:${port} as ${user}`] = await probe({ host: "127.0.0.1", port }, user);
  }
  for (const f of input.files as string[]) {
    try { out[f] = "READ " + fs.readFileSync(f, "utf8").length; } catch (e) { out[f] = "denied: " + (e as Error).message; }
  }
  return out;
} });
"""

RUNAWAY = """import { defineFunction } from "@flux/functions";
export default defineFunction({ name: "__FN__", handler: async ({ input }) => {
  if (!input.grow) return { ok: true };
  const hoard: number[][] = [];
  for (;;) hoard.push(new Array(250000).fill(hoard.length));
} });
"""

RAW_DB = """import { defineFunction } from "@flux/functions";
export default defineFunction({ name: "raw_db", handler: async ({ input, ctx }) => {
  try { return { rows: await ctx.db.query(input.params) }; } catch (e) { return { error: (e as Error).message }; }
} });
"""


@pytest.fixture(scope="module")
def stage(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Project]:
    project = new_todo(tmp_path_factory.mktemp("isolation"))
    try:
        add_function(project, "nosy", NOSY.replace("__FN__", "nosy"))
        add_function(project, "nosy_node", NOSY.replace("__FN__", "nosy_node"), runtime="node")
        add_function(project, "named", NAMED, secrets=["REMINDER_WEBHOOK_TOKEN"])
        add_function(project, "sneaky_db", SNEAKY_DB)
        add_function(project, "pg_probe", PG_PROBE.replace("__FN__", "pg_probe"))
        add_function(project, "pg_probe_node", PG_PROBE.replace("__FN__", "pg_probe_node"), runtime="node")
        add_function(project, "runaway", RUNAWAY.replace("__FN__", "runaway"), memory=128)
        add_function(project, "runaway_node", RUNAWAY.replace("__FN__", "runaway_node"), runtime="node", memory=128)
        add_function(project, "raw_db", RAW_DB)
        add_function(project, "thrower", THROWER.replace("__FN__", "thrower"))
        add_function(project, "thrower_node", THROWER.replace("__FN__", "thrower_node"), runtime="node")
        project.flux("secrets", "set", f"REMINDER_WEBHOOK_TOKEN={TOKEN}", f"APP_NAME={APP}")
        project.flux("deploy")
        yield project
    finally:
        _stop_everything(project.root)


@pytest.mark.parametrize("fn", ["nosy", "nosy_node"])
def test_a_function_gets_only_the_keys_its_code_names(stage: Project, fn: str) -> None:
    status, body, _ = http(stage.port, "POST", f"/{fn}", {})
    assert status == 200
    assert body["env"] == [] and body["APP_NAME"] is None and body["REMINDER_WEBHOOK_TOKEN"] is None
    for key in ("APP_NAME", "REMINDER_WEBHOOK_TOKEN"):
        assert body[f"get_{key}"] == f"ERR secret {key} is not set (flux secrets set {key}=...)"
    assert TOKEN not in json.dumps(body) and APP not in json.dumps(body)


def test_named_and_listed_keys_are_granted(stage: Project) -> None:
    status, body, _ = http(stage.port, "POST", "/named", {})
    assert (status, body) == (200, {"app": APP, "listed": len(TOKEN), "env": ["APP_NAME", "REMINDER_WEBHOOK_TOKEN"]})
    # the todo functions that name ctx.db keep working
    status, body, _ = http(stage.port, "POST", "/create_todo", {"title": "still works"})
    assert status == 200 and body["todo"]["title"] == "still works"


def test_ctx_db_only_for_code_that_names_it(stage: Project) -> None:
    status, body, _ = http(stage.port, "POST", "/sneaky_db", {})
    assert status == 200 and "rows" not in body
    assert body["error"].startswith("ctx.db is not available to this function: its code does not name ctx.db")
    runtime = json.loads((stage.stage_dir / "runtime.json").read_text())
    assert runtime["functions"]["sneaky_db"]["uses_db"] is False
    assert runtime["functions"]["create_todo"]["uses_db"] is True


@pytest.mark.parametrize("fn", ["pg_probe", "pg_probe_node"])
def test_no_function_logs_in_to_postgresql_without_the_password(stage: Project, fn: str) -> None:
    info = stage.daemon_info()
    assert info is not None
    sock_dir = urllib.parse.parse_qs(urllib.parse.urlsplit(info["db_uri"]).query)["host"][0]
    sockets = [str(Path(sock_dir) / ".s.PGSQL.5432"), str(stage.stage_dir / "pg" / ".s.PGSQL.5432")]
    files = [str(stage.stage_dir / "db-auth.json"), str(stage.stage_dir / "daemon.json"),
             str(stage.stage_dir / "pg" / "pg_hba.conf")]
    status, body, _ = http(stage.port, "POST", f"/{fn}", {"sockets": sockets, "ports": [5432, 5433], "files": files})
    assert status == 200, body
    assert not [k for k, v in body.items() if "AUTHENTICATED" in v or v.startswith("READ")], body
    for f in files:
        assert body[f].startswith("denied: "), body
    if fn == "pg_probe_node":  # node reaches the socket itself: the server's auth is what refuses
        for user in ("postgres", "flux_app"):
            assert body[f"{sockets[0]} as {user}"] == "password required (10)"  # SASL (scram)
        assert "no pg_hba.conf entry" in body[f"{sockets[0]} as root"]
    # the stage role is no superuser and can run no program; ctx.db keeps working
    with psycopg.connect(info["db_uri"], autocommit=True) as conn:
        row = conn.execute("SELECT current_user, rolsuper FROM pg_roles WHERE rolname = current_user").fetchone()
        assert row == ("flux_app", False)
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute("COPY todos FROM PROGRAM 'id'")
    status, body, _ = http(stage.port, "POST", "/create_todo", {"title": "db still works"})
    assert status == 200 and body["todo"]["title"] == "db still works"


def test_runaway_memory_fails_alone(stage: Project) -> None:
    host_pid = (stage.daemon_info() or {})["host_pid"]
    for fn in ("runaway", "runaway_node", "greet", "slugify_title"):  # warm, so the prober measures serving only
        assert http(stage.port, "POST", "/slugify" if fn == "slugify_title" else f"/{fn}",
                    {"name": "x", "title": "x"})[0] == 200
    stop = threading.Event()
    seen: list[tuple[str, int]] = []

    def probe() -> None:
        while not stop.is_set():
            seen.append(("greet", http(stage.port, "POST", "/greet", {"name": "p"})[0]))
            seen.append(("slugify", http(stage.port, "POST", "/slugify", {"title": "P q"})[0]))

    prober = threading.Thread(target=probe)
    prober.start()
    try:
        for fn in ("runaway", "runaway_node"):
            status, body, headers = http(stage.port, "POST", f"/{fn}", {"grow": True}, timeout=120)
            assert status == 502, body
            assert body == {"error": f'function {fn} exceeded its memory limit (128 MB, flux.json "memory")',
                            "request_id": headers["x-flux-request-id"]}
            # the function itself serves again, from a new worker
            assert http(stage.port, "POST", f"/{fn}", {})[:2] == (200, {"ok": True})
        during = len(seen)
        wait_for(lambda: len(seen) >= during + 20)  # and after
    finally:
        stop.set()
        prober.join(timeout=60)
    assert seen and all(status == 200 for _, status in seen), [s for s in seen if s[1] != 200]
    assert (stage.daemon_info() or {})["host_pid"] == host_pid  # the host never restarted
    recs = [r for r in logs(stage, "--level", "error") if r["msg"] == "worker exceeded its memory limit"]
    assert {r["function"] for r in recs} == {"runaway", "runaway_node"}


def test_ctx_db_in_the_host_maps_values_as_the_python_compiler_did(stage: Project) -> None:
    def q(params: dict[str, Any]) -> Any:
        status, body, _ = http(stage.port, "POST", "/raw_db", {"params": params})
        assert status == 200
        return body

    ins = q({"table": "todos", "operation": "insert", "values": {"title": "typed", "done": True, "due_date": "2026-12-24"},
             "returning": ["id", "title", "done", "due_date", "created_at"]})["rows"][0]
    assert isinstance(ins["id"], int) and ins["title"] == "typed" and ins["done"] is True
    assert ins["due_date"] == "2026-12-24" and ins["created_at"].startswith("20") and ins["created_at"][10] == "T"
    assert ins["created_at"].endswith("+00:00")
    got = q({"table": "todos", "operation": "select", "columns": ["id", "done"],
             "filters": [{"column": "id", "op": "in", "value": [ins["id"]]}, {"column": "done", "op": "eq", "value": True}]})
    assert got == {"rows": [{"id": ins["id"], "done": True}]}
    upd = q({"table": "todos", "operation": "update", "values": {"done": False},
             "filters": [{"column": "id", "op": "eq", "value": ins["id"]}], "returning": ["done"]})
    assert upd == {"rows": [{"done": False}]}
    # errors: the compiler's own, and PostgreSQL's (names checked against the schema, never interpolated)
    assert q({"table": "nope", "operation": "select"})["error"].startswith("ctx.db.query: ")
    bad = q({"table": "todos", "operation": "insert", "values": {"title": None}})
    assert bad["error"].startswith("database error: ") and "title" in bad["error"]
    assert q({"table": "todos", "operation": "select", "filters": [{"column": "title", "op": "eq",
              "value": "x'; DROP TABLE todos; --"}]}) == {"rows": []}
    assert http(stage.port, "POST", "/create_todo", {"title": "table still there"})[0] == 200


@pytest.mark.parametrize("fn", ["thrower", "thrower_node"])
def test_thrown_error_is_generic_to_the_caller_and_masked_in_logs(stage: Project, fn: str) -> None:
    status, body, headers = http(stage.port, "POST", f"/{fn}", {})
    rid = headers["x-flux-request-id"]
    assert status == 500
    assert body == {"error": f"function {fn} failed; its error is in flux logs under this request id",
                    "request_id": rid}
    recs = wait_for(lambda: [r for r in logs(stage, fn, "--request-id", rid) if r["msg"] == "handler failed"])
    data = recs[0]["data"]
    assert data["error"] == "failed with key ********"  # the message, masked
    assert f"functions/{fn}/index.ts:7:" in data["stack"]  # source-mapped: the throw is on line 7
    assert "index.mjs" not in data["stack"].splitlines()[1]
    text = "".join(p.read_text() for p in (stage.stage_dir / "logs").glob("*.jsonl"))
    assert APP not in text and TOKEN not in text


def _bundled_texts(root: Path) -> str:
    return "".join(p.read_text(errors="replace") for p in (root / ".flux" / "artifacts").glob("*/index.mjs"))


@pytest.mark.parametrize("target", ["../../.flux/dev/runtime.json", "../../.env", "../../../outside.json"])
def test_bundling_refuses_what_a_function_may_not_import(todo: Project, target: str) -> None:
    todo.flux("secrets", "set", f"APP_NAME={APP}")
    todo.flux("deploy")  # .flux/dev/runtime.json exists from here on
    (todo.root / ".env").write_text(f"APP_NAME={APP}-dotenv\n")
    (todo.root.parent / "outside.json").write_text('{"marker": "outside-the-project"}')
    suffix = ".json" if target.endswith(".json") else ""  # .env: esbuild itself has no loader for it
    source = ('import { defineFunction } from "@flux/functions";\n'
              f'import leaked from "{target}";\n'
              'export default defineFunction({ name: "leaky", handler: async () => ({ leaked }) });\n')
    add_function(todo, "leaky", source)
    before = _bundled_texts(todo.root)
    res = todo.flux("deploy", check=False)
    out = res.stdout + res.stderr
    assert res.returncode == 1, out
    assert "Traceback" not in out
    if suffix:
        assert "functions/leaky/index.ts:2: function leaky imports" in out, out
        assert "outside what a function may bundle" in out
    else:
        assert "functions/leaky/index.ts:2" in out, out
    # nothing of the refused file was stored, and the function is not served
    assert _bundled_texts(todo.root) == before
    assert "outside-the-project" not in _bundled_texts(todo.root) and f"{APP}-dotenv" not in _bundled_texts(todo.root)
    runtime: dict[str, Any] = json.loads((todo.stage_dir / "runtime.json").read_text())
    assert "leaky" not in runtime["functions"]
    assert http(todo.port, "POST", "/leaky", {})[0] == 404
