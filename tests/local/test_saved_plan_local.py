"""Saved plans on the real local provider (daemon, Deno host, embedded PostgreSQL, real HTTP): the code
reviewed in the plan is what serves, an edit made after `plan -o` never goes live, and a saved destroy
plan stops every process of the stage, as `flux destroy` does."""

from __future__ import annotations

import json

import pytest
from local_lib import Project, pid_alive, process_tree
from test_provider_e2e import deploy_with_secrets, http, wait_for

pytestmark = [pytest.mark.slow]


def test_saved_plan_serves_the_reviewed_code_and_destroy_plan_stops_the_stage(todo: Project) -> None:
    deploy_with_secrets(todo)
    greet = todo.root / "functions" / "greet" / "index.ts"
    greet.write_text(greet.read_text().replace("Hello", "Reviewed"))
    todo.flux("plan", "-o", "plan.json")
    greet.write_text(greet.read_text().replace("Reviewed", "Unreviewed"))  # edited after the review
    edited = json.loads((todo.root / "plan.json").read_text())
    edited["warnings"].append("looks fine")
    (todo.root / "edited.json").write_text(json.dumps(edited))
    refused = todo.flux("apply", "edited.json", check=False)
    assert refused.returncode == 1 and refused.stdout == ""
    assert "changed after it was sealed" in refused.stderr
    assert http(todo.port, "POST", "/greet", {"name": "A"})[1] == {"message": "Hello, A!"}

    out = todo.flux("apply", "plan.json").stdout
    assert "function.greet: updated" in out
    assert http(todo.port, "POST", "/greet", {"name": "A"})[1] == {"message": "Reviewed, A!"}
    state = json.loads((todo.stage_dir / "state.json").read_text())
    assert state["resources"]["function.greet"]["attributes"]["digest"] == edited["artifacts"]["greet"]
    nxt = json.loads(todo.flux("plan", "--json").stdout)
    assert nxt["drift"] == [] and [c["address"] for c in nxt["changes"]] == ["function.greet"]

    # DESIGN §6: commands that deploy no code keep working while a function is broken
    broken = todo.root / "functions" / "broken"
    broken.mkdir()
    (broken / "flux.json").write_text('{"name": "broken"}')
    (broken / "index.ts").write_text("export const notAFunction = 1;\n")
    assert todo.flux("plan", check=False).returncode == 1
    inv = json.loads(todo.flux("invoke", "greet", "--payload", '{"name": "B"}', "--json").stdout)
    assert inv["body"] == {"message": "Reviewed, B!"}
    assert any(r.get("function") == "greet" for r in map(json.loads, todo.flux("logs", "--json").stdout.splitlines()))
    status = json.loads(todo.flux("migrations", "status", "--json").stdout)
    assert status and {r["status"] for r in status} == {"applied"}
    todo.flux("secrets", "set", "EXTRA=value-while-broken")
    assert "EXTRA" in todo.flux("secrets", "list").stdout
    for f in broken.iterdir():
        f.unlink()
    broken.rmdir()

    info = todo.daemon_info()
    assert info is not None
    pids = [*process_tree(info["pid"]), info["pg_pid"]]
    assert all(pid_alive(p) for p in pids)
    todo.flux("plan", "--destroy", "-o", "destroy.json")
    assert "sealed" not in todo.flux("show", "destroy.json").stderr
    out = todo.flux("apply", "destroy.json").stdout
    assert "Destroy complete!" in out
    wait_for(lambda: not any(pid_alive(p) for p in pids), 30)
    assert not (todo.stage_dir / "daemon.json").exists()
