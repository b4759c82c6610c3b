"""What the local provider's tests share beyond fixtures (a tmp copy of examples/todo running the real CLI, process
helpers), in a module of its own name: `from conftest import` would find whichever tests directory's conftest
pytest loaded last when several are collected together."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
# the daemon-stopping helper is shared with tests/conformance and tests/docker
sys.path.append(str(REPO / "tests" / "conformance"))
from helpers import stop_daemons  # noqa: E402

EXAMPLE = REPO / "examples" / "todo"
FLUX = REPO / ".venv" / "bin" / "flux"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def pid_alive(pid: int | None) -> bool:
    from flux_local.client import pid_alive as alive

    return alive(pid)


class Project:
    """A tmp copy of examples/todo with its own port and secrets key; runs the real CLI."""

    def __init__(self, root: Path, keys: Path) -> None:
        self.root = root
        self.env = {**os.environ, "XDG_CONFIG_HOME": str(keys), "HOME": str(keys), "NO_COLOR": "1",
                    "PATH": f"{REPO / '.venv' / 'bin'}:{os.environ.get('PATH', '')}"}
        self.env.pop("DATABASE_URL", None)

    def flux(self, *args: str, check: bool = True, timeout: float = 240, cwd: Path | None = None,
             input: str | None = None) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run([str(FLUX), *args], cwd=str(cwd or self.root), env=self.env, text=True,
                              capture_output=True, timeout=timeout, input=input)
        if check and proc.returncode != 0:
            raise AssertionError(f"flux {' '.join(args)} exited {proc.returncode}\nstdout:\n{proc.stdout}\n"
                                 f"stderr:\n{proc.stderr}")
        return proc

    @property
    def stage_dir(self) -> Path:
        return self.root / ".flux" / "dev"

    def daemon_info(self, stage_dir: Path | None = None) -> dict[str, Any] | None:
        path = (stage_dir or self.stage_dir) / "daemon.json"
        return json.loads(path.read_text()) if path.exists() else None

    @property
    def port(self) -> int:
        return int(json.loads((self.root / "flux.project.json").read_text())["stages"]["dev"]["port"])


def _stop_everything(root: Path) -> None:
    """Stop every daemon (and what it started) under root/.flux, by the PIDs it recorded."""
    stop_daemons(root)


def new_todo(base: Path) -> Project:
    """A fresh copy of examples/todo under `base`, on its own free port, with its own secrets key."""
    root = base / "todo"
    shutil.copytree(EXAMPLE, root, ignore=shutil.ignore_patterns(".flux", "node_modules"))
    cfg = json.loads((root / "flux.project.json").read_text())
    cfg["stages"]["dev"]["port"] = free_port()
    (root / "flux.project.json").write_text(json.dumps(cfg, indent=2))
    keys = base / "home"
    keys.mkdir()
    return Project(root, keys)


def process_tree(pid: int) -> list[int]:
    """`pid` and all its descendants (from /proc), e.g. a daemon, its Deno host and node workers."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    out, todo_ = [], [pid]
    while todo_:
        p = todo_.pop()
        out.append(p)
        todo_.extend(children.get(p, []))
    return out
