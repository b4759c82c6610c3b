"""`flux plan | graph | init` as real subprocesses, against the test-only `record` provider (its "cloud"
is a file under .flux/<stage>/, so drift is a hand edit of that world, as it would be in a console)."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from jsonschema import Draft202012Validator

from flux_plan.paths import SDK_DIR, schema_path

FluxRunner = Callable[..., tuple[int, str, str]]
REPO = Path(__file__).resolve().parents[2]

READER = """\
import {{ defineFunction }} from "@flux/functions";

export default defineFunction({{
  name: "{name}",
  handler: async ({{ input, ctx }}) => {{
    const token = await ctx.secrets.get("{key}");
    return {{ ok: token.length > 0 }};
  }},
}});
"""


def plan_json(flux: FluxRunner, root: Path, *args: str) -> dict:
    rc, out, err = flux("plan", "--json", *args, cwd=root)
    assert rc == 0, err
    doc = json.loads(out)
    Draft202012Validator(json.loads(schema_path("plan").read_text())).validate(doc)
    return doc


def actions(doc: dict) -> dict[str, str]:
    return {c["address"]: c["action"] for c in doc["changes"]}


def apply(flux: FluxRunner, root: Path) -> None:
    rc, out, err = flux("apply", "--auto-approve", cwd=root)
    assert rc == 0, out + err


@pytest.fixture
def applied(tmp_path: Path, flux: FluxRunner, make_project: Callable[..., Path]) -> Path:
    """A three-function project with a migration and a secret, applied once."""
    root = make_project(
        tmp_path,
        functions={"greet": None, "list_todos": {"flux": {"name": "list_todos", "route": "/todos", "method": "GET"}},
                   "remind": {"code": READER.format(name="remind", key="TOKEN")}},
        migrations={"001_init.sql": "CREATE TABLE todos (id bigserial PRIMARY KEY, title text);"},
        env_example="TOKEN=\n",
    )
    rc, _, err = flux("secrets", "set", "TOKEN=first-value", cwd=root)
    assert rc == 0, err
    apply(flux, root)
    return root


def test_detailed_exitcode_and_no_changes(applied: Path, flux: FluxRunner) -> None:
    rc, out, _ = flux("plan", "--detailed-exitcode", cwd=applied)
    assert (rc, out.strip()) == (0, "No changes. Your infrastructure matches the configuration.")
    (applied / "functions/greet/index.ts").write_text(
        (applied / "functions/greet/index.ts").read_text().replace("ok: true", "ok: 1"))
    rc, out, _ = flux("plan", "--detailed-exitcode", cwd=applied)
    assert rc == 2
    assert "  ~ function.greet will be updated in place" in out
    assert out.rstrip().endswith("Plan: 0 to add, 1 to change, 0 to destroy.")
    rc, _, err = flux("plan", "--detailed-exitcode", "--target", "function.nope", cwd=applied)
    assert rc == 1 and "no resource 'function.nope'" in err and "Traceback" not in err


def test_each_edit_gives_exactly_the_expected_actions(applied: Path, flux: FluxRunner,
                                                      write_function: Callable[..., Path]) -> None:
    # index.ts edit -> update of that function only
    idx = applied / "functions/greet/index.ts"
    idx.write_text(idx.read_text().replace("ok: true", "ok: 2"))
    assert actions(plan_json(flux, applied)) == {"function.greet": "update"}
    apply(flux, applied)
    # method change -> the route moves (delete + create) and the function is updated
    (applied / "functions/list_todos/flux.json").write_text('{"name": "list_todos", "route": "/todos", "method": "PUT"}')
    doc = plan_json(flux, applied)
    assert actions(doc) == {"function.list_todos": "update", "route.PUT_/todos": "create",
                            "route.GET_/todos": "delete"}
    assert doc["summary"] == {"add": 1, "change": 1, "destroy": 1}
    fn = next(c for c in doc["changes"] if c["address"] == "function.list_todos")
    assert {"path": "method", "before": "GET", "after": "PUT"} in fn["diffs"]
    assert "functions/list_todos/flux.json: method GET → PUT" in fn["reasons"]
    apply(flux, applied)
    # new function -> function + route created; removed function -> both deleted
    write_function(applied, "fresh")
    for f in (applied / "functions/greet").iterdir():
        f.unlink()
    (applied / "functions/greet").rmdir()
    doc = plan_json(flux, applied)
    assert actions(doc) == {"function.fresh": "create", "route.POST_/fresh": "create",
                            "route.POST_/greet": "delete", "function.greet": "delete"}
    order = [c["address"] for c in doc["changes"]]
    assert order.index("function.fresh") < order.index("route.POST_/fresh")
    assert order.index("route.POST_/greet") < order.index("function.greet")  # deletes: users first
    apply(flux, applied)
    # secret rotated -> secret update (fingerprints only, never the value)
    rc, _, err = flux("secrets", "set", "TOKEN=second-value", cwd=applied)
    assert rc == 0, err
    rc, out, _ = flux("plan", "--json", cwd=applied)
    doc = json.loads(out)
    assert actions(doc) == {"secret.TOKEN": "update"}
    assert doc["changes"][0]["reasons"] == ["secret rotated"]
    assert "first-value" not in out and "second-value" not in out
    apply(flux, applied)
    # new migration -> create
    (applied / "schema/002_more.sql").write_text("ALTER TABLE todos ADD COLUMN done boolean;")
    assert actions(plan_json(flux, applied)) == {"migration.002_more.sql": "create"}
    apply(flux, applied)
    # edited applied migration -> a plan error naming the file
    (applied / "schema/001_init.sql").write_text("CREATE TABLE todos (id bigint);")
    rc, out, err = flux("plan", cwd=applied)
    assert rc == 1
    assert "schema/001_init.sql: applied migration changed" in err and "Traceback" not in err


def test_json_plan_file_roundtrip_and_staleness(applied: Path, flux: FluxRunner, flux_env: dict[str, str],
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    from flux_plan.errors import FluxError, StateError
    from flux_plan.plan import Plan, check_fresh
    from flux_plan.workspace import Workspace

    (applied / "functions/greet/flux.json").write_text('{"name": "greet", "timeout": 60}')
    rc, out, err = flux("plan", "-o", "plan.json", cwd=applied)
    assert rc == 0, err
    assert "Saved the plan to plan.json" in out
    doc = json.loads((applied / "plan.json").read_text())
    Draft202012Validator(json.loads(schema_path("plan").read_text())).validate(doc)
    monkeypatch.setenv("XDG_CONFIG_HOME", flux_env["XDG_CONFIG_HOME"])  # the project key the CLI sealed with
    plan = Plan.load(applied / "plan.json")
    assert [c.address for c in plan.changes] == ["function.greet"]
    assert set(plan.artifacts) == {"greet"}
    ws = Workspace.open(applied)
    assert ws.artifacts.has(plan.artifacts["greet"])  # -o pinned the bundle
    state = ws.state.load()
    check_fresh(plan, state)  # nothing moved on yet
    apply(flux, applied)
    with pytest.raises(StateError, match="stale"):
        check_fresh(plan, Workspace.open(applied).state.load())
    (applied / "bad.json").write_text(json.dumps({**doc, "changes": [{"address": "nope"}]}))
    with pytest.raises(FluxError, match="changed after it was sealed"):
        Plan.load(applied / "bad.json")
    with pytest.raises(FluxError, match="not a valid Flux plan file"):
        Plan.load(applied / "bad.json", verify=False)


def test_target_closure_and_function_dir(tmp_path: Path, flux: FluxRunner, make_project: Callable[..., Path]) -> None:
    from flux_plan.plan import make_plan
    from flux_plan.workspace import Workspace

    root = make_project(tmp_path, functions={"a": None, "b": None},
                        migrations={"001_x.sql": "CREATE TABLE x (id int);"})
    doc = plan_json(flux, root, "--target", "route.POST_/a")
    assert set(actions(doc)) == {"api.dev", "migration.001_x.sql", "function.a", "route.POST_/a"}
    ws = Workspace.open(root)
    plan = make_plan(ws, function_dir="functions/b")
    assert [c.address for c in plan.changes] == ["api.dev", "migration.001_x.sql", "function.b", "route.POST_/b"]


def test_destroy_and_refresh_only_drift(applied: Path, flux: FluxRunner) -> None:
    from flux_record import World

    doc = plan_json(flux, applied, "--destroy")
    order = [c["address"] for c in doc["changes"]]
    assert set(actions(doc).values()) == {"delete"} and len(order) == 9
    for user, used in [("route.POST_/greet", "function.greet"), ("function.remind", "secret.TOKEN"),
                       ("function.greet", "migration.001_init.sql"), ("route.GET_/todos", "api.dev")]:
        assert order.index(user) < order.index(used)
    # Drift: someone resized a function and deleted a route by hand.
    world = World(applied / ".flux/dev/record-world.jsonl")
    greet = world.get("function.greet")
    assert greet is not None
    world.apply("update", "function.greet", {**greet["attributes"], "memory": 2048})
    world.apply("delete", "route.GET_/todos")
    rc, out, _ = flux("plan", "--refresh-only", "--detailed-exitcode", cwd=applied)
    assert rc == 2
    assert "Objects have changed outside of Flux:" in out
    assert "drift: memory changed outside Flux" in out and "drift: route deleted outside Flux" in out
    doc = plan_json(flux, applied, "--refresh-only")
    assert doc["changes"] == [] and {c["address"] for c in doc["drift"]} == {"function.greet", "route.GET_/todos"}
    doc = plan_json(flux, applied)
    assert actions(doc) == {"function.greet": "update", "route.GET_/todos": "create"}


def test_markdown_warning_and_cap(applied: Path, flux: FluxRunner, write_function: Callable[..., Path]) -> None:
    for f in (applied / "functions/greet").iterdir():
        f.unlink()
    (applied / "functions/greet").rmdir()
    for i in range(150):
        write_function(applied, f"bulk{i:03d}")
    rc, out, err = flux("plan", "--markdown", cwd=applied)
    assert rc == 0, err
    assert out.startswith("### Flux plan: `proj` / stage `dev` (provider `record`)")
    assert "**Plan: 300 to add, 0 to change, 2 to destroy.**" in out
    assert "> ⚠️ **This plan destroys or replaces 2 resource(s):** `route.POST_/greet`, `function.greet`" in out
    assert len(out) <= 60_000
    assert re.search(r"_… \d+ more block\(s\) not shown \([^)]*created[^)]*\): `[^`]+`.* The comment is capped at 60,000 "
                     r"characters", out)
    assert out.count("<details>") == out.count("</details>") > 50


def test_plan_tolerates_held_lock_and_strict_secrets(applied: Path, flux: FluxRunner) -> None:
    from flux_plan.state import LocalFileBackend, StateManager

    state_dir = applied / ".flux/dev"
    sm = StateManager(LocalFileBackend(state_dir), state_dir)
    with sm.locked("apply", timeout=5):
        rc, out, err = flux("plan", "--lock-timeout", "1s", cwd=applied)
        assert rc == 0, err
        assert "No changes." in out
    (applied / "functions/remind/index.ts").write_text(READER.format(name="remind", key="NOBODY_SET"))
    rc, out, _ = flux("plan", cwd=applied)
    assert rc == 0
    assert "Warning: functions/remind/index.ts: reads 'NOBODY_SET', which is neither set for stage 'dev'" in out
    rc, _, err = flux("plan", "--strict", cwd=applied)
    assert rc == 1 and "NOBODY_SET" in err
    rc, _, err = flux("plan", "--lock-timeout", "soon", cwd=applied)
    assert rc == 1 and "invalid --lock-timeout (FLUX_LOCK_TIMEOUT) 'soon'" in err


def test_graph_command(applied: Path, flux: FluxRunner) -> None:
    rc, out, _ = flux("graph", cwd=applied)
    assert rc == 0 and out.startswith("digraph flux {")
    assert '"function.remind" -> "secret.TOKEN";' in out
    rc, out, _ = flux("graph", "--format", "json", cwd=applied)
    doc = json.loads(out)
    assert len(doc["resources"]) == 9
    rc, _, err = flux("graph", "--format", "svg", cwd=applied)
    assert rc == 1 and "unknown format" in err


def test_init_writes_a_working_project(tmp_path: Path, flux: FluxRunner) -> None:
    rc, out, err = flux("init", "My Project", cwd=tmp_path)
    assert rc == 0, err
    root = tmp_path / "My Project"
    for rel in ("functions/hello/index.ts", "functions/hello/flux.json", "schema/001_init.sql", ".env.example",
                "flux.project.json", ".gitignore", "deno.json", "tsconfig.json"):
        assert (root / rel).is_file(), rel
    assert json.loads((root / "flux.project.json").read_text())["name"] == "my-project"
    assert ".flux/" in (root / ".gitignore").read_text().splitlines()
    # relative paths only (the config works in a teammate's checkout), to a copy of the SDK in the project
    sdk = "./types/flux-functions.ts"
    assert json.loads((root / "deno.json").read_text())["imports"]["@flux/functions"] == sdk
    assert json.loads((root / "tsconfig.json").read_text())["compilerOptions"]["paths"]["@flux/functions"] == [sdk]
    assert "export function defineFunction" in (root / "types" / "flux-functions.ts").read_text()
    assert (SDK_DIR / "functions" / "index.ts").read_text() in (root / "types" / "flux-functions.ts").read_text()
    assert str(SDK_DIR) not in (root / "deno.json").read_text() + (root / "tsconfig.json").read_text()
    rc, out, _ = flux("validate", "--strict", cwd=root)
    assert rc == 0, out
    rc, out, _ = flux("plan", "--json", cwd=root)
    assert rc == 0
    assert set(actions(json.loads(out))) == {"api.dev", "migration.001_init.sql", "function.hello", "route.POST_/hello"}
    # its GREETING is a plain flux.json `env` value: a fresh project plans without warnings, even --strict
    rc, out, err = flux("plan", "--strict", cwd=root)
    assert rc == 0 and "Warning" not in out + err, out + err
    # The editor config resolves the SDK: deno type-checks the handler against it.
    deno = subprocess.run([sys.executable, "-c", "import deno; print(deno.find_deno_bin())"],
                          capture_output=True, text=True, check=True).stdout.strip()
    check = subprocess.run([deno, "check", "functions/hello/index.ts"], cwd=root, capture_output=True, text=True,
                           timeout=120, check=False)
    assert check.returncode == 0, check.stderr
    # ... also in a teammate's clone at another path (nothing in the config points outside the project)
    import shutil

    clone = tmp_path / "elsewhere" / "clone"
    shutil.copytree(root, clone)
    (clone / "functions" / "hello" / "index.ts").write_text(
        (clone / "functions" / "hello" / "index.ts").read_text().replace('ctx.log("invoked with", input);',
                                                                        'ctx.log.warn("invoked with", input);'))
    check = subprocess.run([deno, "check", "functions/hello/index.ts"], cwd=clone, capture_output=True, text=True,
                           timeout=120, check=False)
    assert check.returncode == 0, check.stderr
    # Never overwrite.
    rc, _, err = flux("init", "My Project", cwd=tmp_path)
    assert rc == 1 and "refusing to overwrite" in err and "functions/hello/index.ts" in err
