"""Secrets Manager: one secret per Flux secret at `flux/<project>/<stage>/<KEY>`. State keeps the
ARN, the version id and the fingerprint only; functions fetch values at run time (never via env)."""

from __future__ import annotations

from typing import Any

from botocore.exceptions import ClientError

from flux_aws.retry import aws_call, error_code

FINGERPRINT_TAG = "flux:fingerprint"


def put_secret(sm: Any, name: str, value: str, fingerprint: str, tags: dict[str, str]) -> dict[str, str]:
    """Create or update; returns {arn, version_id}. A secret a crashed run created is adopted, one
    scheduled for deletion (destroyed with a recovery window) is restored first."""
    all_tags = {**tags, FINGERPRINT_TAG: fingerprint}
    try:
        resp = aws_call(
            sm.create_secret,
            Name=name,
            SecretString=value,
            Description="Flux secret (managed by flux)",
            Tags=[{"Key": k, "Value": v} for k, v in all_tags.items()],
        )
        return {"arn": resp["ARN"], "version_id": resp["VersionId"]}
    except ClientError as exc:
        code = error_code(exc)
        if code == "InvalidRequestException" and "deletion" in str(exc):
            aws_call(sm.restore_secret, SecretId=name)
        elif code != "ResourceExistsException":
            raise
    resp = aws_call(sm.put_secret_value, SecretId=name, SecretString=value)
    aws_call(sm.tag_resource, SecretId=name, Tags=[{"Key": FINGERPRINT_TAG, "Value": fingerprint}])
    return {"arn": resp["ARN"], "version_id": resp["VersionId"]}


def describe(sm: Any, name: str) -> dict[str, Any] | None:
    """{arn, version_id, fingerprint} of the live secret, or None when gone / scheduled for deletion."""
    try:
        d = aws_call(sm.describe_secret, SecretId=name)
    except ClientError as exc:
        if error_code(exc) == "ResourceNotFoundException":
            return None
        raise
    if d.get("DeletedDate"):
        return None
    current = next((v for v, stages in d.get("VersionIdsToStages", {}).items() if "AWSCURRENT" in stages), None)
    tags = {t["Key"]: t["Value"] for t in d.get("Tags", [])}
    return {"arn": d["ARN"], "version_id": current, "fingerprint": tags.get(FINGERPRINT_TAG)}


def delete_secret(sm: Any, name: str) -> None:
    try:
        aws_call(sm.delete_secret, SecretId=name, ForceDeleteWithoutRecovery=True)
    except ClientError as exc:
        if error_code(exc) != "ResourceNotFoundException":
            raise


def sync_value(sm: Any, name: str, value: str, tags: dict[str, str]) -> None:
    """Create, or put a new version only when the value differs (no churn on every deploy)."""
    try:
        current = aws_call(sm.get_secret_value, SecretId=name)["SecretString"]
    except ClientError as exc:
        if error_code(exc) != "ResourceNotFoundException":
            raise
        try:
            aws_call(sm.create_secret, Name=name, SecretString=value,
                     Description="Flux stage database URL (managed by flux)",
                     Tags=[{"Key": k, "Value": v} for k, v in tags.items()])
            return
        except ClientError as exc2:  # a retried create whose first answer was lost, or a restore
            if error_code(exc2) == "InvalidRequestException" and "deletion" in str(exc2):
                aws_call(sm.restore_secret, SecretId=name)
            elif error_code(exc2) != "ResourceExistsException":
                raise
        current = aws_call(sm.get_secret_value, SecretId=name)["SecretString"]
    if current != value:
        aws_call(sm.put_secret_value, SecretId=name, SecretString=value)
