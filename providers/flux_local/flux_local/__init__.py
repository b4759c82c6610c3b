"""Flux local provider: a supervisor daemon per stage running a Deno host (gateway + workers) on
127.0.0.1 with embedded PostgreSQL, secrets, logs and a durable async queue."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from flux_local.provider import LocalProvider

__all__ = ["LocalProvider"]


def __getattr__(name: str) -> Any:
    # Lazy: `python -m flux_local.daemon` imports this package first; importing the provider (and
    # through it the daemon module) here would make runpy warn and load the daemon module twice.
    if name == "LocalProvider":
        from flux_local.provider import LocalProvider

        return LocalProvider
    raise AttributeError(name)
