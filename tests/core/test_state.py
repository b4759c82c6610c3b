"""State snapshot, backup, refusal of damaged state, journal fold/recovery and the stage lock
(contended between two real processes)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from jsonschema import Draft202012Validator

from flux_plan.backends import LockInfo
from flux_plan.backends.local import LocalFileBackend
from flux_plan.errors import LockError, StateError
from flux_plan.journal import read_journal
from flux_plan.model import ResourceState
from flux_plan.paths import schema_path
from flux_plan.state import StateManager

FluxRunner = Callable[..., tuple[int, str, str]]


def _sm(d: Path) -> StateManager:
    return StateManager(LocalFileBackend(d), d, log=lambda _m: None)


def _rs(**attrs: object) -> ResourceState:
    return ResourceState(type="function", attributes=dict(attrs))


def test_fresh_state_round_trip_and_backup(tmp_path: Path) -> None:
    sm = _sm(tmp_path)
    fresh = sm.load()
    assert fresh.serial == 0 and fresh.resources == {} and len(fresh.lineage) == 36
    assert sm.load().lineage != fresh.lineage  # a state never written has no lineage yet
    with sm.locked("test", 5):
        s1 = sm.commit(fresh.model_copy(update={"resources": {"function.a": _rs(runtime="deno")}}))
    assert s1.serial == 1
    assert not (tmp_path / "state.json.backup").exists()
    with sm.locked("test", 5):
        s2 = sm.commit(s1.model_copy(update={"resources": {**s1.resources, "function.b": _rs(runtime="node")}}))
    assert s2.serial == 2 and s2.lineage == fresh.lineage
    loaded = _sm(tmp_path).load()
    assert loaded == s2
    doc = json.loads((tmp_path / "state.json").read_text())
    Draft202012Validator(json.loads(schema_path("state").read_text())).validate(doc)
    backup = json.loads((tmp_path / "state.json.backup").read_text())
    assert backup["serial"] == 1 and list(backup["resources"]) == ["function.a"]
    # No temporary files are left next to the snapshot.
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")) == []


def test_commit_without_change_keeps_the_serial(tmp_path: Path) -> None:
    sm = _sm(tmp_path)
    with sm.locked("test", 5):
        s1 = sm.commit(sm.load().model_copy(update={"resources": {"function.a": _rs(x=1)}}))
        assert sm.commit(s1).serial == s1.serial  # nothing changed: saved plans stay fresh


@pytest.mark.parametrize("content", [b'{"format_version": 1, "lineage": "x", "ser', b'{"format_version": 7, '
                                     b'"lineage": "x", "serial": 3, "resources": {}}',
                                     b'{"format_version": "1", "lineage": "x", "serial": 3, "resources": {}}'])
def test_damaged_or_unknown_state_is_refused_untouched(tmp_path: Path, content: bytes) -> None:
    sm = _sm(tmp_path)
    with sm.locked("test", 5):
        s1 = sm.commit(sm.load().model_copy(update={"resources": {"function.a": _rs(x=1)}}))
        sm.commit(s1.model_copy(update={"resources": {"function.b": _rs(x=2)}}))
    path = tmp_path / "state.json"
    path.write_bytes(content)
    for action in ("load", "recover"):
        sm2 = _sm(tmp_path)
        with pytest.raises(StateError) as info:
            if action == "load":
                sm2.load()
            else:
                with sm2.locked("apply", 5):
                    sm2.recover()
        msg = info.value.render()
        assert str(path) in msg and str(tmp_path / "state.json.backup") in msg
        assert ("format_version 7" in msg) == (b'"format_version": 7' in content)
        assert ("format_version '1'" in msg) == (b'"format_version": "1"' in content)
        assert path.read_bytes() == content  # never overwritten
    assert not (tmp_path / "state.lock.json").exists()  # the lock was released despite the error


def _journal_apply(sm: StateManager, ops: list[tuple[str, str, str]]) -> None:
    """Simulate an apply that dies: (kind, address, action) records, no commit."""
    st = sm.recover()
    j = sm.journal(st)
    for kind, addr, action in ops:
        if kind == "intent":
            j.intent(addr, action, type_="function", attributes={"v": addr}, dependencies=[])
        elif kind == "done":
            j.done(addr, action, None if action == "delete" else
                   {"type": "function", "attributes": {"v": addr}, "outputs": {"id": 1}, "dependencies": []})
        else:
            j.failed(addr, action, "boom")
    j.close()


def test_journal_fold_in_memory_then_recover(tmp_path: Path) -> None:
    sm = _sm(tmp_path)
    with sm.locked("seed", 5):
        base = sm.commit(sm.load().model_copy(update={"resources": {"function.old": _rs(v=0),
                                                                     "function.gone": _rs(v=0)}}))
        _journal_apply(sm, [
            ("intent", "function.a", "create"), ("done", "function.a", "create"),
            ("intent", "function.gone", "delete"), ("done", "function.gone", "delete"),
            ("intent", "function.f", "create"), ("failed", "function.f", "create"),
            ("intent", "function.p", "create"),  # crash: no outcome
            ("intent", "function.q", "create"),  # crash: no outcome
        ])
    snapshot = (tmp_path / "state.json").read_bytes()
    loaded = _sm(tmp_path).load()
    assert (tmp_path / "state.json").read_bytes() == snapshot  # load never writes
    assert loaded.serial == base.serial
    assert set(loaded.resources) == {"function.old", "function.a", "function.p", "function.q"}
    assert loaded.pending == ["function.p", "function.q"]

    live = {"function.p": {"v": "function.p"}}  # the provider had created p, not q
    sm2 = _sm(tmp_path)
    with sm2.locked("apply", 5):
        rec = sm2.recover(read=lambda addr, prior: live.get(addr))
    assert rec.serial == base.serial + 1 and rec.pending == []
    assert set(rec.resources) == {"function.old", "function.a", "function.p"}
    assert rec.resources["function.a"].outputs == {"id": 1}
    assert not (tmp_path / "journal.jsonl").exists()
    assert _sm(tmp_path).load() == rec


def test_journal_already_committed_is_ignored(tmp_path: Path) -> None:
    """A crash between writing the snapshot and removing the journal must not replay it twice."""
    sm = _sm(tmp_path)
    with sm.locked("seed", 5):
        sm.commit(sm.load().model_copy(update={"resources": {"function.a": _rs(v=0)}}))
        _journal_apply(sm, [("intent", "function.a", "delete"), ("done", "function.a", "delete")])
        kept = (tmp_path / "journal.jsonl").read_bytes()
        st = sm.recover()
        assert st.resources == {}
    (tmp_path / "journal.jsonl").write_bytes(kept)  # as if the unlink had not happened
    sm2 = _sm(tmp_path)
    with sm2.locked("seed", 5):
        sm2.commit(sm2.recover().model_copy(update={"resources": {"function.a": _rs(v=1)}}))
    (tmp_path / "journal.jsonl").write_bytes(kept)
    assert "function.a" in _sm(tmp_path).load().resources  # stale journal: not folded


def test_torn_journal_tail_is_tolerated_and_damage_refused(tmp_path: Path) -> None:
    sm = _sm(tmp_path)
    with sm.locked("seed", 5):
        _journal_apply(sm, [("intent", "function.a", "create"), ("done", "function.a", "create")])
    path = tmp_path / "journal.jsonl"
    with path.open("ab") as f:
        f.write(b'{"op": 3, "kind": "intent", "addr')  # the process died mid-write
    assert set(_sm(tmp_path).load().resources) == {"function.a"}
    lines = path.read_bytes().split(b"\n")
    lines[1] = b"garbage"
    path.write_bytes(b"\n".join(lines))
    with pytest.raises(StateError, match=r"journal.jsonl:2: the apply journal is damaged"):
        _sm(tmp_path).load()


def test_group_commit_shares_fsyncs(tmp_path: Path) -> None:
    sm = _sm(tmp_path)
    with sm.locked("apply", 5):
        j = sm.journal(sm.recover())

        def worker(k: int) -> None:
            for i in range(50):
                j.intent(f"function.w{k}_{i}", "create", type_="function", attributes={}, dependencies=[])
                j.done(f"function.w{k}_{i}", "create", {"type": "function", "attributes": {}})

        threads = [threading.Thread(target=worker, args=(k,)) for k in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        header, records = read_journal(tmp_path / "journal.jsonl")
        assert header is not None and len(records) == 800
        assert sorted(r["op"] for r in records) == list(range(1, 801))  # every record whole, numbered once
        assert j.fsyncs < 800  # concurrent records rode on each other's fsync
        st = sm.commit(sm.load())
    assert len(st.resources) == 400


HOLDER = """
import sys, time
from pathlib import Path
from flux_plan.backends.local import LocalFileBackend
from flux_plan.state import StateManager
d = Path(sys.argv[1])
sm = StateManager(LocalFileBackend(d), d)
with sm.locked("apply", 5):
    print(sm.lock_id, flush=True)
    time.sleep(120)
"""


def _start_holder(state_dir: Path) -> tuple[subprocess.Popen[str], str]:
    proc = subprocess.Popen([sys.executable, "-c", HOLDER, str(state_dir)], stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    lock_id = proc.stdout.readline().strip()
    assert lock_id, "holder did not take the lock"
    return proc, lock_id


def test_lock_contention_between_two_processes(tmp_path: Path) -> None:
    d = tmp_path / "stage"
    proc, lock_id = _start_holder(d)
    try:
        sm = _sm(d)
        t0 = time.monotonic()
        with pytest.raises(LockError) as info, sm.locked("apply", 1.0):
            pass
        assert time.monotonic() - t0 >= 0.9
        msg = info.value.render()
        assert lock_id in msg and f"pid {proc.pid}" in msg and "'apply'" in msg
        assert f"flux state unlock {lock_id}" in msg
        info_doc = LockInfo.model_validate_json((d / "state.lock.json").read_text())
        assert (info_doc.id, info_doc.pid, info_doc.operation) == (lock_id, proc.pid, "apply")
        # Releasing needs the right id; then the lock is free for the waiting command.
        with pytest.raises(LockError, match="is not the current lock"):
            LocalFileBackend(d).unlock("not-" + lock_id, force=True)
        LocalFileBackend(d).unlock(lock_id, force=True)
        with sm.locked("apply", 1.0):
            assert sm.lock_id and sm.lock_id != lock_id
    finally:
        proc.kill()
        proc.wait()


def test_stale_lock_of_a_dead_process_is_taken_over(tmp_path: Path) -> None:
    d = tmp_path / "stage"
    proc, lock_id = _start_holder(d)
    proc.kill()
    proc.wait()
    notes: list[str] = []
    sm = StateManager(LocalFileBackend(d), d, log=notes.append)
    with sm.locked("apply", 1.0):
        pass
    assert any(lock_id in n and "stale" in n for n in notes)
    assert not (d / "state.lock.json").exists()


def test_state_cli_list_show_rm_pull_push_unlock(tmp_path: Path, flux: FluxRunner,
                                                  make_project: Callable[..., Path]) -> None:
    root = make_project(tmp_path, functions={"alpha": None, "beta": None})
    rc, out, err = flux("apply", "--auto-approve", cwd=root)
    assert rc == 0, out + err
    rc, out, _ = flux("state", "list", cwd=root)
    assert rc == 0 and "function.alpha" in out.split() and "function.beta" in out.split()
    rc, out, _ = flux("state", "show", "function.alpha", cwd=root)
    assert rc == 0 and json.loads(out)["attributes"]["runtime"] == "deno"
    rc, out, _ = flux("state", "pull", cwd=root)
    pulled = json.loads(out)
    serial = pulled["serial"]
    rc, out, err = flux("state", "rm", "function.beta", cwd=root)
    assert rc == 0, err
    assert "function.beta" not in json.loads(flux("state", "pull", cwd=root)[1])["resources"]
    # push refuses an older serial, accepts with --force, and moves the serial past both.
    (tmp_path / "old.json").write_text(json.dumps(pulled))
    rc, _, err = flux("state", "push", str(tmp_path / "old.json"), cwd=root)
    assert rc == 1 and "older" in err
    rc, out, err = flux("state", "push", "--force", str(tmp_path / "old.json"), cwd=root)
    assert rc == 0, err
    now = json.loads(flux("state", "pull", cwd=root)[1])
    assert "function.beta" in now["resources"] and now["serial"] == serial + 2
    other = {**pulled, "lineage": "another"}
    (tmp_path / "other.json").write_text(json.dumps(other))
    rc, _, err = flux("state", "push", str(tmp_path / "other.json"), cwd=root)
    assert rc == 1 and "lineage" in err

    state_dir = root / ".flux" / "dev"
    proc, lock_id = _start_holder(state_dir)
    try:
        rc, _, err = flux("state", "rm", "function.alpha", "--lock-timeout", "1s", cwd=root)
        assert rc == 1 and lock_id in err and str(proc.pid) in err and "Traceback" not in err
        rc, out, err = flux("state", "unlock", lock_id, cwd=root)
        assert rc == 0 and f"Released lock {lock_id}" in out
        rc, _, err = flux("state", "rm", "function.alpha", "--lock-timeout", "1s", cwd=root)
        assert rc == 0, err
    finally:
        proc.kill()
        proc.wait()
    assert os.listdir(state_dir)  # still there; nothing else to check: the world kept alpha
