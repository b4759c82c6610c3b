"""The stage's persisted runtime table: runtime.json (a snapshot) + runtime.journal (one JSON line per change since).

Why two files: a change costs one appended line (O(1)), not a rewrite of the whole table, so an apply of N
resources writes O(N) bytes, not O(N^2). The journal is folded into the snapshot once per apply (the provider's
after_apply), when it outgrows the table (amortized O(1)) and when the supervisor starts. Readers always see
snapshot + journal, so a crash between the two loses nothing; a torn last line (crash mid-write) is skipped.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

RUNTIME_FILE = "runtime.json"
JOURNAL_FILE = "runtime.journal"
SECTIONS = ("functions", "routes", "secrets")
SCALARS = ("cors",)


def read(state_dir: Path) -> dict[str, Any] | None:
    """Snapshot with the journal replayed; None when neither exists. Raises ValueError/OSError when unreadable."""
    path, journal = state_dir / RUNTIME_FILE, state_dir / JOURNAL_FILE
    doc: dict[str, Any] | None = None
    if path.exists():
        loaded = json.loads(path.read_text(encoding="utf-8"))
        doc = loaded if isinstance(loaded, dict) else {}
    if journal.exists():
        doc = doc if doc is not None else {}
        for line in journal.read_text(encoding="utf-8").splitlines():
            try:
                entry = json.loads(line)
                section, name, value = entry["section"], entry.get("name"), entry.get("value")
            except (ValueError, KeyError, TypeError, AttributeError):
                continue  # torn by a crash mid-write
            if section in SCALARS:
                doc[section] = value
            elif section in SECTIONS and isinstance(name, str):
                part = doc.setdefault(section, {})
                if value is None:
                    part.pop(name, None)
                else:
                    part[name] = value
    return doc


def append(state_dir: Path, section: str, name: str | None, value: Any) -> int:
    """Record one change (value None: removed); returns the journal's size in bytes."""
    line = json.dumps({"section": section, "name": name, "value": value}, sort_keys=True) + "\n"
    fd = os.open(state_dir / JOURNAL_FILE, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    try:
        os.write(fd, line.encode())
        return os.fstat(fd).st_size
    finally:
        os.close(fd)


def save(state_dir: Path, doc: dict[str, Any]) -> int:
    """Write the whole table as the snapshot, then empty the journal (a crash between keeps both: replaying it
    again is harmless); returns the snapshot's size."""
    path = state_dir / RUNTIME_FILE
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    text = json.dumps(doc, indent=2, sort_keys=True)
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)
    (state_dir / JOURNAL_FILE).unlink(missing_ok=True)
    return len(text)


def remove(state_dir: Path) -> None:
    (state_dir / RUNTIME_FILE).unlink(missing_ok=True)
    (state_dir / JOURNAL_FILE).unlink(missing_ok=True)
