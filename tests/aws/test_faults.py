"""Fault injection between boto3 and moto (real HTTP): throttling and 500s on a fifth of the calls,
a timeout whose work did happen, Lambda update conflicts -> apply converges to the same state;
a persistent failure -> that function and its dependents are skipped, the rest is deployed and kept
in state, and the next apply finishes the job."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from aws_faults import Rule
from aws_lib import FLUX, STATE_BUCKET, FaultyMotoServer, make_project
from test_deploy import assert_deployed, assert_nothing_left

SERVICES = ("lambda", "iam", "apigatewayv2", "secretsmanager", "logs", "sqs", "s3", "sts")



@pytest.mark.timeout(1200)  # a whole stage deployed through the CLI, on a shared machine
def test_apply_converges_under_throttling_errors_timeouts_and_conflicts(
    moto: FaultyMotoServer, tmp_path: Path, pg_url: str
) -> None:
    proj = make_project(moto, tmp_path, pg_url, read_timeout=4)
    moto.faults.rules[:] = [
        Rule("timeout", service="iam", operation="CreateRole", times=1, delay=6),
        Rule("conflict", service="lambda", operation="/configuration", times=2),
        Rule("throttle", service=SERVICES, probability=0.1),
        Rule("500", service=SERVICES, probability=0.1),
    ]
    out = proj.flux("deploy", "--stage", "prod")
    assert "17 added" in out.stdout
    kinds = {k for k, _, _ in moto.faults.injected}
    assert kinds == {"timeout", "conflict", "throttle", "500"}, moto.faults.injected
    assert len(moto.faults.injected) >= 20
    moto.faults.clear()
    assert_deployed(proj)  # exactly one of everything: the timed-out CreateRole was not duplicated
    assert len(proj.client("iam").list_roles()["Roles"]) == 6
    assert proj.flux("plan", "--stage", "prod", "--detailed-exitcode").returncode == 0


@pytest.mark.timeout(1200)  # a whole stage deployed through the CLI, on a shared machine
def test_persistent_failure_skips_dependents_and_keeps_the_rest(
    moto: FaultyMotoServer, tmp_path: Path, pg_url: str
) -> None:
    proj = make_project(moto, tmp_path, pg_url)
    moto.faults.rules[:] = [Rule("fail", service="iam", operation="CreateRole", body_contains="prod-greet")]
    out = proj.flux("deploy", "--stage", "prod", "--json", check=False)
    assert out.returncode == 1
    events = [json.loads(line) for line in out.stdout.splitlines() if line.startswith("{")]
    by_kind: dict[str, set[str]] = {}
    for ev in events:
        if ev.get("address"):
            by_kind.setdefault(ev["event"], set()).add(ev["address"])
    assert by_kind["failed"] == {"function.greet"}
    assert by_kind["skipped"] == {"route.POST_/greet"}
    assert len(by_kind["finished"]) == 15
    listed = set(proj.flux("state", "list", "--stage", "prod").stdout.split())
    assert "function.greet" not in listed and "route.POST_/greet" not in listed
    assert {"function.create_todo", "route.POST_/slugify", "api.prod", "secret.APP_NAME"} <= listed
    assert "flux-todo-prod-greet" not in {f["FunctionName"] for f in proj.client("lambda").list_functions()["Functions"]}

    moto.faults.clear()
    plan = json.loads(proj.flux("plan", "--stage", "prod", "--json").stdout)
    assert {c["address"] for c in plan["changes"] if c["action"] != "noop"} == {"function.greet", "route.POST_/greet"}
    proj.flux("apply", "--stage", "prod", "--auto-approve")
    assert_deployed(proj)


@pytest.mark.timeout(1200)  # a whole stage deployed through the CLI, on a shared machine
def test_deploy_converges_and_destroy_leaves_nothing_at_twenty_percent_faults(
    moto: FaultyMotoServer, tmp_path: Path, pg_url: str
) -> None:
    """A fifth of all calls fail: throttled, 500 with an AWS error body, 502 with an HTML page,
    answered too late, or carried out by moto with the answer dropped. Deploy still converges to
    exactly one of everything, a plan under the same weather sees no changes, and destroy (also in
    the weather) leaves nothing of any resource type."""
    proj = make_project(moto, tmp_path, pg_url, read_timeout=5)
    p = 0.045  # five rules: 1 - 0.955**5 = 20.6 % of the calls
    moto.faults.rules[:] = [
        Rule("throttle", service=SERVICES, probability=p),
        Rule("500", service=SERVICES, probability=p),
        Rule("500-html", service=SERVICES, probability=p),
        Rule("lost", service=SERVICES, probability=p),
        Rule("timeout", service=SERVICES, probability=p, delay=6),
    ]
    out = proj.flux("deploy", "--stage", "prod")
    assert "17 added" in out.stdout
    kinds = {k for k, _, _ in moto.faults.injected}
    assert kinds == {"throttle", "500", "500-html", "lost", "timeout"}, moto.faults.injected
    rate = len(moto.faults.injected) / len(moto.faults.calls)
    assert 0.12 < rate < 0.3, rate
    assert proj.flux("plan", "--stage", "prod", "--detailed-exitcode").returncode == 0
    rules = list(moto.faults.rules)
    moto.faults.clear()
    assert_deployed(proj)  # exactly one function, role, API, integration, version, layer version...
    assert len(proj.client("iam").list_roles()["Roles"]) == 6
    assert len(proj.client("sqs").list_queues()["QueueUrls"]) == 1

    moto.faults.rules[:] = rules
    proj.flux("destroy", "--stage", "prod", "--auto-approve")
    assert moto.faults.injected
    moto.faults.clear()
    assert_nothing_left(proj)


@pytest.mark.timeout(1200)  # a whole stage deployed through the CLI, on a shared machine
def test_after_a_crash_a_function_never_created_is_planned_as_new(
    moto: FaultyMotoServer, tmp_path: Path, pg_url: str
) -> None:
    """SIGKILL while greet's role is being created (moto never saw the request): the next plan shows
    greet as a new function, not as "deleted outside Flux", and deploy finishes the stage."""
    import signal
    import subprocess
    import time

    proj = make_project(moto, tmp_path, pg_url)
    moto.faults.rules[:] = [Rule("stall", service="iam", operation="CreateRole", body_contains="prod-greet", delay=30)]
    proc = subprocess.Popen([FLUX, "deploy", "--stage", "prod"], cwd=proj.root, env=proj.env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 300
        while not moto.faults.injected and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.1)
        assert moto.faults.injected, "the deploy never reached greet's CreateRole"
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait()
    moto.faults.rules.clear()
    assert "flux-todo-prod-greet" not in {r["RoleName"] for r in proj.client("iam").list_roles()["Roles"]}

    plan = json.loads(proj.flux("plan", "--stage", "prod", "--json").stdout)
    greet = next(c for c in plan["changes"] if c["address"] == "function.greet")
    assert greet["action"] == "create"
    assert not any("outside Flux" in r for r in greet["reasons"]), greet["reasons"]

    lock = json.loads(proj.client("s3").get_object(Bucket=STATE_BUCKET, Key="todo/prod.json.lock")["Body"].read())
    proj.flux("state", "unlock", lock["id"], "--stage", "prod")  # the killed run's lock
    proj.flux("deploy", "--stage", "prod")
    assert_deployed(proj)
    assert proj.flux("plan", "--stage", "prod", "--detailed-exitcode").returncode == 0
