"""Saved plans are contracts (DESIGN §4), through the real `flux` CLI on the `record` provider: the seal
refuses any edit and any other project's key before anything is rendered or changed, apply deploys the
pinned specs and bundles (never the working tree), `flux show` renders the file again."""

from __future__ import annotations

import base64
import copy
import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from flux_record import world_events, world_resources

FluxRunner = Callable[..., tuple[int, str, str]]


def _state(root: Path) -> dict[str, Any]:
    return json.loads((root / ".flux" / "dev" / "state.json").read_text())


def _world(root: Path) -> dict[str, dict[str, Any]]:
    return world_resources(root / ".flux" / "dev")


def _edit(root: Path, rel: str, old: str, new: str) -> None:
    p = root / rel
    text = p.read_text()
    assert old in text
    p.write_text(text.replace(old, new))


@pytest.fixture
def planned(tmp_path: Path, flux: FluxRunner, make_project: Callable[..., Path]) -> Path:
    """A project applied once, then changed (greet's code, a new route method, a new secret) and
    planned into plan.json."""
    root = make_project(tmp_path, functions={"greet": None, "items": {"flux": {"name": "items", "method": "PUT"}}},
                        migrations={"001_init.sql": "CREATE TABLE t (id int);"})
    rc, out, err = flux("apply", "--auto-approve", cwd=root)
    assert rc == 0, out + err
    _edit(root, "functions/greet/index.ts", "ok: true", "ok: 'reviewed'")
    (root / "functions/items/flux.json").write_text('{"name": "items", "method": "POST"}')
    rc, _, err = flux("secrets", "set", "TOKEN=s3cr3t-value", cwd=root)
    assert rc == 0, err
    rc, out, err = flux("plan", "-o", "plan.json", cwd=root)
    assert rc == 0, out + err
    return root


def test_saved_plan_deploys_the_reviewed_code_not_the_working_tree(planned: Path, flux: FluxRunner) -> None:
    doc = json.loads((planned / "plan.json").read_text())
    assert doc["seal"]["alg"] == "HMAC-SHA256" and len(doc["seal"]["mac"]) == 64
    assert "s3cr3t-value" not in (planned / "plan.json").read_text()
    reviewed = doc["artifacts"]["greet"]
    # After the review somebody edits the code and the config again: neither may go live.
    _edit(planned, "functions/greet/index.ts", "ok: 'reviewed'", "ok: 'never reviewed'")
    (planned / "functions/items/flux.json").write_text('{"name": "items", "method": "PATCH", "timeout": 99}')
    rc, out, err = flux("apply", "plan.json", cwd=planned)
    assert rc == 0, out + err
    world = _world(planned)
    assert world["function.greet"]["digest"] == reviewed
    assert "route.POST_/items" in world and "route.PATCH_/items" not in world
    assert "route.PUT_/items" not in world  # created before the old route was deleted
    assert world["function.items"]["timeout"] == 30 and world["function.items"]["method"] == "POST"
    assert _state(planned)["resources"]["function.greet"]["attributes"]["digest"] == reviewed
    # The next plan sees the unreviewed edits as ordinary changes, not as drift.
    rc, out, err = flux("plan", "--json", cwd=planned)
    assert rc == 0, err
    nxt = json.loads(out)
    assert nxt["drift"] == []
    assert {c["address"]: c["action"] for c in nxt["changes"]} == {
        "function.greet": "update", "function.items": "update", "route.PATCH_/items": "create",
        "route.POST_/items": "delete"}


@pytest.mark.parametrize("edit", [
    ("route method", lambda d: d["changes"][[c["address"] for c in d["changes"]].index("route.POST_/items")]
     ["resource"]["attributes"].update(method="DELETE")),
    ("digest", lambda d: d["artifacts"].update(greet="0" * 64)),
    ("serial", lambda d: d.update(serial=d["serial"] + 1)),
    ("dropped change", lambda d: d["changes"].pop()),
    ("snapshot stage", lambda d: d["snapshot"]["stage"].update(fail="x")),
    ("snapshot spec", lambda d: d["snapshot"]["functions"][0].update(timeout=900)),
    ("summary only", lambda d: d["summary"].update(add=0)),
    ("seal removed", lambda d: d.pop("seal")),
])
def test_an_edited_plan_is_refused_before_anything_is_shown(planned: Path, flux: FluxRunner,
                                                            edit: tuple[str, Callable[[dict], Any]]) -> None:
    doc = json.loads((planned / "plan.json").read_text())
    edited = copy.deepcopy(doc)
    edit[1](edited)
    assert edited != doc
    (planned / "edited.json").write_text(json.dumps(edited, indent=2))
    before_state, before_world = _state(planned), _world(planned)
    rc, out, err = flux("apply", "edited.json", cwd=planned)
    assert rc == 1, out + err
    assert out == "" and "Traceback" not in err
    assert "edited.json: refusing to apply it:" in err and "Nothing was changed." in err
    assert ("not sealed" if edit[0] == "seal removed" else "changed after it was sealed") in err
    assert _state(planned) == before_state and _world(planned) == before_world
    rc, out, err = flux("show", "edited.json", cwd=planned)
    assert rc == 1 and out == "" and "refusing to show it" in err


def test_another_projects_key_or_no_key_is_refused(planned: Path, flux: FluxRunner, tmp_path: Path) -> None:
    before = _world(planned)
    other = {"FLUX_SECRETS_KEY": base64.b64encode(os.urandom(32)).decode()}
    rc, out, err = flux("apply", "plan.json", cwd=planned, env=other)
    assert rc == 1 and out == "", out + err
    assert "sealed with another key" in err and "Nothing was changed." in err
    rc, out, err = flux("apply", "plan.json", cwd=planned, env={"XDG_CONFIG_HOME": str(tmp_path / "nokeys")})
    assert rc == 1 and out == "" and "no plan key for project 'proj'" in err, err
    # FLUX_PLAN_KEY is a sibling variable: a plan sealed with it needs it to apply.
    key = {"FLUX_PLAN_KEY": base64.b64encode(os.urandom(32)).decode()}
    rc, _, err = flux("plan", "-o", "ci.json", cwd=planned, env=key)
    assert rc == 0, err
    rc, out, err = flux("apply", "ci.json", cwd=planned)
    assert rc == 1 and "sealed with another key" in err
    assert _world(planned) == before
    rc, out, err = flux("apply", "ci.json", cwd=planned, env=key)
    assert rc == 0, out + err


def test_stale_plan_and_changed_migration_or_secret_refused_first(planned: Path, flux: FluxRunner) -> None:
    (planned / "schema/002_more.sql").write_text("CREATE TABLE u (id int);")
    rc, _, err = flux("plan", "-o", "mig.json", cwd=planned)
    assert rc == 0, err
    (planned / "schema/002_more.sql").write_text("DROP TABLE t;")
    rc, out, err = flux("apply", "mig.json", cwd=planned)
    assert rc == 1 and out == "" and "migration schema/002_more.sql changed or disappeared" in err, out + err
    rc, _, err = flux("secrets", "set", "TOKEN=rotated-after-review", cwd=planned)
    assert rc == 0
    rc, out, err = flux("apply", "plan.json", cwd=planned)
    assert rc == 1 and out == "" and "secret TOKEN was changed or unset since the plan was made" in err
    assert "rotated-after-review" not in err
    rc, out, err = flux("apply", "--auto-approve", cwd=planned)
    assert rc == 0, err
    rc, out, err = flux("apply", "mig.json", cwd=planned)
    assert rc == 1 and out == "" and "stale" in err and "Nothing was changed." in err


def test_saved_destroy_plan_and_show(planned: Path, flux: FluxRunner) -> None:
    rc, out, err = flux("show", "plan.json", cwd=planned)
    assert rc == 0, err
    assert "~ function.greet will be updated in place" in out and "Plan: 2 to add, 2 to change, 1 to destroy." in out
    rc, out, err = flux("show", "plan.json", "--json", cwd=planned)
    assert rc == 0, err
    doc = json.loads(out)
    assert "seal" not in doc and "snapshot" not in doc and doc["summary"] == {"add": 2, "change": 2, "destroy": 1}
    rc, out, err = flux("show", "plan.json", "--markdown", cwd=planned)
    assert rc == 0, err
    assert out.startswith("### Flux plan: `proj`") and "> [!WARNING]" in out
    assert "value: (sensitive) changed" in out and "s3cr3t" not in out
    rc, out, err = flux("plan", "--destroy", "-o", "d.json", cwd=planned)
    assert rc == 0, err
    rc, out, err = flux("apply", "d.json", cwd=planned)
    assert rc == 0, out + err
    assert "Destroy complete!" in out
    assert _world(planned) == {} and _state(planned)["resources"] == {}
    deletes = [e["address"] for e in world_events(planned / ".flux" / "dev") if e["event"] == "delete"]
    assert deletes.index("route.PUT_/items") < deletes.index("function.items")


def test_failed_route_create_keeps_the_old_route(tmp_path: Path, flux: FluxRunner,
                                                 make_project: Callable[..., Path]) -> None:
    root = make_project(tmp_path, functions={"items": {"flux": {"name": "items", "method": "PUT"}}})
    assert flux("apply", "--auto-approve", cwd=root)[0] == 0
    (root / "functions/items/flux.json").write_text('{"name": "items", "method": "POST"}')
    rc, out, err = flux("apply", "--auto-approve", cwd=root, env={"FLUX_RECORD_FAIL": "route.POST_/items"})
    assert rc == 1, out + err
    assert "route.PUT_/items: skipped (route.POST_/items failed)" in out
    assert "route.PUT_/items" in _world(root) and "route.PUT_/items" in _state(root)["resources"]


def test_pipeline_conventions(tmp_path: Path, flux: FluxRunner, make_project: Callable[..., Path]) -> None:
    project = {"name": "proj", "stages": {"dev": {"provider": "record"}, "ci": {"provider": "record"}}}
    root = make_project(tmp_path, project=project)
    rc, out, err = flux("plan", "-out=plan.json", cwd=root)
    assert rc == 1 and "-out=plan.json: long options take two dashes" in err and "--out=plan.json" in err
    assert not list(root.glob("ut=*"))
    rc, out, err = flux("apply", "-auto-approve", cwd=root)
    assert rc == 1 and "did you mean --auto-approve?" in err
    rc, out, err = flux("--input=false", "apply", cwd=root)
    assert rc == 1 and "--input=false forbids asking" in err and "Nothing was changed." in err
    assert not (root / ".flux" / "dev" / "state.json").exists()
    rc, out, err = flux("apply", cwd=root, env={"FLUX_INPUT": "false"})
    assert rc == 1 and "--input=false forbids asking" in err
    # Terraform's habit: the global flags after the command name (`terraform apply -input=false -no-color`)
    rc, out, err = flux("apply", "--no-color", "--input=false", cwd=root)
    assert rc == 1 and "--input=false forbids asking" in err and "No such option" not in err
    rc, out, err = flux("--no-color", "apply", "--auto-approve", cwd=root, env={"FLUX_STAGE": "ci"})
    assert rc == 0, err
    assert (root / ".flux" / "ci" / "state.json").exists() and not (root / ".flux" / "dev" / "state.json").exists()
    assert "\x1b[" not in out
    rc, out, err = flux("plan", "--detailed-exitcode", cwd=root, env={"FLUX_STAGE": "ci", "FLUX_LOCK_TIMEOUT": "x"})
    assert rc == 1 and "invalid --lock-timeout (FLUX_LOCK_TIMEOUT) 'x'" in err
    rc, out, err = flux("apply", "--auto-approve", "--json", cwd=root, env={"FLUX_PARALLELISM": "0"})
    assert rc == 2 and "--parallelism" in err, err
    # --json failures are JSON too
    (root / "functions/hello/flux.json").write_text('{"name": "hello", "method": "FETCH"}')
    rc, out, err = flux("plan", "--json", cwd=root)
    assert rc == 1, out + err
    doc = json.loads(out)
    assert doc["ok"] is False and doc["problems"][0]["file"] == "functions/hello/flux.json"
    rc, out, err = flux("validate", "--json", cwd=root)
    assert rc == 1 and json.loads(out)["valid"] is False
    # --refresh-only apply records drift into state
    (root / "functions/hello/flux.json").write_text('{"name": "hello"}')
    world_file = root / ".flux" / "ci" / "record-world.jsonl"
    ev = {"event": "update", "address": "function.hello", "id": "x", "pid": 1, "ts": 0,
          "attributes": {**world_resources(root / ".flux" / "ci")["function.hello"], "timeout": 5}}
    with world_file.open("a") as fh:
        fh.write(json.dumps(ev) + "\n")
    rc, out, err = flux("apply", "--refresh-only", "--auto-approve", "--stage", "ci", cwd=root)
    assert rc == 0, out + err
    state = json.loads((root / ".flux" / "ci" / "state.json").read_text())
    assert state["resources"]["function.hello"]["attributes"]["timeout"] == 5


def test_migrations_in_order_or_not_at_all(tmp_path: Path, flux: FluxRunner,
                                           make_project: Callable[..., Path]) -> None:
    root = make_project(tmp_path, migrations={"001_a.sql": "CREATE TABLE a (id int);",
                                              "003_c.sql": "CREATE TABLE c (id int);"})
    assert flux("apply", "--auto-approve", cwd=root)[0] == 0
    (root / "schema/002_b.sql").write_text("CREATE TABLE b (id int);")
    rc, out, err = flux("plan", cwd=root)
    assert rc == 1 and "schema/002_b.sql: new migration sorts before schema/003_c.sql, which is already applied" in err
    assert "--allow-out-of-order" in err
    rc, out, err = flux("apply", "--auto-approve", cwd=root)
    assert rc == 1 and "migration.002_b.sql" not in _state(root)["resources"]
    rc, out, err = flux("apply", "--auto-approve", "--allow-out-of-order", cwd=root)
    assert "migration.002_b.sql: created" in out
    assert rc == 0, err
    assert "migration.002_b.sql" in _state(root)["resources"]


def test_commands_without_code_work_while_a_function_is_broken(tmp_path: Path, flux: FluxRunner,
                                                               make_project: Callable[..., Path]) -> None:
    root = make_project(tmp_path, functions={"good": None, "bad": None})
    assert flux("apply", "--auto-approve", cwd=root)[0] == 0
    (root / "functions/bad/index.ts").write_text("export const x = 1;\n")  # no defineFunction
    rc, out, err = flux("plan", cwd=root)
    assert rc == 1 and "no `export default defineFunction(` found" in err
    rc, out, err = flux("secrets", "set", "API_KEY=v1-value", cwd=root)
    assert rc == 0, err
    rc, out, err = flux("secrets", "list", "--json", cwd=root)
    assert rc == 0 and [s["key"] for s in json.loads(out)["secrets"]] == ["API_KEY"]
    for args in (("state", "list"), ("state", "pull")):
        rc, out, err = flux(*args, cwd=root)
        assert rc == 0 and "function.bad" in out, err
    rc, out, err = flux("destroy", "--auto-approve", cwd=root)
    assert rc == 0, out + err
    assert _world(root) == {}


def test_validation_catches_what_apply_would_trip_on(tmp_path: Path, flux: FluxRunner,
                                                     make_project: Callable[..., Path]) -> None:
    broken = ('import { defineFunction } from "@flux/functions";\n'
              'export default defineFunction({\n  name: "bad",\n'
              '  handler: async ({ input }) => ({ a: input.x +* 2 }),\n});\n')
    root = make_project(tmp_path, functions={"good": None, "bad": {"code": broken}})
    rc, out, err = flux("validate", cwd=root)
    assert rc == 1 and "Traceback" not in out + err
    assert 'functions/bad/index.ts:4:48: error: syntax error: Unexpected "*"' in out
    rc, out, err = flux("plan", "--json", cwd=root)  # the plan refuses it too, with the position, as JSON
    assert rc == 1
    problem = json.loads(out)["problems"][0]
    assert (problem["file"], problem["line"], problem["column"]) == ("functions/bad/index.ts", 4, 48)
    (root / "functions/bad/index.ts").write_text(broken.replace("+* 2", "* 2"))
    (root / "functions/good/flux.json").write_text('{"name": "good", "route": "/a", "route": "/b"}')
    (root / "functions/bad/flux.json").write_text(json.dumps({"name": "bad", "route": "/x/../admin"}))
    write = root / "functions" / "deep"
    write.mkdir()
    (write / "flux.json").write_text("[" * 100_000 + "]" * 100_000)
    (write / "index.ts").write_text("export default 1;\n")
    rc, out, err = flux("validate", "--json", cwd=root)
    assert rc == 1 and "Traceback" not in err
    found = {(p["file"], p["message"]) for p in json.loads(out)["problems"]}
    assert ("functions/good/flux.json", "duplicate key 'route'") in found
    assert ("functions/bad/flux.json", "route '/x/../admin' has an empty ('//') or a '.'/'..' segment") in found
    assert ("functions/deep/flux.json", "JSON nested too deeply to read") in found
    (root / "functions/good/flux.json").write_text(json.dumps({"name": "good", "route": "/" + "a" * 600}))
    (root / "functions/bad/flux.json").write_text(json.dumps({"name": "bad", "route": "/x//y"}))
    (write / "flux.json").write_text(json.dumps({"name": "deep"}))
    (write / "index.ts").write_text(broken.replace('"bad"', '"deep"').replace("+* 2", "* 2"))
    (root / "flux.project.json").write_text(json.dumps({"name": "proj", "stages": {"dev": {"provider": "recrod"}}}))
    rc, out, err = flux("validate", cwd=root)
    assert rc == 1, out
    assert "functions/good/flux.json:1 ($.route): error: route is 601 characters long, over the limit of 512" in out
    assert "route '/x//y' has an empty ('//')" in out
    assert "flux.project.json:1 ($.stages.dev.provider): error: stage 'dev': unknown provider 'recrod'" in out
    # a .flux that cannot be written: a clear error naming the path, no traceback, nothing half-done
    (root / "functions/good/flux.json").write_text(json.dumps({"name": "good"}))
    (root / "functions/bad/flux.json").write_text(json.dumps({"name": "bad"}))
    (root / "flux.project.json").write_text(json.dumps({"name": "proj", "stages": {"dev": {"provider": "record"}}}))
    shutil.rmtree(root / ".flux", ignore_errors=True)
    (root / ".flux").write_text("not a directory")
    for args in (("apply", "--auto-approve"), ("secrets", "set", "A=b"), ("plan", "-o", "p.json")):
        rc, out, err = flux(*args, cwd=root)
        assert rc == 1 and "Traceback" not in err, err
        assert f"{root}/.flux/" in err and "writable" in err
    assert (root / ".flux").read_text() == "not a directory" and not (root / "p.json").exists()
