"""Crash safety: a real `flux apply` is SIGKILLed early, in the middle and late (some operations in
flight, past their provider call but before their journal `done`). Then `flux plan` shows exactly
what is left to do, and `flux apply` converges without creating anything twice."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import pytest
from flux_record import world_events, world_resources

FluxRunner = Callable[..., tuple[int, str, str]]
REPO = Path(__file__).resolve().parents[2]
FLUX_BIN = REPO / ".venv" / "bin" / "flux"
N_FUNCTIONS = 8  # api + 8 functions + 8 routes = 17 resources


@pytest.mark.parametrize(("finished_before_kill", "extra_wait"), [(0, 0.15), (7, 0.05), (12, 0.15)],
                         ids=["early", "middle", "late"])
def test_sigkill_then_plan_shows_the_rest_and_apply_converges(
    tmp_path: Path, flux: FluxRunner, flux_env: dict[str, str], make_project: Callable[..., Path],
    finished_before_kill: int, extra_wait: float,
) -> None:
    root = make_project(tmp_path, functions={f"fn{i}": None for i in range(N_FUNCTIONS)})
    stage_dir = root / ".flux" / "dev"
    env = {**flux_env, "FLUX_RECORD_DELAY": "0.2"}
    proc = subprocess.Popen([str(FLUX_BIN), "apply", "--auto-approve", "--json", "--parallelism", "3"],
                            cwd=root, env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        assert proc.stdout is not None
        finished = 0
        for line in proc.stdout:
            ev = json.loads(line)
            if ev["event"] == "finished":
                finished += 1
            if ev["event"] == "started" and finished >= finished_before_kill:
                break
        else:
            pytest.fail("the apply ended before the kill point")
        time.sleep(extra_wait)  # (0.15s: past the provider's world write, before the journal's done)
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait()
    assert proc.returncode == -signal.SIGKILL

    live = set(world_resources(stage_dir))
    assert (stage_dir / "journal.jsonl").exists()  # the crash left its journal behind

    rc, out, err = flux("plan", "--json", cwd=root)
    assert rc == 0, err
    plan = json.loads(out)
    remaining = {c["address"]: c["action"] for c in plan["changes"]}
    assert set(remaining.values()) <= {"create"}  # no update, replace or delete: nothing was forgotten
    assert set(remaining).isdisjoint(live)
    # The only "drift" a crash may show: operations whose outcome is unknown and that did not happen.
    assert {d["address"] for d in plan["drift"]} <= set(remaining)
    assert (stage_dir / "journal.jsonl").exists()  # plan is read-only: it folded the journal in memory

    rc, out, err = flux("apply", "--auto-approve", cwd=root)
    assert rc == 0, out + err
    state = json.loads((stage_dir / "state.json").read_text())["resources"]
    assert len(state) == 1 + 2 * N_FUNCTIONS
    assert set(state) == set(world_resources(stage_dir)) == live | set(remaining)
    assert all(rs["status"] == "created" for rs in state.values())
    events = world_events(stage_dir)
    creates = Counter(e["address"] for e in events if e["event"] == "create")
    assert set(creates.values()) == {1}, creates  # nothing created twice
    assert not [e for e in events if e["event"] in ("adopt", "delete")]
    assert not (stage_dir / "journal.jsonl").exists()
    rc, out, err = flux("plan", "--detailed-exitcode", cwd=root)
    assert rc == 0, out + err


def test_second_sigint_abandons_at_once_and_the_next_apply_recovers(
    tmp_path: Path, flux: FluxRunner, flux_env: dict[str, str], make_project: Callable[..., Path],
) -> None:
    root = make_project(tmp_path, functions={f"fn{i}": None for i in range(4)})
    stage_dir = root / ".flux" / "dev"
    env = {**flux_env, "FLUX_RECORD_DELAY": "3.0"}
    proc = subprocess.Popen([str(FLUX_BIN), "apply", "--auto-approve", "--json", "--parallelism", "3"],
                            cwd=root, env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        assert proc.stdout is not None
        for line in proc.stdout:
            if json.loads(line)["event"] == "started":
                break
        time.sleep(1.7)  # operations in flight, past their provider write (at 1.5s), 1.3s from done
        proc.send_signal(signal.SIGINT)
        time.sleep(0.1)
        t0 = time.monotonic()
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=10)
        assert time.monotonic() - t0 < 1.0  # did not wait for the running operations
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 130
    assert (stage_dir / "journal.jsonl").exists() and (stage_dir / "state.lock.json").exists()
    rc, out, err = flux("apply", "--auto-approve", cwd=root)  # takes over the dead process's lock
    assert rc == 0, out + err
    assert "stale lock" in err
    state = json.loads((stage_dir / "state.json").read_text())["resources"]
    assert set(state) == set(world_resources(stage_dir)) and len(state) == 9
    creates = Counter(e["address"] for e in world_events(stage_dir) if e["event"] == "create")
    assert set(creates.values()) == {1}
