"""Lambda functions: create-or-update from a package, wait on LastUpdateStatus with botocore's
waiters (never sleeps), publish a version per deploy and move the `live` alias to it atomically;
rollback moves `live` back to the previous published version."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from botocore.exceptions import ClientError

from flux_aws.retry import aws_call, error_code
from flux_plan.errors import ProviderError

ALIAS = "live"
_WAIT = {"Delay": 1, "MaxAttempts": 600}


@dataclass
class FunctionConfig:
    name: str
    runtime: str  # nodejs20.x | provided.al2023
    handler: str
    role_arn: str
    timeout: int
    memory: int
    env: dict[str, str]
    layers: list[str]
    tags: dict[str, str]
    architecture: str = "x86_64"
    vpc: dict[str, list[str]] | None = None  # {"SubnetIds": [...], "SecurityGroupIds": [...]}
    reserved_concurrency: int | None = None  # None: no reservation (the account's shared pool)


def get(lam: Any, name: str) -> dict[str, Any] | None:
    try:
        return dict(aws_call(lam.get_function, FunctionName=name))
    except ClientError as exc:
        if error_code(exc) == "ResourceNotFoundException":
            return None
        raise


def _wait_updated(lam: Any, name: str) -> None:
    aws_call(lam.get_waiter("function_updated_v2").wait, FunctionName=name, WaiterConfig=_WAIT)


def _config_kwargs(cfg: FunctionConfig) -> dict[str, Any]:
    return {
        "Runtime": cfg.runtime,
        "Handler": cfg.handler,
        "Role": cfg.role_arn,
        "Timeout": cfg.timeout,
        "MemorySize": cfg.memory,
        "Environment": {"Variables": cfg.env},
        "Layers": cfg.layers,
        "VpcConfig": cfg.vpc or {"SubnetIds": [], "SecurityGroupIds": []},
    }


def deploy(lam: Any, cfg: FunctionConfig, package: bytes, code_sha: str) -> dict[str, Any]:
    """Create or update the function, publish a version, point `live` at it. Returns outputs."""
    current = get(lam, cfg.name)
    if current is None:
        try:
            aws_call(
                lam.create_function,
                FunctionName=cfg.name,
                Code={"ZipFile": package},
                Publish=False,
                Architectures=[cfg.architecture],
                PackageType="Zip",
                Tags=cfg.tags,
                **_config_kwargs(cfg),
            )
        except ClientError as exc:
            if error_code(exc) != "ResourceConflictException":  # "already exists": a retried call's
                raise  # first attempt did create it (its answer was lost)
        aws_call(lam.get_waiter("function_active_v2").wait, FunctionName=cfg.name, WaiterConfig=_WAIT)
        current = get(lam, cfg.name) or {}
    live_cfg = current.get("Configuration", {})
    if live_cfg.get("CodeSha256") != code_sha or live_cfg.get("Architectures", ["x86_64"]) != [cfg.architecture]:
        _wait_updated(lam, cfg.name)  # the architecture changes with the code (UpdateFunctionCode)
        aws_call(lam.update_function_code, FunctionName=cfg.name, ZipFile=package, Publish=False,
                 Architectures=[cfg.architecture])
    _wait_updated(lam, cfg.name)
    aws_call(lam.update_function_configuration, FunctionName=cfg.name, **_config_kwargs(cfg))
    _wait_updated(lam, cfg.name)
    fn = aws_call(lam.get_function_configuration, FunctionName=cfg.name)
    aws_call(lam.tag_resource, Resource=fn["FunctionArn"], Tags=cfg.tags)
    set_reserved_concurrency(lam, cfg.name, cfg.reserved_concurrency)
    before = published_versions(lam, cfg.name)

    def adopt_version() -> dict[str, Any] | None:
        """A publish whose answer was lost: the version it made, instead of a second one."""
        newer = [v for v in published_versions(lam, cfg.name) if not before or v > before[-1]]
        return {"Version": str(newer[-1])} if newer else None

    version = str(aws_call(lam.publish_version, FunctionName=cfg.name, CodeSha256=code_sha,
                           adopt=adopt_version)["Version"])
    health_check(lam, cfg.name, version)  # a version whose module cannot load never takes traffic
    alias_arn = set_alias(lam, cfg.name, version)
    return {"function_arn": fn["FunctionArn"], "alias_arn": alias_arn, "version": version, "code_sha256": code_sha}


HEALTH_EVENT = {"flux_health": True}  # answered by the shim after the module loaded, without running the handler


def health_check(lam: Any, name: str, version: str) -> None:
    """Invoke the new version once before `live` moves to it (DESIGN §7): a module that throws when loaded, or a
    defineFunction name that differs from flux.json, fails the function's resource instead of every request."""
    resp = aws_call(lam.invoke, FunctionName=name, Qualifier=version, InvocationType="RequestResponse",
                    Payload=json.dumps(HEALTH_EVENT).encode())
    if not resp.get("FunctionError"):
        return
    raw = resp["Payload"].read() if hasattr(resp.get("Payload"), "read") else b""
    try:
        detail = json.loads(raw).get("errorMessage") or raw.decode(errors="replace")
    except (ValueError, AttributeError):
        detail = raw.decode(errors="replace")
    raise ProviderError(f"version {version} of {name} failed its health invocation ({resp['FunctionError']}: "
                        f"{str(detail)[:500]}); `live` still points at the previous version: fix the error it names "
                        "(`flux logs`), then deploy again")


def set_alias(lam: Any, name: str, version: str) -> str:
    try:
        resp = aws_call(lam.update_alias, FunctionName=name, Name=ALIAS, FunctionVersion=version)
    except ClientError as exc:
        if error_code(exc) != "ResourceNotFoundException":
            raise
        def adopt() -> dict[str, Any] | None:  # a create whose answer was lost did make the alias
            try:
                return dict(lam.update_alias(FunctionName=name, Name=ALIAS, FunctionVersion=version))
            except ClientError as exc3:
                if error_code(exc3) == "ResourceNotFoundException":
                    return None
                raise

        try:
            resp = aws_call(lam.create_alias, FunctionName=name, Name=ALIAS, FunctionVersion=version, adopt=adopt)
        except ClientError as exc2:  # another writer created it in between
            if error_code(exc2) not in ("ResourceConflictException", "ConflictException", "ResourceExistsException"):
                raise
            resp = aws_call(lam.update_alias, FunctionName=name, Name=ALIAS, FunctionVersion=version)
    return str(resp["AliasArn"])


def set_reserved_concurrency(lam: Any, name: str, reserved: int | None) -> None:
    """flux.json `concurrency` as reserved concurrency; none set: no reservation (idempotent)."""
    if reserved is None:
        aws_call(lam.delete_function_concurrency, FunctionName=name)
    else:
        aws_call(lam.put_function_concurrency, FunctionName=name, ReservedConcurrentExecutions=reserved)


def reserved_concurrency(live: dict[str, Any]) -> int | None:
    """The reservation in a GetFunction answer."""
    value = (live.get("Concurrency") or {}).get("ReservedConcurrentExecutions")
    return None if value is None else int(value)


def alias_version(lam: Any, name: str) -> str | None:
    try:
        return str(aws_call(lam.get_alias, FunctionName=name, Name=ALIAS)["FunctionVersion"])
    except ClientError as exc:
        if error_code(exc) == "ResourceNotFoundException":
            return None
        raise


def published_versions(lam: Any, name: str) -> list[int]:
    out: list[int] = []
    for page in aws_call(lambda: list(lam.get_paginator("list_versions_by_function").paginate(FunctionName=name))):
        out += [int(v["Version"]) for v in page.get("Versions", []) if v["Version"] != "$LATEST"]
    return sorted(out)


def rollback(lam: Any, name: str, to_version: str | None = None) -> tuple[str, str]:
    """Move `live` to `to_version` or to the newest published version older than the current one."""
    current = alias_version(lam, name)
    if current is None:
        raise ProviderError(f"function {name} has no `{ALIAS}` alias: deploy it first")
    versions = published_versions(lam, name)
    if to_version is None:
        older = [v for v in versions if v < int(current)]
        if not older:
            raise ProviderError(f"function {name}: version {current} is the first deployed version, nothing to roll back to")
        to_version = str(older[-1])
    elif int(to_version) not in versions:
        raise ProviderError(f"function {name}: no published version {to_version} (have {versions})")
    set_alias(lam, name, to_version)
    return current, to_version


def set_async_config(lam: Any, name: str, failure_queue_arn: str, retries: int, max_age: int) -> None:
    kwargs: dict[str, Any] = {
        "FunctionName": name,
        "Qualifier": ALIAS,
        "MaximumRetryAttempts": retries,
        "MaximumEventAgeInSeconds": max_age,
        "DestinationConfig": {"OnFailure": {"Destination": failure_queue_arn}},
    }
    try:
        aws_call(lam.put_function_event_invoke_config, **kwargs)
    except ClientError as exc:  # "already exists" (a retried put whose first answer was lost)
        if error_code(exc) != "ResourceConflictException":
            raise
        aws_call(lam.update_function_event_invoke_config, **kwargs)


def delete(lam: Any, name: str) -> None:
    try:
        aws_call(lam.delete_function, FunctionName=name)
    except ClientError as exc:
        if error_code(exc) != "ResourceNotFoundException":
            raise


def ensure_queue(sqs: Any, name: str, tags: dict[str, str]) -> tuple[str, str]:
    """The async on-failure destination queue: (url, arn); create is idempotent in SQS itself."""
    url = aws_call(sqs.create_queue, QueueName=name, tags=tags, Attributes={"MessageRetentionPeriod": "1209600"})[
        "QueueUrl"
    ]
    arn = aws_call(sqs.get_queue_attributes, QueueUrl=url, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
    return str(url), str(arn)


def delete_queue(sqs: Any, name: str) -> None:
    try:
        url = aws_call(sqs.get_queue_url, QueueName=name)["QueueUrl"]
        aws_call(sqs.delete_queue, QueueUrl=url)
    except ClientError as exc:
        if "NonExistentQueue" not in error_code(exc) and error_code(exc) != "QueueDoesNotExist":
            raise
