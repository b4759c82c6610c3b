"""The desired-state graph: the resources a project + stage + secret store want, and who needs whom.

Dependencies point from user to used (a route depends on its function); apply creates in that
order and deletes in reverse. Ordering and cycle checks use stdlib `graphlib`.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from graphlib import CycleError, TopologicalSorter
from typing import Any

from flux_plan.errors import FluxError
from flux_plan.model import Address, FunctionSpec, Project, Resource, StageConfig, route_key

PROJECT_FILE = "flux.project.json"
# Stage settings that are about where state lives, not about the deployed API.
_NON_API_SETTINGS = {"state"}
# Stage settings that also shape every function (a flux.json `architecture` wins): copied into the
# function's attributes, so changing one updates the functions, not only the API.
_FUNCTION_STAGE_SETTINGS = ("architecture", "tags", "vpc")


def _function_settings(spec: FunctionSpec, stage_settings: dict[str, Any],
                       database_fingerprint: str | None) -> dict[str, Any]:
    """Attributes present only when set (unchanged projects keep unchanged attributes). The database
    URL is diffed by its fingerprint, and only for functions whose code calls ctx.db.
    `stage_settings`: the stage's settings that shape every function (_FUNCTION_STAGE_SETTINGS)."""
    out: dict[str, Any] = dict(stage_settings)
    if spec.architecture:
        out["architecture"] = spec.architecture
    if spec.env:
        out["env"] = dict(spec.env)
    if spec.uses_db and database_fingerprint:
        out["database"] = database_fingerprint
    return out


def function_attributes(spec: FunctionSpec) -> dict[str, Any]:
    return {
        "runtime": spec.runtime,
        "digest": spec.source_digest,
        "route": spec.route,
        "method": spec.method,
        "async": spec.async_,
        "timeout": spec.timeout,
        "memory": spec.memory,
        "concurrency": spec.concurrency,
        "env_keys": list(spec.env_keys),
        "secrets": list(spec.secrets),
    }


def route_address(method: str, path: str) -> str:
    return Address.of("route", route_key(method, path))


class DesiredGraph:
    """Resources by address plus dependency queries; built once per command, read-only after."""

    def __init__(self, resources: dict[str, Resource]) -> None:
        self.resources = resources
        self._dependents: dict[str, list[str]] = {a: [] for a in resources}
        for addr, res in resources.items():
            for dep in res.depends_on:
                if dep not in resources:
                    raise FluxError(f"{res.source or addr}: {addr} depends on unknown resource {dep}")
                self._dependents[dep].append(addr)
        self._order_cache: list[str] | None = None  # sorted on first use: a no-op plan never needs it

    @property
    def _order(self) -> list[str]:
        if self._order_cache is None:
            self._order_cache = self._topo_order()
        return self._order_cache

    def _topo_order(self) -> list[str]:
        ts: TopologicalSorter[str] = TopologicalSorter()
        for addr in sorted(self.resources):
            ts.add(addr, *self.resources[addr].depends_on)
        try:
            return list(ts.static_order())
        except CycleError as exc:
            cycle = " -> ".join(exc.args[1]) if len(exc.args) > 1 else "?"
            raise FluxError(f"dependency cycle between resources: {cycle}",
                            hint="a function cannot depend on itself through routes or secrets") from exc

    def __contains__(self, addr: object) -> bool:
        return addr in self.resources

    def __len__(self) -> int:
        return len(self.resources)

    def order(self) -> list[str]:
        """Every address, dependencies before dependents (creation order)."""
        return list(self._order)

    def dependencies(self, addr: str) -> list[str]:
        return list(self.resources[addr].depends_on)

    def dependents(self, addr: str) -> list[str]:
        return list(self._dependents.get(addr, []))

    def closure(self, addrs: Iterable[str]) -> set[str]:
        """`addrs` plus everything they depend on, transitively (what a targeted apply needs)."""
        out: set[str] = set()
        stack = [a for a in addrs if a in self.resources]
        while stack:
            a = stack.pop()
            if a in out:
                continue
            out.add(a)
            stack.extend(self.resources[a].depends_on)
        return out

    def to_json(self) -> dict[str, Any]:
        return {
            "resources": [
                {
                    "address": a,
                    "type": self.resources[a].type,
                    "name": self.resources[a].name,
                    "attributes": self.resources[a].attributes,
                    "depends_on": self.resources[a].depends_on,
                    "source": self.resources[a].source,
                }
                for a in self._order
            ]
        }

    def to_dot(self) -> str:
        lines = ["digraph flux {", "  rankdir=LR;", "  node [shape=box];"]
        for a in self._order:
            lines.append(f"  {json.dumps(a)} [label={json.dumps(a)}];")
        for a in self._order:
            for dep in self.resources[a].depends_on:
                lines.append(f"  {json.dumps(a)} -> {json.dumps(dep)};")
        lines.append("}")
        return "\n".join(lines) + "\n"


def build_graph(project: Project, stage: StageConfig, secret_fingerprints: dict[str, str] | None = None,
                database_fingerprint: str | None = None) -> DesiredGraph:
    """Resources per DESIGN §3 for one stage. `secret_fingerprints` maps every key set in the store to
    its fingerprint (HMAC, never the value); `database_fingerprint` is the one of the stage's database
    URL (`database_url_env`), when it is set."""
    fingerprints = secret_fingerprints or {}
    res: dict[str, Resource] = {}
    settings = stage.settings
    fn_settings = {k: settings[k] for k in _FUNCTION_STAGE_SETTINGS if k in settings}

    api = Address.of("api", stage.name)
    api_attrs = {"stage": stage.name}
    api_attrs.update({k: v for k, v in sorted(settings.items()) if k not in _NON_API_SETTINGS})
    has_project_file = (project.root / PROJECT_FILE).is_file()
    res[api] = Resource(address=api, type="api", name=stage.name, attributes=api_attrs,
                        source=PROJECT_FILE if has_project_file else None)

    migration_addrs: list[str] = []
    for mig in project.migrations:
        addr = Address.of("migration", mig.file)
        deps = [migration_addrs[-1]] if migration_addrs else []
        res[addr] = Resource(address=addr, type="migration", name=mig.file,
                             attributes={"file": mig.file, "version": mig.version, "checksum": mig.checksum},
                             depends_on=deps, source=mig.path)
        migration_addrs.append(addr)

    for key in sorted(fingerprints):
        addr = Address.of("secret", key)
        res[addr] = Resource(address=addr, type="secret", name=key,
                             attributes={"fingerprint": fingerprints[key]},
                             source=f".flux/{stage.name}/secrets.enc")

    for spec in project.functions:
        addr = Address.of("function", spec.name)
        secret_deps = [Address.of("secret", k) for k in sorted({*spec.secrets, *spec.env_keys}) if k in fingerprints]
        attrs = {**function_attributes(spec), **_function_settings(spec, fn_settings, database_fingerprint)}
        res[addr] = Resource(address=addr, type="function", name=spec.name, attributes=attrs,
                             depends_on=[*secret_deps, *migration_addrs], source=f"{spec.dir}/flux.json")
        rkey = route_key(spec.method, spec.route)
        raddr = Address.of("route", rkey)
        if raddr in res:
            other = res[raddr].attributes["function"]
            raise FluxError(f"{spec.dir}/flux.json: route {spec.method} {spec.route} is also served by {other!r}",
                            hint="give one of them another route or method")
        res[raddr] = Resource(address=raddr, type="route", name=rkey,
                              attributes={"method": spec.method, "path": spec.route, "function": spec.name,
                                          "async": spec.async_},
                              depends_on=[api, addr], source=f"{spec.dir}/flux.json")
    return DesiredGraph(res)
