"""Docker provider tests: a private dockerd per session (tests/conformance/dockerd.py), skipped with the reason
when this machine has no `dockerd` (or we are not root); projects under /tmp driven through the real CLI."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "conformance"))

from dockerd import PrivateDockerd
from helpers import free_port, stop_daemons

REPO = Path(__file__).resolve().parents[2]
FLUX = REPO / ".venv" / "bin" / "flux"


@pytest.fixture(scope="session")
def docker_host() -> Iterator[str]:
    if shutil.which("dockerd") is None:
        pytest.skip("docker provider: no `dockerd` binary on this machine (Debian: apt-get install docker.io)")
    if os.geteuid() != 0:
        pytest.skip("docker provider: starting a private dockerd needs root")
    engine = PrivateDockerd()
    try:
        yield engine.start()
    finally:
        engine.stop()


@dataclass
class Box:
    root: Path
    env: dict[str, str]

    def flux(self, *args: str, check: bool = True, timeout: float = 600) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run([str(FLUX), *args], cwd=self.root, env=self.env, text=True, capture_output=True,
                              timeout=timeout)
        if check and proc.returncode != 0:
            raise AssertionError(f"flux {' '.join(args)} exited {proc.returncode}\n{proc.stdout}\n{proc.stderr}")
        return proc

    def docker(self) -> Any:
        import docker

        return docker.DockerClient(base_url=self.env["DOCKER_HOST"], timeout=60)

    def state(self, stage: str = "dev") -> dict[str, Any]:
        path = self.root / ".flux" / stage / "state.json"
        return json.loads(path.read_text()) if path.exists() else {"resources": {}}


def fn_files(name: str, runtime: str = "deno") -> dict[str, str]:
    return {
        f"functions/{name}/flux.json": json.dumps({"name": name, "route": f"/{name}", "runtime": runtime}),
        f"functions/{name}/index.ts": (
            'import { defineFunction } from "@flux/functions";\n'
            f'export default defineFunction({{ name: "{name}", handler: async ({{ input }}) => '
            '({ echo: input.v ?? null }) });\n'),
    }


@pytest.fixture
def box(docker_host: str) -> Iterator[Box]:
    base = Path(tempfile.mkdtemp(prefix="flux-docker-test-", dir="/tmp"))
    base.chmod(0o755)
    root = base / "box"
    files = {**fn_files("alpha"), **fn_files("beta", "node")}
    for rel, text in files.items():
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(text)
    stages = {"dev": {"provider": "docker", "port": free_port()}, "dev2": {"provider": "docker", "port": free_port()}}
    (root / "flux.project.json").write_text(json.dumps({"name": "box", "stages": stages}))
    home = base / "home"
    home.mkdir()
    env = {**os.environ, "HOME": str(home), "XDG_CONFIG_HOME": str(home), "NO_COLOR": "1", "DOCKER_HOST": docker_host,
           "PATH": f"{REPO / '.venv' / 'bin'}:{os.environ.get('PATH', '')}"}
    env.pop("DATABASE_URL", None)
    b = Box(root=root, env=env)
    try:
        yield b
    finally:
        for stage in ("dev", "dev2"):
            with contextlib.suppress(Exception):
                b.flux("destroy", "--auto-approve", "--stage", stage, check=False, timeout=300)
        with contextlib.suppress(Exception), contextlib.closing(b.docker()) as d:
            for c in d.containers.list(all=True, filters={"label": "flux.project=box"}):
                c.remove(force=True)
        stop_daemons(root)
        shutil.rmtree(base, ignore_errors=True)
