"""CloudWatch Logs: each function's log group (created by Flux so it carries a retention and is
removed by destroy), and reading the runtime's JSON records back for `flux logs`."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
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


def parse_record(message: str, function: str, stage: str) -> dict[str, Any] | None:
    """A runtime log line -> Flux record; Lambda's own START/END/REPORT lines are skipped."""
    text = message.strip()
    if not text.startswith("{"):
        return None
    try:
        rec = json.loads(text)
    except json.JSONDecodeError:
        return None
    if not isinstance(rec, dict) or "msg" not in rec:
        return None
    return {
        "ts": rec.get("ts"),
        "level": rec.get("level", "info"),
        "stage": stage,
        "function": rec.get("function", function),
        "request_id": rec.get("request_id"),
        "msg": rec.get("msg"),
        "data": rec.get("data"),
    }


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
                        rec = parse_record(ev["message"], fn, stage)
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
