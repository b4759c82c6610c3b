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
) -> dict[str, Any]:
    """The exact inline policy of a function's role (tests assert it statement by statement)."""
    statements: list[dict[str, Any]] = [
        {
            "Sid": "OwnLogs",
            "Effect": "Allow",
            "Action": ["logs:CreateLogStream", "logs:PutLogEvents"],
            "Resource": [f"{log_group_arn}:*"],
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


def delete_role(iam: Any, role_name: str) -> None:
    """Remove every inline/attached policy, then the role; gone already is fine."""
    try:
        for name in aws_call(iam.list_role_policies, RoleName=role_name)["PolicyNames"]:
            aws_call(iam.delete_role_policy, RoleName=role_name, PolicyName=name)
        for pol in aws_call(iam.list_attached_role_policies, RoleName=role_name)["AttachedPolicies"]:
            aws_call(iam.detach_role_policy, RoleName=role_name, PolicyArn=pol["PolicyArn"])
        aws_call(iam.delete_role, RoleName=role_name)
    except ClientError as exc:
        if error_code(exc) != "NoSuchEntity":
            raise
