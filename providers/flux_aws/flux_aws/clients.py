"""boto3 clients for one stage: region + optional `endpoint_url` (moto, LocalStack) from the stage
config, credentials exactly as boto3 reads them (env, profile, SSO, instance role). botocore's own
retries are off (one attempt per call): `retry.aws_call` is the only retry layer."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Any

import boto3
from botocore.config import Config

from flux_plan.errors import FluxError


@dataclass
class AwsClients:
    region: str
    endpoint_url: str | None = None
    profile: str | None = None
    connect_timeout: float = 10.0
    read_timeout: float = 60.0
    _clients: dict[str, Any] = field(default_factory=dict, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)
    _account: str | None = field(default=None, repr=False)

    @classmethod
    def from_settings(cls, settings: dict[str, Any], where: str) -> AwsClients:
        region = settings.get("region")
        if not isinstance(region, str) or not region:
            raise FluxError(
                f"{where}: the aws stage needs a \"region\"",
                hint='add e.g. "region": "eu-west-1" to the stage in flux.project.json',
            )
        return cls(
            region=region,
            endpoint_url=settings.get("endpoint_url"),
            profile=settings.get("profile"),
            connect_timeout=float(settings.get("connect_timeout", 10)),
            read_timeout=float(settings.get("read_timeout", 60)),
        )

    def client(self, service: str) -> Any:
        """One client per service, shared by worker threads (boto3 clients are thread-safe;
        sessions are not, so creation happens under a lock)."""
        with self._lock:
            if service not in self._clients:
                session = boto3.session.Session(profile_name=self.profile, region_name=self.region)
                cfg = Config(
                    retries={"mode": "standard", "total_max_attempts": 1},
                    connect_timeout=self.connect_timeout,
                    read_timeout=self.read_timeout,
                    max_pool_connections=32,
                )
                self._clients[service] = session.client(service, endpoint_url=self.endpoint_url, config=cfg)
            return self._clients[service]

    @property
    def partition(self) -> str:
        if self.region.startswith("cn-"):
            return "aws-cn"
        if self.region.startswith("us-gov-"):
            return "aws-us-gov"
        return "aws"

    def account_id(self) -> str:
        if self._account is None:
            from flux_aws.retry import aws_call

            self._account = str(aws_call(self.client("sts").get_caller_identity)["Account"])
        return self._account
