"""End to end through the real CLI: deploy a copy of examples/todo to the local provider (daemon,
Deno host, node worker, embedded PostgreSQL) and call it over real HTTP on 127.0.0.1."""

from __future__ import annotations

import json
import os
import signal
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from conftest import Project, pid_alive, require_runtime

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("local-e2e")]


def http(port: int, method: str, path: str, body: Any = None, raw: bytes | None = None,
         timeout: float = 60) -> tuple[int, Any, dict[str, str]]:
    data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
    req = urllib.request.Request(f"http://127.0.0.1:{port}{path}", data=data, method=method,
                                 headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            status, payload, headers = resp.status, resp.read(), resp.headers
    except urllib.error.HTTPError as exc:
        status, payload, headers = exc.code, exc.read(), exc.headers
    lower = {k.lower(): v for k, v in headers.items()}
    return status, (json.loads(payload) if payload else None), lower


def logs(todo: Project, *args: str) -> list[dict[str, Any]]:
    out = todo.flux("logs", "--json", *args).stdout
    return [json.loads(line) for line in out.splitlines() if line.strip()]


def wait_for(pred: Any, timeout: float = 30) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = pred()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError("condition not reached in time")


@pytest.fixture
def deployed(todo: Project) -> Project:
    require_runtime()
    todo.flux("secrets", "set", "REMINDER_WEBHOOK_TOKEN=tok-initial-1234", "APP_NAME=todo-e2e")
    todo.flux("deploy")
    return todo


def test_every_route_logs_and_invoke(deployed: Project) -> None:
    port = deployed.port
    status, body, headers = http(port, "POST", "/greet", {"name": "Ada"})
    assert (status, body) == (200, {"message": "Hello, Ada!"})
    rid = headers["x-flux-request-id"]
    status, body, _ = http(port, "POST", "/create_todo", {"title": "write docs", "due_date": "2026-12-01"})
    assert status == 200 and body["todo"]["title"] == "write docs" and body["todo"]["due_date"] == "2026-12-01"
    todo_id = body["todo"]["id"]
    status, body, _ = http(port, "GET", "/todos?done=false")
    assert status == 200 and body["count"] == 1 and body["todos"][0]["id"] == todo_id
    status, body, _ = http(port, "POST", "/complete_todo", {"id": todo_id})
    assert status == 200 and body["todo"]["done"] is True
    status, body, _ = http(port, "POST", "/slugify", {"title": "Hello Flux World!"})
    assert status == 200 and body["slug"] == "hello-flux-world" and body["runtime"].startswith("node v")
    status, body, headers = http(port, "POST", "/send_reminder", {"email": "ada@example.com"})
    assert status == 202 and body["request_id"] == headers["x-flux-request-id"]
    async_rid = body["request_id"]
    recs = wait_for(lambda: [r for r in logs(deployed, "--request-id", async_rid) if r["msg"] == "reminder prepared"])
    assert recs[0]["function"] == "send_reminder" and recs[0]["data"]["authenticated"] is True
    greet = logs(deployed, "greet", "--request-id", rid)
    assert any(r["msg"] == "invoked with" for r in greet)
    # the secret's value never reaches the log store
    assert "tok-initial-1234" not in "".join(p.read_text() for p in (deployed.stage_dir / "logs").glob("*.jsonl"))

    out = deployed.flux("invoke", "greet", "--payload", '{"name":"Grace"}', "--json")
    doc = json.loads(out.stdout)
    assert doc["status"] == 200 and doc["body"] == {"message": "Hello, Grace!"} and doc["request_id"]
    failed = deployed.flux("invoke", "complete_todo", "--payload", '{"id": 999999}', check=False)
    assert failed.returncode == 1 and "todo 999999 not found" in failed.stdout
    plan = deployed.flux("plan", "--detailed-exitcode", check=False)
    assert plan.returncode == 0, plan.stdout + plan.stderr


def test_http_errors(deployed: Project) -> None:
    port = deployed.port
    status, body, headers = http(port, "POST", "/greet", raw=b"{not json")
    assert status == 400 and body["request_id"] == headers["x-flux-request-id"]
    assert http(port, "POST", "/nope", {})[0] == 404
    status, _, headers = http(port, "GET", "/greet")
    assert status == 405 and "POST" in headers["allow"]
    assert http(port, "POST", "/greet", raw=b'{"name":"' + b"x" * (7 * 1024 * 1024) + b'"}')[0] == 413
    status, body, _ = http(port, "POST", "/create_todo", {"title": ""})
    assert status == 500 and body["error"] == "title is required" and "stack" not in json.dumps(body)


def test_db_errors_and_injection(deployed: Project) -> None:
    root = deployed.root
    fn = root / "functions" / "raw_query"
    fn.mkdir()
    (fn / "flux.json").write_text(json.dumps({"name": "raw_query"}))
    (fn / "index.ts").write_text(
        'import { defineFunction } from "@flux/functions";\n'
        "export default defineFunction({ name: \"raw_query\", handler: async ({ input, ctx }) => {\n"
        "  try { return { rows: await ctx.db.query(input.params) }; }\n"
        "  catch (e) { return { error: String((e as Error).message) }; }\n} });\n")
    deployed.flux("deploy")
    port = deployed.port

    def q(params: Any) -> Any:
        status, body, _ = http(port, "POST", "/raw_query", {"params": params})
        assert status == 200
        return body

    assert "unknown table \"nope\"" in q({"table": "nope", "operation": "select"})["error"]
    assert "unknown column \"titel\"" in q({"table": "todos", "operation": "select", "columns": ["titel"]})["error"]
    assert "unknown table" in q({"table": "todos; DROP TABLE todos", "operation": "select"})["error"]
    assert "pass all: true" in q({"table": "todos", "operation": "delete"})["error"]
    hostile = "x'); DROP TABLE todos; --"
    rows = q({"table": "todos", "operation": "insert", "values": {"title": hostile}, "returning": ["title"]})["rows"]
    assert rows == [{"title": hostile}]
    assert q({"table": "todos", "operation": "select", "columns": ["title"]})["rows"] == [{"title": hostile}]


def test_secret_rotation_reaches_running_workers(deployed: Project) -> None:
    root = deployed.root
    fn = root / "functions" / "show_env"
    fn.mkdir()
    (fn / "flux.json").write_text(json.dumps({"name": "show_env"}))
    (fn / "index.ts").write_text(
        'import { defineFunction } from "@flux/functions";\n'
        "export default defineFunction({ name: \"show_env\", handler: async ({ ctx }) => ({\n"
        "  app: ctx.env.APP_NAME, token: (await ctx.secrets.get(\"REMINDER_WEBHOOK_TOKEN\")).length }) });\n")
    deployed.flux("deploy")
    assert http(deployed.port, "POST", "/show_env", {})[1] == {"app": "todo-e2e", "token": 16}
    digest_before = json.loads((deployed.stage_dir / "runtime.json").read_text())["functions"]["show_env"]["digest"]
    deployed.flux("secrets", "set", "APP_NAME=rotated", "REMINDER_WEBHOOK_TOKEN=tok-rotated")
    plan = deployed.flux("plan", "--detailed-exitcode", check=False)
    assert plan.returncode == 2 and "secret.APP_NAME" in plan.stdout
    deployed.flux("deploy")
    assert http(deployed.port, "POST", "/show_env", {})[1] == {"app": "rotated", "token": 11}
    runtime = json.loads((deployed.stage_dir / "runtime.json").read_text())
    assert runtime["functions"]["show_env"]["digest"] == digest_before  # no redeploy of the code
    assert "rotated" not in (deployed.stage_dir / "runtime.json").read_text()


def test_migrations_edit_refused_and_failure_stops_dependents(deployed: Project) -> None:
    root = deployed.root
    (root / "schema" / "001_create_todos.sql").write_text("CREATE TABLE todos (id int);\n")
    plan = deployed.flux("plan", check=False)
    assert plan.returncode == 1 and "001_create_todos.sql" in plan.stdout + plan.stderr
    (root / "schema" / "001_create_todos.sql").write_text((Path(__file__).parents[2] / "examples" / "todo" /
                                                           "schema" / "001_create_todos.sql").read_text())
    (root / "schema" / "003_broken.sql").write_text("ALTER TABLE todos ADD COLUMN tags text[];\nSELECT nope FROM todos;\n")
    (root / "functions" / "greet" / "index.ts").write_text(
        (root / "functions" / "greet" / "index.ts").read_text().replace("Hello", "Hi"))
    result = deployed.flux("deploy", check=False)
    assert result.returncode == 1
    assert "003_broken.sql:2" in result.stdout + result.stderr
    assert http(deployed.port, "POST", "/greet", {"name": "A"})[1] == {"message": "Hello, A!"}  # not deployed
    status = json.loads(deployed.flux("migrations", "status", "--json", check=False).stdout)
    assert [(r["file"], r["status"]) for r in status] == [("001_create_todos.sql", "applied"),
                                                         ("002_add_due_date.sql", "applied"),
                                                         ("003_broken.sql", "pending")]


def test_update_under_load_and_async_after_restart_and_destroy(deployed: Project) -> None:
    port = deployed.port
    greet = deployed.root / "functions" / "greet" / "index.ts"
    stop = time.monotonic() + 1e9
    results: list[int] = []

    def hammer() -> None:
        while time.monotonic() < stop:
            results.append(http(port, "POST", "/greet", {"name": "L"})[0])

    with ThreadPoolExecutor(4) as pool:
        futs = [pool.submit(hammer) for _ in range(4)]
        time.sleep(0.5)
        greet.write_text(greet.read_text().replace("Hello", "Howdy"))
        deployed.flux("deploy")
        time.sleep(0.5)
        stop = time.monotonic()
        for f in futs:
            f.result()
    assert results and set(results) == {200}
    assert http(port, "POST", "/greet", {"name": "B"})[1] == {"message": "Howdy, B!"}

    # async delivery survives a daemon restart: stop the daemon hard right after the 202
    info = deployed.daemon_info()
    assert info is not None
    status, body, _ = http(port, "POST", "/send_reminder", {"email": "x@example.com"})
    assert status == 202
    os.kill(info["pid"], signal.SIGKILL)
    os.kill(info["host_pid"], signal.SIGKILL)
    wait_for(lambda: not pid_alive(info["pid"]))
    deployed.flux("deploy")  # restarts the daemon, which delivers what is still queued
    rid = body["request_id"]
    wait_for(lambda: [r for r in logs(deployed, "--request-id", rid) if r["msg"] == "reminder prepared"], 60)

    info = deployed.daemon_info()
    assert info is not None
    pids = [info["pid"], info["host_pid"], info["pg_pid"]]
    assert all(pid_alive(p) for p in pids)
    deployed.flux("destroy", "--auto-approve")
    wait_for(lambda: not any(pid_alive(p) for p in pids), 30)
    assert not (deployed.stage_dir / "daemon.json").exists()
