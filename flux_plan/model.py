"""Pydantic models shared by every stage of the flow (scan -> graph -> diff -> plan -> apply -> provider).

These are the contracts between core modules and providers: change them only together.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

# re-exported (providers import them from here); defined apart so the scan names them without pydantic
from flux_plan.defaults import DEFAULT_PROVIDER as DEFAULT_PROVIDER
from flux_plan.defaults import DEFAULT_STAGE as DEFAULT_STAGE

Runtime = Literal["deno", "node"]
ResourceType = Literal["api", "migration", "secret", "function", "route"]
Action = Literal["create", "update", "replace", "delete", "noop", "read"]


class Address(str):
    """`type.name`, e.g. `function.greet`, `route.GET_/todos`, `migration.001_init.sql`."""

    @classmethod
    def of(cls, type_: str, name: str) -> Address:
        return cls(f"{type_}.{name}")

    @property
    def type(self) -> str:
        return self.split(".", 1)[0]

    @property
    def name(self) -> str:
        return self.split(".", 1)[1]


class FunctionSpec(BaseModel):
    """One `functions/<dir>/` as declared by its flux.json plus what the scan found in its code."""

    model_config = ConfigDict(frozen=True)

    name: str
    dir: str  # project-relative, posix: "functions/greet"
    runtime: Runtime = "deno"
    route: str  # "/greet"
    method: str = "POST"
    async_: bool = Field(default=False, alias="async")
    timeout: int = 30  # seconds
    memory: int = 256  # MB (used by providers that size functions)
    concurrency: int = 10  # max concurrent invocations (local provider pool)
    secrets: tuple[str, ...] = ()  # keys read by ctx.secrets.get("K") or listed in flux.json
    env_keys: tuple[str, ...] = ()  # keys read as ctx.env.K
    uses_db: bool = False  # the code calls ctx.db: only then does a provider grant it the database
    env: tuple[tuple[str, str], ...] = ()  # flux.json `env`: plain (non-secret) values, sorted by key
    architecture: str | None = None  # flux.json `architecture` (x86_64 | arm64); None: the stage's
    source_digest: str = ""  # sha256 over everything the bundle is built from (see artifacts.py)


def route_key(method: str, path: str) -> str:
    """The name of a route resource: `POST_/todos`."""
    return f"{method}_{path}"


class RouteSpec(BaseModel):
    model_config = ConfigDict(frozen=True)

    method: str
    path: str
    function: str

    @property
    def key(self) -> str:
        return route_key(self.method, self.path)


class Migration(BaseModel):
    model_config = ConfigDict(frozen=True)

    file: str  # "001_create_todos.sql"
    version: int  # 1
    name: str  # "create_todos"
    checksum: str  # sha256 hex of the file bytes
    path: str  # project-relative "schema/001_create_todos.sql"


class StageConfig(BaseModel):
    """A stage of flux.project.json; provider-specific keys are kept in `settings`."""

    model_config = ConfigDict(extra="allow")

    name: str = DEFAULT_STAGE
    provider: str = DEFAULT_PROVIDER

    @property
    def settings(self) -> dict[str, Any]:
        return dict(self.model_extra or {})


class Project(BaseModel):
    """The scanned project: the only input of graph building."""

    root: Path
    name: str
    functions: list[FunctionSpec] = []
    migrations: list[Migration] = []
    env_example_keys: list[str] = []  # keys of .env.example, in file order
    stages: dict[str, StageConfig] = {}

    def stage(self, name: str | None) -> StageConfig:
        from flux_plan.errors import FluxError

        name = name or DEFAULT_STAGE
        if name in self.stages:
            return self.stages[name]
        if not self.stages and name == DEFAULT_STAGE:
            return StageConfig(name=DEFAULT_STAGE, provider=DEFAULT_PROVIDER)
        known = ", ".join(sorted(self.stages)) or DEFAULT_STAGE
        raise FluxError(
            f"flux.project.json: unknown stage {name!r}",
            hint=f"use one of: {known}",
        )


class Resource(BaseModel):
    """A desired resource: what the graph wants to exist. `attributes` are exactly what is diffed."""

    address: str
    type: str
    name: str
    attributes: dict[str, Any]
    depends_on: list[str] = []
    source: str | None = None  # project-relative file that declares it (for messages and reasons)


class ResourceState(BaseModel):
    """A resource as recorded in state.

    `attributes`: the desired attributes that were applied (what the next diff compares against,
    after refresh). `outputs`: provider data (ids, ARNs, URLs, versions) the provider needs later;
    never a secret value.
    """

    type: str
    attributes: dict[str, Any] = {}
    outputs: dict[str, Any] = {}
    dependencies: list[str] = []
    status: Literal["created", "tainted"] = "created"


class ProviderResult(BaseModel):
    """What a provider returns from create/update: the attributes it realised and its outputs."""

    attributes: dict[str, Any] | None = None  # None: the desired attributes, as given
    outputs: dict[str, Any] = {}
