"""`flux dev` in the foreground: serves the project, hot-reloads an edit quickly, picks up .env and
`flux secrets set` without a restart, survives an invalid edit, runs beside a deployed stage without
touching it, and Ctrl-C stops every process it started."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import time

import pytest
from local_lib import FLUX, Project, pid_alive, process_tree
from test_provider_e2e import add_function, http, wait_for

pytestmark = [pytest.mark.slow]

SHOW_ENV = (
    'import { defineFunction } from "@flux/functions";\n'
    'export default defineFunction({ name: "show_env", handler: async ({ ctx }) => ({\n'
    '  app: ctx.env.APP_NAME ?? null, secret: await ctx.secrets.get("APP_NAME") }) });\n'
)


def test_dev_hot_reload_and_clean_stop(todo: Project) -> None:
    add_function(todo, "show_env", SHOW_ENV)
    todo.flux("secrets", "set", "APP_NAME=from-secrets")
    proc = subprocess.Popen([str(FLUX), "dev"], cwd=todo.root, env=todo.env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    pids: list[int] = []
    try:
        dev_dir = todo.root / ".flux" / "dev-dev"
        info = wait_for(lambda: todo.daemon_info(dev_dir), 90)
        port = info["gateway_port"]
        wait_for(lambda: http(port, "POST", "/greet", {"name": "A"})[1] == {"message": "Hello, A!"}, 60)
        assert http(port, "POST", "/show_env", {})[1] == {"app": "from-secrets", "secret": "from-secrets"}

        greet = todo.root / "functions" / "greet" / "index.ts"
        source = greet.read_text()
        started = time.monotonic()
        greet.write_text(source.replace("Hello", "Hot"))
        wait_for(lambda: http(port, "POST", "/greet", {"name": "A"})[1] == {"message": "Hot, A!"}, 30)
        print(f"edit -> new code served in {(time.monotonic() - started) * 1000:.0f} ms")

        # configuration reaches the running workers without a restart: .env wins over the stage's secrets
        (todo.root / ".env").write_text("APP_NAME=from-dotenv\n")
        wait_for(lambda: http(port, "POST", "/show_env", {})[1] == {"app": "from-dotenv", "secret": "from-dotenv"}, 30)
        (todo.root / ".env").unlink()
        todo.flux("secrets", "set", "APP_NAME=rotated")
        wait_for(lambda: http(port, "POST", "/show_env", {})[1] == {"app": "rotated", "secret": "rotated"}, 30)

        (todo.root / "functions" / "greet" / "flux.json").write_text("{ broken")
        time.sleep(1)
        assert http(port, "POST", "/greet", {"name": "A"})[1] == {"message": "Hot, A!"}
        assert not (todo.root / ".flux" / "dev" / "daemon.json").exists()  # the deployed stage is untouched
        assert http(port, "POST", "/slugify", {"title": "a b"})[1]["slug"] == "a-b"  # a node worker runs
        pids = [*process_tree(info["pid"]), info["pg_pid"]]
        assert info["host_pid"] in pids and len(pids) >= 4  # flux dev, host, node worker, database
    finally:
        proc.send_signal(signal.SIGINT)
        out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 0, out
    assert re.search(r"invalid project", out), out
    assert "reloaded function greet" in out and "Traceback" not in out
    wait_for(lambda: not any(pid_alive(p) for p in pids), 30)
    assert json.loads((todo.root / "flux.project.json").read_text())["stages"]["dev"]["port"] == todo.port
