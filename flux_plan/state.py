"""State of a stage: the snapshot format, folding the apply journal into it, locking, recovery.

A snapshot (`State`) is written whole only at the end of a command (`commit`); during an apply each
operation appends O(1) journal records (`flux_plan.journal`). Reading never writes: `load()` folds a
journal left by a crashed apply in memory, so `flux plan` shows the truth without a lock. The next
locking command `recover()`s: it folds the journal into a new snapshot and refreshes, from the
provider, every resource whose operation began but has no recorded outcome. Nothing created is
forgotten (a pending create is adopted if the provider has it) and nothing is created twice.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, ValidationError

from flux_plan.backends import LockInfo, StateBackend
from flux_plan.backends.local import LocalFileBackend, fsync_dir
from flux_plan.errors import FluxError, ProviderError, StateError
from flux_plan.journal import JOURNAL_FILE, Journal, read_journal
from flux_plan.model import ResourceState

__all__ = ["FORMAT_VERSION", "LocalFileBackend", "LockInfo", "State", "StateBackend", "StateManager"]

FORMAT_VERSION = 1

ReadFn = Callable[[str, ResourceState], "dict[str, Any] | None"]


class State(BaseModel):
    """`.flux/<stage>/state.json`. `pending`: addresses whose last operation has no recorded outcome
    (a crash); the next apply refreshes them from the provider before doing anything else.
    Frozen: a StateManager hands the same parsed State to every read of unchanged bytes."""

    model_config = ConfigDict(frozen=True)

    format_version: int = FORMAT_VERSION
    lineage: str
    serial: int = 0
    resources: dict[str, ResourceState] = {}
    outputs: dict[str, Any] = {}
    pending: list[str] = []

    @classmethod
    def fresh(cls) -> State:
        return cls(lineage=str(uuid.uuid4()), serial=0)

    def to_bytes(self) -> bytes:
        return (self.model_dump_json(indent=1) + "\n").encode()

    def content_key(self) -> str:
        """Everything but the serial: equal keys mean a write would change nothing."""
        return self.model_dump_json(exclude={"serial"})


def fold(state: State, records: list[dict[str, Any]]) -> State:
    """Replay journal records on top of `state` (a copy is returned; `state` is left alone)."""
    resources = dict(state.resources)
    pending: dict[str, dict[str, Any]] = {a: {} for a in state.pending}
    for rec in records:
        addr, kind = rec.get("address"), rec.get("kind")
        if not isinstance(addr, str):
            continue
        if kind == "intent":
            pending[addr] = rec
        elif kind == "done":
            pending.pop(addr, None)
            if rec.get("action") == "delete":
                resources.pop(addr, None)
            else:
                resources[addr] = ResourceState(
                    type=rec.get("type") or addr.split(".", 1)[0],
                    attributes=rec.get("attributes") or {},
                    outputs=rec.get("outputs") or {},
                    dependencies=rec.get("dependencies") or [],
                    status=rec.get("status") or "created",
                )
        elif kind == "failed":
            pending.pop(addr, None)
    for addr, intent in pending.items():
        if addr not in resources and intent.get("action") == "create":
            # The provider may have created it before the crash: record what was asked for, so the
            # refresh can adopt it (provider.read returns it) or drop it (read returns None).
            resources[addr] = ResourceState(
                type=intent.get("type") or addr.split(".", 1)[0],
                attributes=intent.get("attributes") or {},
                dependencies=intent.get("dependencies") or [],
            )
    return state.model_copy(update={"resources": resources, "pending": sorted(pending)})


class StateManager:
    """One stage's state: read-only `load`, and under `locked(...)`: `recover`, `journal`, `commit`."""

    def __init__(
        self, backend: StateBackend, state_dir: Path, log: Callable[[str], None] | None = None
    ) -> None:
        self.backend = backend
        self.state_dir = state_dir
        self.journal_path = state_dir / JOURNAL_FILE
        self._log = log or (lambda msg: print(msg, file=sys.stderr))
        self._version: str | None = None
        self._read_done = False
        self._snapshot_key: str | None = None  # content_key() of the snapshot last read or written
        # (bytes, State, content_key) of the snapshot last parsed: an apply reads the state three times
        # (recover, plan, the engine's recover), ~20-40 ms of parsing each at 1000 functions
        self._parsed: tuple[bytes, State, str] | None = None
        self._lock_depth = 0
        self._lock_info: LockInfo | None = None
        self._journal: Journal | None = None

    # -- reading ----------------------------------------------------------------------------------

    def describe(self) -> str:
        return self.backend.describe()

    def _backup_hint(self) -> str:
        describe_backup = getattr(self.backend, "describe_backup", None)
        where = describe_backup() if describe_backup else f"{self.backend.describe()}.backup"
        has = self.backend.read_backup() is not None
        if has:
            return f"the previous snapshot is kept in {where}: inspect it and copy it over the state file"
        return f"there is no backup ({where} does not exist); fix the file by hand"

    def parse(self, data: bytes, where: str) -> State:
        """Bytes -> State, refusing (never repairing) anything this version cannot read."""
        try:  # pydantic's own JSON parser, strict (what this flux writes): faster than json.loads + model_validate
            state = State.model_validate_json(data, strict=True)
        except (ValueError, RecursionError):
            pass  # the steps below find what is wrong and say so
        else:
            if state.format_version == FORMAT_VERSION:
                return state
        try:
            doc = json.loads(data)
        except (ValueError, RecursionError) as exc:
            raise StateError(
                f"{where}: the state file is not valid JSON ({exc}); it was left untouched",
                hint=self._backup_hint(),
            ) from exc
        if not isinstance(doc, dict):
            raise StateError(f"{where}: the state file is not a JSON object", hint=self._backup_hint())
        version = doc.get("format_version")
        if version != FORMAT_VERSION:
            raise StateError(
                f"{where}: unknown state format_version {version!r} (this flux reads {FORMAT_VERSION}); "
                "it was left untouched",
                hint="use the flux version that wrote it; " + self._backup_hint(),
            )
        try:
            return State.model_validate(doc)
        except ValidationError as exc:
            first = exc.errors()[0]
            path = ".".join(str(p) for p in first["loc"])
            raise StateError(
                f"{where}: invalid state at {path}: {first['msg']}; it was left untouched",
                hint=self._backup_hint(),
            ) from exc

    def _read(self) -> State:
        data, version = self.backend.read()
        self._version = version
        self._read_done = True
        if data is None:
            self._snapshot_key = None
            return State.fresh()
        if self._parsed is not None and self._parsed[0] == data:
            state, key = self._parsed[1], self._parsed[2]
        else:
            state = self.parse(data, self.backend.describe())
            key = state.content_key()
            self._parsed = (data, state, key)
        self._snapshot_key = key
        return state

    def _fold_journal(self, state: State) -> tuple[State, bool]:
        """(state with the leftover journal folded in, whether a journal file was found)."""
        header, records = read_journal(self.journal_path)
        if header is None:
            return state, self.journal_path.exists()
        fresh = self._version is None
        if fresh and header.get("serial") == 0:
            state = state.model_copy(update={"lineage": header.get("lineage", state.lineage)})
        if header.get("lineage") != state.lineage:
            raise StateError(
                f"{self.journal_path}: the journal belongs to another state (lineage "
                f"{header.get('lineage')}, the state is {state.lineage})",
                hint="move the journal away, then run `flux plan` (it refreshes every resource)",
            )
        if header.get("serial") != state.serial:
            return state, True  # committed already (the crash fell between snapshot and truncate)
        return fold(state, records), True

    def load(self) -> State:
        """The current state, with a crashed apply's journal folded in memory. Never writes."""
        state, _ = self._fold_journal(self._read())
        return state

    # -- locking ----------------------------------------------------------------------------------

    @property
    def lock_id(self) -> str | None:
        return self._lock_info.id if self._lock_info else None

    @contextlib.contextmanager
    def locked(self, operation: str, timeout: float) -> Iterator[None]:
        """Hold the stage lock (reentrant in this process). `LockError` after `timeout` seconds."""
        if self._lock_depth:
            self._lock_depth += 1
            try:
                yield
            finally:
                self._lock_depth -= 1
            return
        info = LockInfo.new(operation)
        self.backend.lock(info, timeout)
        stale = getattr(self.backend, "stale_taken_over", None)
        if stale is not None:
            self._log(f"note: took over a stale lock of a process that is gone ({stale.describe()})")
        self._lock_info, self._lock_depth = info, 1
        try:
            yield
        finally:
            self._lock_depth = 0
            self._lock_info = None
            if self._journal is not None:
                self._journal.close()  # records stay: the next command recovers from them
                self._journal = None
            try:
                self.backend.unlock(info.id)
            except FluxError as exc:  # someone force-unlocked us: say so, do not mask the real error
                self._log(f"warning: {exc.render()}")

    def _require_lock(self, what: str) -> None:
        if not self._lock_depth:
            raise RuntimeError(f"StateManager.{what} needs the stage lock (use `with sm.locked(...)`)")

    # -- writing (under the lock) -----------------------------------------------------------------

    def recover(self, read: ReadFn | None = None) -> State:
        """Fold a leftover journal into a new snapshot. With `read` (provider.read), resources whose
        operation has no outcome are refreshed: adopted if they exist, dropped if not."""
        self._require_lock("recover")
        state, had_journal = self._fold_journal(self._read())
        changed = had_journal
        if state.pending and read is not None:
            resources = dict(state.resources)
            for addr in state.pending:
                prior = resources.get(addr)
                if prior is None:
                    continue
                try:
                    live = read(addr, prior)
                except ProviderError as exc:
                    raise FluxError(
                        f"{addr}: refreshing it after an interrupted apply failed: {exc}",
                        hint="check that the provider is reachable, then run the command again "
                        f"(the journal {self.journal_path} is kept until then)",
                    ) from exc
                if live is None:
                    resources.pop(addr)
                else:
                    resources[addr] = prior.model_copy(update={"attributes": live, "status": "created"})
            state = state.model_copy(update={"resources": resources, "pending": []})
            changed = True
        if changed:
            state = self.commit(state)
        return state

    def journal(self, state: State) -> Journal:
        """Start the write-ahead journal for an apply on top of `state` (the last committed one)."""
        self._require_lock("journal")
        if self._journal is not None or self.journal_path.exists():
            raise StateError(
                f"{self.journal_path}: a journal is already open",
                hint="internal: call recover() before journal()",
            )
        self._journal = Journal(self.journal_path, state.lineage, state.serial)
        return self._journal

    def commit(self, state: State, *, force: bool = False) -> State:
        """Write `state` as the new snapshot (serial + 1) and drop the journal it folds.

        Skips the write when nothing but the serial would change, so a no-op apply leaves saved
        plans fresh. `force` writes even then (state push)."""
        self._require_lock("commit")
        if not self._read_done:
            self._read()
        if not force and self._snapshot_key is not None and self._snapshot_key == state.content_key():
            new = state
        else:
            new = state.model_copy(update={"serial": state.serial + 1})
            self._version = self.backend.write(new.to_bytes(), self._version)
            self._snapshot_key = new.content_key()
        if self._journal is not None:
            self._journal.close()
            self._journal = None
        if self.journal_path.exists():
            os.unlink(self.journal_path)
            fsync_dir(self.state_dir)
        return new

    def write_snapshot(self, state: State) -> State:
        """Replace the snapshot with `state` as given (serial included): `flux state push`."""
        self._require_lock("write_snapshot")
        if not self._read_done:
            self._read()
        self._version = self.backend.write(state.to_bytes(), self._version)
        self._snapshot_key = state.content_key()
        return state
