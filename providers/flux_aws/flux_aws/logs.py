"""CloudWatch Logs: each function's log group (created by Flux so it carries a retention and is
removed by destroy), and reading the records back for `flux logs` (the runtime's JSON records, and every
other line of the group as a record of its own)."""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

from botocore.exceptions import ClientError

from flux_aws.retry import aws_call, error_code

_LEVELS = {"debug": 0, "info": 1, "warn": 2, "warning": 2, "error": 3}


def _rank(level: str) -> int:
    return _LEVELS.get(level.lower(), 1)


def ensure_log_group(logs: Any, name: str, retention_days: int, tags: dict[str, str]) -> None:
    try:
        aws_call(logs.create_log_group, logGroupName=name, tags=tags)
    except ClientError as exc:
        if error_code(exc) != "ResourceAlreadyExistsException":
            raise
        if tags:
            aws_call(logs.tag_log_group, logGroupName=name, tags=tags)
    aws_call(logs.put_retention_policy, logGroupName=name, retentionInDays=retention_days)


def log_group_exists(logs: Any, name: str) -> bool:
    groups = aws_call(logs.describe_log_groups, logGroupNamePrefix=name).get("logGroups", [])
    return any(g.get("logGroupName") == name for g in groups)


def delete_log_group(logs: Any, name: str) -> None:
    try:
        aws_call(logs.delete_log_group, logGroupName=name)
    except ClientError as exc:
        if error_code(exc) != "ResourceNotFoundException":
            raise


_RID = re.compile(r"RequestId: (\S+)")
_UUID = re.compile(r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}")
# Lambda's own lines that mean the request failed: a timeout, a crash of the runtime or of the process
_FATAL = re.compile(r"Task timed out|Runtime exited|Runtime\.\w*Error|Process exited before completing|"
                    r"signal: killed|Error: Runtime", re.IGNORECASE)
_CONSOLE_LEVELS = {"TRACE": "debug", "DEBUG": "debug", "INFO": "info", "WARN": "warn", "ERROR": "error",
                   "FATAL": "error"}


def _flux_json(text: str) -> dict[str, Any] | None:
    if not text.startswith("{"):
        return None
    try:
        rec = json.loads(text)
    except json.JSONDecodeError:
        return None
    return rec if isinstance(rec, dict) and "msg" in rec else None


def parse_record(message: str, function: str, stage: str, ts_ms: int | None = None) -> dict[str, Any] | None:
    """A log line -> Flux record. The runtime's JSON records as they are (also behind the node runtime's
    `ts<TAB>request id<TAB>LEVEL<TAB>` prefix); any other line (Lambda's START/END/REPORT, console output of
    the function, "Task timed out") becomes a record of its own: level info, error for timeouts and crashes."""
    text = message.strip()
    if not text:
        return None
    rid: str | None = None
    level = "info"
    parts = text.split("\t", 3)
    if len(parts) >= 3 and _UUID.fullmatch(parts[1]):
        rid = parts[1]
        if len(parts) == 4 and parts[2] in _CONSOLE_LEVELS:
            level, text = _CONSOLE_LEVELS[parts[2]], parts[3].strip()
        else:
            text = "\t".join(parts[2:]).strip()
    rec = _flux_json(text)
    if rec is not None:
        return {
            "ts": rec.get("ts"),
            "level": rec.get("level", "info"),
            "stage": stage,
            "function": rec.get("function", function),
            "request_id": rec.get("request_id"),
            "msg": rec.get("msg"),
            "data": rec.get("data"),
        }
    if rid is None and (m := _RID.search(text) or _UUID.search(text)):
        rid = m.group(m.lastindex or 0)
    if _FATAL.search(text):
        level = "error"
    ts = datetime.fromtimestamp(ts_ms / 1000, UTC).isoformat(timespec="milliseconds") if ts_ms else None
    return {"ts": ts, "level": level, "stage": stage, "function": function, "request_id": rid, "msg": text,
            "data": None}


def read_records(
    logs: Any,
    groups: dict[str, str],
    stage: str,
    *,
    since_s: float | None,
    request_id: str | None,
    level: str | None,
    follow: bool,
    poll: float = 2.0,
) -> Iterator[dict[str, Any]]:
    """Records of the functions in `groups` ({function: log group}), oldest first, at or above
    `level`; with `follow`, keeps polling for new events."""
    start_ms = int((time.time() - (since_s if since_s is not None else 3600)) * 1000)
    seen: set[str] = set()
    while True:
        batch: list[tuple[int, dict[str, Any]]] = []
        for fn, group in groups.items():
            kwargs: dict[str, Any] = {"logGroupName": group, "startTime": start_ms}
            if request_id:
                kwargs["filterPattern"] = f'"{request_id}"'
            try:
                for page in logs.get_paginator("filter_log_events").paginate(**kwargs):
                    for ev in page.get("events", []):
                        if ev["eventId"] in seen:
                            continue
                        seen.add(ev["eventId"])
                        rec = parse_record(ev["message"], fn, stage, int(ev["timestamp"]))
                        if rec is None or (request_id and rec["request_id"] != request_id):
                            continue
                        if level and _rank(str(rec["level"])) < _rank(level):
                            continue
                        batch.append((int(ev["timestamp"]), rec))
            except ClientError as exc:
                if error_code(exc) != "ResourceNotFoundException":
                    raise
        batch.sort(key=lambda item: item[0])
        for ts, rec in batch:
            start_ms = max(start_ms, ts)
            yield rec
        if not follow:
            return
        time.sleep(poll)
