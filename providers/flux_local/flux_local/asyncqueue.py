"""Durable queue of `async: true` invocations under .flux/<stage>/queue/.

An item is a file written with tmp + fsync + rename before the gateway answers 202, so a daemon crash
or restart never loses it: the next daemon delivers whatever is still in `pending/`. Delivery is
at-least-once with up to MAX_ATTEMPTS attempts and exponential backoff; items that never succeed go to
`dead/` with their last error, and every step is logged with the item's request id.
"""

from __future__ import annotations

import json
import os
import threading
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

MAX_ATTEMPTS = 3
BACKOFF_S = (0.5, 2.0, 8.0)

Invoke = Callable[[str, str, Any, int], tuple[int, Any]]  # (function, request_id, input, attempt) -> (status, body)
Log = Callable[[dict[str, Any]], None]


def _write_atomic(path: Path, doc: dict[str, Any]) -> None:
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    with open(tmp, "w", encoding="utf-8") as fh:
        json.dump(doc, fh)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)
    dfd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)


class AsyncQueue:
    def __init__(self, directory: Path, invoke: Invoke, log: Log, *, workers: int = 4) -> None:
        self.dir = directory
        self.pending = directory / "pending"
        self.dead = directory / "dead"
        for d in (self.pending, self.dead):
            d.mkdir(parents=True, exist_ok=True)
        self.invoke = invoke
        self.log = log
        self._claimed: set[str] = set()
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="flux-async")
        self._thread: threading.Thread | None = None

    def enqueue(self, function: str, request_id: str, payload: Any) -> None:
        """Durably store one invocation; returns once it is on disk."""
        item = {"function": function, "request_id": request_id, "input": payload, "attempt": 0,
                "not_before": 0.0, "enqueued_at": time.time(), "last_error": None}
        name = f"{time.time_ns():020d}-{request_id}.json"
        _write_atomic(self.pending / name, item)
        self._log(item, "info", "async invocation queued")
        self._wake.set()

    def _log(self, item: dict[str, Any], level: str, msg: str, **data: Any) -> None:
        self.log({"level": level, "function": item["function"], "request_id": item["request_id"],
                  "msg": msg, "data": {"attempt": item["attempt"], **data}})

    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name="flux-async-scan", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread:
            self._thread.join(timeout=5)
        self._pool.shutdown(wait=True, cancel_futures=True)

    def pending_count(self) -> int:
        return sum(1 for p in self.pending.glob("*.json"))

    def _loop(self) -> None:
        while not self._stop.is_set():
            next_due = 1.0
            now = time.time()
            for path in sorted(self.pending.glob("*.json")):
                with self._lock:
                    if path.name in self._claimed:
                        continue
                try:
                    item = json.loads(path.read_text(encoding="utf-8"))
                except (OSError, json.JSONDecodeError):
                    continue
                wait = float(item.get("not_before", 0)) - now
                if wait > 0:
                    next_due = min(next_due, wait)
                    continue
                with self._lock:
                    self._claimed.add(path.name)
                self._pool.submit(self._deliver, path, item)
            self._wake.wait(timeout=max(0.05, next_due))
            self._wake.clear()

    def _deliver(self, path: Path, item: dict[str, Any]) -> None:
        try:
            item["attempt"] += 1
            try:
                status, body = self.invoke(item["function"], item["request_id"], item["input"], item["attempt"])
            except Exception as exc:  # host down or restarting: counts as a failed attempt
                status, body = 503, {"error": f"runtime unavailable: {exc}"}
            if status < 400:
                path.unlink(missing_ok=True)
                self._log(item, "info", "async invocation delivered", status=status)
                return
            error = body.get("error") if isinstance(body, dict) else str(body)
            item["last_error"] = error
            if item["attempt"] >= MAX_ATTEMPTS or status in (400, 404):
                _write_atomic(self.dead / path.name, item)
                path.unlink(missing_ok=True)
                self._log(item, "error", "async invocation failed for good", status=status, error=error)
                return
            item["not_before"] = time.time() + BACKOFF_S[min(item["attempt"] - 1, len(BACKOFF_S) - 1)]
            _write_atomic(path, item)
            self._log(item, "warn", "async invocation failed; will retry", status=status, error=error)
        finally:
            with self._lock:
                self._claimed.discard(path.name)
            self._wake.set()
