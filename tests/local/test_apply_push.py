"""An apply's edits reach the Deno host in one table push at its end (not one per edit), every edit is
served once `flux apply` returns, and an apply killed mid-way still gets what it did served."""

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
from conftest import FLUX, Project

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


def _pushes(todo: Project) -> int:
    out = todo.flux("logs", "--level", "debug", "--json").stdout
    return sum(1 for line in out.splitlines() if line.strip() and json.loads(line).get("msg") == "config applied")


def test_apply_pushes_the_table_once_and_serves_every_edit(todo: Project) -> None:
    names = [f"extra{i:02d}" for i in range(24)]
    for name in names:
        _write(todo.root, name, 1)
    todo.flux("apply", "--auto-approve")
    first = _pushes(todo)
    assert first <= 2, first  # the host's start + the apply's end; one per edit would be ~60
    assert all(_call(todo.port, n) == {"fn": n, "v": 1} for n in names)  # served as apply returned
    for name in names[:12]:
        _write(todo.root, name, 2)
    todo.flux("apply", "--auto-approve")
    assert _pushes(todo) - first == 1
    assert [_call(todo.port, n) for n in names] == [{"fn": n, "v": 2 if i < 12 else 1} for i, n in enumerate(names)]
    # removing functions is one push too, and they are gone once the command returns
    for name in names[12:]:
        for f in (todo.root / "functions" / name).iterdir():
            f.unlink()
        (todo.root / "functions" / name).rmdir()
    before = _pushes(todo)
    todo.flux("apply", "--auto-approve")
    assert _pushes(todo) - before == 1
    assert all(_call(todo.port, n) is None or _call(todo.port, n) != {"fn": n, "v": 1} for n in names[12:])


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
    deadline = time.monotonic() + 30  # the daemon sees the apply gone and serves its edits
    while time.monotonic() < deadline and not all(_call(todo.port, n) == {"fn": n, "v": 7} for n in served):
        time.sleep(0.2)
    assert all(_call(todo.port, n) == {"fn": n, "v": 7} for n in served)
    todo.flux("apply", "--auto-approve")  # and the next apply finishes the job
    assert all(_call(todo.port, n) == {"fn": n, "v": 7} for n in names)
