"""The Provider protocol and provider discovery through the `flux.providers` entry-point group.

A provider package registers a class:

    [project.entry-points."flux.providers"]
    local = "flux_local:LocalProvider"

The core never imports a provider by name; it calls `load_provider(stage.provider)`, which imports that
one provider's package only (no boto3 for a local stage). Reading every installed distribution's entry
points costs ~50 ms, so the group's entries are cached per user, keyed by every `sys.path` directory's
mtime + inode: installing, upgrading or removing a package changes its directory and rescans.
"""

from __future__ import annotations

import hashlib
import importlib
import json
import os
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from flux_plan.errors import FluxError
from flux_plan.paths import user_cache_dir

if TYPE_CHECKING:  # annotations only: `flux version` lists providers without loading pydantic
    from flux_plan.artifacts import ArtifactStore
    from flux_plan.model import Project, ProviderResult, Resource, ResourceState, StageConfig
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

    def get_ready(self, changes: list[tuple[str, str]]) -> Callable[[], None] | None:
        """An auto-approved apply of [(address, action)] follows this plan: start in the background what it will
        need (e.g. a daemon), so that overlaps the plan's code check and rendering. Must change nothing a plan
        reads. Returns what undoes it when the apply does not happen (the plan failed its check), or None."""
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

    def destroy_stage(self, *, purge: bool = False) -> None:
        """After a whole-stage destroy (`flux destroy` or a saved destroy plan): stop daemons, free ports. The stage's
        data (database, queue, logs, volumes) stays unless `purge` (`flux destroy --purge`)."""

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


OPTIONAL_HOOKS = ("read_many", "get_ready", "before_apply", "after_apply", "state_backend", "invoke", "logs", "destroy_stage",
                  "dev", "rollback", "applied_migrations")


@dataclass(frozen=True)
class ProviderEntry:
    """One `flux.providers` entry point: `value` is "module:Class" as the package registered it."""

    name: str
    value: str

    def load(self) -> Any:
        module, _, attr = self.value.partition(":")
        obj: Any = importlib.import_module(module.strip())
        for part in attr.split("[", 1)[0].strip().split("."):
            if part:
                obj = getattr(obj, part)
        return obj


_CACHE_FORMAT = 1


def _discovery_cache() -> Path:
    stamps: list[Any] = [_CACHE_FORMAT, ENTRY_POINT_GROUP, sys.executable]
    for entry in sys.path:
        try:
            st = os.stat(entry or ".")
        except OSError:
            continue
        stamps.append([entry, st.st_mtime_ns, st.st_ino])
    key = hashlib.sha256(json.dumps(stamps).encode()).hexdigest()[:32]
    return user_cache_dir() / "providers" / f"{key}.json"


def _scan_entry_points() -> dict[str, str]:
    from importlib.metadata import entry_points

    return {ep.name: ep.value for ep in entry_points(group=ENTRY_POINT_GROUP)}


def available_providers(*, rescan: bool = False) -> dict[str, ProviderEntry]:
    """Installed providers by name, from the discovery cache when no `sys.path` directory changed."""
    path = _discovery_cache()
    found: dict[str, str] | None = None
    if not rescan:
        try:
            doc = json.loads(path.read_text(encoding="utf-8"))
            if isinstance(doc, dict) and all(isinstance(v, str) for v in doc.values()):
                found = doc
        except (OSError, ValueError):
            pass
    if found is None:
        found = _scan_entry_points()
        try:  # best effort: a read-only home only costs the scan next time
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
            tmp.write_text(json.dumps(found, sort_keys=True), encoding="utf-8")
            os.replace(tmp, path)
            week_ago = path.stat().st_mtime - 7 * 86400  # keys of other venvs stay; stale ones go
            for old in path.parent.glob("*.json"):
                if old.stat().st_mtime < week_ago:
                    old.unlink(missing_ok=True)
        except OSError:
            pass
    return {name: ProviderEntry(name, value) for name, value in sorted(found.items())}


def load_provider(name: str) -> Provider:
    """Instantiate the provider registered under `name` in the `flux.providers` group."""
    eps = available_providers()
    cls: Any = None
    if name in eps:
        try:
            cls = eps[name].load()
        except (ImportError, AttributeError):
            cls = None  # the cache may predate an uninstall or upgrade: look again
    if cls is None:
        eps = available_providers(rescan=True)
        if name not in eps:
            known = ", ".join(sorted(eps)) or "none installed"
            raise FluxError(
                f"flux.project.json: unknown provider {name!r} (installed: {known})",
                hint="install the provider package, or fix the stage's \"provider\" field",
            )
        try:
            cls = eps[name].load()
        except (ImportError, AttributeError) as exc:
            raise FluxError(
                f"flux.project.json: provider {name!r} is registered as {eps[name].value!r} but cannot be "
                f"loaded: {type(exc).__name__}: {exc}",
                hint="reinstall the provider package, or pick another provider for the stage",
            ) from None
    provider = cls()
    if not isinstance(provider, Provider):
        raise FluxError(f"provider {name!r} ({eps[name].value}) does not implement the Provider protocol")
    return provider
