"""The apply engine: runs a Plan's changes through the provider, in dependency order, with bounded
parallelism, a write-ahead journal record around every provider call, and clean failure semantics.

- Creates/updates wait for the changes of what they depend on; a delete waits for every change of
  a resource that (in the prior state) depended on it, so users go before what they use.
- A failed resource marks everything that waits on it `skipped`; independent branches go on.
- `TransientProviderError` is retried with exponential backoff + jitter (tenacity).
- First SIGINT: start nothing new, let running operations finish, commit state. Second: exit at
  once; the journal stays consistent and the next command recovers from it.
- Per-operation cost is O(1): one journal append (shared fsync), one dict update; the snapshot is
  written once at the end.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import asdict, dataclass, field
from graphlib import CycleError, TopologicalSorter
from typing import TYPE_CHECKING, Any, Literal

from tenacity import Retrying, retry_if_exception_type, stop_after_attempt, wait_exponential_jitter

from flux_plan.errors import FluxError, ProviderError, TransientProviderError
from flux_plan.model import ResourceState
from flux_plan.plan import Plan, ResourceChange, check_fresh, check_saved, not_prepared

if TYPE_CHECKING:
    from flux_plan.journal import Journal
    from flux_plan.state import State
    from flux_plan.workspace import Workspace

EventKind = Literal["started", "finished", "failed", "skipped", "retrying", "cancelled", "message"]
Status = Literal["applied", "failed", "skipped", "cancelled"]

RETRY_ATTEMPTS_ENV = "FLUX_RETRY_ATTEMPTS"  # total attempts per provider call (default 5)
RETRY_BASE_ENV = "FLUX_RETRY_BASE"  # first backoff in seconds (default 1.0; tests use 0.01)
RETRY_MAX_ENV = "FLUX_RETRY_MAX"  # longest backoff in seconds (default 20)


@dataclass
class ApplyEvent:
    kind: EventKind
    address: str = ""
    action: str = ""
    elapsed: float = 0.0
    error: str | None = None
    attempt: int | None = None
    message: str | None = None

    def to_dict(self) -> dict[str, Any]:
        doc = {"event": self.kind, **{k: v for k, v in asdict(self).items() if k != "kind" and v not in (None, "")}}
        doc["elapsed"] = round(self.elapsed, 3)
        return doc


@dataclass
class ResourceResult:
    address: str
    action: str
    status: Status
    elapsed: float = 0.0
    error: str | None = None


@dataclass
class ApplyResult:
    results: list[ResourceResult] = field(default_factory=list)
    outputs: dict[str, Any] = field(default_factory=dict)
    serial: int = 0
    interrupted: bool = False

    @property
    def failed(self) -> list[ResourceResult]:
        return [r for r in self.results if r.status == "failed"]

    @property
    def ok(self) -> bool:
        return not self.interrupted and all(r.status == "applied" for r in self.results)

    def counts(self) -> dict[str, int]:
        out = {"applied": 0, "failed": 0, "skipped": 0, "cancelled": 0}
        for r in self.results:
            out[r.status] += 1
        return out

    @property
    def exit_code(self) -> int:
        if self.interrupted:
            return 130
        return 0 if self.ok else 1


def _retrying() -> Retrying:
    attempts = int(os.environ.get(RETRY_ATTEMPTS_ENV) or 5)
    base = float(os.environ.get(RETRY_BASE_ENV) or 1.0)
    cap = float(os.environ.get(RETRY_MAX_ENV) or 20.0)
    return Retrying(
        retry=retry_if_exception_type(TransientProviderError),
        stop=stop_after_attempt(max(1, attempts)),
        wait=wait_exponential_jitter(initial=base, max=cap, jitter=base),
        reraise=True,
    )


def build_order(changes: list[ResourceChange]) -> dict[str, set[str]]:
    """address -> addresses whose change must finish first."""
    nodes = {c.address: c for c in changes}
    waits: dict[str, set[str]] = {a: set() for a in nodes}
    for c in changes:
        if c.action != "delete":
            deps = c.resource.depends_on if c.resource is not None else c.depends_on
            waits[c.address].update(d for d in deps if d in nodes and nodes[d].action != "delete")
        for d in c.prior.dependencies if c.prior is not None else ():
            if d in nodes and nodes[d].action == "delete" and d != c.address:
                waits[d].add(c.address)  # delete what is used only after its users changed
    # Create before delete: a function's old route goes only once its new route exists, so a failed
    # create leaves the old route serving (the delete is skipped) instead of a function without a route.
    new_routes: dict[str, list[str]] = {}
    for c in changes:
        if c.type == "route" and c.action == "create" and c.resource is not None:
            new_routes.setdefault(str(c.resource.attributes.get("function")), []).append(c.address)
    for c in changes:
        if c.type == "route" and c.action == "delete" and c.prior is not None:
            waits[c.address].update(new_routes.get(str(c.prior.attributes.get("function")), []))
    return waits


class _Engine:
    """One apply run: owns the in-memory state, the journal, the thread pool and the events."""

    def __init__(self, ws: Workspace, state: State, journal: Journal, parallelism: int,
                 on_event: Callable[[ApplyEvent], None] | None) -> None:
        self.ws = ws
        self.provider = ws.provider
        self.resources = dict(state.resources)
        self.journal = journal
        self.parallelism = max(1, parallelism)
        self._on_event = on_event
        self._event_mu = threading.Lock()
        self._state_mu = threading.Lock()
        self.stop = threading.Event()

    def emit(self, event: ApplyEvent) -> None:
        if self._on_event is not None:
            with self._event_mu:
                self._on_event(event)

    def _mask(self, text: str) -> str:
        return self.ws.secrets.mask(text)

    def _call(self, address: str, action: str, fn: Callable[..., Any], *args: Any) -> Any:
        started = time.monotonic()
        for attempt in _retrying():
            with attempt:
                n = attempt.retry_state.attempt_number
                if n > 1:
                    self.emit(ApplyEvent("retrying", address, action, time.monotonic() - started, attempt=n))
                return fn(*args)
        raise AssertionError("unreachable")  # pragma: no cover (reraise=True)

    def _step(self, change: ResourceChange, action: str) -> None:
        """One provider call wrapped in journal records; state updated on success."""
        addr = change.address
        if action == "delete":
            assert change.prior is not None
            self.journal.intent(addr, "delete")
            try:
                self._call(addr, action, self.provider.delete, addr, change.prior)
            except Exception as exc:
                self.journal.failed(addr, "delete", self._error_text(exc))
                raise
            self.journal.done(addr, "delete", None)
            with self._state_mu:
                self.resources.pop(addr, None)
            return
        res = change.resource
        assert res is not None
        self.journal.intent(addr, action, type_=res.type, attributes=res.attributes, dependencies=res.depends_on)
        try:
            if action == "create":
                result = self._call(addr, action, self.provider.create, res)
            else:
                assert change.prior is not None
                result = self._call(addr, action, self.provider.update, res, change.prior)
        except Exception as exc:
            self.journal.failed(addr, action, self._error_text(exc))
            raise
        rs = ResourceState(
            type=res.type,
            attributes=result.attributes if result.attributes is not None else res.attributes,
            outputs=result.outputs,
            dependencies=list(res.depends_on),
        )
        self.journal.done(addr, action, rs.model_dump(mode="json"))
        with self._state_mu:
            self.resources[addr] = rs

    def _error_text(self, exc: BaseException) -> str:
        if isinstance(exc, ProviderError):
            return self._mask(str(exc))
        if isinstance(exc, FluxError):  # a user mistake found late (e.g. a bundling error): say so plainly
            return self._mask(exc.render())
        return self._mask(f"internal error in provider {self.provider.name!r}: {type(exc).__name__}: {exc}")

    def _run(self, change: ResourceChange) -> None:
        if change.action == "replace":
            if change.prior is not None and change.address in self.resources:
                self._step(change, "delete")
            self._step(change, "create")
        elif change.action == "create":  # also a drifted resource recreated (prior set, gone live)
            self._step(change, "create")
        else:
            self._step(change, change.action)

    def run(self, changes: list[ResourceChange]) -> list[ResourceResult]:
        waits = build_order(changes)
        by_addr = {c.address: c for c in changes}
        sorter: TopologicalSorter[str] = TopologicalSorter(waits)
        try:
            sorter.prepare()
        except CycleError as exc:
            raise FluxError(f"the plan's changes form a dependency cycle: {' -> '.join(exc.args[1])}") from exc
        results: dict[str, ResourceResult] = {}
        ready: deque[str] = deque()
        running: dict[Future[None], tuple[str, float]] = {}
        with ThreadPoolExecutor(max_workers=self.parallelism, thread_name_prefix="flux-apply") as pool:
            while sorter.is_active():
                # what just became ready goes first: a function's route right after the function, so it serves
                # early, an interrupted apply leaves whole pairs, and the cheap route puts fill the slots where
                # functions wait on their load checks (1000 functions: 15% less wall time than breadth first)
                ready.extendleft(sorted(sorter.get_ready(), reverse=True))
                while ready and not self.stop.is_set():
                    addr = ready.popleft()
                    change = by_addr[addr]
                    blocked = sorted(d for d in waits[addr] if results[d].status != "applied")
                    if blocked:
                        why = f"{blocked[0]} {results[blocked[0]].status}"
                        results[addr] = ResourceResult(addr, change.action, "skipped", error=f"skipped: {why}")
                        self.emit(ApplyEvent("skipped", addr, change.action, error=why))
                        sorter.done(addr)
                        ready.extend(sorted(sorter.get_ready()))
                        continue
                    if len(running) >= self.parallelism:
                        ready.appendleft(addr)
                        break
                    self.emit(ApplyEvent("started", addr, change.action))
                    running[pool.submit(self._run, change)] = (addr, time.monotonic())
                if not running:
                    break  # interrupted (nothing in flight), or nothing left that can start
                done, _ = wait(list(running), timeout=0.5, return_when=FIRST_COMPLETED)
                for fut in done:
                    addr, t0 = running.pop(fut)
                    change = by_addr[addr]
                    elapsed = time.monotonic() - t0
                    error = fut.exception()
                    if error is None:
                        results[addr] = ResourceResult(addr, change.action, "applied", elapsed)
                        self.emit(ApplyEvent("finished", addr, change.action, elapsed))
                    else:
                        err = self._error_text(error)
                        results[addr] = ResourceResult(addr, change.action, "failed", elapsed, err)
                        self.emit(ApplyEvent("failed", addr, change.action, elapsed, error=err))
                    sorter.done(addr)
        for c in changes:
            if c.address not in results:
                results[c.address] = ResourceResult(c.address, c.action, "cancelled", error="interrupted")
                self.emit(ApplyEvent("cancelled", c.address, c.action))
        return [results[c.address] for c in changes]


def _install_sigint(engine: _Engine) -> Callable[[], None]:
    """First Ctrl-C: stop starting operations. Second: abandon now. Returns the restore function."""
    if threading.current_thread() is not threading.main_thread():
        return lambda: None

    def handler(signum: int, frame: Any) -> None:
        if engine.stop.is_set():
            engine.emit(ApplyEvent("message", message="second interrupt: abandoning now; the journal "
                                   "records every operation, the next command recovers"))
            os._exit(130)
        engine.stop.set()
        engine.emit(ApplyEvent("message", message="interrupt: starting nothing new, finishing running "
                               "operations, then saving state (Ctrl-C again to abandon)"))

    previous = signal.signal(signal.SIGINT, handler)

    def restore() -> None:
        signal.signal(signal.SIGINT, previous)

    return restore


def _refresh_only(plan: Plan, ws: Workspace, state: State) -> dict[str, ResourceState]:
    """Apply a --refresh-only plan: record what the provider sees for each drifted resource."""
    resources = dict(state.resources)
    for c in plan.drift:
        prior = resources.get(c.address)
        if prior is None:
            continue
        try:
            live = ws.provider.read(c.address, prior)
        except ProviderError as exc:
            raise FluxError(f"{c.address}: refresh failed: {ws.secrets.mask(str(exc))}",
                            hint="check that the provider is reachable, then run the command again") from exc
        if live is None:
            resources.pop(c.address)
        else:
            resources[c.address] = prior.model_copy(update={"attributes": live})
    return resources


def apply_plan(
    plan: Plan,
    ws: Workspace,
    *,
    parallelism: int = 10,
    on_event: Callable[[ApplyEvent], None] | None = None,
    lock_timeout: float = 30.0,
    saved: bool = False,
) -> ApplyResult:
    """Apply `plan` under the stage lock. `saved`: the plan came from a file (also check artifacts).

    The lock is reentrant, so a caller that made the plan under the lock (flux apply without a plan
    file) keeps it across plan, confirmation and apply."""
    operation = "destroy" if plan.destroy else "apply"
    with ws.state.locked(operation, lock_timeout):
        state = ws.state.recover(read=ws.provider.read)
        if saved:
            check_saved(plan, ws, state, "saved plan")
        else:
            check_fresh(plan, state)
        if plan.refresh_only:
            state = state.model_copy(update={"resources": _refresh_only(plan, ws, state)})
            new = ws.state.commit(state)
            return ApplyResult(outputs=dict(new.outputs), serial=new.serial)
        changes = [c for c in plan.changes if c.action not in ("noop", "read")]
        if plan.artifacts and not plan.destroy:  # bundle in batches while the provider gets ready
            ws.artifacts.prepare(f for f in ws.project.functions if f.name in plan.artifacts)
        if changes and hasattr(ws.provider, "before_apply"):
            try:
                ws.provider.before_apply([(c.address, c.action) for c in changes])
            except ProviderError as exc:
                raise not_prepared(ws, exc) from exc
        journal = ws.state.journal(state)
        engine = _Engine(ws, state, journal, parallelism, on_event)
        restore = _install_sigint(engine)
        try:
            results = engine.run(changes)
        finally:
            restore()
        outputs: dict[str, Any] = {} if plan.destroy else dict(state.outputs)
        if not plan.destroy and hasattr(ws.provider, "after_apply"):
            try:
                outputs = dict(ws.provider.after_apply(dict(engine.resources)) or {})
            except ProviderError as exc:
                engine.emit(ApplyEvent("message", message=f"provider could not report outputs: "
                                       f"{ws.secrets.mask(str(exc))}"))
        new = ws.state.commit(state.model_copy(update={"resources": engine.resources, "outputs": outputs}))
        result = ApplyResult(results=results, outputs=outputs, serial=new.serial, interrupted=engine.stop.is_set())
        if plan.destroy and not plan.targeted and result.ok:
            _destroy_stage(ws, purge=plan.purge)
        return result


def _destroy_stage(ws: Workspace, *, purge: bool = False) -> None:
    """A whole-stage destroy (from `flux destroy` or a saved destroy plan) also stops what the provider
    runs for the stage (daemons, hosts, databases); with `--purge` it also removes the stage's data."""
    hook = getattr(ws.provider, "destroy_stage", None)
    if hook is None:
        return
    try:
        hook(purge=True) if purge else hook()
    except ProviderError as exc:
        raise FluxError(f"every resource was deleted, but provider {ws.provider.name!r} could not stop the "
                        f"stage: {ws.secrets.mask(str(exc))}", hint="run `flux destroy` again") from exc
