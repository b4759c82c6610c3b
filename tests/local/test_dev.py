"""`flux dev` in the foreground: serves the project, hot-reloads an edit quickly, survives an invalid
edit, runs beside a deployed stage without touching it, and Ctrl-C stops every process it started."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import time

import pytest
from conftest import FLUX, Project, pid_alive, require_runtime
from test_provider_e2e import http, wait_for

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("local-e2e")]


def test_dev_hot_reload_and_clean_stop(todo: Project) -> None:
    require_runtime()
    proc = subprocess.Popen([str(FLUX), "dev"], cwd=todo.root, env=todo.env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    try:
        dev_dir = todo.root / ".flux" / "dev-dev"
        info = wait_for(lambda: todo.daemon_info(dev_dir), 90)
        port = info["gateway_port"]
        wait_for(lambda: http(port, "POST", "/greet", {"name": "A"})[1] == {"message": "Hello, A!"}, 60)
        greet = todo.root / "functions" / "greet" / "index.ts"
        source = greet.read_text()
        started = time.monotonic()
        greet.write_text(source.replace("Hello", "Hot"))
        wait_for(lambda: http(port, "POST", "/greet", {"name": "A"})[1] == {"message": "Hot, A!"}, 30)
        reload_s = time.monotonic() - started
        print(f"edit -> new code served in {reload_s * 1000:.0f} ms")
        (todo.root / "functions" / "greet" / "flux.json").write_text("{ broken")
        time.sleep(1)
        assert http(port, "POST", "/greet", {"name": "A"})[1] == {"message": "Hot, A!"}
        assert not (todo.root / ".flux" / "dev" / "daemon.json").exists()  # the deployed stage is untouched
        pids = [info["pid"], info["host_pid"], info["pg_pid"]]
    finally:
        proc.send_signal(signal.SIGINT)
        out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 0, out
    assert re.search(r"invalid project|error", out), out
    assert "reloaded" in out
    wait_for(lambda: not any(pid_alive(p) for p in pids), 30)
    assert json.loads((todo.root / "flux.project.json").read_text())["stages"]["dev"]["port"] == todo.port
