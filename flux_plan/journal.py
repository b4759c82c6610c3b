"""The apply write-ahead journal: `.flux/<stage>/journal.jsonl`.

One line per record. The first line is a header naming the snapshot the journal applies to
(`lineage`, `serial`); then an `intent` record before every provider call and a `done`/`failed`
record after it. Appending is O(1) per operation, so an apply of N resources costs O(N) in state
writes instead of N full snapshot rewrites. Records written by concurrent workers share one fsync
(group commit): a writer whose record was covered by another thread's fsync does not sync again.

Folding the journal into a state lives in `flux_plan.state` (this module knows no state format).
"""

from __future__ import annotations

import json
import os
import threading
import time
from pathlib import Path
from typing import Any

from flux_plan.errors import StateError

JOURNAL_FILE = "journal.jsonl"


class Journal:
    """Appends records durably; thread-safe. Open one per apply, close it when the state is committed."""

    def __init__(self, path: Path, lineage: str, serial: int) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        self._fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        self._mu = threading.Lock()  # orders writes and op numbers
        self._sync_mu = threading.Lock()  # one fsync at a time; the others ride along
        self._op = 0
        self._written = 0
        self._synced = 0
        self.fsyncs = 0
        self._append({"kind": "begin", "lineage": lineage, "serial": serial}, sync=True)
        from flux_plan.backends.local import fsync_dir

        fsync_dir(path.parent)  # the journal's name must survive a crash too

    def _append(self, record: dict[str, Any], *, sync: bool) -> None:
        with self._mu:
            if self._fd < 0:
                raise RuntimeError("journal is closed")
            if record["kind"] != "begin":
                self._op += 1
                record = {"op": self._op, **record}
            line = json.dumps({**record, "ts": round(time.time(), 3)}, separators=(",", ":"), default=str)
            os.write(self._fd, line.encode() + b"\n")
            self._written += 1
            mine = self._written
        if sync:
            self._sync_upto(mine)

    def _sync_upto(self, mine: int) -> None:
        with self._sync_mu:
            if self._synced >= mine:
                return  # another thread's fsync already covered this record
            with self._mu:
                target = self._written
                fd = self._fd
            if fd < 0:
                return
            os.fsync(fd)
            self.fsyncs += 1
            self._synced = target

    def intent(
        self,
        address: str,
        action: str,
        *,
        type_: str | None = None,
        attributes: dict[str, Any] | None = None,
        dependencies: list[str] | None = None,
    ) -> None:
        """Durable before the provider is called: after a crash the resource is refreshed."""
        rec: dict[str, Any] = {"kind": "intent", "address": address, "action": action}
        if type_ is not None:
            rec.update(type=type_, attributes=attributes or {}, dependencies=dependencies or [])
        self._append(rec, sync=True)

    def done(self, address: str, action: str, result: dict[str, Any] | None) -> None:
        """`result` is the resulting ResourceState as a dict (None for a delete)."""
        rec: dict[str, Any] = {"kind": "done", "address": address, "action": action}
        if result is not None:
            rec.update(result)
        self._append(rec, sync=True)

    def failed(self, address: str, action: str, error: str) -> None:
        self._append({"kind": "failed", "address": address, "action": action, "error": error}, sync=True)

    def close(self) -> None:
        with self._mu:
            fd, self._fd = self._fd, -1
        if fd >= 0:
            os.fsync(fd)
            os.close(fd)


def read_journal(path: Path) -> tuple[dict[str, Any] | None, list[dict[str, Any]]]:
    """(header, records) of a journal left on disk, or (None, []) when there is none.

    A torn last line (the process died mid-write) is dropped: its operation has no outcome and is
    refreshed. A broken line elsewhere means the file was damaged: refuse rather than guess.
    """
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return None, []
    *complete, tail = raw.split(b"\n")  # `tail` is empty unless the last write was torn
    records: list[dict[str, Any]] = []
    for i, line in enumerate(complete):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except ValueError as exc:
            raise StateError(
                f"{path}:{i + 1}: the apply journal is damaged ({exc})",
                hint="move the file away, then run `flux plan` (it refreshes every resource)",
            ) from exc
        if not isinstance(rec, dict) or "kind" not in rec:
            raise StateError(f"{path}:{i + 1}: not a journal record", hint="move the file away")
        records.append(rec)
    del tail  # a torn last line: its operation has no outcome and is refreshed like any other
    if not records:
        return None, []
    header = records[0]
    if header.get("kind") != "begin":
        raise StateError(f"{path}:1: the journal has no header record", hint="move the file away")
    return header, records[1:]
