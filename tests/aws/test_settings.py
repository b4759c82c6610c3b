"""Every aws stage / flux.json setting is applied (architecture with its own Deno layer, tags, VPC,
reserved concurrency, plain env, integration timeout) or refused at validate; the database URL is a
diffed input granted only to ctx.db callers; a deleted log group is repaired; destroy finds what
state forgot and reports what it could not delete."""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import pytest
from aws_faults import Rule
from aws_lib import REGION, AwsProject, FaultyMotoServer, make_project
from flux_aws import layer, packaging
from test_deploy import ACCOUNT, FUNCTIONS, USES_DB, P, assert_nothing_left

TAGS = {"team": "payments", "cost-center": "42"}


def _edit_json(path: Path, **changes: object) -> None:
    data = json.loads(path.read_text())
    data.update(changes)
    path.write_text(json.dumps(data, indent=2))


def _second_database(pg_url: str) -> str:
    import uuid

    import psycopg

    name = f"t_{uuid.uuid4().hex[:12]}"
    base = pg_url.split("?")[0].rsplit("/", 1)[0]
    with psycopg.connect(pg_url, autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {name}")
    return pg_url.replace(pg_url.split("?")[0], f"{base}/{name}")


def test_unknown_or_invalid_stage_settings_fail_validate(moto: FaultyMotoServer, tmp_path: Path, pg_url: str) -> None:
    proj = make_project(moto, tmp_path, pg_url)
    cfg_path = proj.root / "flux.project.json"
    cfg = json.loads(cfg_path.read_text())
    cfg["stages"]["prod"].update(vcp={"subnet_ids": ["subnet-1"]}, architecture="arm65")
    cfg_path.write_text(json.dumps(cfg, indent=2))
    out = proj.flux("validate", check=False)
    assert out.returncode == 1
    text = out.stdout + out.stderr
    assert "flux.project.json" in text and "unknown key 'vcp'" in text and "did you mean 'vpc'?" in text
    assert "'arm65' is not one of x86_64, arm64" in text and "did you mean 'arm64'?" in text
    plan = proj.flux("plan", "--stage", "prod", check=False)
    assert plan.returncode == 1 and "unknown key 'vcp'" in plan.stdout + plan.stderr
    assert "Traceback" not in plan.stdout + plan.stderr
    assert proj.client("lambda").list_functions()["Functions"] == []  # nothing was half-applied

    # flux.json: an unknown architecture, an env key Lambda or Flux reserves
    cfg["stages"]["prod"].pop("vcp")
    cfg["stages"]["prod"]["architecture"] = "arm64"
    cfg_path.write_text(json.dumps(cfg, indent=2))
    _edit_json(proj.root / "functions" / "greet" / "flux.json", architecture="aarch64", env={"FLUX_STAGE": "x"})
    out = proj.flux("validate", check=False)
    text = out.stdout + out.stderr
    assert out.returncode == 1 and "functions/greet/flux.json" in text
    assert "'aarch64' is not one of x86_64, arm64" in text and "FLUX_STAGE" in text


def test_a_missing_state_bucket_fails_plan_instead_of_planning_everything(
        moto: FaultyMotoServer, tmp_path: Path, pg_url: str) -> None:
    proj = make_project(moto, tmp_path, pg_url)
    cfg_path = proj.root / "flux.project.json"
    cfg = json.loads(cfg_path.read_text())
    cfg["stages"]["prod"]["state"]["bucket"] = "no-such-flux-bucket"
    cfg_path.write_text(json.dumps(cfg, indent=2))
    out = proj.flux("plan", "--stage", "prod", check=False)
    text = out.stdout + out.stderr
    assert out.returncode == 1 and "bucket 'no-such-flux-bucket' does not exist" in text and "state.bucket" in text
    assert "to add" not in text and "Traceback" not in text
    out = proj.flux("deploy", "--stage", "prod", check=False)
    assert out.returncode == 1 and "does not exist" in out.stdout + out.stderr and "NoSuchBucket" not in out.stdout
    assert proj.client("lambda").list_functions()["Functions"] == []


def _vpc(proj: AwsProject) -> dict[str, list[str]]:
    ec2 = proj.client("ec2")
    vpc = ec2.create_vpc(CidrBlock="10.9.0.0/16")["Vpc"]["VpcId"]
    subnet = ec2.create_subnet(VpcId=vpc, CidrBlock="10.9.1.0/24")["Subnet"]["SubnetId"]
    sg = ec2.create_security_group(GroupName="flux-db", Description="db", VpcId=vpc)["GroupId"]
    return {"subnet_ids": [subnet], "security_group_ids": [sg]}


@pytest.mark.timeout(1200)  # a whole stage deployed through the CLI, on a shared machine
def test_settings_database_url_log_group_and_destroy(moto: FaultyMotoServer, tmp_path: Path, pg_url: str) -> None:
    proj = make_project(moto, tmp_path, pg_url, architecture="arm64", tags=TAGS)
    vpc = _vpc(proj)
    cfg_path = proj.root / "flux.project.json"
    cfg = json.loads(cfg_path.read_text())
    cfg["stages"]["prod"]["vpc"] = vpc
    cfg_path.write_text(json.dumps(cfg, indent=2))
    fns = proj.root / "functions"
    _edit_json(fns / "slugify_title" / "flux.json", architecture="x86_64")
    _edit_json(fns / "greet" / "flux.json", env={"GREETING_STYLE": "warm"}, timeout=60)
    _edit_json(fns / "list_todos" / "flux.json", concurrency=5)
    _edit_json(fns / "create_todo" / "flux.json", timeout=10)
    assert proj.flux("validate").returncode == 0

    out = proj.flux("deploy", "--stage", "prod")
    assert "17 added" in out.stdout
    assert "greet" in out.stdout + out.stderr and "503 after 30 s" in out.stdout + out.stderr  # timeout warning
    lam, iam, logs, gw, sm, sqs = (proj.client(s) for s in ("lambda", "iam", "logs", "apigatewayv2",
                                                             "secretsmanager", "sqs"))
    want_tags = {**TAGS, "flux:project": "todo", "flux:stage": "prod"}

    # architecture: arm64 for the stage, x86_64 where flux.json says so; each deno layer matches
    for name, runtime in FUNCTIONS.items():
        fn = lam.get_function(FunctionName=f"{P}-{name}")
        c = fn["Configuration"]
        arch = "x86_64" if name == "slugify_title" else "arm64"
        assert c["Architectures"] == [arch], name
        assert sorted(c["VpcConfig"]["SubnetIds"]) == vpc["subnet_ids"]
        assert sorted(c["VpcConfig"]["SecurityGroupIds"]) == vpc["security_group_ids"]
        assert {k: v for k, v in fn["Tags"].items() if k != "flux:address"} == want_tags
        reserved = (fn.get("Concurrency") or {}).get("ReservedConcurrentExecutions")
        assert reserved == (5 if name == "list_todos" else None), name
        env = c["Environment"]["Variables"]
        assert env["FLUX_DATABASE_SECRET"] == ("flux/todo/prod/.database_url" if name in USES_DB else "")
        if runtime == "deno":
            assert [la["Arn"] for la in c["Layers"]] == [f"arn:aws:lambda:{REGION}:{ACCOUNT}:layer:{P}-deno-arm64:1"]
        role_tags = {t["Key"]: t["Value"] for t in iam.list_role_tags(RoleName=f"{P}-{name}")["Tags"]}
        assert {k: v for k, v in role_tags.items() if k != "flux:address"} == want_tags
        group_tags = logs.list_tags_log_group(logGroupName=f"/aws/lambda/{P}-{name}")["tags"]
        assert {k: v for k, v in group_tags.items() if k != "flux:address"} == want_tags
        statements = json.loads(json.dumps(iam.get_role_policy(RoleName=f"{P}-{name}",
                                                               PolicyName="flux-function")["PolicyDocument"]))
        sids = [s["Sid"] for s in (json.loads(statements) if isinstance(statements, str) else statements)["Statement"]]
        assert "VpcNetworkInterfaces" in sids
    greet_env = lam.get_function_configuration(FunctionName=f"{P}-greet")["Environment"]["Variables"]
    assert json.loads(greet_env["FLUX_PLAIN_ENV"]) == {"GREETING_STYLE": "warm"}
    versions = lam.list_layer_versions(LayerName=f"{P}-deno-arm64")["LayerVersions"]
    assert [v["CompatibleArchitectures"] for v in versions] == [["arm64"]]
    zip_path = layer.build_layer_zip("arm64")  # the cached zip that was uploaded
    detail = lam.get_layer_version(LayerName=f"{P}-deno-arm64", VersionNumber=1)
    assert detail["Content"]["CodeSha256"] == packaging.code_sha256(zip_path.read_bytes())
    with zipfile.ZipFile(zip_path) as zf, zf.open("bin/deno") as fh:
        head = fh.read(20)
    assert head[:4] == b"\x7fELF" and int.from_bytes(head[18:20], "little") == 0xB7  # aarch64
    api = gw.get_apis()["Items"][0]
    assert {k: v for k, v in api["Tags"].items() if k != "flux:address"} == want_tags
    timeouts = {i["IntegrationUri"].split(":")[-2]: i["TimeoutInMillis"]
                for i in gw.get_integrations(ApiId=api["ApiId"])["Items"]}
    assert timeouts[f"{P}-greet"] == 30000 and timeouts[f"{P}-create_todo"] == 15000
    secret_tags = {t["Key"]: t["Value"] for t in sm.describe_secret(SecretId="flux/todo/prod/APP_NAME")["Tags"]}
    assert TAGS.items() <= secret_tags.items()
    queue = sqs.get_queue_url(QueueName=f"{P}-send_reminder-failed")["QueueUrl"]
    assert TAGS.items() <= sqs.list_queue_tags(QueueUrl=queue)["Tags"].items()
    assert proj.flux("plan", "--stage", "prod", "--detailed-exitcode").returncode == 0

    # the database URL is diffed (by fingerprint) and rolled out to the ctx.db functions only
    url_b = _second_database(pg_url)
    proj.env["DATABASE_URL"] = url_b
    plan = proj.flux("plan", "--stage", "prod", "--json")
    assert pg_url not in plan.stdout and url_b not in plan.stdout
    assert url_b.split("@")[0] not in plan.stdout  # not even the credentials part
    changes = {c["address"]: c for c in json.loads(plan.stdout)["changes"] if c["action"] != "noop"}
    assert {a for a in changes if a.startswith("function.")} == {f"function.{f}" for f in USES_DB}
    assert all(any("database" in r for r in changes[f"function.{f}"]["reasons"]) for f in USES_DB)
    proj.flux("apply", "--stage", "prod", "--auto-approve")
    assert sm.get_secret_value(SecretId="flux/todo/prod/.database_url")["SecretString"] == url_b
    assert proj.flux("plan", "--stage", "prod", "--detailed-exitcode").returncode == 0

    # a log group deleted by hand is drift, and apply puts it back
    logs.delete_log_group(logGroupName=f"/aws/lambda/{P}-greet")
    plan = json.loads(proj.flux("plan", "--stage", "prod", "--json").stdout)
    changed = {c["address"]: c for c in plan["changes"] if c["action"] != "noop"}
    assert set(changed) == {"function.greet"} and "log_group" in " ".join(changed["function.greet"]["reasons"])
    proj.flux("apply", "--stage", "prod", "--auto-approve")
    groups = logs.describe_log_groups(logGroupNamePrefix=f"/aws/lambda/{P}-greet")["logGroups"]
    assert [(g["logGroupName"], g.get("retentionInDays")) for g in groups] == [(f"/aws/lambda/{P}-greet", 14)]

    # a node function's configuration change does not re-upload unchanged code (reproducible zip)
    _edit_json(fns / "slugify_title" / "flux.json", memory=512)
    moto.faults.clear()
    proj.flux("apply", "--stage", "prod", "--auto-approve")
    assert lam.get_function_configuration(FunctionName=f"{P}-slugify_title")["MemorySize"] == 512
    uploads = [op for svc, op in moto.faults.calls if svc == "lambda" and op.endswith("/code")]
    assert uploads == [], uploads

    # destroy finds what state forgot (by name + tag) and lists what it could not delete
    proj.flux("state", "rm", "route.POST_/greet", "function.greet", "--stage", "prod")
    moto.faults.rules[:] = [Rule("fail", service="iam", operation="DeleteRole", body_contains="prod-greet")]
    out = proj.flux("destroy", "--stage", "prod", "--auto-approve", check=False)
    assert out.returncode == 1
    text = out.stdout + out.stderr
    assert "could not delete" in text and f"IAM role {P}-greet" in text and "Traceback" not in text
    assert lam.list_functions()["Functions"] == []  # greet's function went although state forgot it
    moto.faults.clear()
    proj.flux("destroy", "--stage", "prod", "--auto-approve")
    assert_nothing_left(proj)
