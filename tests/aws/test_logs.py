"""`flux logs` on an aws stage reads the runtime's JSON records back from CloudWatch Logs (Lambda's
own START/END/REPORT lines are skipped), filtered by function, request id and minimum level."""

from __future__ import annotations

import json
import time
from pathlib import Path

from conftest import FaultyMotoServer, make_project


def _record(fn: str, rid: str, msg: str, level: str = "info", data: object = None) -> str:
    return json.dumps({"ts": "2026-11-25T08:00:00.000Z", "level": level, "function": fn, "request_id": rid,
                       "msg": msg, "data": data})


def test_logs_from_cloudwatch(moto: FaultyMotoServer, tmp_path: Path, pg_url: str) -> None:
    proj = make_project(moto, tmp_path, pg_url)
    logs = proj.client("logs")
    now = int(time.time() * 1000)
    streams = {
        "greet": [
            "START RequestId: r-1 Version: 1",
            _record("greet", "r-1", "invoked with", data={"name": "Ada"}),
            "END RequestId: r-1",
            "REPORT RequestId: r-1\tDuration: 2.1 ms",
        ],
        "create_todo": [
            _record("create_todo", "r-2", "created todo", data={"id": 1}),
            _record("create_todo", "r-3", "handler failed", level="error", data={"error": "title is required"}),
        ],
    }
    for i, (fn, lines) in enumerate(streams.items()):
        group = f"/aws/lambda/flux-todo-prod-{fn}"
        logs.create_log_group(logGroupName=group)
        logs.create_log_stream(logGroupName=group, logStreamName="2026/11/25/[1]abc")
        logs.put_log_events(logGroupName=group, logStreamName="2026/11/25/[1]abc", logEvents=[
            {"timestamp": now - 60_000 + i * 1000 + j, "message": line} for j, line in enumerate(lines)])

    def read(*args: str) -> list[dict]:
        out = proj.flux("logs", "--stage", "prod", "--json", "--since", "10m", *args).stdout
        return [json.loads(line) for line in out.splitlines()]

    every = read()
    assert [(r["function"], r["request_id"], r["msg"]) for r in every] == [
        ("greet", "r-1", "invoked with"),
        ("create_todo", "r-2", "created todo"),
        ("create_todo", "r-3", "handler failed"),
    ]
    assert every[0]["data"] == {"name": "Ada"} and every[0]["stage"] == "prod"
    assert [r["msg"] for r in read("greet")] == ["invoked with"]
    assert [r["msg"] for r in read("--request-id", "r-2")] == ["created todo"]
    assert [r["request_id"] for r in read("--level", "error")] == ["r-3"]
