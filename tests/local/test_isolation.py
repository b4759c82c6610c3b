"""Functions are isolated from everything but ctx (issue 17), tried the way an attacker would, through the
real CLI, daemon, Deno host, node workers and embedded PostgreSQL:

- secrets are scoped per function as on AWS (keys its code names + flux.json `secrets`, nothing else of
  .env.example, nothing for a key built at run time); ctx.db only for code that names ctx.db;
- a thrown error containing a secret reaches the caller as a generic 500 with the request id; the message
  (masked) and a stack pointing at functions/<fn>/index.ts are in `flux logs`;
- bundling refuses imports of .flux/, .env and files outside the project, naming file:line, and leaves
  nothing behind."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import Project, _stop_everything, new_todo
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


@pytest.fixture(scope="module")
def stage(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Project]:
    project = new_todo(tmp_path_factory.mktemp("isolation"))
    try:
        add_function(project, "nosy", NOSY.replace("__FN__", "nosy"))
        add_function(project, "nosy_node", NOSY.replace("__FN__", "nosy_node"), runtime="node")
        add_function(project, "named", NAMED, secrets=["REMINDER_WEBHOOK_TOKEN"])
        add_function(project, "sneaky_db", SNEAKY_DB)
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
