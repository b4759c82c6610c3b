"""One command's wiring: project + stage + provider + state + secrets + artifacts, built lazily so a
command only pays for what it touches (validate never loads a provider)."""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any

from flux_plan.errors import FluxError
from flux_plan.model import Project, StageConfig
from flux_plan.paths import stage_dir

if TYPE_CHECKING:
    from flux_plan.artifacts import ArtifactStore
    from flux_plan.providers import Provider
    from flux_plan.secrets import SecretStore
    from flux_plan.state import StateManager


def find_root(start: Path | None = None) -> Path:
    """The nearest directory at or above `start` holding `flux.project.json` or `functions/`."""
    here = (start or Path.cwd()).resolve()
    for d in (here, *here.parents):
        if (d / "flux.project.json").is_file() or (d / "functions").is_dir():
            return d
    raise FluxError(
        f"{here}: not inside a Flux project (no flux.project.json or functions/ here or above)",
        hint="run `flux init` to create one, or cd into your project",
    )


def function_dir_of(root: Path, cwd: Path | None = None) -> str | None:
    """`functions/<dir>` when the command runs from inside a function's directory, else None."""
    here = (cwd or Path.cwd()).resolve()
    try:
        rel = here.relative_to(root.resolve() / "functions")
    except ValueError:
        return None
    return f"functions/{rel.parts[0]}" if rel.parts else None


@dataclass
class Workspace:
    root: Path
    project: Project
    stage: StageConfig
    options: dict[str, Any] = field(default_factory=dict)
    log: Any = print

    @classmethod
    def open(cls, root: Path | None = None, stage: str | None = None, **options: Any) -> Workspace:
        from flux_plan.project import load_project

        root = (root or find_root()).resolve()
        project = load_project(root)
        return cls(root=root, project=project, stage=project.stage(stage), options=options)

    @classmethod
    def open_lenient(cls, root: Path | None = None, stage: str | None = None, **options: Any) -> Workspace:
        """For commands that do not deploy code (secrets, logs, invoke, state, destroy, migrations
        status): a broken function is left out instead of failing the command (DESIGN §6). Problems
        in flux.project.json still fail: without it there is no stage to act on."""
        from flux_plan.errors import ValidationFailed
        from flux_plan.project import PROJECT_FILE, scan

        root = (root or find_root()).resolve()
        project, problems = scan(root)
        fatal = [p for p in problems if p.severity == "error" and p.file == PROJECT_FILE]
        if fatal:
            raise ValidationFailed(problems=fatal)
        return cls(root=root, project=project, stage=project.stage(stage), options=options)

    @property
    def state_dir(self) -> Path:
        return stage_dir(self.root, self.stage.name)

    @cached_property
    def secrets(self) -> SecretStore:
        from flux_plan.secrets import SecretStore

        return SecretStore(self.root, self.project.name, self.stage.name)

    @cached_property
    def artifacts(self) -> ArtifactStore:
        from flux_plan.artifacts import ArtifactStore

        return ArtifactStore(self.root)

    @cached_property
    def provider(self) -> Provider:
        from flux_plan.providers import ProviderContext, load_provider

        provider = load_provider(self.stage.provider)
        provider.configure(
            ProviderContext(
                project=self.project,
                stage=self.stage,
                state_dir=self.state_dir,
                artifacts=self.artifacts,
                secrets=self.secrets,
                log=self.log,
                options=self.options,
            )
        )
        return provider

    @cached_property
    def state(self) -> StateManager:
        from flux_plan.state import LocalFileBackend, StateManager

        remote = getattr(self.provider, "state_backend", None)
        backend = remote() if remote else None
        return StateManager(backend or LocalFileBackend(self.state_dir), self.state_dir)
