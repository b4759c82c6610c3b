"""examples/gitops/ci/flux-ci.sh, the steps of the GitOps workflow, run for real against the local
provider: PR plan (sealed plan + comment markdown + pinned bundles) -> apply on a runner without the
bundles -> refusals of an edited plan, a swapped bundle and a stale plan -> nightly drift check."""

from __future__ import annotations

import json
import shutil
import subprocess

import pytest
from local_lib import REPO, Project
from test_provider_e2e import http

pytestmark = [pytest.mark.slow]
SCRIPT = REPO / "examples" / "gitops" / "ci" / "flux-ci.sh"


def ci(todo: Project, *args: str) -> tuple[subprocess.CompletedProcess[str], dict[str, str]]:
    outputs = todo.root / "github_output"
    outputs.write_text("")
    env = {**todo.env, "FLUX": str(REPO / ".venv" / "bin" / "flux"), "GITHUB_OUTPUT": str(outputs),
           "FLUX_STAGE": "dev"}
    proc = subprocess.run([str(todo.root / "ci" / "flux-ci.sh"), *args], cwd=todo.root, env=env, text=True,
                          capture_output=True, timeout=300, check=False)
    return proc, dict(line.split("=", 1) for line in outputs.read_text().splitlines() if "=" in line)


def test_gitops_script_on_the_local_provider(todo: Project) -> None:
    (todo.root / "ci").mkdir()
    shutil.copy(SCRIPT, todo.root / "ci" / "flux-ci.sh")
    todo.flux("secrets", "set", "REMINDER_WEBHOOK_TOKEN=tok-initial-1234", "APP_NAME=todo-ci")
    proc, outs = ci(todo, "plan", "pr1")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert outs == {"changes": "true"}
    md = (todo.root / "pr1" / "plan.md").read_text()
    assert md.startswith("<!-- flux-plan:dev -->\n### Flux plan: `todo` / stage `dev`") and "to add" in md
    assert "tok-initial-1234" not in md and "<details>" in md
    plan = json.loads((todo.root / "pr1" / "plan.json").read_text())
    assert sorted(p.name for p in (todo.root / "pr1" / "bundles").iterdir()) == sorted(set(plan["artifacts"].values()))

    shutil.rmtree(todo.root / ".flux" / "artifacts")  # the merge job runs on another machine
    proc, _ = ci(todo, "apply", "pr1")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "Apply complete!" in proc.stdout
    assert http(todo.port, "POST", "/greet", {"name": "CI"})[1] == {"message": "Hello, CI!"}
    proc, outs = ci(todo, "plan", "pr2")
    assert proc.returncode == 0 and outs == {"changes": "false"}

    greet = todo.root / "functions" / "greet" / "index.ts"
    greet.write_text(greet.read_text().replace("Hello", "Merged"))
    proc, outs = ci(todo, "plan", "pr3")
    assert proc.returncode == 0 and outs == {"changes": "true"}, proc.stderr
    shutil.copytree(todo.root / "pr3", todo.root / "edited")
    doc = json.loads((todo.root / "edited" / "plan.json").read_text())
    doc["changes"][0]["resource"]["attributes"]["timeout"] = 900
    (todo.root / "edited" / "plan.json").write_text(json.dumps(doc))
    proc, _ = ci(todo, "apply", "edited")
    assert proc.returncode == 1 and "changed after it was sealed" in proc.stderr and proc.stdout == ""
    shutil.rmtree(todo.root / ".flux" / "artifacts")
    shutil.copytree(todo.root / "pr3", todo.root / "swapped")
    for bundle in (todo.root / "swapped" / "bundles").glob("*/index.mjs"):
        bundle.write_text(bundle.read_text().replace("Merged", "Swapped"))
    proc, _ = ci(todo, "apply", "swapped")
    assert proc.returncode == 1 and "is not the one the plan pinned" in proc.stderr, proc.stderr
    assert http(todo.port, "POST", "/greet", {"name": "CI"})[1] == {"message": "Hello, CI!"}
    shutil.rmtree(todo.root / ".flux" / "artifacts")
    proc, outs = ci(todo, "plan", "pr4")  # a second PR planned against the same state
    assert proc.returncode == 0
    proc, _ = ci(todo, "apply", "pr3")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert http(todo.port, "POST", "/greet", {"name": "CI"})[1] == {"message": "Merged, CI!"}
    proc, _ = ci(todo, "apply", "pr4")
    assert proc.returncode == 1 and "stale" in proc.stderr and proc.stdout == ""

    proc, outs = ci(todo, "drift", "nightly")
    assert proc.returncode == 0 and outs == {"drifted": "false"}, proc.stderr
    assert not (todo.root / "nightly" / "drift.md").exists()
