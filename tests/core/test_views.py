"""The two output views of the CLI (flux_plan.cli.views), in-process on the test-only `record` provider:
the same plan, apply result, listings and failure through `HumanView` and `JsonView`. Commands pick one
view from their `--json` flag and hold no format branches of their own."""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from pathlib import Path

import pytest
from flux_record import world_resources

from flux_plan.apply import apply_plan
from flux_plan.cli import views
from flux_plan.cli.output import configure
from flux_plan.cli.views import HumanView, JsonView, MarkdownView, view_for
from flux_plan.errors import FluxError, Problem, ValidationFailed
from flux_plan.plan import Plan, make_plan
from flux_plan.workspace import Workspace

CLI = Path(views.__file__).parent


@pytest.fixture
def ws(tmp_path: Path, make_project: Callable[..., Path], monkeypatch: pytest.MonkeyPatch) -> Workspace:
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))
    monkeypatch.delenv("FLUX_SECRETS_KEY", raising=False)
    monkeypatch.delenv("FLUX_PLAN_KEY", raising=False)
    configure(no_color=True, interactive=True)
    root = make_project(tmp_path, functions={"a": None, "b": None}, migrations={"001_init.sql": "select 1;"})
    return Workspace.open(root)


def _lines(text: str) -> list[dict[str, object]]:
    return [json.loads(line) for line in text.splitlines()]


def test_view_is_chosen_from_the_flags() -> None:
    assert isinstance(view_for(False), HumanView) and not isinstance(view_for(False), MarkdownView)
    assert isinstance(view_for(True), JsonView)
    assert isinstance(view_for(False, markdown=True), MarkdownView)
    with pytest.raises(FluxError, match="--json and --markdown are exclusive"):
        view_for(True, markdown=True)


def test_the_same_plan_through_each_view(ws: Workspace, capsys: pytest.CaptureFixture[str]) -> None:
    plan = make_plan(ws)
    JsonView().plan(plan)
    doc = json.loads(capsys.readouterr().out)
    assert doc == json.loads(json.dumps(plan.to_doc(), default=str))
    assert doc["summary"] == {"add": 6, "change": 0, "destroy": 0}

    HumanView().plan(plan, saved_to="p.json")
    human = capsys.readouterr().out
    assert "Plan: 6 to add, 0 to change, 0 to destroy." in human
    assert "+ function.a will be created" in human and "+ migration.001_init.sql will be created" in human
    assert "Saved the plan to p.json. Apply exactly it with: flux apply p.json" in human
    assert "{" not in human.splitlines()[0]  # no JSON for people

    MarkdownView().plan(plan)
    md = capsys.readouterr().out
    assert md.startswith("#") and "function.a" in md and "6 to add" in md

    JsonView().apply_plan(plan)  # inside an apply stream: one line, tagged
    (line,) = _lines(capsys.readouterr().out)
    assert line["event"] == "plan" and line["summary"] == doc["summary"]


def test_saved_plan_json_leaves_out_the_pinned_snapshot(ws: Workspace, capsys: pytest.CaptureFixture[str]) -> None:
    from flux_plan.plan import pin

    plan = make_plan(ws)
    pin(ws, plan)
    plan.save(ws.root / "p.json")
    saved = Plan.load(ws.root / "p.json", action="show")
    JsonView().saved_plan(saved)
    doc = json.loads(capsys.readouterr().out)
    assert "snapshot" not in doc and "snapshot" in saved.to_doc()
    assert doc["summary"] == plan.summary()
    HumanView().saved_plan(saved)
    assert "Plan: 6 to add" in capsys.readouterr().out


def _apply_through(view: HumanView | JsonView, ws: Workspace, target: str) -> None:
    """What `flux apply --target TARGET` does with its view: progress events, then the result."""
    plan = make_plan(ws, targets=[target])
    sink = view.progress(len(plan.changes))
    result = apply_plan(plan, ws, parallelism=2, on_event=sink, lock_timeout=1)
    sink.close()
    view.apply_result(result, "Apply")


def test_the_same_apply_through_each_view(ws: Workspace, capsys: pytest.CaptureFixture[str]) -> None:
    _apply_through(JsonView(), ws, "function.a")
    events = _lines(capsys.readouterr().out)
    assert {e["event"] for e in events[:-1]} <= {"started", "finished", "message", "retrying"}
    assert {e["address"] for e in events if e["event"] == "finished"} == {"function.a", "migration.001_init.sql"}
    summary = events[-1]
    assert summary["event"] == "summary" and summary["ok"] is True
    assert (summary["added"], summary["changed"], summary["destroyed"]) == (2, 0, 0)
    assert set(world_resources(ws.state_dir)) == {"function.a", "migration.001_init.sql"}

    _apply_through(HumanView(), ws, "function.b")
    out = capsys.readouterr().out
    assert re.search(r"^function\.b: created \(\d+\.\ds\)$", out, re.M), out
    assert "Apply complete! Resources: 1 added, 0 changed, 0 destroyed." in out
    assert "{" not in out


def test_failure_through_each_view(capsys: pytest.CaptureFixture[str]) -> None:
    exc = ValidationFailed([Problem(file="functions/a/flux.json", message="bad route", json_path="route",
                                   hint="start it with /")])
    JsonView().failure(exc)
    out, err = capsys.readouterr()
    (doc,) = _lines(out)  # one line: also valid inside a JSON-lines stream
    assert doc["ok"] is False and doc["event"] == "error"
    assert doc["problems"] == [{"file": "functions/a/flux.json", "line": None, "column": None, "json_path": "route",
                                "severity": "error", "message": "bad route", "hint": "start it with /"}]
    assert "Error:" in err and "bad route" in err  # people reading the log see it too

    HumanView().failure(FluxError("no [bold]thing[/]", hint="do it"))
    out, err = capsys.readouterr()
    assert out == "" and "Error: no [bold]thing[/]" in err and "hint: do it" in err  # markup shown, not run


def test_confirmation_per_view(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(FluxError, match="--json needs --auto-approve"):
        JsonView().confirmer(False, "apply")
    assert JsonView().confirmer(True, "apply") is None and HumanView().confirmer(True, "apply") is None
    ask = HumanView().confirmer(False, "destroy")
    assert ask is not None
    configure(no_color=True, interactive=False)
    try:
        with pytest.raises(FluxError, match="refusing to destroy: it needs a 'yes' and --input=false forbids"):
            ask(None)  # type: ignore[arg-type]
    finally:
        configure(no_color=True, interactive=True)
    with pytest.raises(FluxError, match="stdin is not a terminal"):  # pytest's stdin is not a terminal
        ask(None)  # type: ignore[arg-type]
    assert capsys.readouterr().out == ""


def test_json_view_keeps_provider_lines_off_stdout(ws: Workspace, capsys: pytest.CaptureFixture[str]) -> None:
    JsonView().bind(ws).log("starting the host")
    out, err = capsys.readouterr()
    assert out == "" and "starting the host" in err


def test_listings_through_each_view(ws: Workspace, capsys: pytest.CaptureFixture[str]) -> None:
    state = ws.state.load()
    JsonView().state_list(state)
    assert json.loads(capsys.readouterr().out) == {"serial": state.serial, "lineage": state.lineage,
                                                   "resources": [], "pending": state.pending}
    items = [{"key": "API_KEY", "fingerprint": "ab" * 32}]
    JsonView().secrets_list("dev", items)
    assert json.loads(capsys.readouterr().out) == {"stage": "dev", "secrets": items}
    HumanView().secrets_list("dev", items)
    assert capsys.readouterr().out == "API_KEY  " + "ab" * 8 + "\n"
    HumanView().secrets_list("dev", [])
    assert capsys.readouterr().out == "No secrets set for stage dev.\n"

    rows = [{"version": 1, "file": "001_init.sql", "status": "pending", "applied_at": None, "duration_ms": None}]
    JsonView().migration_status(rows)
    assert json.loads(capsys.readouterr().out) == rows
    HumanView().migration_status(rows)
    assert capsys.readouterr().out == f"   1  {'001_init.sql':<40} pending\n"
    HumanView().migrations([])
    assert "no migrations" in capsys.readouterr().out

    records = [{"ts": "2026-01-01T00:00:00Z", "level": "info", "function": "a", "msg": "héllo"}]
    JsonView().log_records(iter(records))
    out = capsys.readouterr().out
    assert _lines(out) == records and "héllo" in out  # unescaped, one record per line


def test_commands_hold_no_format_branches() -> None:
    """Every `--json` command renders through its view; a command with `if json_out:` would drift apart."""
    for path in CLI.glob("*_cmds.py"):
        text = path.read_text(encoding="utf-8")
        assert not re.search(r"\bif (not )?(json_out|as_json|markdown)\b", text), path.name
