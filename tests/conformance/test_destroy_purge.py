"""`flux destroy` keeps the stage's data, `flux destroy --purge` removes it (local and docker; README "Destroy").

Plain destroy removes the stage's compute (processes, containers, Flux-built images) and what Flux recorded, and
keeps the data: the PostgreSQL data dir (.flux/<stage>/pg), the async queue, the logs, and docker volumes labelled
with the stage, so a later deploy finds the rows again. `--purge` also removes those; volumes of another stage stay."""

from __future__ import annotations

import contextlib
import json
import shutil
import subprocess
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from conformance_lib import FLUX, fn, scratch_project
from helpers import free_port, stop_daemons

pytestmark = [pytest.mark.conformance, pytest.mark.slow]

FILES = {
    "schema/001_notes.sql": "CREATE TABLE notes (id serial PRIMARY KEY, body text NOT NULL);\n",
    **fn("notes", (
        'export default defineFunction({\n  name: "notes",\n  handler: async ({ input, ctx }) => {\n'
        '    if (input.body) await ctx.db.query({ table: "notes", operation: "insert", values: { body: input.body } });\n'
        '    const rows = await ctx.db.query({ table: "notes", operation: "select", columns: ["body"],\n'
        '      order: [{ column: "id", direction: "asc" }] });\n'
        '    return { bodies: rows.map((r) => r.body) };\n  },\n});\n'
    ), route="/notes", method="POST"),
}


@dataclass
class Proj:
    provider: str
    root: Path
    env: dict[str, str]
    port: int

    def flux(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run([str(FLUX), *args], cwd=self.root, env=self.env, text=True, capture_output=True,
                              timeout=600)
        if check and proc.returncode != 0:
            raise AssertionError(f"flux {' '.join(args)} -> {proc.returncode}\n{proc.stdout}\n{proc.stderr}")
        return proc

    def notes(self, body: str | None = None) -> list[str]:
        req = urllib.request.Request(f"http://127.0.0.1:{self.port}/notes", method="POST",
                                     data=json.dumps({"body": body} if body else {}).encode(),
                                     headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=60) as resp:
            return list(json.loads(resp.read())["bodies"])

    @property
    def stage_dir(self) -> Path:
        return self.root / ".flux" / "dev"

    def docker(self) -> Any:
        import docker

        return docker.DockerClient(base_url=self.env["DOCKER_HOST"], timeout=60)


@pytest.fixture(params=["local", "docker"])
def proj(request: pytest.FixtureRequest) -> Iterator[Proj]:
    provider: str = request.param
    base, root, env = scratch_project(provider, "purge", FILES)
    port = free_port()
    if provider == "docker":
        env["DOCKER_HOST"] = request.getfixturevalue("docker_host")
    (root / "flux.project.json").write_text(json.dumps({"name": "purge", "stages": {
        "dev": {"provider": provider, "port": port}}}))
    p = Proj(provider, root, env, port)
    try:
        yield p
    finally:
        p.flux("destroy", "--auto-approve", "--purge", check=False)
        stop_daemons(root)
        if provider == "docker":
            with contextlib.suppress(Exception), contextlib.closing(p.docker()) as d:
                for c in d.containers.list(all=True, filters={"label": "flux.project=purge"}):
                    c.remove(force=True)
                for v in d.volumes.list(filters={"label": "flux.project=purge"}):
                    v.remove(force=True)
        shutil.rmtree(base, ignore_errors=True)


def _volumes(p: Proj) -> set[str]:
    if p.provider != "docker":
        return set()
    with contextlib.closing(p.docker()) as d:
        return {v.name for v in d.volumes.list(filters={"label": "flux.project=purge"})}


@pytest.mark.timeout(900)
def test_destroy_keeps_data_and_purge_removes_it(proj: Proj) -> None:
    proj.flux("deploy")
    assert proj.notes("kept across a plain destroy") == ["kept across a plain destroy"]
    if proj.provider == "docker":  # data volumes of this stage and of another one (what --purge must not touch)
        with contextlib.closing(proj.docker()) as d:
            d.volumes.create("purge-dev-data", labels={"flux.project": "purge", "flux.stage": "dev"})
            d.volumes.create("purge-other-data", labels={"flux.project": "purge", "flux.stage": "other"})

    # --purge with --target is refused before anything changes
    refused = proj.flux("destroy", "--auto-approve", "--purge", "--target", "function.notes", check=False)
    assert refused.returncode == 1 and "cannot be combined with --target" in refused.stderr + refused.stdout
    assert "Traceback" not in refused.stderr
    assert proj.notes() == ["kept across a plain destroy"]

    # plain destroy: compute and state go, data stays (and a new deploy serves the old rows)
    proj.flux("destroy", "--auto-approve")
    assert json.loads((proj.stage_dir / "state.json").read_text())["resources"] == {}
    assert not (proj.stage_dir / "daemon.json").exists()
    for name in ("pg", "logs"):
        assert (proj.stage_dir / name).is_dir(), f"plain destroy removed {name}"
    assert _volumes(proj) == ({"purge-dev-data", "purge-other-data"} if proj.provider == "docker" else set())
    proj.flux("deploy")
    assert proj.notes() == ["kept across a plain destroy"]

    # --purge: the stage's data goes too; another stage's volume stays; a new deploy starts empty
    out = proj.flux("destroy", "--auto-approve", "--purge")
    assert "purged" in out.stdout + out.stderr
    assert json.loads((proj.stage_dir / "state.json").read_text())["resources"] == {}
    for name in ("pg", "queue", "logs"):
        assert not (proj.stage_dir / name).exists(), f"--purge left {name}"
    assert _volumes(proj) == ({"purge-other-data"} if proj.provider == "docker" else set())
    proj.flux("deploy")
    assert proj.notes("again") == ["again"]

    # a saved destroy plan made with --purge does the same (and --purge without --destroy is refused)
    refused = proj.flux("plan", "--purge", check=False)
    assert refused.returncode == 1 and "--purge goes with --destroy" in refused.stderr + refused.stdout
    plan = proj.root / "purge.plan"
    proj.flux("plan", "--destroy", "--purge", "-o", str(plan))
    assert json.loads(plan.read_text())["purge"] is True
    proj.flux("apply", str(plan))
    for name in ("pg", "queue", "logs"):
        assert not (proj.stage_dir / name).exists(), f"the saved --purge plan left {name}"
