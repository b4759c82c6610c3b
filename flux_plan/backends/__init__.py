"""The state backend contract: where a stage's state snapshot lives and how it is locked.

A backend only moves bytes and holds a lock; the state format, the journal and recovery live in
`flux_plan.state`. Two implementations: `backends.local.LocalFileBackend` (the default) and the S3
backend of the AWS provider. Keep both small: the crash-safety argument rests on `write` being atomic
and conditional on the version token returned by the previous `read`/`write`.
"""

from __future__ import annotations

import getpass
import os
import socket
import uuid
from datetime import UTC, datetime
from typing import Protocol, runtime_checkable

from pydantic import BaseModel


class LockInfo(BaseModel):
    """Who holds a stage's lock: shown when another command has to wait or give up."""

    id: str
    pid: int
    host: str
    operation: str
    created: str  # ISO 8601, UTC
    who: str

    @classmethod
    def new(cls, operation: str) -> LockInfo:
        try:
            who = getpass.getuser()
        except Exception:  # no passwd entry (containers): the uid is still useful
            who = str(os.getuid())
        return cls(
            id=str(uuid.uuid4()),
            pid=os.getpid(),
            host=socket.gethostname(),
            operation=operation,
            created=datetime.now(UTC).isoformat(timespec="seconds"),
            who=who,
        )

    def describe(self) -> str:
        return (
            f"ID {self.id}, operation {self.operation!r}, pid {self.pid} on {self.host}, "
            f"by {self.who} since {self.created}"
        )

    def is_stale(self) -> bool:
        """True when the holder ran on this host and its process is gone (it cannot release it)."""
        if self.host != socket.gethostname():
            return False
        try:
            os.kill(self.pid, 0)
        except ProcessLookupError:
            return True
        except PermissionError:
            return False
        return False


@runtime_checkable
class StateBackend(Protocol):
    """Bytes + lock for one stage's state snapshot."""

    def describe(self) -> str:
        """Where the state lives, for messages: a path or `s3://bucket/key`."""
        ...

    def read(self) -> tuple[bytes | None, str | None]:
        """(snapshot bytes, version token) or (None, None) when no state exists yet."""
        ...

    def write(self, data: bytes, expected_version: str | None) -> str:
        """Atomically replace the snapshot if its version is still `expected_version` (None: must
        not exist); keep the previous snapshot as the backup. Returns the new version token.
        Raises `StateError` when the version moved on."""
        ...

    def read_backup(self) -> bytes | None:
        """The previous snapshot, if any."""
        ...

    def lock(self, info: LockInfo, timeout: float) -> None:
        """Take the stage lock, waiting up to `timeout` seconds; `LockError` naming the holder."""
        ...

    def unlock(self, lock_id: str, force: bool = False) -> None:
        """Release the lock `lock_id`; with `force`, release it even if another process holds it."""
        ...

    def lock_info(self) -> LockInfo | None:
        """The current holder, or None when the stage is not locked."""
        ...
