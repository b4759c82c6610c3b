"""The CLI tried as a careless user or a pipeline would: usage mistakes under `--json` still print JSON
(the failure goes through the same view as the command's output), bad durations name their flag, and a
100,000-deep state file pushed by hand is refused naming the file, with the state untouched."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest

FluxRunner = Callable[..., tuple[int, str, str]]


@pytest.fixture
def root(tmp_path: Path, make_project: Callable[..., Path]) -> Path:
    return make_project(tmp_path, functions={"a": None})


def _error_doc(out: str) -> dict[str, object]:
    (line,) = out.splitlines()  # one line: also valid inside the JSON-lines streams
    doc = json.loads(line)
    assert doc["event"] == "error" and doc["ok"] is False and doc["problems"] == []
    return doc


@pytest.mark.parametrize(("args", "message", "command"), [
    (["plan", "--json", "--bogus"], "No such option: --bogus", "flux plan"),
    (["apply", "--json", "--auto-approve", "-p", "0"], "Invalid value for '--parallelism'", "flux apply"),
    (["state", "list", "--json", "--nope"], "No such option: --nope", "flux state list"),
    (["plan", "--json", "-o"], "Option '-o' requires an argument.", "flux"),
])
def test_usage_errors_under_json_are_json(args: list[str], message: str, command: str, root: Path,
                                          flux: FluxRunner) -> None:
    rc, out, err = flux(*args, cwd=root)
    assert rc == 2, (out, err)
    doc = _error_doc(out)
    assert str(doc["error"]).startswith(message) and f"see `{command}" in str(doc["hint"])
    assert f"Error: {message}" in err and "Traceback" not in err
    assert not (root / ".flux").exists()  # nothing was planned, locked or written


def test_usage_errors_without_json_stay_click_s(root: Path, flux: FluxRunner) -> None:
    rc, out, err = flux("plan", "--bogus", cwd=root)
    assert rc == 2 and out == "" and "Usage: flux plan" in err and "No such option: --bogus" in err


def test_json_mode_keeps_help_and_exit_codes(root: Path, flux: FluxRunner) -> None:
    rc, out, _ = flux("plan", "--json", "--help", cwd=root)
    assert rc == 0 and out.startswith("Usage: flux plan")
    rc, out, err = flux("plan", "--json", "--detailed-exitcode", cwd=root)
    assert rc == 2, err  # changes pending: the exit code survives JSON mode
    assert json.loads(out)["summary"]["add"] > 0
    rc, out, err = flux("validate", "--json", cwd=root)
    assert rc == 0 and json.loads(out)["valid"] is True, err


def test_bad_lock_timeout_names_the_flag(root: Path, flux: FluxRunner) -> None:
    rc, out, _ = flux("apply", "--auto-approve", "--json", cwd=root, env={"FLUX_LOCK_TIMEOUT": "forever"})
    assert rc == 1
    assert _error_doc(out)["error"] == "invalid --lock-timeout (FLUX_LOCK_TIMEOUT) 'forever'"
    assert not (root / ".flux" / "dev" / "state.json").exists()


def test_deep_state_push_is_refused_naming_the_file(root: Path, flux: FluxRunner) -> None:
    rc, _, err = flux("apply", "--auto-approve", cwd=root)
    assert rc == 0, err
    state = root / ".flux" / "dev" / "state.json"
    before = state.read_bytes()
    deep = root / "deep.json"
    deep.write_text("[" * 100_000 + "]" * 100_000)
    rc, _, err = flux("state", "push", str(deep), cwd=root)
    assert rc == 1 and "Traceback" not in err
    assert f"{deep}: the state file is not valid JSON" in err and "it was left untouched" in err
    assert state.read_bytes() == before


@pytest.mark.parametrize(("target", "shown"), [("", "."), (".", "."), ("functions", "functions")])
def test_plan_out_must_name_a_file(target: str, shown: str, root: Path, flux: FluxRunner) -> None:
    before = sorted(p.relative_to(root) for p in root.rglob("*"))
    rc, out, err = flux("plan", "--json", "-o", target, cwd=root)
    assert rc == 1 and "Traceback" not in err
    assert _error_doc(out)["error"] == f"-o {shown!r}: not a file to save the plan to"
    assert sorted(p.relative_to(root) for p in root.rglob("*")) == before  # nothing planned or written
