"""Supervisor <-> host channel at scale: a real `flux deploy` of 200 functions reaches the host as O(200) delta
messages (the daemon's channel counter in /admin/status), not O(200^2) nor one whole-table push per edit; the
host listens on the gateway only; the table persists as O(1) journal appends folded once per apply; a later
one-function change is one message that leaves the other functions' pools (their warm workers) alone."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from flux_local import tablefile
from flux_local.client import DaemonClient
from local_lib import Project
from test_host import _listening_ports
from test_provider_e2e import add_function, deploy_with_secrets, http, logs

pytestmark = [pytest.mark.slow]

N = 200
SOURCE = ('import { defineFunction } from "@flux/functions";\n'
          'export default defineFunction({ name: "%s", handler: async () => ({ n: %d, v: %d }) });\n')


def _status(todo: Project) -> dict[str, Any]:
    return DaemonClient(todo.stage_dir).ok("GET", "/admin/status")


def test_apply_of_200_functions_is_o_n_channel_messages(todo: Project) -> None:
    for i in range(N):
        add_function(todo, f"f{i:03d}", SOURCE % (f"f{i:03d}", i, 1), route=f"/f{i:03d}")
    todo.flux("secrets", "set", "REMINDER_WEBHOOK_TOKEN=tok-initial-1234", "APP_NAME=todo-e2e")
    todo.flux("deploy", timeout=900)
    status = _status(todo)
    functions, routes = len(status["functions"]), len(status["routes"])
    assert functions >= N and routes >= N
    by_op = status["channel"]["by_op"]
    # one load of the (then empty) table at host start, one delta per function and per route, a few more
    # (load checks, secrets' env, cors, health): linear in N, where whole-table pushes would send N^2 entries
    assert by_op["load"] == 1
    assert by_op["put_function"] == functions and by_op["put_route"] == routes
    assert by_op["check"] == functions  # each function loaded once before it takes traffic
    assert status["channel"]["sent"] <= 3 * functions + routes + 20, by_op
    assert http(todo.port, "POST", "/f199", {})[:2] == (200, {"n": 199, "v": 1})
    # the host listens on the gateway only; the daemon has no control API for it any more
    assert _listening_ports(status["host_pid"]) == {todo.port}
    client = DaemonClient(todo.stage_dir)
    assert client.call("POST", "/v1/async/enqueue", {"function": "f000", "input": {}})[0] == 404
    # the table on disk: runtime.json holds every entry after the apply (its journal folded in once)
    doc = json.loads((todo.stage_dir / tablefile.RUNTIME_FILE).read_text())
    assert len(doc["functions"]) == functions and len(doc["routes"]) == routes
    assert not (todo.stage_dir / tablefile.JOURNAL_FILE).exists()

    # warm f000, then change f001 only: one put_function; f000's pool (its warm worker) is untouched
    assert http(todo.port, "POST", "/f000", {})[0] == 200
    cold_before = [r for r in logs(todo, "f000") if r["msg"] == "cold start"]  # the load check's + the call's
    (todo.root / "functions" / "f001" / "index.ts").write_text(SOURCE % ("f001", 1, 2))
    todo.flux("deploy", timeout=300)
    after = _status(todo)["channel"]["by_op"]
    assert after["put_function"] == by_op["put_function"] + 1 and after["put_route"] == by_op["put_route"]
    assert after["load"] == 1
    assert http(todo.port, "POST", "/f001", {})[:2] == (200, {"n": 1, "v": 2})
    assert http(todo.port, "POST", "/f000", {})[0] == 200
    cold = [r for r in logs(todo, "f000") if r["msg"] == "cold start"]
    assert cold == cold_before, json.dumps(cold)


def test_a_change_the_host_refuses_is_undone_and_nothing_else_moves(todo: Project) -> None:
    deploy_with_secrets(todo)
    client = DaemonClient(todo.stage_dir)
    before = _status(todo)
    old = before["functions"]["slugify_title"]
    served = http(todo.port, "POST", "/slugify", {"title": "Hello World"})[:2]
    assert served[0] == 200
    # a new function and an update of a served one, each with a bundle the host cannot take (a relative path)
    for name, entry in (("ghost", {**old, "bundle": "relative/index.mjs"}),
                        ("slugify_title", {**old, "bundle": "relative/index.mjs", "digest": "other"})):
        status, doc = client.call("PUT", f"/admin/functions/{name}", entry)
        assert status == 400, doc
        assert doc["error"] == (f"the runtime refused the change: functions.{name}: runtime must be deno|node and "
                                "bundle an absolute path")
    after = _status(todo)
    assert "ghost" not in after["functions"] and after["functions"]["slugify_title"] == old
    doc = tablefile.read(todo.stage_dir)  # the journal says the same
    assert doc is not None and "ghost" not in doc["functions"] and doc["functions"]["slugify_title"] == old
    assert http(todo.port, "POST", "/slugify", {"title": "Hello World"})[:2] == served
    assert after["health"]["functions"]["slugify_title"]["digest"] == old["digest"]
    # a route to a function that is not there waits in the host (and serves nothing)
    status, _ = client.call("PUT", "/admin/routes/POST_%2Fghost", {"method": "POST", "path": "/ghost", "function": "ghost"})
    assert status == 200 and http(todo.port, "POST", "/ghost", {})[0] == 404


def test_table_file_replays_the_journal_and_skips_a_torn_line(tmp_path: Path) -> None:
    assert tablefile.read(tmp_path) is None
    tablefile.save(tmp_path, {"project": "p", "functions": {"a": {"digest": "1"}, "b": {"digest": "1"}}, "routes": {}})
    tablefile.append(tmp_path, "functions", "a", {"digest": "2"})
    tablefile.append(tmp_path, "functions", "b", None)
    tablefile.append(tmp_path, "routes", "POST_/a", {"method": "POST", "path": "/a", "function": "a"})
    tablefile.append(tmp_path, "cors", None, {"allow_origins": ["*"]})
    with open(tmp_path / tablefile.JOURNAL_FILE, "a") as fh:
        fh.write('{"section": "functions", "name": "c", "val')  # a crash mid-append
    doc = tablefile.read(tmp_path)
    assert doc == {"project": "p", "functions": {"a": {"digest": "2"}}, "cors": {"allow_origins": ["*"]},
                   "routes": {"POST_/a": {"method": "POST", "path": "/a", "function": "a"}}}
    tablefile.save(tmp_path, doc)
    assert not (tmp_path / tablefile.JOURNAL_FILE).exists() and tablefile.read(tmp_path) == doc
