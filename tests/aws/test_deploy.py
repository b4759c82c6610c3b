"""examples/todo deployed to a moto server through the real `flux` CLI: every resource with the
right configuration, exact IAM statements, no-op second plan, one-function update, rollback, drift
reverted by apply, destroy leaving nothing behind."""

from __future__ import annotations

import json

import pytest
from aws_lib import REGION, STATE_BUCKET, AwsProject

ACCOUNT = "123456789012"
P = "flux-todo-prod"
FUNCTIONS = {
    "complete_todo": "deno",
    "create_todo": "deno",
    "greet": "deno",
    "list_todos": "deno",
    "send_reminder": "deno",
    "slugify_title": "node",
}
ROUTES = {
    "POST /complete_todo": "complete_todo",
    "POST /create_todo": "create_todo",
    "POST /greet": "greet",
    "GET /todos": "list_todos",
    "POST /send_reminder": "send_reminder",
    "POST /slugify": "slugify_title",
}
SECRET = "tok-very-secret-123"
USES_DB = {"complete_todo", "create_todo", "list_todos", "send_reminder"}  # their code calls ctx.db



def logs_stmt(fn: str) -> dict:
    group = f"arn:aws:logs:{REGION}:{ACCOUNT}:log-group:/aws/lambda/{P}-{fn}"
    return {
        "Sid": "OwnLogs",
        "Effect": "Allow",
        "Action": ["logs:CreateLogGroup", "logs:CreateLogStream", "logs:PutLogEvents"],
        "Resource": [group, f"{group}:*"],
    }


def secrets_stmt(*keys: str, db: bool = True) -> dict:
    """Its own secrets plus, for a function that calls ctx.db, the stage database URL; nothing else."""
    names = sorted([*keys, *([".database_url"] if db else [])])
    return {
        "Sid": "ReadOwnSecrets",
        "Effect": "Allow",
        "Action": ["secretsmanager:GetSecretValue"],
        "Resource": [f"arn:aws:secretsmanager:{REGION}:{ACCOUNT}:secret:flux/todo/prod/{k}-??????" for k in names],
    }


def policy(proj: AwsProject, fn: str) -> list[dict]:
    doc = proj.client("iam").get_role_policy(RoleName=f"{P}-{fn}", PolicyName="flux-function")["PolicyDocument"]
    return (json.loads(doc) if isinstance(doc, str) else doc)["Statement"]


def alias_version(proj: AwsProject, fn: str) -> str:
    return proj.client("lambda").get_alias(FunctionName=f"{P}-{fn}", Name="live")["FunctionVersion"]


def assert_deployed(proj: AwsProject) -> None:
    lam, gw, sm, logs = (proj.client(s) for s in ("lambda", "apigatewayv2", "secretsmanager", "logs"))
    fns = {f["FunctionName"]: f for f in lam.list_functions()["Functions"]}
    assert set(fns) == {f"{P}-{n}" for n in FUNCTIONS}
    for name, runtime in FUNCTIONS.items():
        cfg = fns[f"{P}-{name}"]
        env = cfg["Environment"]["Variables"]
        assert SECRET not in json.dumps(env) and "todo-on-aws" not in json.dumps(env)
        assert env["FLUX_FUNCTION"] == name and env["FLUX_SECRET_PREFIX"] == "flux/todo/prod/"
        assert env["FLUX_DATABASE_SECRET"] == ("flux/todo/prod/.database_url" if name in USES_DB else "")
        assert "postgresql:" not in json.dumps(env)
        assert cfg["Role"] == f"arn:aws:iam::{ACCOUNT}:role/{P}-{name}"
        assert (cfg["MemorySize"], cfg["Timeout"]) == (256, 30)
        if runtime == "node":
            assert (cfg["Runtime"], cfg["Handler"]) == ("nodejs20.x", "index.handler")
            assert not cfg.get("Layers")
        else:
            assert (cfg["Runtime"], cfg["Handler"]) == ("provided.al2023", "index.mjs")
            assert [la["Arn"] for la in cfg["Layers"]] == [f"arn:aws:lambda:{REGION}:{ACCOUNT}:layer:{P}-deno:1"]
        assert alias_version(proj, name) == "1"
    assert fns[f"{P}-send_reminder"]["Environment"]["Variables"]["FLUX_ASYNC"] == "1"
    assert fns[f"{P}-send_reminder"]["Environment"]["Variables"]["FLUX_SECRET_KEYS"] == "REMINDER_WEBHOOK_TOKEN"
    assert fns[f"{P}-create_todo"]["Environment"]["Variables"]["FLUX_ENV_KEYS"] == "APP_NAME"

    # least privilege, statement by statement
    assert policy(proj, "greet") == [logs_stmt("greet")]  # no secret, no ctx.db: no Secrets Manager at all
    assert policy(proj, "slugify_title") == [logs_stmt("slugify_title")]
    assert policy(proj, "create_todo") == [logs_stmt("create_todo"), secrets_stmt("APP_NAME")]
    assert policy(proj, "send_reminder") == [
        logs_stmt("send_reminder"),
        secrets_stmt("REMINDER_WEBHOOK_TOKEN"),
        {"Sid": "AsyncSelfInvoke", "Effect": "Allow", "Action": ["lambda:InvokeFunction"],
         "Resource": [f"arn:aws:lambda:{REGION}:{ACCOUNT}:function:{P}-send_reminder:live"]},
        {"Sid": "AsyncOnFailure", "Effect": "Allow", "Action": ["sqs:SendMessage"],
         "Resource": [f"arn:aws:sqs:{REGION}:{ACCOUNT}:{P}-send_reminder-failed"]},
    ]
    inv = lam.get_function_event_invoke_config(FunctionName=f"{P}-send_reminder", Qualifier="live")
    assert inv["MaximumRetryAttempts"] == 2
    assert inv["DestinationConfig"]["OnFailure"]["Destination"] == f"arn:aws:sqs:{REGION}:{ACCOUNT}:{P}-send_reminder-failed"

    apis = gw.get_apis()["Items"]
    assert [a["Name"] for a in apis] == [P] and apis[0]["ProtocolType"] == "HTTP"
    api_id = apis[0]["ApiId"]
    stage = gw.get_stage(ApiId=api_id, StageName="$default")
    assert stage["AutoDeploy"] is True
    integrations = {i["IntegrationId"]: i for i in gw.get_integrations(ApiId=api_id)["Items"]}
    routes = {r["RouteKey"]: r for r in gw.get_routes(ApiId=api_id)["Items"]}
    heads = {"HEAD " + k.split(" ", 1)[1] for k in ROUTES if k.startswith("GET ")}  # HEAD served on GET routes
    assert set(routes) == set(ROUTES) | heads
    for key in heads:
        assert routes[key]["Target"] == routes["GET " + key.split(" ", 1)[1]]["Target"]
    for key, fn in ROUTES.items():
        integ = integrations[routes[key]["Target"].split("/", 1)[1]]
        assert integ["IntegrationType"] == "AWS_PROXY" and integ["PayloadFormatVersion"] == "2.0"
        assert integ["IntegrationUri"] == f"arn:aws:lambda:{REGION}:{ACCOUNT}:function:{P}-{fn}:live"
        perm = json.loads(lam.get_policy(FunctionName=f"{P}-{fn}", Qualifier="live")["Policy"])["Statement"]
        method, path = key.split(" ", 1)
        methods = [method, "HEAD"] if method == "GET" else [method]
        assert [(s["Principal"], s["Condition"]["ArnLike"]["AWS:SourceArn"]) for s in perm] == [
            ({"Service": "apigateway.amazonaws.com"}, f"arn:aws:execute-api:{REGION}:{ACCOUNT}:{api_id}/*/{m}{path}")
            for m in methods
        ]

    names = sorted(s["Name"] for s in sm.list_secrets()["SecretList"])
    assert names == ["flux/todo/prod/.database_url", "flux/todo/prod/APP_NAME", "flux/todo/prod/REMINDER_WEBHOOK_TOKEN"]
    assert sm.get_secret_value(SecretId="flux/todo/prod/REMINDER_WEBHOOK_TOKEN")["SecretString"] == SECRET
    groups = sorted(g["logGroupName"] for g in logs.describe_log_groups()["logGroups"])
    assert groups == sorted(f"/aws/lambda/{P}-{n}" for n in FUNCTIONS)


def assert_nothing_left(proj: AwsProject) -> None:
    lam, gw, sm, logs, iam, sqs, s3 = (
        proj.client(s) for s in ("lambda", "apigatewayv2", "secretsmanager", "logs", "iam", "sqs", "s3")
    )
    assert lam.list_functions()["Functions"] == []
    assert lam.list_layers()["Layers"] == [] or all(
        lam.list_layer_versions(LayerName=la["LayerName"])["LayerVersions"] == [] for la in lam.list_layers()["Layers"]
    )
    assert gw.get_apis()["Items"] == []
    assert sm.list_secrets()["SecretList"] == []
    assert logs.describe_log_groups()["logGroups"] == []
    assert [r["RoleName"] for r in iam.list_roles()["Roles"] if r["RoleName"].startswith("flux-")] == []
    assert sqs.list_queues().get("QueueUrls", []) == []
    keys = sorted(o["Key"] for o in s3.list_objects_v2(Bucket=STATE_BUCKET).get("Contents", []))
    assert keys == ["todo/prod.json", "todo/prod.json.backup"]  # only the (now empty) state remains


@pytest.mark.timeout(1200)  # a whole stage deployed through the CLI, on a shared machine
def test_deploy_update_rollback_drift_destroy(aws_project: AwsProject) -> None:
    proj = aws_project
    out = proj.flux("deploy", "--stage", "prod")
    assert "17 added" in out.stdout and "execute-api" in out.stdout
    assert SECRET not in out.stdout + out.stderr
    assert_deployed(proj)

    state = proj.flux("state", "pull", "--stage", "prod").stdout
    assert SECRET not in state and "todo-on-aws" not in state
    assert not (proj.root / ".flux" / "prod" / "state.json").exists()  # state lives in S3
    body = proj.client("s3").get_object(Bucket=STATE_BUCKET, Key="todo/prod.json")["Body"].read().decode()
    assert json.loads(body)["resources"]["function.greet"]["outputs"]["version"] == "1"

    assert proj.flux("plan", "--stage", "prod", "--detailed-exitcode").returncode == 0

    # one function edited: only it changes, and its alias moves to a new version
    src = proj.root / "functions" / "greet" / "index.ts"
    src.write_text(src.read_text().replace("Hello", "Hi"))
    plan = json.loads(proj.flux("plan", "--stage", "prod", "--json").stdout)
    changed = {c["address"]: c["action"] for c in plan["changes"] if c["action"] != "noop"}
    assert changed == {"function.greet": "update"}
    proj.flux("apply", "--stage", "prod", "--auto-approve")
    assert alias_version(proj, "greet") == "2"
    assert {alias_version(proj, f) for f in FUNCTIONS if f != "greet"} == {"1"}
    assert proj.flux("plan", "--stage", "prod", "--detailed-exitcode").returncode == 0

    # `flux rollback` (flux_plan/cli/rollback_cmds.py -> the provider's rollback hook)
    res = proj.flux("rollback", "greet", "--stage", "prod", "--json")
    assert json.loads(res.stdout)["rollbacks"] == [{"function": "greet", "from_version": "2", "to_version": "1"}]
    assert alias_version(proj, "greet") == "1"

    # drift: alias moved by the rollback, memory edited, role policy edited, a route deleted
    lam, iam, gw = proj.client("lambda"), proj.client("iam"), proj.client("apigatewayv2")
    lam.update_function_configuration(FunctionName=f"{P}-list_todos", MemorySize=1024, Timeout=5)
    iam.put_role_policy(RoleName=f"{P}-greet", PolicyName="flux-function", PolicyDocument=json.dumps(
        {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "*", "Resource": "*"}]}))
    api_id = gw.get_apis()["Items"][0]["ApiId"]
    route = next(r for r in gw.get_routes(ApiId=api_id)["Items"] if r["RouteKey"] == "POST /slugify")
    gw.delete_route(ApiId=api_id, RouteId=route["RouteId"])
    drift = proj.flux("plan", "--stage", "prod", "--json")
    changes = {c["address"]: c for c in json.loads(drift.stdout)["changes"] if c["action"] != "noop"}
    assert set(changes) == {"function.greet", "function.list_todos", "route.POST_/slugify"}
    assert changes["route.POST_/slugify"]["action"] == "create"
    reasons = " ".join(r for c in changes.values() for r in c["reasons"])
    assert "memory" in reasons and "role_policy" in reasons
    assert "alias: by flux rollback: live -> 1" in changes["function.greet"]["reasons"][0] + " ".join(
        changes["function.greet"]["reasons"])
    assert "drift: alias" not in reasons  # Flux's own rollback is not "changed outside Flux"
    proj.flux("apply", "--stage", "prod", "--auto-approve")
    assert lam.get_function_configuration(FunctionName=f"{P}-list_todos")["MemorySize"] == 256
    assert policy(proj, "greet") == [logs_stmt("greet")]
    assert "POST /slugify" in {r["RouteKey"] for r in gw.get_routes(ApiId=api_id)["Items"]}
    assert alias_version(proj, "greet") == "3"
    assert proj.flux("plan", "--stage", "prod", "--detailed-exitcode").returncode == 0

    # replacing a function (delete + create) keeps its routes invocable: the permission is restored
    proj.flux("apply", "--stage", "prod", "--auto-approve", "--replace", "function.greet")
    perm = json.loads(lam.get_policy(FunctionName=f"{P}-greet", Qualifier="live")["Policy"])["Statement"]
    assert [s["Condition"]["ArnLike"]["AWS:SourceArn"] for s in perm] == [
        f"arn:aws:execute-api:{REGION}:{ACCOUNT}:{api_id}/*/POST/greet"]
    assert alias_version(proj, "greet") == "1"  # a new function starts at version 1 again
    assert proj.flux("plan", "--stage", "prod", "--detailed-exitcode").returncode == 0

    # a rotated secret updates only the secret (functions read it at run time)
    proj.flux("secrets", "set", "REMINDER_WEBHOOK_TOKEN=tok-rotated-456", "--stage", "prod")
    plan = json.loads(proj.flux("plan", "--stage", "prod", "--json").stdout)
    assert {c["address"]: c["action"] for c in plan["changes"] if c["action"] != "noop"} == {
        "secret.REMINDER_WEBHOOK_TOKEN": "update"}
    proj.flux("apply", "--stage", "prod", "--auto-approve")
    sm = proj.client("secretsmanager")
    assert sm.get_secret_value(SecretId="flux/todo/prod/REMINDER_WEBHOOK_TOKEN")["SecretString"] == "tok-rotated-456"
    assert proj.flux("plan", "--stage", "prod", "--detailed-exitcode").returncode == 0

    proj.flux("destroy", "--stage", "prod", "--auto-approve")
    assert_nothing_left(proj)
