"""The apply engine through the real `flux` CLI on the `record` provider: failures skip dependents
only, transient errors are retried, Ctrl-C finishes running work and saves, saved plans are pinned,
no prompt without a terminal, deploy from a function directory, replace and destroy."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

from flux_record import world_events, world_resources

FluxRunner = Callable[..., tuple[int, str, str]]
REPO = Path(__file__).resolve().parents[2]
FLUX_BIN = REPO / ".venv" / "bin" / "flux"


def _events(out: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in out.splitlines() if line.startswith("{")]


def _state(root: Path) -> dict[str, Any]:
    return json.loads((root / ".flux" / "dev" / "state.json").read_text())


def _plan(flux: FluxRunner, root: Path) -> dict[str, str]:
    rc, out, err = flux("plan", "--json", cwd=root)
    assert rc == 0, err
    return {c["address"]: c["action"] for c in json.loads(out)["changes"]}


def _creates(root: Path) -> Counter[str]:
    return Counter(e["address"] for e in world_events(root / ".flux" / "dev") if e["event"] == "create")


def test_failure_skips_dependents_only_and_reapply_converges(tmp_path: Path, flux: FluxRunner,
                                                            make_project: Callable[..., Path]) -> None:
    root = make_project(tmp_path, functions={"alpha": None, "beta": None, "gamma": None})
    rc, out, err = flux("apply", "--auto-approve", cwd=root, env={"FLUX_RECORD_FAIL": "function.beta"})
    assert rc == 1, out + err
    assert "Traceback" not in out + err
    assert "injected failure" in out and "route.POST_/beta: skipped" in out
    assert "Not applied:" in out and "1 failed, 1 skipped" in out
    state = _state(root)["resources"]
    assert {"function.alpha", "function.gamma", "route.POST_/alpha", "route.POST_/gamma", "api.dev"} <= set(state)
    assert "function.beta" not in state and "route.POST_/beta" not in state
    assert set(world_resources(root / ".flux" / "dev")) == set(state)
    assert not (root / ".flux" / "dev" / "journal.jsonl").exists()
    assert _plan(flux, root) == {"function.beta": "create", "route.POST_/beta": "create"}
    rc, out, err = flux("apply", "--auto-approve", cwd=root)
    assert rc == 0, out + err
    assert _plan(flux, root) == {}
    assert max(_creates(root).values()) == 1


def test_transient_errors_are_retried(tmp_path: Path, flux: FluxRunner, make_project: Callable[..., Path]) -> None:
    root = make_project(tmp_path, functions={"alpha": None})
    env = {"FLUX_RECORD_TRANSIENT": "function.alpha:2", "FLUX_RETRY_BASE": "0.01"}
    rc, out, err = flux("apply", "--auto-approve", "--json", cwd=root, env=env)
    assert rc == 0, out + err
    evs = _events(out)
    retries = [e for e in evs if e["event"] == "retrying"]
    assert [(e["address"], e["attempt"]) for e in retries] == [("function.alpha", 2), ("function.alpha", 3)]
    assert evs[-1]["event"] == "summary" and evs[-1]["ok"] is True
    # Too many transient failures: the resource fails (after the last attempt), nothing hangs.
    root2 = make_project(tmp_path, functions={"beta": None}, name="p2")
    env = {"FLUX_RECORD_TRANSIENT": "function.beta:9", "FLUX_RETRY_BASE": "0.01", "FLUX_RETRY_ATTEMPTS": "3"}
    rc, out, _ = flux("apply", "--auto-approve", "--json", cwd=root2, env=env)
    assert rc == 1
    summary = _events(out)[-1]
    assert [f["address"] for f in summary["failures"]] == ["function.beta", "route.POST_/beta"]


def test_json_stream_and_outputs(tmp_path: Path, flux: FluxRunner, make_project: Callable[..., Path]) -> None:
    root = make_project(tmp_path, functions={"alpha": None})
    rc, out, err = flux("apply", "--auto-approve", "--json", cwd=root)
    assert rc == 0, err
    evs = _events(out)
    assert len(evs) == len(out.splitlines())  # every stdout line is one JSON object
    assert evs[0]["event"] == "plan" and evs[0]["summary"]["add"] == 3
    started = [e["address"] for e in evs if e["event"] == "started"]
    finished = [e["address"] for e in evs if e["event"] == "finished"]
    assert sorted(started) == sorted(finished) == ["api.dev", "function.alpha", "route.POST_/alpha"]
    assert finished.index("route.POST_/alpha") > finished.index("function.alpha")
    assert evs[-1]["outputs"] == {"url": "record://proj/dev", "resources": 3}
    rc, out, _ = flux("apply", "--auto-approve", cwd=root)
    assert rc == 0 and "url = record://proj/dev" in out and "0 added" in out


def test_what_becomes_ready_goes_first(tmp_path: Path, flux: FluxRunner, make_project: Callable[..., Path]) -> None:
    """A function's route is created right after the function, not after every other function: the function
    serves early, and an apply stopped halfway leaves whole function + route pairs."""
    names = [f"fn{i}" for i in range(6)]
    root = make_project(tmp_path, functions=dict.fromkeys(names))
    rc, out, err = flux("apply", "--auto-approve", "--json", "--parallelism", "1", cwd=root)
    assert rc == 0, out + err
    finished = [e["address"] for e in _events(out) if e["event"] == "finished"]
    pairs = [a for a in finished if a.startswith(("function.", "route."))]
    assert pairs == [a for n in names for a in (f"function.{n}", f"route.POST_/{n}")], finished


def test_no_tty_without_auto_approve_is_refused(tmp_path: Path, flux: FluxRunner,
                                                make_project: Callable[..., Path]) -> None:
    root = make_project(tmp_path)
    rc, out, err = flux("apply", cwd=root, input="yes\n")
    assert rc == 1 and "stdin is not a terminal" in err and "--auto-approve" in err, out + err
    assert "Plan: 3 to add" in out and "Traceback" not in err
    assert not (root / ".flux" / "dev" / "state.json").exists()
    assert world_resources(root / ".flux" / "dev") == {}
    assert flux("apply", "--auto-approve", cwd=root)[0] == 0
    rc, out, err = flux("destroy", cwd=root, input="yes\n")
    assert rc == 1 and "refusing to destroy" in err, out + err
    assert len(world_resources(root / ".flux" / "dev")) == 3 and len(_state(root)["resources"]) == 3


def test_saved_plan_applied_exactly_or_refused_when_stale(tmp_path: Path, flux: FluxRunner,
                                                          make_project: Callable[..., Path],
                                                          write_function: Callable[..., Path]) -> None:
    root = make_project(tmp_path, functions={"alpha": None})
    rc, _, err = flux("plan", "-o", "p1.json", cwd=root)
    assert rc == 0, err
    write_function(root, "beta")  # the project moves on after the plan was saved
    rc, out, err = flux("apply", "p1.json", cwd=root)  # no prompt for a saved plan; exactly its changes
    assert rc == 0, out + err
    assert set(_state(root)["resources"]) == {"api.dev", "function.alpha", "route.POST_/alpha"}
    rc, _, err = flux("plan", "-o", "p2.json", cwd=root)
    assert rc == 0
    rc, out, err = flux("apply", "p1.json", cwd=root)  # already applied: the state moved on
    assert rc == 1 and "stale" in err and "Traceback" not in err
    rc, out, err = flux("apply", "--auto-approve", "--target", "function.beta", cwd=root)
    assert rc == 0, err
    rc, out, err = flux("apply", "p2.json", cwd=root)  # made before the targeted apply
    assert rc == 1 and "stale" in err
    # A fresh saved plan whose pinned bundle vanished from the store is refused, not rebuilt.
    (root / "functions" / "beta" / "index.ts").write_text(
        (root / "functions" / "beta" / "index.ts").read_text().replace("ok: true", "ok: 2"))
    rc, _, err = flux("plan", "-o", "p3.json", cwd=root)
    assert rc == 0, err
    digest = json.loads((root / "p3.json").read_text())["artifacts"]["beta"]
    shutil.rmtree(root / ".flux" / "artifacts" / digest)
    rc, out, err = flux("apply", "p3.json", cwd=root)
    assert rc == 1 and "the bundle of function 'beta' is missing from .flux/artifacts/" in err, out + err
    assert out == ""  # refused before rendering anything
    assert "function.beta" in _state(root)["resources"] and "route.POST_/beta" not in _state(root)["resources"]


def test_deploy_from_function_dir_destroy_and_replace(tmp_path: Path, flux: FluxRunner,
                                                      make_project: Callable[..., Path]) -> None:
    root = make_project(tmp_path, functions={"alpha": None, "beta": None})
    rc, out, err = flux("deploy", cwd=root / "functions" / "beta")
    assert rc == 0, out + err
    assert set(_state(root)["resources"]) == {"api.dev", "function.beta", "route.POST_/beta"}
    rc, out, err = flux("deploy", cwd=root)
    assert rc == 0, err
    assert _plan(flux, root) == {}
    flux_json = root / "functions" / "alpha" / "flux.json"
    flux_json.write_text(json.dumps({"name": "alpha", "runtime": "node"}))
    assert _plan(flux, root)["function.alpha"] == "replace"
    old_id = _state(root)["resources"]["function.alpha"]["outputs"]["id"]
    rc, out, err = flux("apply", "--auto-approve", cwd=root)
    assert rc == 0, out + err
    new = _state(root)["resources"]["function.alpha"]
    assert new["attributes"]["runtime"] == "node" and new["outputs"]["id"] != old_id
    kinds = [e["event"] for e in world_events(root / ".flux" / "dev") if e["address"] == "function.alpha"]
    assert kinds == ["create", "delete", "create"]
    rc, out, err = flux("destroy", "--auto-approve", cwd=root)
    assert rc == 0, out + err
    assert "destroyed" in out
    assert _state(root)["resources"] == {} and world_resources(root / ".flux" / "dev") == {}


def test_sigint_finishes_running_operations_and_saves(tmp_path: Path, flux: FluxRunner, flux_env: dict[str, str],
                                                      make_project: Callable[..., Path]) -> None:
    root = make_project(tmp_path, functions={f"fn{i}": None for i in range(6)})
    env = {**flux_env, "FLUX_RECORD_DELAY": "0.6"}
    proc = subprocess.Popen([str(FLUX_BIN), "apply", "--auto-approve", "--json", "--parallelism", "2"],
                            cwd=root, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        lines: list[str] = []
        for line in proc.stdout:
            lines.append(line)
            if json.loads(line)["event"] == "finished":
                break
        time.sleep(0.1)  # the next operations are in flight now
        proc.send_signal(signal.SIGINT)
        rest = proc.stdout.read()  # (not communicate(): it would skip what the iterator buffered)
        assert proc.stderr is not None
        err = proc.stderr.read()
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    evs = _events("".join(lines) + rest)
    assert proc.returncode == 130, err
    assert any("finishing running operations" in e.get("message", "") for e in evs)
    started = {e["address"] for e in evs if e["event"] == "started"}
    finished = {e["address"] for e in evs if e["event"] == "finished"}
    assert started == finished  # every operation that started was finished, none abandoned
    assert evs[-1]["event"] == "summary" and evs[-1]["interrupted"] is True and evs[-1]["cancelled"] > 0
    state = set(_state(root)["resources"])
    assert state == finished == set(world_resources(root / ".flux" / "dev"))
    assert not (root / ".flux" / "dev" / "journal.jsonl").exists()
    assert not (root / ".flux" / "dev" / "state.lock.json").exists()
    rc, out, err = flux("apply", "--auto-approve", cwd=root)
    assert rc == 0, out + err
    assert _plan(flux, root) == {} and max(_creates(root).values()) == 1


def test_stage_lock_held_by_a_running_apply(tmp_path: Path, flux: FluxRunner, flux_env: dict[str, str],
                                            make_project: Callable[..., Path]) -> None:
    root = make_project(tmp_path, functions={"alpha": None, "beta": None})
    # 5 operations x 4 s: the first apply still holds the lock when a second flux has started, even on a
    # machine so loaded that a flux start-up takes seconds.
    env = {**flux_env, "FLUX_RECORD_DELAY": "4.0"}
    proc = subprocess.Popen([str(FLUX_BIN), "apply", "--auto-approve", "--json", "--parallelism", "1"],
                            cwd=root, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        for line in proc.stdout:
            if json.loads(line)["event"] == "started":
                break
        t0 = time.monotonic()
        rc, _, err = flux("apply", "--auto-approve", "--lock-timeout", "1s", cwd=root)
        assert rc == 1 and time.monotonic() - t0 >= 1.0
        assert f"pid {proc.pid}" in err and "operation 'apply'" in err and "flux state unlock" in err
        rc, _, err = flux("plan", cwd=root)  # read-only commands need no lock
        assert rc == 0, err
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
