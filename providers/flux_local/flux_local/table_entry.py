"""A function's entry in the stage's runtime table: built by an apply (provider.py) and by `flux dev` (dev.py)
alike, from its own module so neither imports the other."""

from __future__ import annotations

from typing import Any

from flux_plan.model import FunctionSpec


def function_config(spec: FunctionSpec, bundle: str) -> dict[str, Any]:
    """The daemon's runtime-table entry of a function: its flux.json `env` (plain values, committed with the code)
    and the names of the secret keys it is granted, never their values."""
    keys = sorted({*spec.env_keys, *spec.secrets})
    return {
        "runtime": spec.runtime, "bundle": bundle, "digest": spec.source_digest, "env_keys": keys,
        "plain_env": dict(spec.env),
        "uses_db": spec.uses_db, "memory": spec.memory,
        "timeout_ms": spec.timeout * 1000, "concurrency": spec.concurrency, "queue_limit": 100,
        "idle_ms": 300_000, "async": spec.async_, "route": spec.route, "method": spec.method,
    }
