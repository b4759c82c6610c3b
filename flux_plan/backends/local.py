"""The default state backend: `.flux/<stage>/state.json` on the local disk.

Crash safety rests on two rules: a snapshot is only ever replaced by tmp file + fsync + rename +
fsync(dir) (so a reader sees the old or the new snapshot, never half of one), and the previous
snapshot is kept as `state.json.backup` before the rename.

The lock is a holder record `state.lock.json` (id, pid, host, operation, time) created and removed
under a short `filelock` on `state.lock`. A record (rather than an flock held for the whole command)
is what lets `flux state unlock ID` release a lock held by a process on another machine or a hung one,
as Terraform users expect; a record whose pid is dead on this host is stale and taken over.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import time
from pathlib import Path
from typing import TYPE_CHECKING

from flux_plan.backends import LockInfo
from flux_plan.errors import LockError, StateError
from flux_plan.filelocks import file_lock

if TYPE_CHECKING:
    from filelock import FileLock

STATE_FILE = "state.json"
BACKUP_FILE = "state.json.backup"
LOCK_FILE = "state.lock"
LOCK_INFO_FILE = "state.lock.json"


def fsync_dir(directory: Path) -> None:
    """Make a rename/unlink in `directory` durable (the new name survives a power cut)."""
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write(path: Path, data: bytes, *, mode: int = 0o644) -> None:
    """Replace `path` with `data` so that a crash leaves either the old or the new content."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        view = memoryview(data)
        while view:
            n = os.write(fd, view)
            view = view[n:]
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    fsync_dir(path.parent)


def version_of(data: bytes) -> str:
    """Version token of a local snapshot: its content hash (stable across processes, no clock)."""
    return hashlib.sha256(data).hexdigest()[:20]


class LocalFileBackend:
    """State snapshot + lock in `.flux/<stage>/`."""

    def __init__(self, state_dir: Path) -> None:
        self.state_dir = state_dir
        self.path = state_dir / STATE_FILE
        self.backup_path = state_dir / BACKUP_FILE
        self.lock_path = state_dir / LOCK_FILE
        self.lock_info_path = state_dir / LOCK_INFO_FILE
        self.stale_taken_over: LockInfo | None = None

    def describe(self) -> str:
        return str(self.path)

    def describe_backup(self) -> str:
        return str(self.backup_path)

    def read(self) -> tuple[bytes | None, str | None]:
        try:
            data = self.path.read_bytes()
        except FileNotFoundError:
            return None, None
        return data, version_of(data)

    def read_backup(self) -> bytes | None:
        try:
            return self.backup_path.read_bytes()
        except FileNotFoundError:
            return None

    def write(self, data: bytes, expected_version: str | None) -> str:
        current, version = self.read()
        if version != expected_version:
            raise StateError(
                f"{self.path}: the state changed since it was read (expected version "
                f"{expected_version or 'none'}, found {version or 'none'}); nothing was written",
                hint="another command wrote it without holding the lock; re-run your command",
            )
        if current is not None:
            atomic_write(self.backup_path, current)
        atomic_write(self.path, data)
        return version_of(data)

    # -- lock -------------------------------------------------------------------------------------

    def _guard(self) -> FileLock:
        self.state_dir.mkdir(parents=True, exist_ok=True)
        return file_lock(self.lock_path, timeout=30)

    def lock_info(self) -> LockInfo | None:
        try:
            return LockInfo.model_validate_json(self.lock_info_path.read_bytes())
        except FileNotFoundError:
            return None
        except ValueError:
            # A half-written record cannot exist (atomic_write); an unreadable one is treated as free.
            return None

    def lock(self, info: LockInfo, timeout: float) -> None:
        deadline = time.monotonic() + max(0.0, timeout)
        delay = 0.05
        while True:
            with self._guard():
                holder = self.lock_info()
                if holder is None or holder.is_stale():
                    self.stale_taken_over = holder
                    atomic_write(self.lock_info_path, info.model_dump_json().encode())
                    return
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise LockError(
                    f"{self.path}: the stage is locked by another command: {holder.describe()}; "
                    f"gave up after waiting {timeout:g}s",
                    hint=(
                        "wait for it to finish or retry with a longer --lock-timeout; if that command is "
                        f"gone for good, release the lock with `flux state unlock {holder.id}`"
                    ),
                )
            time.sleep(min(delay, remaining))
            delay = min(delay * 2, 0.5)

    def unlock(self, lock_id: str, force: bool = False) -> None:
        with self._guard():
            holder = self.lock_info()
            if holder is None:
                raise LockError(f"{self.path}: the stage is not locked (no lock {lock_id})")
            if holder.id != lock_id:
                raise LockError(
                    f"{self.path}: lock {lock_id} is not the current lock; held by {holder.describe()}",
                    hint=f"to release the current lock run `flux state unlock {holder.id}`",
                )
            if not force and holder.pid != os.getpid():
                raise LockError(
                    f"{self.path}: lock {lock_id} belongs to pid {holder.pid}, not to this process",
                    hint="use `flux state unlock ID` to release another command's lock",
                )
            with contextlib.suppress(FileNotFoundError):
                self.lock_info_path.unlink()
            fsync_dir(self.state_dir)
