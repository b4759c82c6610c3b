"""AWS names and tags of a stage's resources: deterministic, so every create can first look its
resource up by name (idempotent after a crash) and destroy can find everything Flux made."""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass

_UNSAFE = re.compile(r"[^A-Za-z0-9_-]")


def _fit(name: str, limit: int) -> str:
    name = _UNSAFE.sub("-", name)
    if len(name) <= limit:
        return name
    tail = hashlib.sha256(name.encode()).hexdigest()[:8]
    return f"{name[: limit - 9]}-{tail}"


@dataclass(frozen=True)
class Names:
    project: str
    stage: str
    region: str
    partition: str = "aws"

    @property
    def prefix(self) -> str:
        return f"flux-{self.project}-{self.stage}"

    def tags(self, address: str) -> dict[str, str]:
        return {"flux:project": self.project, "flux:stage": self.stage, "flux:address": address}

    def function(self, fn: str) -> str:
        return _fit(f"{self.prefix}-{fn}", 64)

    def role(self, fn: str) -> str:
        return _fit(f"{self.prefix}-{fn}", 64)

    def log_group(self, fn: str) -> str:
        return f"/aws/lambda/{self.function(fn)}"

    def failure_queue(self, fn: str) -> str:
        return _fit(f"{self.prefix}-{fn}-failed", 80)

    def secret(self, key: str) -> str:
        return f"flux/{self.project}/{self.stage}/{key}"

    @property
    def database_secret(self) -> str:
        """The stage database URL for ctx.db (a name no user key can take: keys cannot start with '.')."""
        return f"flux/{self.project}/{self.stage}/.database_url"

    @property
    def secret_prefix(self) -> str:
        return f"flux/{self.project}/{self.stage}/"

    @property
    def api(self) -> str:
        return self.prefix

    @property
    def deno_layer(self) -> str:
        return _fit(f"{self.prefix}-deno", 140)

    def deno_layer_for(self, arch: str) -> str:
        """x86_64 keeps the original layer name; arm64 has its own (a layer version is one arch)."""
        return self.deno_layer if arch == "x86_64" else _fit(f"{self.prefix}-deno-{arch}", 140)

    def owns(self, tags: dict[str, str]) -> bool:
        """Tags of a resource this stage created (destroy deletes by these, not by name alone)."""
        return tags.get("flux:project") == self.project and tags.get("flux:stage") == self.stage

    def arn(self, service: str, account: str, resource: str, region: str | None = None) -> str:
        reg = self.region if region is None else region
        return f"arn:{self.partition}:{service}:{reg}:{account}:{resource}"
