"""The Provider protocol and provider discovery through the `flux.providers` entry-point group.

A provider package registers a class:

    [project.entry-points."flux.providers"]
    local = "flux_local:LocalProvider"

The core never imports a provider by name; it calls `load_provider(stage.provider)`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from importlib.metadata import entry_points
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from flux_plan.errors import FluxError
from flux_plan.model import Project, ProviderResult, Resource, ResourceState, StageConfig

if TYPE_CHECKING:
    from flux_plan.artifacts import ArtifactStore
    from flux_plan.secrets import SecretStore
    from flux_plan.state import StateBackend

ENTRY_POINT_GROUP = "flux.providers"


@dataclass
class ProviderContext:
    """Everything a provider may use from the core. Handed to `Provider.configure` once per command."""

    project: Project
    stage: StageConfig
    state_dir: Path  # .flux/<stage>/ : the provider may keep its own files under it
    artifacts: ArtifactStore  # bundles by digest: artifacts.ensure(fn_spec) -> Path of the bundle dir
    secrets: SecretStore  # secrets.get(KEY) -> value (never put it in state or logs)
    log: Callable[[str], None] = print  # progress lines for the user (already masked)
    options: dict[str, Any] = field(default_factory=dict)  # command flags a provider may honour


@dataclass
class InvokeResult:
    status: int
    body: Any
    request_id: str | None
    duration_ms: float
    headers: dict[str, str] = field(default_factory=dict)


@runtime_checkable
class Provider(Protocol):
    """What every provider implements. Methods are called from worker threads (bounded parallelism):
    they must be thread-safe, and `create` must be idempotent (look up by name/tag first) because a
    crash can fall between the provider call and the journal's `done` record.

    Raise `TransientProviderError` for throttling/5xx/timeouts (the engine retries) and
    `ProviderError` for anything else (the resource fails; its dependents are skipped).
    """

    name: str

    def configure(self, ctx: ProviderContext) -> None:
        """Bind to a project + stage. Cheap: no network, no process start (plan must stay fast)."""

    def force_replace(self, resource_type: str) -> frozenset[str]:
        """Top-level attribute names whose change makes the action `replace` instead of `update`."""
        ...

    def read(self, address: str, prior: ResourceState) -> dict[str, Any] | None:
        """Refresh: the live value of the diffed attributes, or None when the resource is gone.

        Return `prior.attributes` unchanged when nothing drifted.
        """
        ...

    def create(self, resource: Resource) -> ProviderResult: ...

    def update(self, resource: Resource, prior: ResourceState) -> ProviderResult: ...

    def delete(self, address: str, prior: ResourceState) -> None: ...


class ProviderHooks(Protocol):
    """Optional methods. The core checks with `hasattr` before calling any of them."""

    def read_many(self, items: dict[str, ResourceState]) -> dict[str, dict[str, Any] | None]:
        """Batch refresh (one call for the whole state); preferred over `read` when present."""
        ...

    def before_apply(self, changes: list[tuple[str, str]]) -> None:
        """Called once before the first operation with [(address, action)] (e.g. start a daemon)."""

    def after_apply(self, resources: dict[str, ResourceState]) -> dict[str, Any]:
        """Called once after apply; returns stage outputs shown to the user (e.g. {"url": ...})."""
        ...

    def state_backend(self) -> StateBackend | None:
        """A remote state backend (e.g. S3) configured by the stage, or None for the local file."""
        ...

    def invoke(self, function: str, payload: Any, *, method: str | None = None) -> InvokeResult: ...

    def logs(
        self,
        function: str | None,
        *,
        since_s: float | None,
        request_id: str | None,
        level: str | None,
        follow: bool,
    ) -> Iterator[dict[str, Any]]:
        """Structured log records {ts, level, stage, function, request_id, msg, data}."""
        ...

    def destroy_stage(self) -> None:
        """After a whole-stage destroy (`flux destroy` or a saved destroy plan): stop daemons, free ports."""

    def dev(self, *, port: int | None = None) -> int:
        """`flux dev`: run the stage in the foreground, watch the files, hot-reload; returns the exit code."""
        ...

    def rollback(self, function: str, to_version: str | None = None) -> dict[str, str]:
        """`flux rollback`: point the function at a previous version; {function, from_version, to_version}."""
        ...

    def applied_migrations(self) -> dict[int, Any] | None:
        """`flux migrations status`: the stage database's applied migrations by version (rows with file,
        checksum, applied_at, duration_ms), or None when the database cannot be reached."""
        ...


OPTIONAL_HOOKS = ("read_many", "before_apply", "after_apply", "state_backend", "invoke", "logs", "destroy_stage",
                  "dev", "rollback", "applied_migrations")


def available_providers() -> dict[str, Any]:
    return {ep.name: ep for ep in entry_points(group=ENTRY_POINT_GROUP)}


def load_provider(name: str) -> Provider:
    """Instantiate the provider registered under `name` in the `flux.providers` group."""
    eps = available_providers()
    if name not in eps:
        known = ", ".join(sorted(eps)) or "none installed"
        raise FluxError(
            f"flux.project.json: unknown provider {name!r} (installed: {known})",
            hint="install the provider package, or fix the stage's \"provider\" field",
        )
    cls = eps[name].load()
    provider = cls()
    if not isinstance(provider, Provider):
        raise FluxError(f"provider {name!r} ({eps[name].value}) does not implement the Provider protocol")
    return provider
