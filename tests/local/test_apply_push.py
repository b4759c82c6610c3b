"""An apply's edits reach the Deno host as one delta message each over the supervisor channel (the whole table
is pushed only when a host starts), every edit is served once `flux apply` returns, and an apply killed mid-way
has what it did served at once (there is no hold to release)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from flux_local.client import DaemonClient
from local_lib import FLUX, Project

pytestmark = [pytest.mark.slow]

CODE = """import {{ defineFunction }} from "@flux/functions";
export default defineFunction({{ name: "{name}", handler: async () => ({{ fn: "{name}", v: {v} }}) }});
"""


def _write(root: Path, name: str, v: int) -> None:
    d = root / "functions" / name
    d.mkdir(exist_ok=True)
    (d / "flux.json").write_text(json.dumps({"name": name, "method": "GET"}))
    (d / "index.ts").write_text(CODE.format(name=name, v=v))


def _call(port: int, name: str) -> dict[str, object] | None:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/{name}", timeout=30) as resp:
            return dict(json.loads(resp.read()))
    except (urllib.error.URLError, OSError, ValueError):
        return None


def _processes_of(root: Path) -> list[str]:
    """Command lines of live processes that name the project (daemon, host, workers, postgres)."""
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if str(root) in cmd and int(pid) != os.getpid():
            found.append(cmd)
    return found


def _pushes(todo: Project) -> int:
    """Whole-table loads the host applied (its "config applied" records)."""
    out = todo.flux("logs", "--level", "debug", "--json").stdout
    return sum(1 for line in out.splitlines() if line.strip() and json.loads(line).get("msg") == "config applied")


def _sent(todo: Project) -> dict[str, int]:
    return dict(DaemonClient(todo.stage_dir).ok("GET", "/admin/status")["channel"]["by_op"])


def test_apply_sends_one_delta_per_edit_and_serves_every_edit(todo: Project) -> None:
    names = [f"extra{i:02d}" for i in range(24)]
    for name in names:
        _write(todo.root, name, 1)
    todo.flux("apply", "--auto-approve")
    assert _pushes(todo) == 1  # the host's start only: no whole-table push per edit (nor per apply)
    first = _sent(todo)
    assert first["load"] == 1 and first["put_function"] == len(names) + 6 and first["put_route"] == len(names) + 6
    assert first["check"] == len(names) + 6  # checked ahead of the engine, and each verdict taken: once a function
    assert all(_call(todo.port, n) == {"fn": n, "v": 1} for n in names)  # served as apply returned
    for name in names[:12]:
        _write(todo.root, name, 2)
    todo.flux("apply", "--auto-approve")
    after = _sent(todo)
    assert after["put_function"] - first["put_function"] == 12 and after.get("put_route") == first["put_route"]
    assert [_call(todo.port, n) for n in names] == [{"fn": n, "v": 2 if i < 12 else 1} for i, n in enumerate(names)]
    # removing functions is one delta per function and route, and they are gone once the command returns
    for name in names[12:]:
        for f in (todo.root / "functions" / name).iterdir():
            f.unlink()
        (todo.root / "functions" / name).rmdir()
    todo.flux("apply", "--auto-approve")
    gone = _sent(todo)
    assert gone.get("delete_function") == 12 and gone.get("delete_route") == 12 and gone["load"] == 1
    assert _pushes(todo) == 1
    assert all(_call(todo.port, n) is None or _call(todo.port, n) != {"fn": n, "v": 1} for n in names[12:])


def test_a_big_apply_checks_ahead_and_a_module_that_fails_to_load_fails_alone(todo: Project) -> None:
    """More functions than the host checks one by one: the provider checks them all as their bundles appear
    (full batches), and the engine takes each verdict. A module that throws at load still fails its own deploy
    with its message, the old version of nothing is replaced, and every other function serves."""
    names = [f"many{i:02d}" for i in range(20)]
    for name in names:
        _write(todo.root, name, 1)
    broken = todo.root / "functions" / "many07" / "index.ts"
    broken.write_text('throw new Error("bad config at load");\n' + CODE.format(name="many07", v=1))
    # parallelism 2: without the provider's checks ahead, at most 2 checks would wait at once
    out = todo.flux("apply", "--auto-approve", "--parallelism", "2", check=False)
    assert out.returncode == 1, out.stdout + out.stderr
    text = out.stdout + out.stderr
    assert "functions/many07/index.ts: function many07 failed to load: bad config at load" in text, text
    assert _sent(todo)["check"] == len(names) + 6
    logs = todo.flux("logs", "--level", "debug", "--json").stdout
    batches = [json.loads(line)["data"]["functions"] for line in logs.splitlines()
               if line.strip() and json.loads(line).get("msg") == "load check batch"]
    assert batches and max(batches) > 2, batches
    assert _call(todo.port, "many07") is None
    assert all(_call(todo.port, n) == {"fn": n, "v": 1} for n in names if n != "many07")
    broken.write_text(CODE.format(name="many07", v=2))  # fixed: the next apply deploys just that one
    todo.flux("apply", "--auto-approve")
    assert _call(todo.port, "many07") == {"fn": "many07", "v": 2}


def test_killed_apply_still_gets_its_edits_served(todo: Project) -> None:
    todo.flux("apply", "--auto-approve")
    names = [f"late{i:02d}" for i in range(20)]
    for name in names:
        _write(todo.root, name, 7)
    proc = subprocess.Popen([str(FLUX), "apply", "--auto-approve", "--json", "--parallelism", "1"], cwd=todo.root,
                            env=todo.env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    done: list[str] = []
    try:
        assert proc.stdout is not None
        for line in proc.stdout:
            ev = json.loads(line)
            if ev.get("event") == "finished" and str(ev.get("address", "")).startswith("route."):
                done.append(ev["address"])
                if len(done) == 3:
                    break
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    served = [n for n in names if f"route.GET_/{n}" in done]
    assert served, done
    deadline = time.monotonic() + 30  # served as each edit was made (a request may still be in flight)
    while time.monotonic() < deadline and not all(_call(todo.port, n) == {"fn": n, "v": 7} for n in served):
        time.sleep(0.2)
    assert all(_call(todo.port, n) == {"fn": n, "v": 7} for n in served)
    todo.flux("apply", "--auto-approve")  # and the next apply finishes the job
    assert all(_call(todo.port, n) == {"fn": n, "v": 7} for n in names)


def test_an_auto_approved_apply_that_fails_its_code_check_leaves_nothing_running(todo: Project) -> None:
    """An auto-approved apply starts the stage's runtime while the plan's code check runs (get_ready): when that
    check fails, the apply does not happen, so the runtime it started is stopped again and no state is written."""
    _write(todo.root, "broken", 1)
    (todo.root / "functions" / "broken" / "index.ts").write_text(
        'import { defineFunction } from "@flux/functions";\nexport default defineFunction({ name: "broken", '
        "handler: async () => ({ ok: * }) });\n")
    out = todo.flux("apply", "--auto-approve", check=False)
    assert out.returncode == 1, out.stdout + out.stderr
    assert "functions/broken/index.ts:2:" in out.stdout + out.stderr and "syntax error" in out.stdout + out.stderr
    assert todo.daemon_info() is None
    assert not (todo.stage_dir / "state.json").exists()
    assert not (todo.stage_dir / "pg" / "postmaster.pid").exists()  # the database it started was stopped too
    assert _processes_of(todo.root) == []
    (todo.root / "functions" / "broken" / "index.ts").write_text(CODE.format(name="broken", v=1))
    todo.flux("apply", "--auto-approve")  # fixed: it starts the runtime and deploys as ever
    assert _call(todo.port, "broken") == {"fn": "broken", "v": 1}
