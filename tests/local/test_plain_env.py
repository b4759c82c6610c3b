"""flux.json `env` on the local provider, through the real CLI, daemon and Deno host: its plain values are in
ctx.env of deno and node functions (and follow a redeploy), ctx.secrets.get never answers them, and a stage
secret of the same name wins, with the plan saying so (as on AWS)."""

from __future__ import annotations

import json

import pytest
from local_lib import Project
from test_provider_e2e import add_function, http

pytestmark = [pytest.mark.slow]

APP = "todo-plain-env"  # the stage's APP_NAME secret (examples/todo's .env.example lists it)

PLAIN = """import { defineFunction } from "@flux/functions";
export default defineFunction({ name: "__FN__", handler: async ({ ctx }) => {
  let asSecret: string;
  try { asSecret = await ctx.secrets.get("GREETING"); } catch (e) { asSecret = "ERR " + (e as Error).message; }
  return { greeting: ctx.env.GREETING ?? null, app: ctx.env.APP_NAME ?? null, asSecret };
} });
"""


def test_plain_env_reaches_ctx_env_and_a_secret_of_the_same_name_wins(todo: Project) -> None:
    for fn, runtime in (("plain", "deno"), ("plain_node", "node")):
        add_function(todo, fn, PLAIN.replace("__FN__", fn), runtime=runtime,
                     env={"GREETING": "hello there", "APP_NAME": "from-flux-json"})
    todo.flux("secrets", "set", f"APP_NAME={APP}")
    out = todo.flux("deploy")
    for fn in ("plain", "plain_node"):
        assert (f"functions/{fn}/flux.json ($.env.APP_NAME): stage 'dev' has a secret 'APP_NAME' too, and ctx.env "
                "gets the secret's value") in out.stdout + out.stderr
        status, body, _ = http(todo.port, "POST", f"/{fn}", {})
        assert status == 200, body
        assert body == {"greeting": "hello there", "app": APP,
                        "asSecret": "ERR secret GREETING is not set (flux secrets set GREETING=...)"}, fn

    # a new plain value is an update of the function, served after the deploy (warm workers included)
    cfg = todo.root / "functions" / "plain" / "flux.json"
    doc = json.loads(cfg.read_text())
    doc["env"]["GREETING"] = "changed"
    cfg.write_text(json.dumps(doc))
    plan = todo.flux("plan", "--detailed-exitcode", check=False)
    assert plan.returncode == 2 and 'env.GREETING: "hello there" → "changed"' in plan.stdout, plan.stdout
    todo.flux("deploy")
    assert http(todo.port, "POST", "/plain", {})[1]["greeting"] == "changed"
    assert http(todo.port, "POST", "/plain_node", {})[1]["greeting"] == "hello there"

    # without the secret, ctx.env has the plain value again
    todo.flux("secrets", "unset", "APP_NAME")
    todo.flux("deploy")
    assert http(todo.port, "POST", "/plain", {})[1]["app"] == "from-flux-json"
    assert todo.flux("plan", "--detailed-exitcode", check=False).returncode == 0


def test_a_table_entry_without_the_plain_env_is_drift_that_apply_repairs(todo: Project) -> None:
    """What an earlier flux wrote (entries without plain_env) serves no flux.json `env`: the refresh sees it."""
    from flux_local.client import DaemonClient

    add_function(todo, "plain", PLAIN.replace("__FN__", "plain"), env={"GREETING": "hello there"})
    todo.flux("deploy")
    DaemonClient(todo.stage_dir).stop()
    runtime = todo.stage_dir / "runtime.json"
    doc = json.loads(runtime.read_text())
    assert doc["functions"]["plain"].pop("plain_env") == {"GREETING": "hello there"}
    runtime.write_text(json.dumps(doc))
    plan = todo.flux("plan", "--detailed-exitcode", check=False)
    assert plan.returncode == 2, plan.stdout + plan.stderr
    assert "function.plain will be updated in place" in plan.stdout and "env" in plan.stdout, plan.stdout
    todo.flux("deploy")
    assert http(todo.port, "POST", "/plain", {})[1]["greeting"] == "hello there"
    assert todo.flux("plan", "--detailed-exitcode", check=False).returncode == 0
