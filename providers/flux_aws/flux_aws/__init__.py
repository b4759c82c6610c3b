"""Flux AWS provider: Lambda + API Gateway v2 + IAM + Secrets Manager + CloudWatch Logs, S3 state."""

from flux_aws.provider import AwsProvider

__all__ = ["AwsProvider"]
