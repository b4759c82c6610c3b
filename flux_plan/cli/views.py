"""The two ways a command shows what it did: `HumanView` (rich on a terminal, plain lines in CI logs)
and `JsonView` (machine output on stdout, schemas/ documents or JSON lines). A command picks one view
ONCE from its `--json` flag (`view_for`) and calls one method per thing it shows, so no command body
branches on the output format; `main()` renders a failure through the same kind of view.

rich and the plan renderers are imported on first use: building the typer app never loads them."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Iterable, Sequence
from typing import TYPE_CHECKING, Any, Protocol

from flux_plan.cli.output import console, err_console, escape, is_tty, plain_stdout, print_json
from flux_plan.errors import FluxError, Problem

if TYPE_CHECKING:
    from flux_plan.apply import ApplyEvent, ApplyResult
    from flux_plan.graph import DesiredGraph
    from flux_plan.model import Project
    from flux_plan.plan import Plan
    from flux_plan.state import State
    from flux_plan.workspace import Workspace

PROMPT = "Do you want to perform these actions? Only 'yes' will be accepted"
PAST = {"create": "created", "update": "updated", "replace": "replaced", "delete": "deleted", "read": "read"}
LEVELS = {"debug": "dim", "info": "cyan", "warn": "yellow", "error": "bold red"}  # = logfmt's levels


class ProgressSink(Protocol):
    """Receives the apply events as they happen; `close` ends any live display."""

    def __call__(self, ev: ApplyEvent) -> None: ...

    def close(self) -> None: ...


class View(Protocol):
    """Everything a command shows. Each method renders one kind of result in the view's format."""

    def bind(self, ws: Workspace) -> Workspace:
        """Route the provider's progress lines where they do not corrupt this view's output."""

    def note(self, message: str) -> None:
        """An informational line for people (JSON output has no room for it)."""

    def failure(self, exc: FluxError) -> None:
        """A user mistake: the message and hint (and problems); `main()` exits afterwards."""

    def validation(self, project: Project, problems: Sequence[Problem]) -> None:
        """`flux validate`: every problem, then the verdict."""

    def plan(self, plan: Plan, saved_to: str | None = None) -> None:
        """`flux plan`: the plan (and where it was saved)."""

    def saved_plan(self, plan: Plan) -> None:
        """`flux show`: a saved plan again, without the pinned specs apply needs."""

    def graph(self, graph: DesiredGraph) -> None:
        """`flux graph`: the desired-state graph."""

    def confirmer(self, approve: bool, what: str) -> Callable[[Plan], None] | None:
        """How apply/deploy/destroy get their 'yes' (None: approved already); raises when nobody can answer."""

    def apply_plan(self, plan: Plan) -> None:
        """The plan apply/deploy/destroy are about to carry out."""

    def progress(self, total: int) -> ProgressSink:
        """The sink of apply events for `total` changes."""

    def apply_result(self, result: ApplyResult, verb: str) -> None:
        """The outcome of an apply, deploy or destroy."""

    def state_list(self, state: State) -> None: ...

    def secrets_list(self, stage: str, items: list[dict[str, str]]) -> None: ...

    def rollbacks(self, stage: str, results: list[dict[str, Any]]) -> None: ...

    def invoke_result(self, function: str, res: Any) -> None: ...

    def log_records(self, records: Iterable[dict[str, Any]]) -> None: ...

    def migrations(self, rows: list[dict[str, Any]]) -> None: ...

    def migration_status(self, rows: list[dict[str, Any]]) -> None: ...


def view_for(json_out: bool, *, markdown: bool = False) -> View:
    """The view of a command: chosen once, from its `--json` (and `--markdown`) flags."""
    if json_out and markdown:
        raise FluxError("--json and --markdown are exclusive", hint="pick one output format")
    if json_out:
        return JsonView()
    return MarkdownView() if markdown else HumanView()


def problem_doc(p: Problem) -> dict[str, Any]:
    return {"file": p.file, "line": p.line, "column": p.column, "json_path": p.json_path, "severity": p.severity,
            "message": p.message, "hint": p.hint}


def _split(problems: Sequence[Problem]) -> tuple[list[Problem], list[Problem]]:
    errors = [p for p in problems if p.severity == "error"]
    return errors, [p for p in problems if p.severity != "error"]


def _out(text: str) -> None:
    sys.stdout.write(text)
    sys.stdout.flush()


def _needs_answer(what: str) -> FluxError:
    return FluxError(f"refusing to {what} without confirmation: stdin is not a terminal",
                     hint="pass --auto-approve, or save a plan with `flux plan -o FILE` and run `flux apply FILE`")


def ask_yes(what: str) -> None:
    """Ask for 'yes' on a terminal; refuse when nobody can answer (no terminal, or --input=false)."""
    import typer

    from flux_plan.cli.output import input_disabled

    if input_disabled():
        raise FluxError(
            f"refusing to {what}: it needs a 'yes' and --input=false forbids asking. Nothing was changed.",
            hint="pass --auto-approve, or save a plan with `flux plan -o FILE` and run `flux apply FILE`",
        )
    if not sys.stdin.isatty():
        raise _needs_answer(what)
    out = console()
    out.print(f"\n[bold]{PROMPT}[/]\n  Enter a value: ", end="")
    answer = sys.stdin.readline().strip()
    if answer != "yes":
        out.print(f"\n{what.capitalize()} cancelled.")
        raise typer.Exit(1)


def _totals(result: ApplyResult) -> tuple[int, int, int]:
    applied = [r for r in result.results if r.status == "applied"]
    return (sum(1 for r in applied if r.action in ("create", "replace")),
            sum(1 for r in applied if r.action == "update"),
            sum(1 for r in applied if r.action in ("delete", "replace")))


# -- people ---------------------------------------------------------------------------------------


class HumanProgress:
    """Apply events as plain lines (CI logs) or a live progress bar on a terminal."""

    def __init__(self, total: int) -> None:
        self.total = total
        self.done = 0
        self._live: Any = None
        if is_tty() and total:
            from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeElapsedColumn
            from rich.progress import Progress as RichProgress

            self._live = RichProgress(TextColumn("[bold]Applying"), BarColumn(), MofNCompleteColumn(),
                                      TimeElapsedColumn(), TextColumn("{task.description}"),
                                      console=console(), transient=True)
            self._task = self._live.add_task("", total=total)
            self._live.start()

    def __call__(self, ev: ApplyEvent) -> None:
        if ev.kind == "message":
            err_console().print(f"[yellow]{escape(ev.message or '')}[/]")
            return
        if ev.kind == "started":
            if self._live is not None:
                self._live.update(self._task, description=escape(f"{ev.action} {ev.address}"))
            return
        if ev.kind in ("finished", "failed", "skipped", "cancelled"):
            self.done += 1
            if self._live is not None:
                self._live.update(self._task, completed=self.done)
        if ev.kind == "finished":
            line, style = f"{ev.address}: {PAST.get(ev.action, ev.action)} ({ev.elapsed:.1f}s)", ""
        elif ev.kind == "failed":
            line, style = f"{ev.address}: {ev.action} failed after {ev.elapsed:.1f}s: {ev.error or ''}", "red"
        elif ev.kind == "skipped":
            line, style = f"{ev.address}: skipped ({ev.error or ''})", "yellow"
        elif ev.kind == "retrying":
            line, style = f"{ev.address}: transient error, retrying (attempt {ev.attempt})", "dim"
        else:
            return
        if self._live is None:  # plain lines: cheap enough for thousands of resources in CI logs
            sys.stdout.write(line + "\n")
        else:
            console().print(f"[{style}]{escape(line)}[/]" if style else escape(line))

    def close(self) -> None:
        if self._live is not None:
            self._live.stop()
            self._live = None


class HumanView:
    """For people: rich markup on a terminal, plain lines when stdout is a CI log."""

    def bind(self, ws: Workspace) -> Workspace:
        return ws

    def note(self, message: str) -> None:
        console().print(escape(message))

    def failure(self, exc: FluxError) -> None:
        err_console().print(f"[bold red]Error:[/] {escape(exc.render())}")

    def validation(self, project: Project, problems: Sequence[Problem]) -> None:
        from flux_plan.cli.validate_text import validation_markup

        out = console()
        for line in validation_markup(list(problems), len(project.functions), len(project.migrations)):
            out.print(line)

    def _plan_text(self, plan: Plan) -> None:
        from flux_plan.render import text_lines

        if plain_stdout():  # parsing markup for every line of a large plan would cost seconds in CI logs
            _out("\n".join(text_lines(plan, markup=False)) + "\n")
        else:
            con = console()
            for line in text_lines(plan):
                con.print(line)

    def plan(self, plan: Plan, saved_to: str | None = None) -> None:
        self._plan_text(plan)
        if saved_to is not None:
            console().print(f"\nSaved the plan to {escape(saved_to)}. Apply exactly it with: "
                            f"flux apply {escape(saved_to)}")

    def saved_plan(self, plan: Plan) -> None:
        self._plan_text(plan)

    def graph(self, graph: DesiredGraph) -> None:
        _out(graph.to_dot())

    def confirmer(self, approve: bool, what: str) -> Callable[[Plan], None] | None:
        return None if approve else (lambda _plan: ask_yes(what))

    def apply_plan(self, plan: Plan) -> None:
        self._plan_text(plan)

    def progress(self, total: int) -> ProgressSink:
        return HumanProgress(total)

    def apply_result(self, result: ApplyResult, verb: str) -> None:
        from flux_plan.render import styler

        counts = result.counts()
        added, changed, destroyed = _totals(result)
        bad = [r for r in result.results if r.status != "applied"]
        plain = plain_stdout()  # a CI log: plain lines, without importing rich (~40 ms)
        st = styler(not plain)
        lines: list[str] = []
        if bad:
            if is_tty():
                from rich.table import Table

                table = Table("address", "action", "status", "elapsed", "error", title="Not applied")
                for r in bad:
                    table.add_row(escape(r.address), r.action, r.status, f"{r.elapsed:.1f}s", escape(r.error or ""))
                console().print(table)
            else:
                lines.append("Not applied:")
                lines += [f"  {st('', r.address)}  {r.action}  {r.status}  {r.elapsed:.1f}s  {st('', r.error or '')}"
                          for r in bad]
        totals = f"{added} added, {changed} changed, {destroyed} destroyed"
        if result.interrupted:
            lines.append(f"{st('bold yellow', verb + ' interrupted.')} State saved. Resources: {totals}; "
                         f"{counts['cancelled']} not started.")
        elif bad:
            lines.append(f"{st('bold red', verb + ' failed.')} Resources: {totals}; {counts['failed']} failed, "
                         f"{counts['skipped']} skipped. What succeeded is in the state; fix the error and re-run.")
        else:
            lines.append(f"{st('bold green', verb + ' complete!')} Resources: {totals}.")
        if result.outputs:
            lines.append("\nOutputs:\n")
            lines += [f"{st('', k)} = {st('', json.dumps(v) if not isinstance(v, str) else v)}"
                      for k, v in result.outputs.items()]
        if plain:
            _out("".join(line + "\n" for line in lines))
        else:
            out = console()
            for line in lines:
                out.print(line)

    def state_list(self, state: State) -> None:
        lines = [addr + ("  (outcome unknown: refreshed on next apply)" if addr in state.pending else "")
                 for addr in sorted(state.resources)]
        _out("".join(line + "\n" for line in lines))

    def secrets_list(self, stage: str, items: list[dict[str, str]]) -> None:
        if not items:
            _out(f"No secrets set for stage {stage}.\n")
        _out("".join(f"{it['key']}  {it['fingerprint'][:16]}\n" for it in items))

    def rollbacks(self, stage: str, results: list[dict[str, Any]]) -> None:
        _out("".join(f"function.{r['function']}: live {r['from_version']} -> {r['to_version']}\n" for r in results)
             + "The next apply deploys the project's current code again.\n")

    def invoke_result(self, function: str, res: Any) -> None:
        _out(json.dumps(res.body, indent=2, ensure_ascii=False) + "\n")
        color = "red" if res.status >= 400 else "green"
        console().print(f"[{color}]status {res.status}[/] in {res.duration_ms:.1f} ms, "
                        f"request id {escape(str(res.request_id))}", highlight=False)

    def log_records(self, records: Iterable[dict[str, Any]]) -> None:
        from flux_plan.logfmt import format_record

        color = is_tty()
        for rec in records:
            if color:
                console().print(format_record(rec, color=True))
            else:
                _out(format_record(rec, color=False) + "\n")

    def migrations(self, rows: list[dict[str, Any]]) -> None:
        _out("".join(f"{r['version']:>4}  {r['file']}  {r['checksum']}\n" for r in rows))
        if not rows:
            _out("no migrations (add schema/001_<name>.sql, or run `flux migrations new NAME`)\n")

    def migration_status(self, rows: list[dict[str, Any]]) -> None:
        lines = []
        for r in rows:
            when = f"  {r['applied_at'][:19]}" if r["applied_at"] else ""
            lines.append(f"{r['version']:>4}  {r['file']:<40} {r['status']}{when}\n")
        _out("".join(lines))


class MarkdownView(HumanView):
    """`--markdown`: plans as a pull-request comment; everything else as for people."""

    def plan(self, plan: Plan, saved_to: str | None = None) -> None:
        from flux_plan.render import render_markdown

        _out(render_markdown(plan))

    def saved_plan(self, plan: Plan) -> None:
        self.plan(plan)


# -- machines -------------------------------------------------------------------------------------


_doc = print_json  # a whole JSON document (schemas/), indented


def _line(doc: Any, **kw: Any) -> None:
    """One JSON-lines record (apply/deploy/destroy streams, logs)."""
    _out(json.dumps(doc, default=str, **kw) + "\n")


class JsonProgress:
    """Apply events as JSON lines, as they happen."""

    def __call__(self, ev: ApplyEvent) -> None:
        _line(ev.to_dict())

    def close(self) -> None:
        pass


class JsonView:
    """For programs: JSON on stdout (documents of schemas/, or one object per line for streams);
    everything meant for people goes to stderr or nowhere."""

    def bind(self, ws: Workspace) -> Workspace:
        ws.log = lambda msg: err_console().print(escape(str(msg)))  # provider lines must not corrupt the JSON
        return ws

    def note(self, message: str) -> None:
        pass

    def failure(self, exc: FluxError) -> None:
        """{event: error, ok: false, error, hint, problems} on ONE line (valid both as a `--json` document
        and inside the JSON-lines streams of apply/deploy/destroy), and the message on stderr for people."""
        problems = [problem_doc(p) for p in getattr(exc, "problems", None) or []]
        _line({"event": "error", "ok": False, "error": exc.message, "hint": exc.hint, "problems": problems})
        HumanView().failure(exc)

    def validation(self, project: Project, problems: Sequence[Problem]) -> None:
        errors, warnings = _split(problems)
        _doc({"valid": not errors, "errors": len(errors), "warnings": len(warnings),
              "functions": len(project.functions), "migrations": len(project.migrations),
              "problems": [problem_doc(p) for p in problems]})

    def plan(self, plan: Plan, saved_to: str | None = None) -> None:
        _doc(plan.to_doc())

    def saved_plan(self, plan: Plan) -> None:
        doc = plan.to_doc()
        doc.pop("snapshot", None)  # the pinned specs are for apply; --json shows what the plan does
        _doc(doc)

    def graph(self, graph: DesiredGraph) -> None:
        _doc(graph.to_json())

    def confirmer(self, approve: bool, what: str) -> Callable[[Plan], None] | None:
        if not approve:
            raise FluxError("--json needs --auto-approve (a prompt cannot be answered in JSON mode)",
                            hint="add --auto-approve, or apply a saved plan file")
        return None

    def apply_plan(self, plan: Plan) -> None:
        _line({"event": "plan", **plan.to_doc()})

    def progress(self, total: int) -> ProgressSink:
        return JsonProgress()

    def apply_result(self, result: ApplyResult, verb: str) -> None:
        added, changed, destroyed = _totals(result)
        _line({"event": "summary", "ok": result.ok, "interrupted": result.interrupted, "serial": result.serial,
               "added": added, "changed": changed, "destroyed": destroyed, **result.counts(),
               "failures": [r.__dict__ for r in result.results if r.status != "applied"],
               "outputs": result.outputs})

    def state_list(self, state: State) -> None:
        _doc({"serial": state.serial, "lineage": state.lineage, "resources": sorted(state.resources),
              "pending": state.pending})

    def secrets_list(self, stage: str, items: list[dict[str, str]]) -> None:
        _doc({"stage": stage, "secrets": items})

    def rollbacks(self, stage: str, results: list[dict[str, Any]]) -> None:
        _doc({"stage": stage, "rollbacks": results})

    def invoke_result(self, function: str, res: Any) -> None:
        _doc({"function": function, "status": res.status, "ok": res.status < 400, "body": res.body,
              "request_id": res.request_id, "duration_ms": round(res.duration_ms, 2)})

    def log_records(self, records: Iterable[dict[str, Any]]) -> None:
        for rec in records:
            _line(rec, ensure_ascii=False)

    def migrations(self, rows: list[dict[str, Any]]) -> None:
        _doc(rows)

    def migration_status(self, rows: list[dict[str, Any]]) -> None:
        _doc(rows)

