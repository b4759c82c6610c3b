"""The Docker engine connection (Docker SDK for Python; DOCKER_HOST etc. honoured exactly as the docker CLI does)."""

from __future__ import annotations

import os
from typing import Any

from flux_plan.errors import ProviderError


def client() -> Any:
    """A connected client, or a ProviderError saying which engine was tried and what to do."""
    import docker
    import docker.errors

    where = os.environ.get("DOCKER_HOST") or "unix:///var/run/docker.sock"
    try:
        c = docker.from_env(timeout=120)
        c.ping()
    except docker.errors.DockerException as exc:
        raise ProviderError(
            f"cannot reach the Docker engine at {where} ({_short(exc)}); start dockerd or point DOCKER_HOST at "
            "a running engine (the docker provider needs one)") from None
    return c


def _short(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return text[:200]
