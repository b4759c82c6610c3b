"""Supervision with real SIGKILLs (issue 17): a killed PostgreSQL and a killed Deno host are restarted by the
supervisor and the stage serves again by itself, data kept; a killed supervisor shows as drift in
`flux plan --refresh-only`, `flux apply` repairs it and adopts the PostgreSQL it left running; nothing is
orphaned at the end."""

from __future__ import annotations

import os
import signal
from typing import Any

import pytest
from local_lib import Project, pid_alive
from test_provider_e2e import deploy_with_secrets, http, logs, wait_for

pytestmark = [pytest.mark.slow]


def _info(todo: Project) -> dict[str, Any]:
    info = todo.daemon_info()
    assert info is not None
    return info


def _serves_db(todo: Project, title: str) -> bool:
    status, body, _ = http(todo.port, "POST", "/create_todo", {"title": title})
    return status == 200 and body["todo"]["title"] == title


def test_kill_9_of_postgres_host_and_supervisor(todo: Project) -> None:
    deploy_with_secrets(todo)
    assert _serves_db(todo, "before")
    first = _info(todo)

    # PostgreSQL: the supervisor starts it again; ctx.db works again without a redeploy, data kept
    os.kill(first["pg_pid"], signal.SIGKILL)
    wait_for(lambda: _info(todo)["pg_pid"] != first["pg_pid"] and pid_alive(_info(todo)["pg_pid"]), 60)
    wait_for(lambda: _serves_db(todo, "after pg"), 60)
    titles = [t["title"] for t in http(todo.port, "GET", "/todos?done=false")[1]["todos"]]
    assert "before" in titles and "after pg" in titles
    assert [r for r in logs(todo, "--level", "error") if r["msg"] == "database exited; restarting"]
    assert not pid_alive(first["pg_pid"])

    # the Deno host: restarted with its table
    second = _info(todo)
    os.kill(second["host_pid"], signal.SIGKILL)
    wait_for(lambda: _info(todo)["host_pid"] != second["host_pid"], 60)
    wait_for(lambda: http(todo.port, "POST", "/greet", {"name": "again"})[:2] == (200, {"message": "Hello, again!"}), 60)
    assert _serves_db(todo, "after host")

    # the supervisor: the host dies with it, PostgreSQL is left running; plan reports the stage down
    third = _info(todo)
    os.kill(third["pid"], signal.SIGKILL)
    wait_for(lambda: not pid_alive(third["pid"]) and not pid_alive(third["host_pid"]), 30)
    assert pid_alive(third["pg_pid"])
    drift = todo.flux("plan", "--refresh-only", "--detailed-exitcode", check=False)
    assert drift.returncode == 2 and "api.dev" in drift.stdout, drift.stdout + drift.stderr
    todo.flux("apply", "--auto-approve")
    fourth = _info(todo)
    assert fourth["pid"] != third["pid"] and fourth["pg_pid"] == third["pg_pid"]  # adopted, not a second server
    assert _serves_db(todo, "after supervisor")
    titles = [t["title"] for t in http(todo.port, "GET", "/todos?done=false")[1]["todos"]]
    assert {"before", "after pg", "after host", "after supervisor"} <= set(titles)
    assert todo.flux("plan", "--detailed-exitcode", check=False).returncode == 0

    # nothing orphaned
    todo.flux("destroy", "--auto-approve")
    wait_for(lambda: not any(pid_alive(p) for p in (fourth["pid"], fourth["host_pid"], fourth["pg_pid"])), 30)
