"""The Plan: what apply will do, pinned to the state it was computed against.

`make_plan` is read-only (no lock): load state, refresh it through the provider, build the desired
graph, diff, then order the changes the way apply must run them. A saved plan records the state's
lineage + serial so `apply plan.json` can refuse it once the state moved on (`check_fresh`).
"""

from __future__ import annotations

import difflib
import hashlib
import json
import os
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from graphlib import TopologicalSorter
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ValidationError

from flux_plan.diff import AttrDiff, ResourceChange, diff_changes, drift
from flux_plan.errors import FluxError, ProviderError, StateError, ValidationFailed
from flux_plan.graph import DesiredGraph, build_graph, route_address
from flux_plan.model import Address, ResourceState
from flux_plan.project import ENV_EXAMPLE_WARNING, read_keys, scan_warnings

if TYPE_CHECKING:
    from flux_plan.model import FunctionSpec
    from flux_plan.providers import Provider
    from flux_plan.state import State
    from flux_plan.workspace import Workspace

__all__ = ["AttrDiff", "Plan", "ResourceChange", "check_fresh", "check_saved", "make_plan", "pin", "refresh"]

FORMAT_VERSION = 1
REFRESH_THREADS = 10


class Plan(BaseModel):
    format_version: int = FORMAT_VERSION
    created_at: str
    stage: str
    provider: str
    project: str
    lineage: str | None = None
    serial: int = 0
    changes: list[ResourceChange] = []
    unchanged: int = 0
    warnings: list[str] = []
    drift: list[ResourceChange] = []
    artifacts: dict[str, str] = {}
    destroy: bool = False
    refresh_only: bool = False
    targeted: bool = False  # --target/function dir: a destroy plan then leaves the stage's processes
    purge: bool = False  # `flux destroy --purge`: the provider also removes the stage's data (database, queue, logs)
    # Saved plans only (`flux plan -o`): what apply deploys instead of the working tree.
    bundles: dict[str, str] = {}  # function name -> sha256 of its pinned bundle file
    snapshot: dict[str, Any] | None = None  # functions, migrations, .env.example keys, stage config

    def summary(self) -> dict[str, int]:
        """Counts like Terraform's: a replace is one add plus one destroy."""
        out = {"add": 0, "change": 0, "destroy": 0}
        for c in self.changes:
            if c.action in ("create", "replace"):
                out["add"] += 1
            if c.action in ("delete", "replace"):
                out["destroy"] += 1
            if c.action == "update":
                out["change"] += 1
        return out

    def has_changes(self) -> bool:
        return bool(self.changes) or (self.refresh_only and bool(self.drift))

    def to_doc(self) -> dict[str, Any]:
        """The JSON document (plan file and `--json`), valid against schemas/plan.schema.json."""
        doc = self.model_dump(mode="json", exclude={"snapshot", "bundles"})
        if self.snapshot is not None:
            doc["bundles"] = dict(self.bundles)
            doc["snapshot"] = self.snapshot
        doc["summary"] = self.summary()
        return doc

    def save(self, path: Path | str) -> None:
        """Write the plan sealed with the project's plan key (created with the project key if none)."""
        from flux_plan.backends.local import atomic_write
        from flux_plan.seal import plan_key, seal

        doc = seal(self.to_doc(), plan_key(self.project, create=True))
        path = Path(path)
        try:
            atomic_write(path, (json.dumps(doc, indent=2) + "\n").encode())
        except OSError as exc:
            raise FluxError(f"{path}: cannot write the plan file ({exc.strerror})",
                            hint="pass -o a path in a writable directory") from exc

    @classmethod
    def load(cls, path: Path | str, *, verify: bool = True, action: str = "apply") -> Plan:
        """Read a saved plan; with `verify` (apply, show) its seal is checked before anything else."""
        from flux_plan.project import validator
        from flux_plan.seal import SEAL_FIELD, plan_key
        from flux_plan.seal import verify as verify_seal

        path = Path(path)
        try:
            doc = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError as exc:
            raise FluxError(f"{path}: plan file not found", hint="create one with `flux plan -o FILE`") from exc
        except (OSError, UnicodeDecodeError, ValueError, RecursionError) as exc:
            raise FluxError(f"{path}: not a readable plan file ({exc})",
                            hint="create a new one with `flux plan -o FILE`") from exc
        if not isinstance(doc, dict) or not isinstance(doc.get("project"), str):
            raise FluxError(f"{path}: not a Flux plan file (no project name)",
                            hint="create one with `flux plan -o FILE`")
        if verify:
            verify_seal(doc, plan_key(doc["project"], create=False), str(path), action)
        doc.pop(SEAL_FIELD, None)
        errors = sorted(validator("plan").iter_errors(doc), key=lambda e: list(map(str, e.absolute_path)))
        if errors:
            where = "/".join(map(str, errors[0].absolute_path)) or "(root)"
            raise FluxError(f"{path}: not a valid Flux plan file at {where}: {errors[0].message}",
                            hint="create a new one with `flux plan -o FILE`")
        doc.pop("summary", None)
        try:
            return cls.model_validate(doc)
        except ValidationError as exc:
            raise FluxError(f"{path}: not a valid Flux plan file ({exc.error_count()} problem(s))",
                            hint="create a new one with `flux plan -o FILE`") from exc


def check_fresh(plan: Plan, state: State) -> None:
    """Refuse a saved plan once its state moved on: applying it would act on stale knowledge."""
    if plan.lineage is not None and state.lineage != plan.lineage:
        raise StateError(
            f"saved plan is for another state (lineage {plan.lineage}, the stage's state is {state.lineage})",
            hint="run `flux plan -o FILE` again",
        )
    if state.serial != plan.serial or (plan.lineage is None and state.resources):
        raise StateError(
            f"saved plan is stale: made against state serial {plan.serial}, the state is now at {state.serial}",
            hint="the stage changed since the plan was made: run `flux plan -o FILE` again and review it",
        )


def refresh(provider: Provider, current: dict[str, ResourceState]) -> dict[str, dict[str, Any] | None]:
    """Live attributes of every state resource: one `read_many` call when the provider has it, else
    `read` per resource on a bounded thread pool (providers are thread-safe by contract)."""
    if not current:
        return {}
    read_many = getattr(provider, "read_many", None)
    try:
        if callable(read_many):
            return dict(read_many(dict(current)))

        def one(item: tuple[str, ResourceState]) -> tuple[str, dict[str, Any] | None]:
            addr, prior = item
            try:
                return addr, provider.read(addr, prior)
            except ProviderError as exc:
                raise ProviderError(str(exc), address=exc.address or addr) from exc

        with ThreadPoolExecutor(max_workers=min(REFRESH_THREADS, len(current))) as pool:
            return dict(pool.map(one, current.items()))
    except ProviderError as exc:
        where = f" of {exc.address}" if exc.address else ""
        raise FluxError(f"refresh{where} failed: {exc}",
                        hint="check that the provider is reachable, then run the plan again") from exc


def _delete_order(addrs: Iterable[str], current: dict[str, ResourceState]) -> list[str]:
    """Reverse dependency order over the state's recorded dependencies: users before what they use."""
    wanted = set(addrs)
    ts: TopologicalSorter[str] = TopologicalSorter()
    for a in sorted(wanted):
        ts.add(a, *(d for d in current[a].dependencies if d in wanted))
    return list(reversed(list(ts.static_order())))


def _state_dependents(addrs: set[str], current: dict[str, ResourceState]) -> set[str]:
    users: dict[str, list[str]] = {}
    for a, rs in current.items():
        for d in rs.dependencies:
            users.setdefault(d, []).append(a)
    out, stack = set(), list(addrs)
    while stack:
        a = stack.pop()
        if a in out:
            continue
        out.add(a)
        stack.extend(users.get(a, []))
    return out


def _unknown_address(addr: str, known: Iterable[str]) -> FluxError:
    match = difflib.get_close_matches(addr, list(known), n=1, cutoff=0.6)
    hint = f"did you mean {match[0]!r}?" if match else "list addresses with `flux graph` or `flux state list`"
    return FluxError(f"--target/--replace: no resource {addr!r} in the project or the state", hint=hint)


def _wanted(ws: Workspace, graph: DesiredGraph, current: dict[str, ResourceState], targets: Iterable[str],
            function_dir: str | None) -> list[str] | None:
    """The addresses asked for (--target, or the function a command runs inside), checked to exist."""
    wanted = list(targets)
    if function_dir is not None:
        spec = next((f for f in ws.project.functions if f.dir == function_dir), None)
        if spec is None:
            raise FluxError(f"{function_dir}: not a function of this project (no valid flux.json + index.ts)",
                            hint="run `flux validate` to see why, or run the command from the project root")
        wanted += [Address.of("function", spec.name), route_address(spec.method, spec.route)]
        # The function's previous route(s) from state move with it (a method or path change).
        wanted += [a for a, rs in current.items()
                   if rs.type == "route" and rs.attributes.get("function") == spec.name]
    if not wanted:
        return None
    for a in wanted:
        if a not in graph and a not in current:
            raise _unknown_address(a, [*graph.resources, *current])
    return wanted


def _selection(graph: DesiredGraph, current: dict[str, ResourceState], wanted: list[str]) -> set[str]:
    """What a targeted plan may touch: targets + what they need (+ state users of removed ones)."""
    selected = graph.closure(a for a in wanted if a in graph)
    gone = {a for a in wanted if a in current and a not in graph}
    return selected | (_state_dependents(gone, current) if gone else set())


def _secret_warnings(ws: Workspace, fingerprints: dict[str, str], strict: bool) -> list[str]:
    documented = set(ws.project.env_example_keys)
    out: list[str] = []
    dirs = {f.name: f.dir for f in ws.project.functions}
    for key, fns in sorted(read_keys(ws.project).items()):
        if key in fingerprints:
            continue
        users = ", ".join(f"{dirs[f]}/index.ts" for f in fns)
        if key in documented:
            out.append(f"{users}: reads {key!r}, listed in .env.example but not set for stage "
                       f"{ws.stage.name!r} (set it with `flux secrets set {key}=...`)")
        else:
            out.append(f"{users}: reads {key!r}, which is neither set for stage {ws.stage.name!r} nor listed in "
                       f".env.example (set it with `flux secrets set {key}=...` and add `{key}=` to .env.example)")
    if strict and out:
        raise FluxError("\n".join(out), hint="--strict treats keys that nobody set as errors")
    for f in ws.project.functions:  # a stage's secret wins over the flux.json value: said, not silent
        out += [f"{f.dir}/flux.json ($.env.{key}): stage {ws.stage.name!r} has a secret {key!r} too, and ctx.env "
                f"gets the secret's value (to use the plain value, `flux secrets unset {key}`)"
                for key, _ in f.env if key in fingerprints and key in f.env_keys]
    return out


def _check_migration_order(changes: list[ResourceChange], current: dict[str, ResourceState]) -> None:
    """A new migration that sorts before one already applied would run after it: refuse, naming both
    (Flyway's outOfOrder, Supabase's --include-all are the opt-ins; ours is --allow-out-of-order)."""
    applied = sorted(((int(rs.attributes.get("version", 0)), a.split(".", 1)[1]) for a, rs in current.items()
                      if rs.type == "migration"), reverse=True)
    if not applied:
        return
    latest_version, latest_file = applied[0]
    late = sorted((int(c.resource.attributes.get("version", 0)), c.resource.name) for c in changes
                  if c.type == "migration" and c.action == "create" and c.resource is not None
                  and c.address not in current)
    out = [f"schema/{file}: new migration sorts before schema/{latest_file}, which is already applied; it would run "
           "after it, out of order" for version, file in late if version < latest_version]
    if out:
        raise FluxError("\n".join(out), hint="renumber the new file after the applied one (flux migrations new NAME "
                        "picks the next number), or pass --allow-out-of-order if it is independent of them")


def make_plan(
    ws: Workspace,
    *,
    targets: Iterable[str] = (),
    replace: Iterable[str] = (),
    refresh_only: bool = False,
    destroy: bool = False,
    function_dir: str | None = None,
    strict: bool = False,
    allow_out_of_order: bool = False,
    purge: bool = False,
    get_ready: bool = False,
) -> Plan:
    """`get_ready`: an auto-approved apply of this plan follows at once (see _get_ready)."""
    state = ws.state.load()
    current: dict[str, ResourceState] = dict(state.resources)
    fingerprints = {k: ws.secrets.fingerprint(k) for k in ws.secrets.keys()}  # noqa: SIM118 (SecretStore API)
    db_var = ws.stage.settings.get("database_url_env")
    db_url = os.environ.get(db_var) if isinstance(db_var, str) else None
    graph = build_graph(ws.project, ws.stage, fingerprints, ws.secrets.fingerprint_value(db_url) if db_url else None)
    warnings = [f"{p.location()}: {p.message}" + (f" ({p.hint})" if p.hint else "")
                for p in scan_warnings(ws.project) if ENV_EXAMPLE_WARNING not in p.message]
    warnings += _secret_warnings(ws, fingerprints, strict)
    replace = list(replace)
    for a in replace:
        if a not in graph:
            if a in current:
                raise FluxError(f"--replace {a}: it is being removed from the project, nothing to replace")
            raise _unknown_address(a, graph.resources)
    wanted = _wanted(ws, graph, current, targets, function_dir)
    live = refresh(ws.provider, current)

    # An interrupted apply's operations with no recorded outcome are not drift: refresh tells whether the
    # provider got them, and diff creates whatever is missing.
    pending = set(getattr(state, "pending", ()))
    drifted = drift({a: r for a, r in current.items() if a not in pending}, live)
    if pending:
        warnings.append(f"{len(pending)} operation(s) of an interrupted apply had no recorded outcome; "
                        "their resources were refreshed from the provider")
    plan = Plan(created_at=datetime.now(UTC).isoformat(timespec="seconds"), stage=ws.stage.name,
                provider=ws.stage.provider, project=ws.project.name, serial=state.serial,
                # A state never written has a random lineage per load: pin "none yet" instead.
                lineage=state.lineage if (state.serial or state.resources) else None,
                destroy=destroy, refresh_only=refresh_only, drift=drifted, targeted=wanted is not None,
                purge=purge and destroy)
    if refresh_only:
        plan.unchanged = len(current)
        plan.warnings = warnings
        return plan

    if destroy:
        scope = list(current) if wanted is None else sorted(_state_dependents(set(wanted) & set(current), current))
        changes = [
            ResourceChange(address=a, type=current[a].type, action="delete", prior=current[a],
                           depends_on=current[a].dependencies, reasons=["destroy requested"])
            for a in _delete_order(scope, current)
        ]
        plan.changes = changes
        plan.unchanged = len(current) - len(changes)
        plan.warnings = warnings
        return plan

    # A create that an interrupted apply never finished and that the provider does not have was never
    # made: it is planned as new, not as "deleted outside Flux".
    for a in pending:
        if a in current and a in live and live[a] is None and not current[a].outputs:
            current.pop(a)
    # unchanged resources come back as addresses only: no object, no ordering work for them
    all_changes, unchanged = diff_changes(graph.resources, current, live, ws.provider.force_replace,
                                          replace=set(replace))
    if not allow_out_of_order:
        _check_migration_order(all_changes, current)
    for c in all_changes:
        if c.action == "noop" and c.resource is None and c.reasons:
            warnings.append(c.reasons[0])
    if wanted is not None:
        selected = _selection(graph, current, wanted)
        all_changes = [c for c in all_changes if c.address in selected]
        unchanged = [a for a in unchanged if a in selected]
    by_addr = {c.address: c for c in all_changes if c.action not in ("noop", "delete")}
    changes = [by_addr[a] for a in graph.order() if a in by_addr] if by_addr else []
    deletes = [c.address for c in all_changes if c.action == "delete"]
    if deletes:
        everything = {c.address: c for c in all_changes}
        changes += [everything[a] for a in _delete_order(deletes, current)]
    plan.changes = changes
    plan.unchanged = len(unchanged) + sum(1 for c in all_changes if c.action == "noop")
    plan.warnings = warnings
    specs = {f.name: f for f in ws.project.functions}
    plan.artifacts = {
        c.address.split(".", 1)[1]: specs[c.address.split(".", 1)[1]].source_digest
        for c in changes
        if c.type == "function" and c.action in ("create", "update", "replace")
    }
    undo = _get_ready(ws, plan, specs) if get_ready else None
    try:
        if plan.artifacts:  # code that would fail to bundle at apply time fails the plan, with its position
            from flux_plan.check import syntax_problems

            todo = [specs[n] for n in sorted(plan.artifacts)]
            if get_ready:
                # being bundled (_get_ready): the code a built bundle imports has no syntax error, so only functions
                # whose bundle failed are checked, for the located message (at 1000 functions the check was ~1.4 s
                # of CPU, a second parse of what the bundler parses anyway)
                todo = [spec for spec in todo if not ws.artifacts.built(spec)]
            found = syntax_problems(ws.root, todo)
            if found:
                raise ValidationFailed(problems=found)
    except BaseException:  # no apply follows (a failed check, esbuild missing, Ctrl-C): undo what got ready
        if undo is not None:
            undo()
        raise
    return plan


def _get_ready(ws: Workspace, plan: Plan, specs: dict[str, FunctionSpec]) -> Callable[[], None] | None:
    """The apply follows at once: bundle and let the provider get ready (e.g. start its runtime) in the background
    while the code check runs and the plan is shown, instead of before the first operation. At 1000 functions the
    code check alone takes ~0.8 s and a first start of the local runtime (its database's initdb) ~1.6 s. Returns what
    stops the provider's part again when the apply does not happen; bundles are a cache and stay. The provider decides
    from the changes whether it needs anything (the local one: not for deletes only)."""
    if plan.artifacts:
        ws.artifacts.prepare(specs[n] for n in plan.artifacts)
    hook = getattr(ws.provider, "get_ready", None)
    if hook is None:
        return None
    try:  # a provider may refuse here what its before_apply would refuse, before it starts anything
        undo: Callable[[], None] | None = hook([(c.address, c.action) for c in plan.changes])
    except ProviderError as exc:
        raise not_prepared(ws, exc) from exc
    return undo


def not_prepared(ws: Workspace, exc: ProviderError) -> FluxError:
    """A provider's refusal to get ready or to prepare the apply (get_ready, before_apply), masked."""
    return FluxError(f"provider {ws.provider.name!r} could not prepare the apply: {ws.secrets.mask(str(exc))}")


def pin(ws: Workspace, plan: Plan) -> None:
    """Make `plan` a contract before it is saved: build every bundle it deploys, record each bundle's
    sha256 and snapshot the function specs, migrations and stage settings, so that applying the file
    later deploys exactly this and never the working tree of that moment."""
    specs = {f.name: f for f in ws.project.functions}
    bundles: dict[str, str] = {}
    ws.artifacts.prepare(specs[name] for name in plan.artifacts)  # many functions per bundler run
    for name in sorted(plan.artifacts):
        spec = specs[name]
        try:
            bundle = ws.artifacts.ensure(spec)
        except FluxError:
            raise
        except Exception as exc:
            raise FluxError(f"{spec.dir}/index.ts: bundling function {name!r} failed: {exc}",
                            hint="fix the build error, then run `flux plan -o FILE` again") from exc
        bundles[name] = ws.artifacts.bundle_sha256(bundle)
    plan.bundles = bundles
    plan.snapshot = {
        "functions": [f.model_dump(mode="json", by_alias=True) for f in ws.project.functions],
        "migrations": [m.model_dump(mode="json") for m in ws.project.migrations],
        "env_example_keys": list(ws.project.env_example_keys),
        "stage": ws.stage.model_dump(mode="json"),
    }


def workspace_for(root: Path, plan: Plan, **options: Any) -> Workspace:
    """The workspace a saved plan applies in: the project as the plan pinned it (function specs,
    migrations, stage settings) and an artifact store that never builds from the working tree."""
    from flux_plan.artifacts import ArtifactStore
    from flux_plan.model import FunctionSpec, Migration, Project, StageConfig
    from flux_plan.workspace import Workspace

    snap = plan.snapshot or {}
    stage = StageConfig.model_validate(snap.get("stage") or {"name": plan.stage, "provider": plan.provider})
    project = Project(
        root=root.resolve(), name=plan.project,
        functions=[FunctionSpec.model_validate(f) for f in snap.get("functions", [])],
        migrations=[Migration.model_validate(m) for m in snap.get("migrations", [])],
        env_example_keys=list(snap.get("env_example_keys", [])), stages={stage.name: stage},
    )
    ws = Workspace(root=project.root, project=project, stage=stage, options=options)
    ws.__dict__["artifacts"] = ArtifactStore(project.root, pinned=True)
    return ws


def check_saved(plan: Plan, ws: Workspace, state: State, where: str) -> None:
    """Everything a saved plan's apply depends on, checked before anything is shown or changed: the
    state it was made against, the stage, every pinned bundle (present, same bytes), every migration
    file it applies (same checksum) and every secret it sets (same fingerprint)."""
    redo = "run `flux plan -o FILE` again and review the new plan"
    if plan.stage != ws.stage.name:
        raise StateError(f"{where}: refusing to apply: the plan is for stage {plan.stage!r}, not {ws.stage.name!r}. "
                         "Nothing was changed.", hint=f"apply it with --stage {plan.stage}")
    try:
        check_fresh(plan, state)
    except StateError as exc:
        raise StateError(f"{where}: refusing to apply: {exc.message}. Nothing was changed.", hint=exc.hint) from exc
    if plan.snapshot is None:
        raise StateError(f"{where}: refusing to apply: the plan pins no project snapshot (made by an older flux). "
                         "Nothing was changed.", hint=redo)
    problems: list[str] = []
    for name, digest in sorted(plan.artifacts.items()):
        want = plan.bundles.get(name)
        if not ws.artifacts.has(digest):
            problems.append(f"the bundle of function {name!r} is missing from .flux/artifacts/{digest[:12]}…")
        elif want is None or ws.artifacts.bundle_sha256(ws.artifacts.path(digest)) != want:
            problems.append(f"the bundle of function {name!r} in .flux/artifacts/{digest[:12]}… is not the one "
                            "the plan pinned")
    migrations = {m["file"]: m for m in plan.snapshot.get("migrations", [])}
    for c in plan.changes:
        if c.type == "migration" and c.action in ("create", "update", "replace"):
            m = migrations.get(c.address.split(".", 1)[1])
            path = ws.root / m["path"] if m else None
            try:
                now = hashlib.sha256(path.read_bytes()).hexdigest() if path else None
            except OSError:
                now = None
            if m is None or now != m["checksum"]:
                problems.append(f"migration {m['path'] if m else c.address} changed or disappeared since the plan "
                                "was made")
        if c.type == "secret" and c.action in ("create", "update", "replace") and c.resource is not None:
            key = c.resource.name
            try:
                now = ws.secrets.fingerprint(key)
            except FluxError:
                now = None
            if now != c.resource.attributes.get("fingerprint"):
                problems.append(f"secret {key} was changed or unset since the plan was made")
    if problems:
        raise StateError(f"{where}: refusing to apply: " + "; ".join(problems) + ". Nothing was changed.",
                         hint="run `flux plan -o FILE` again on the machine that applies it (bundles live in "
                              ".flux/artifacts/), and review the new plan")
