"""examples/gitops/ci/flux-ci.sh against the AWS provider on a moto server, state in S3: the PR plan is
applied exactly by another "runner" (no local bundles), then the nightly drift check finds a function
changed in the console and writes the report."""

from __future__ import annotations

import shutil
import subprocess

import pytest
from aws_lib import FLUX, REPO, AwsProject

pytestmark = [pytest.mark.slow]
SCRIPT = REPO / "examples" / "gitops" / "ci" / "flux-ci.sh"


def ci(proj: AwsProject, *args: str) -> tuple[subprocess.CompletedProcess[str], dict[str, str]]:
    outputs = proj.root / "github_output"
    outputs.write_text("")
    env = {**proj.env, "FLUX": str(FLUX), "GITHUB_OUTPUT": str(outputs), "FLUX_STAGE": "prod"}
    proc = subprocess.run([str(proj.root / "ci" / "flux-ci.sh"), *args], cwd=proj.root, env=env, text=True,
                          capture_output=True, timeout=600, check=False)
    return proc, dict(line.split("=", 1) for line in outputs.read_text().splitlines() if "=" in line)


def test_gitops_script_on_aws(aws_project: AwsProject) -> None:
    proj = aws_project
    (proj.root / "ci").mkdir()
    shutil.copy(SCRIPT, proj.root / "ci" / "flux-ci.sh")
    proc, outs = ci(proj, "plan", "pr")
    assert proc.returncode == 0 and outs == {"changes": "true"}, proc.stdout + proc.stderr
    assert (proj.root / "pr" / "plan.md").read_text().startswith("<!-- flux-plan:prod -->\n### Flux plan")
    # The apply job runs elsewhere: state is in S3, bundles come with the plan, and the stage's secrets are
    # restored from the CI's secret store (the workflow's `flux secrets import` step).
    shutil.rmtree(proj.root / ".flux")
    env_file = proj.root.parent / "stage.env"
    env_file.write_text("REMINDER_WEBHOOK_TOKEN=tok-very-secret-123\nAPP_NAME=todo-on-aws\n")
    proj.flux("secrets", "import", str(env_file), "--stage", "prod")
    proc, _ = ci(proj, "apply", "pr")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    lam = proj.client("lambda")
    names = {f["FunctionName"] for f in lam.list_functions()["Functions"]}
    assert "flux-todo-prod-greet" in names
    proc, _ = ci(proj, "apply", "pr")  # the same plan twice: the state moved on
    assert proc.returncode == 1 and "stale" in proc.stderr and proc.stdout == ""

    proc, outs = ci(proj, "drift", "nightly")
    assert proc.returncode == 0 and outs == {"drifted": "false"}, proc.stdout + proc.stderr
    lam.update_function_configuration(FunctionName="flux-todo-prod-greet", MemorySize=1024)
    proc, outs = ci(proj, "drift", "nightly")
    assert proc.returncode == 0 and outs == {"drifted": "true"}, proc.stdout + proc.stderr
    report = (proj.root / "nightly" / "drift.md").read_text()
    assert report.startswith("<!-- flux-drift:prod -->") and "function.greet" in report
    assert "Changed outside of Flux" in report and "tok-very-secret-123" not in report
