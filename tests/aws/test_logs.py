"""`flux logs` on an aws stage reads the runtime's JSON records back from CloudWatch Logs, and every other
line (Lambda's START/END/REPORT, console output, "Task timed out") as a record of its own, filtered by
function, request id and minimum level."""

from __future__ import annotations

import json
import time
from pathlib import Path

from aws_lib import FaultyMotoServer, make_project

UUID = "8f6c2a8e-1d2b-4c3d-9e4f-5a6b7c8d9e0f"


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
            # the nodejs runtime's console format: ts, request id, level, text (a Flux record or plain output)
            f"2026-11-25T08:00:01.000Z\t{UUID}\tINFO\t" + _record("create_todo", UUID, "created todo", data={"id": 2}),
            f"2026-11-25T08:00:01.500Z\t{UUID}\tWARN\tplain console.warn output",
            f"2026-11-25T08:00:02.000Z {UUID} Task timed out after 3.00 seconds",
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
    assert [(r["function"], r["request_id"], r["level"], r["msg"]) for r in every] == [
        ("greet", "r-1", "info", "START RequestId: r-1 Version: 1"),
        ("greet", "r-1", "info", "invoked with"),
        ("greet", "r-1", "info", "END RequestId: r-1"),
        ("greet", "r-1", "info", "REPORT RequestId: r-1\tDuration: 2.1 ms"),
        ("create_todo", "r-2", "info", "created todo"),
        ("create_todo", "r-3", "error", "handler failed"),
        ("create_todo", UUID, "info", "created todo"),
        ("create_todo", UUID, "warn", "plain console.warn output"),
        ("create_todo", UUID, "error", f"2026-11-25T08:00:02.000Z {UUID} Task timed out after 3.00 seconds"),
    ]
    assert every[1]["data"] == {"name": "Ada"} and every[1]["stage"] == "prod"
    assert every[0]["data"] is None and every[0]["ts"].startswith("20")  # the event's own timestamp
    assert [r["msg"] for r in read("greet")] == [
        "START RequestId: r-1 Version: 1", "invoked with", "END RequestId: r-1", "REPORT RequestId: r-1\tDuration: 2.1 ms"]
    assert [r["msg"] for r in read("--request-id", "r-2")] == ["created todo"]
    assert [r["msg"] for r in read("--level", "error")] == ["handler failed", every[-1]["msg"]]
