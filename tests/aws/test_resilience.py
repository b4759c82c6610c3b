"""Issue 13's defects one by one, through real boto3 clients (configured exactly as the provider's)
against the moto server with the fault middleware: a lost answer is a request moto carried out whose
response never reaches the client."""

from __future__ import annotations

import os
import shutil
import socket
from datetime import UTC, datetime
from pathlib import Path

import pytest
from aws_faults import Rule
from aws_lib import REGION, FaultyMotoServer
from flux_aws import iam, packaging
from flux_aws.clients import AwsClients
from flux_aws.retry import aws_call, is_transient
from flux_aws.s3_backend import S3Backend

from flux_plan.errors import FluxError, ProviderError
from flux_plan.state import LockInfo

BUCKET = "flux-state-resilience"


def _clients(moto: FaultyMotoServer, read_timeout: float = 60) -> AwsClients:
    return AwsClients(region=REGION, endpoint_url=moto.url, read_timeout=read_timeout)


def _backend(moto: FaultyMotoServer) -> S3Backend:
    s3 = _clients(moto).client("s3")
    s3.create_bucket(Bucket=BUCKET, CreateBucketConfiguration={"LocationConstraint": REGION})
    return S3Backend(s3, BUCKET, "todo/prod.json")


def _info(lock_id: str) -> LockInfo:
    return LockInfo(id=lock_id, pid=os.getpid(), host=socket.gethostname(), operation="apply",
                    created=datetime.now(UTC).isoformat(), who="me")


def test_a_lost_answer_to_the_lock_put_does_not_lock_flux_out(moto: FaultyMotoServer) -> None:
    b = _backend(moto)
    moto.faults.rules[:] = [Rule("lost", service="s3", operation="prod.json.lock", times=1)]
    b.lock(_info("L1"), timeout=2)  # before: 412 on every retry, then "locked by ... <own pid>"
    assert [k for k, _, _ in moto.faults.injected] == ["lost"]
    assert b.lock_info() is not None and b.lock_info().id == "L1"  # type: ignore[union-attr]
    # someone else's lock is still respected
    from flux_plan.errors import LockError

    with pytest.raises(LockError, match="locked by me"):
        b.lock(_info("L2"), timeout=0)
    # a lost answer to the unlock: the retry finds the lock gone and is content
    moto.faults.rules[:] = [Rule("lost", service="s3", operation="DELETE", times=1)]
    b.unlock("L1")
    assert b.lock_info() is None


def test_a_lost_answer_to_a_state_write_is_adopted_not_a_conflict(moto: FaultyMotoServer) -> None:
    b = _backend(moto)
    moto.faults.rules[:] = [Rule("lost", service="s3", operation="PUT /flux-state-resilience/todo/prod.json",
                                 times=2)]
    v1 = b.write(b'{"serial": 1}', None)  # If-None-Match: * retried -> 412 before the fix
    v2 = b.write(b'{"serial": 2}', v1)  # If-Match retried after the ETag moved -> 412 before the fix
    assert len(moto.faults.injected) == 2
    assert b.read() == (b'{"serial": 2}', v2)
    assert b.read_backup() == b'{"serial": 1}'


def test_a_missing_state_bucket_is_an_error_not_an_empty_state(moto: FaultyMotoServer) -> None:
    b = S3Backend(_clients(moto).client("s3"), "no-such-bucket", "todo/prod.json")
    with pytest.raises(FluxError, match="bucket 'no-such-bucket' does not exist"):
        b.read()
    with pytest.raises(FluxError, match="bucket 'no-such-bucket' does not exist"):
        b.lock(_info("L1"), timeout=0)


def test_delete_role_survives_a_lost_answer_to_delete_role_policy(moto: FaultyMotoServer) -> None:
    c = _clients(moto).client("iam")
    policy = iam.function_policy(log_group_arn=f"arn:aws:logs:{REGION}:123456789012:log-group:/aws/lambda/x",
                                 secret_arn_patterns=[])
    iam.ensure_role(c, "flux-todo-prod-greet", policy, {"flux:project": "todo"})
    moto.faults.rules[:] = [Rule("lost", service="iam", operation="DeleteRolePolicy", times=1)]
    iam.delete_role(c, "flux-todo-prod-greet")  # before: NoSuchEntity on the retry skipped delete_role
    assert moto.faults.injected == [("lost", "iam", "DeleteRolePolicy")]
    assert [r["RoleName"] for r in c.list_roles()["Roles"]] == []
    iam.delete_role(c, "flux-todo-prod-greet")  # gone already: fine


@pytest.mark.parametrize("kind", ["500-html", "500", "throttle", "lost"])
def test_weather_is_retried_by_one_layer_only(moto: FaultyMotoServer, kind: str) -> None:
    """An unparseable 5xx is transient (before: ResponseParserError -> "internal error"); botocore
    does not retry underneath aws_call, so N faults cost exactly N extra calls."""
    sm = _clients(moto).client("secretsmanager")
    moto.faults.rules[:] = [Rule(kind, service="secretsmanager", operation="CreateSecret", times=3)]
    aws_call(sm.create_secret, Name="flux/todo/prod/K", SecretString="v",
             adopt=lambda: sm.describe_secret(SecretId="flux/todo/prod/K") if kind == "lost" and any(
                 s["Name"] == "flux/todo/prod/K" for s in sm.list_secrets()["SecretList"]) else None)
    calls = [op for svc, op in moto.faults.calls if op == "CreateSecret"]
    assert len(moto.faults.injected) == (1 if kind == "lost" else 3)
    assert len(calls) == (1 if kind == "lost" else 4)  # 3 faults + 1 success; lost: adopted, not re-created
    assert [s["Name"] for s in sm.list_secrets()["SecretList"]] == ["flux/todo/prod/K"]


def test_retries_are_bounded_and_end_in_a_provider_error(moto: FaultyMotoServer) -> None:
    sm = _clients(moto).client("secretsmanager")
    moto.faults.rules[:] = [Rule("500-html", service="secretsmanager")]
    with pytest.raises(ProviderError, match="still failing after 3 attempts") as exc:
        aws_call(sm.list_secrets, attempts=3)
    assert not is_transient(exc.value)  # the engine does not stack its own retries on top
    assert len(moto.faults.calls) == 3


def test_node_packages_are_byte_for_byte_reproducible(tmp_path: Path) -> None:
    """Same bundle in two places, built twice: one zip (before: esbuild's `// ../flux-aws-<random>/`
    comment differed per build, so every update re-uploaded the code)."""
    a = tmp_path / "a" / "artifact"
    a.mkdir(parents=True)
    (a / "index.mjs").write_text(
        'const MARK = Symbol.for("flux.function");\n'
        'export default { [MARK]: true, name: "x", handler: async ({ input }) => ({ echo: input }) };\n')
    b = tmp_path / "elsewhere" / "deeper" / "artifact"
    shutil.copytree(a, b)
    first = packaging.node_zip(a)
    assert packaging.node_zip(a) == first
    assert packaging.node_zip(b) == first
    text = packaging.node_bundle(a).decode()
    assert "flux-aws-" not in text and str(tmp_path) not in text
    assert "// index.mjs" in text  # esbuild's module comments are kept, as file names only


def test_an_unparseable_5xx_from_an_xml_service_is_transient(moto: FaultyMotoServer) -> None:
    """IAM/S3 answer XML: an HTML error page makes botocore raise ResponseParserError ("Further
    retries may succeed"), which used to surface as an internal error."""
    c = _clients(moto).client("iam")
    moto.faults.rules[:] = [Rule("500-html", service="iam", operation="ListRoles", times=2)]
    assert aws_call(c.list_roles)["Roles"] == []
    assert len(moto.faults.injected) == 2
