"""Flux docker provider: each function in its own hardened container, everything else (gateway, ctx services,
logs, secrets, queue, migrations, PostgreSQL) the local provider's (DESIGN §8)."""

from flux_docker.provider import DockerProvider

__all__ = ["DockerProvider"]
