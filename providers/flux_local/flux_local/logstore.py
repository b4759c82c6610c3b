"""The stage's log store: JSON-lines records from the Deno host under .flux/<stage>/logs/, masked
before they touch the disk, rotated by size, queried and followed by `flux logs` without the daemon."""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from flux_plan.secrets import Masker

LEVELS = {"debug": 10, "info": 20, "warn": 30, "error": 40}
CURRENT = "flux.jsonl"
def parse_ts(ts: Any) -> float:
    if isinstance(ts, int | float):
        return float(ts) / (1000.0 if ts > 1e11 else 1.0)
    try:
        return datetime.fromisoformat(str(ts).replace("Z", "+00:00")).timestamp()
    except ValueError:
        return 0.0


def now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


class LogStore:
    def __init__(self, directory: Path, *, mask: Masker | None = None,
                 max_bytes: int = 5 * 1024 * 1024, keep: int = 5) -> None:
        self.dir = directory
        self.mask = mask
        self.max_bytes = max_bytes
        self.keep = keep
        self._lock = threading.Lock()

    @property
    def current(self) -> Path:
        return self.dir / CURRENT

    def files(self) -> list[Path]:
        """Oldest first: flux.<keep>.jsonl ... flux.1.jsonl, flux.jsonl."""
        rotated = [self.dir / f"flux.{i}.jsonl" for i in range(self.keep, 0, -1)]
        return [p for p in [*rotated, self.current] if p.exists()]

    def append(self, record: dict[str, Any]) -> None:
        record.setdefault("ts", now_iso())
        record.setdefault("level", "info")
        # Masked per value, before serialising: a value with quotes or backslashes is escaped in the
        # JSON text and would slip through a mask applied to the line.
        if self.mask is not None:
            record = self.mask.record(record)
        self._write((json.dumps(record, ensure_ascii=False, default=str) + "\n").encode())

    def append_lines(self, lines: list[bytes]) -> None:
        """Records as the host wrote them (JSON lines holding every field), in one write. A line stays as it
        came unless a secret value may be in it (Masker.may_hold): then it is parsed and masked like append's.
        Measured: parsing, masking and re-serialising every access record, plus an open per record, cost the
        supervisor far more CPU per request than the host's whole request path (bench/local_stage.py)."""
        out: list[bytes] = []
        for raw in lines:
            text = raw.decode("utf-8", errors="replace").rstrip("\n")
            if self.mask is not None and self.mask.may_hold(text):
                try:
                    text = json.dumps(self.mask.record(json.loads(text)), ensure_ascii=False, default=str)
                except ValueError:
                    text = self.mask(text)
            out.append(text.encode())
        if not out:
            return
        self._write(b"\n".join(out) + b"\n")

    def _write(self, data: bytes) -> None:
        """Append whole lines, rotating first when they would take the current file past max_bytes."""
        with self._lock:
            self.dir.mkdir(parents=True, exist_ok=True)
            try:
                if self.current.stat().st_size + len(data) > self.max_bytes:
                    self._rotate()
            except FileNotFoundError:
                pass
            with open(self.current, "ab") as fh:
                fh.write(data)

    def _rotate(self) -> None:
        oldest = self.dir / f"flux.{self.keep}.jsonl"
        oldest.unlink(missing_ok=True)
        for i in range(self.keep - 1, 0, -1):
            src = self.dir / f"flux.{i}.jsonl"
            if src.exists():
                src.rename(self.dir / f"flux.{i + 1}.jsonl")
        self.current.rename(self.dir / "flux.1.jsonl")


def matches(rec: dict[str, Any], *, function: str | None, since_ts: float | None, request_id: str | None,
            level: str | None) -> bool:
    if function and rec.get("function") != function:
        return False
    if request_id and rec.get("request_id") != request_id:
        return False
    if level and LEVELS.get(str(rec.get("level")), 20) < LEVELS.get(level, 0):
        return False
    return not (since_ts and parse_ts(rec.get("ts")) < since_ts)


def _records(path: Path) -> Iterator[dict[str, Any]]:
    try:
        with open(path, encoding="utf-8") as fh:
            for line in fh:
                line = line.strip()
                if line:
                    try:
                        yield json.loads(line)
                    except json.JSONDecodeError:
                        continue
    except FileNotFoundError:
        return


def query(directory: Path, *, function: str | None = None, since_s: float | None = None,
          request_id: str | None = None, level: str | None = None, follow: bool = False,
          poll_s: float = 0.2) -> Iterator[dict[str, Any]]:
    """Records matching the filters, oldest first; with `follow`, then every new one (handles rotation)."""
    since_ts = time.time() - since_s if since_s else None
    store = LogStore(directory)
    flt: dict[str, Any] = {"function": function, "since_ts": since_ts, "request_id": request_id, "level": level}
    files = store.files()
    for path in files[:-1]:
        yield from (r for r in _records(path) if matches(r, **flt))
    current = store.current
    fh = None
    inode = None
    buf = ""
    try:
        while True:
            if fh is None and current.exists():
                fh = open(current, encoding="utf-8")  # noqa: SIM115 - kept open while following
                inode = os.fstat(fh.fileno()).st_ino
            if fh is not None:
                chunk = fh.read()
                if chunk:
                    buf += chunk
                    *lines, buf = buf.split("\n")
                    for line in lines:
                        if not line.strip():
                            continue
                        try:
                            rec = json.loads(line)
                        except json.JSONDecodeError:
                            continue
                        if matches(rec, **flt):
                            yield rec
                    continue
            if not follow:
                return
            try:
                if fh is not None and os.stat(current).st_ino != inode:
                    fh.close()  # rotated: the rest of the old file was read above; reopen the new one
                    fh, buf = None, ""
                    continue
            except FileNotFoundError:
                pass
            time.sleep(poll_s)
    finally:
        if fh is not None:
            fh.close()
