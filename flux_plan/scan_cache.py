"""The scan cache `.flux/scan-cache.json`: what scanning a function directory found, reused while
nothing it was computed from changed, so an unchanged function is neither re-validated nor re-digested.

An entry is keyed by a fingerprint of `os.stat` of every file and directory below the function's
directory (path, size, mtime in ns, inode, mode) and of what its digest read outside it (imported files
and the directories imports were resolved in). Any edit, rename, added or removed file, or mode change
changes the fingerprint. The whole file is void when Flux's scanner changes (its modules' and schemas'
stats, the SDK digest, the bundle recipe). Entries whose files changed within the last seconds are not
stored (a coarse file system clock could hide a second edit within the same tick), nor are functions
with errors (they are scanned again every time, so their messages are always current).

The file holds no secret (names of keys at most, like the state). A damaged or foreign file is ignored.
"""

from __future__ import annotations

import hashlib
import json
import os
import stat
import time
from pathlib import Path
from stat import S_ISDIR, S_ISLNK
from typing import Any

from flux_plan.paths import PACKAGE_DIR, SCHEMAS_DIR, flux_dir

CACHE_FILE = "scan-cache.json"
FORMAT = 1
RACY_SECONDS = 2.0
_SKIP_DIRS = {"node_modules", ".flux", ".git"}
# Modules whose code decides what a scan finds: editing any of them voids every entry.
_SCANNER_FILES = ("project.py", "digest.py", "model.py", "defaults.py",
                  "schema_check.py", "scan_cache.py", "__init__.py")


def _salt() -> str:
    from flux_plan import __version__
    from flux_plan.digest import BUNDLE_FORMAT, sdk_digest

    parts: list[Any] = [FORMAT, __version__, BUNDLE_FORMAT, sdk_digest()]
    for p in [*(PACKAGE_DIR / f for f in _SCANNER_FILES), SCHEMAS_DIR / "flux.schema.json"]:
        try:
            st = p.stat()
            parts.append([p.name, st.st_size, st.st_mtime_ns])
        except OSError:
            parts.append([p.name, None])
    return hashlib.sha256(json.dumps(parts).encode()).hexdigest()


def _stat_row(path: str, rel: str) -> list[Any] | None:
    """One lstat: None when the path is a link (links are resolved by the scanner: never cached)."""
    try:
        st = os.lstat(path)
    except OSError:
        return [rel, None]
    if stat.S_ISLNK(st.st_mode):
        return None
    return [rel, 0 if stat.S_ISDIR(st.st_mode) else st.st_size, st.st_mtime_ns, st.st_ino, st.st_mode]


class ScanCache:
    """Entries of one project: `dir name -> {fp, deps, value}`; `value` is what the scanner stores."""

    def __init__(self, root: Path, salt: str, entries: dict[str, Any]) -> None:
        self.root = root
        self.salt = salt
        self.entries = entries
        self.dirty = False
        self.newest_allowed = time.time() - RACY_SECONDS
        self._seen: set[str] = set()

    @classmethod
    def load(cls, root: Path) -> ScanCache:
        salt = _salt()
        entries: dict[str, Any] = {}
        try:
            doc = json.loads((flux_dir(root) / CACHE_FILE).read_text(encoding="utf-8"))
            if isinstance(doc, dict) and doc.get("salt") == salt and isinstance(doc.get("functions"), dict):
                entries = doc["functions"]
        except (OSError, ValueError):
            pass
        return cls(root, salt, entries)

    # -- fingerprints -----------------------------------------------------------------------------
    def _dir_rows(self, d: Path | str) -> tuple[list[Any], int] | None:
        """Stat rows of the tree below `d` and the newest mtime in it; None if it holds a link."""
        top = _stat_row(str(d), ".")
        if top is None or top[1] is None:
            return None
        rows: list[Any] = [top]
        newest = top[2]
        stack = [(str(d), ".")]
        while stack:
            path, rel = stack.pop()
            try:
                with os.scandir(path) as it:
                    entries = list(it)
            except OSError:
                return None
            entries.sort(key=lambda e: e.name)
            for e in entries:  # one lstat per entry, nothing else: this runs for every file of every function
                st = e.stat(follow_symlinks=False)
                mode = st.st_mode
                if S_ISLNK(mode):
                    return None
                if S_ISDIR(mode):
                    if e.name in _SKIP_DIRS:
                        continue
                    sub_rel = f"{rel}/{e.name}"
                    stack.append((e.path, sub_rel))
                    rows.append((sub_rel, 0, st.st_mtime_ns, st.st_ino, mode))
                else:
                    rows.append((f"{rel}/{e.name}", st.st_size, st.st_mtime_ns, st.st_ino, mode))
                if st.st_mtime_ns > newest:
                    newest = st.st_mtime_ns
        return rows, newest

    def _fingerprint(self, d: Path | str, deps: list[str]) -> tuple[str, int] | None:
        found = self._dir_rows(d)
        if found is None:
            return None
        rows, newest = found
        for dep in deps:
            row = _stat_row(dep, dep)
            if row is None:
                return None
            rows.append(row)
            if row[1] is not None:
                newest = max(newest, row[2])
        return hashlib.sha1(repr(rows).encode(), usedforsecurity=False).hexdigest(), newest

    # -- entries ----------------------------------------------------------------------------------
    def get(self, d: Path | str) -> Any | None:
        """The stored value for function directory `d`, if nothing it depends on changed."""
        name = os.path.basename(d)
        self._seen.add(name)
        entry = self.entries.get(name)
        if not isinstance(entry, dict) or not isinstance(entry.get("deps"), list):
            return None
        fp = self._fingerprint(d, entry["deps"])
        if fp is None or fp[0] != entry.get("fp"):
            return None
        return entry.get("value")

    def put(self, d: Path, deps: list[str], value: Any) -> None:
        self._seen.add(d.name)
        fp = self._fingerprint(d, deps)
        if fp is None or fp[1] / 1e9 >= self.newest_allowed:
            if self.entries.pop(d.name, None) is not None:
                self.dirty = True
            return
        self.entries[d.name] = {"fp": fp[0], "deps": deps, "value": value}
        self.dirty = True

    def forget(self, name: str) -> None:
        self._seen.add(name)
        if self.entries.pop(name, None) is not None:
            self.dirty = True

    def save(self) -> None:
        """Write the entries of the directories seen in this scan (best effort: never fails a scan)."""
        gone = set(self.entries) - self._seen
        for name in gone:
            del self.entries[name]
        if not (self.dirty or gone):
            return
        target = flux_dir(self.root) / CACHE_FILE
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            tmp = target.with_name(f".{CACHE_FILE}.{os.getpid()}.tmp")
            tmp.write_text(json.dumps({"salt": self.salt, "functions": self.entries}, separators=(",", ":")),
                           encoding="utf-8")
            os.replace(tmp, target)
        except OSError:
            pass
