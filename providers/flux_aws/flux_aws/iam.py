"""One IAM role per function with least privilege: write logs to its own log group, read exactly
the secrets it reads, and (async functions) re-invoke its own alias and report failures to its
own queue. Nothing else: a compromised function cannot read its neighbours' secrets."""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import unquote

from botocore.exceptions import ClientError

from flux_aws.retry import aws_call, error_code

POLICY_NAME = "flux-function"
ASSUME_ROLE = {
    "Version": "2012-10-17",
    "Statement": [
        {"Effect": "Allow", "Principal": {"Service": "lambda.amazonaws.com"}, "Action": "sts:AssumeRole"}
    ],
}


def function_policy(
    *,
    log_group_arn: str,
    secret_arn_patterns: list[str],
    self_invoke_arn: str | None = None,
    failure_queue_arn: str | None = None,
    vpc: bool = False,
) -> dict[str, Any]:
    """The exact inline policy of a function's role (tests assert it statement by statement)."""
    statements: list[dict[str, Any]] = [
        {
            "Sid": "OwnLogs",
            "Effect": "Allow",
            "Action": ["logs:CreateLogGroup", "logs:CreateLogStream", "logs:PutLogEvents"],
            "Resource": [log_group_arn, f"{log_group_arn}:*"],
        }
    ]
    if secret_arn_patterns:
        statements.append(
            {
                "Sid": "ReadOwnSecrets",
                "Effect": "Allow",
                "Action": ["secretsmanager:GetSecretValue"],
                "Resource": sorted(secret_arn_patterns),
            }
        )
    if self_invoke_arn:
        statements.append(
            {
                "Sid": "AsyncSelfInvoke",
                "Effect": "Allow",
                "Action": ["lambda:InvokeFunction"],
                "Resource": [self_invoke_arn],
            }
        )
    if failure_queue_arn:
        statements.append(
            {
                "Sid": "AsyncOnFailure",
                "Effect": "Allow",
                "Action": ["sqs:SendMessage"],
                "Resource": [failure_queue_arn],
            }
        )
    if vpc:
        # What AWSLambdaVPCAccessExecutionRole grants: Lambda manages the function's network
        # interfaces in the configured subnets (these actions support no resource scoping).
        statements.append(
            {
                "Sid": "VpcNetworkInterfaces",
                "Effect": "Allow",
                "Action": [
                    "ec2:CreateNetworkInterface",
                    "ec2:DescribeNetworkInterfaces",
                    "ec2:DescribeSubnets",
                    "ec2:DeleteNetworkInterface",
                    "ec2:AssignPrivateIpAddresses",
                    "ec2:UnassignPrivateIpAddresses",
                ],
                "Resource": ["*"],
            }
        )
    return {"Version": "2012-10-17", "Statement": statements}


def ensure_role(iam: Any, role_name: str, policy: dict[str, Any], tags: dict[str, str]) -> str:
    """Create the role (or adopt the one a crashed run created) and (re)write its inline policy."""
    try:
        arn = aws_call(
            iam.create_role,
            RoleName=role_name,
            AssumeRolePolicyDocument=json.dumps(ASSUME_ROLE),
            Description="Flux function role (managed by flux; do not edit)",
            Tags=[{"Key": k, "Value": v} for k, v in tags.items()],
        )["Role"]["Arn"]
    except ClientError as exc:
        if error_code(exc) != "EntityAlreadyExists":
            raise
        arn = aws_call(iam.get_role, RoleName=role_name)["Role"]["Arn"]
        if tags:
            aws_call(iam.tag_role, RoleName=role_name, Tags=[{"Key": k, "Value": v} for k, v in tags.items()])
        aws_call(iam.update_assume_role_policy, RoleName=role_name, PolicyDocument=json.dumps(ASSUME_ROLE))
    aws_call(iam.put_role_policy, RoleName=role_name, PolicyName=POLICY_NAME, PolicyDocument=json.dumps(policy))
    return str(arn)


def read_policy(iam: Any, role_name: str) -> dict[str, Any] | None:
    """The live inline policy, or None when the role or its policy is gone."""
    try:
        doc = aws_call(iam.get_role_policy, RoleName=role_name, PolicyName=POLICY_NAME)["PolicyDocument"]
    except ClientError as exc:
        if error_code(exc) == "NoSuchEntity":
            return None
        raise
    if isinstance(doc, str):
        doc = json.loads(unquote(doc))
    return dict(doc)


def _gone_ok(fn: Any, **kwargs: Any) -> Any:
    """One IAM call where NoSuchEntity means "already done" (a retried delete whose first answer was
    lost): each step tolerates it on its own, so one of them can never skip the rest."""
    try:
        return aws_call(fn, **kwargs)
    except ClientError as exc:
        if error_code(exc) != "NoSuchEntity":
            raise
        return None


def delete_role(iam: Any, role_name: str) -> None:
    """Remove every inline/attached policy, then the role; gone already is fine."""
    listed = _gone_ok(iam.list_role_policies, RoleName=role_name)
    if listed is None:
        return  # no such role
    for name in listed["PolicyNames"]:
        _gone_ok(iam.delete_role_policy, RoleName=role_name, PolicyName=name)
    attached = _gone_ok(iam.list_attached_role_policies, RoleName=role_name) or {"AttachedPolicies": []}
    for pol in attached["AttachedPolicies"]:
        _gone_ok(iam.detach_role_policy, RoleName=role_name, PolicyArn=pol["PolicyArn"])
    _gone_ok(iam.delete_role, RoleName=role_name)


def list_stage_roles(iam: Any, prefix: str, tags: dict[str, str]) -> list[str]:
    """Roles named `<prefix>-...` that carry this stage's tags (for destroy by name/tag)."""
    out: list[str] = []
    for page in iam.get_paginator("list_roles").paginate():
        for role in page.get("Roles", []):
            name = str(role["RoleName"])
            if not name.startswith(prefix + "-"):
                continue
            got = _gone_ok(iam.list_role_tags, RoleName=name)
            have = {t["Key"]: t["Value"] for t in (got or {}).get("Tags", [])}
            if all(have.get(k) == v for k, v in tags.items()):
                out.append(name)
    return out
