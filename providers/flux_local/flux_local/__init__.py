"""Flux local provider: a supervisor daemon per stage running a Deno host (gateway + workers) on
127.0.0.1 with embedded PostgreSQL, secrets, logs and a durable async queue."""

from flux_local.provider import LocalProvider

__all__ = ["LocalProvider"]
