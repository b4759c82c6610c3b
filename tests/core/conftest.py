"""Shared core fixtures: a project-tree writer and a runner for the real `flux` executable."""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[2]
FLUX_BIN = REPO / ".venv" / "bin" / "flux"
EXAMPLE_TODO = REPO / "examples" / "todo"

DEFAULT_CODE = """\
import {{ defineFunction }} from "@flux/functions";

export default defineFunction({{
  name: "{name}",
  handler: async ({{ input, ctx }}) => {{
    ctx.log("invoked with", input);
    return {{ ok: true, fn: "{name}" }};
  }},
}});
"""

RECORD_PROJECT = {"name": "proj", "stages": {"dev": {"provider": "record"}}}


def write_function(root: Path, name: str, spec: dict[str, Any] | None = None) -> Path:
    """functions/<dir>/ from `spec`: {"flux": dict | "raw text", "code": str, "dir": str, "files": {rel: text}}.
    Defaults: flux.json {"name": name}, a minimal defineFunction handler, dir = name."""
    spec = spec or {}
    d = root / "functions" / spec.get("dir", name)
    d.mkdir(parents=True, exist_ok=True)
    flux = spec.get("flux", {"name": name})
    if flux is not None:
        text = flux if isinstance(flux, str) else json.dumps(flux, indent=2) + "\n"
        (d / "flux.json").write_text(text, encoding="utf-8")
    code = spec.get("code", DEFAULT_CODE.format(name=name))
    if code is not None:
        (d / "index.ts").write_text(code, encoding="utf-8")
    for rel, content in spec.get("files", {}).items():
        (d / rel).parent.mkdir(parents=True, exist_ok=True)
        (d / rel).write_text(content, encoding="utf-8")
    return d


def make_project(
    tmp_path: Path,
    functions: dict[str, dict[str, Any] | None] | None = None,
    migrations: dict[str, str] | None = None,
    *,
    project: dict[str, Any] | str | None = RECORD_PROJECT,
    env_example: str | None = "",
    name: str = "proj",
) -> Path:
    """Write a project tree under tmp_path/<name> and return its root.

    `functions`: name -> write_function spec (None = defaults). `migrations`: file name -> SQL.
    `project`: flux.project.json content (dict or raw text; None = no file). Defaults to the
    test-only `record` provider so plans and applies need no daemon or cloud."""
    root = tmp_path / name
    (root / "functions").mkdir(parents=True, exist_ok=True)
    for fn, spec in (functions if functions is not None else {"hello": None}).items():
        write_function(root, fn, spec)
    if migrations:
        (root / "schema").mkdir(exist_ok=True)
        for file, sql in migrations.items():
            (root / "schema" / file).write_text(sql, encoding="utf-8")
    if project is not None:
        text = project if isinstance(project, str) else json.dumps(project, indent=2) + "\n"
        (root / "flux.project.json").write_text(text, encoding="utf-8")
    if env_example is not None:
        (root / ".env.example").write_text(env_example, encoding="utf-8")
    return root


FluxRunner = Callable[..., tuple[int, str, str]]


@pytest.fixture(name="make_project")
def make_project_fixture() -> Callable[..., Path]:
    """`make_project(tmp_path, functions=..., migrations=..., project=..., env_example=...)` -> root."""
    return make_project


@pytest.fixture(name="write_function")
def write_function_fixture() -> Callable[..., Path]:
    return write_function


@pytest.fixture
def example_todo(tmp_path: Path) -> Path:
    """A private copy of examples/todo (tests never write into the repo tree)."""
    import shutil

    dst = tmp_path / "todo"
    shutil.copytree(EXAMPLE_TODO, dst, ignore=shutil.ignore_patterns("node_modules", ".flux"))
    return dst


@pytest.fixture
def flux_env(tmp_path: Path) -> dict[str, str]:
    """Environment of a flux subprocess: its own HOME (secret keys land there), no terminal styling."""
    home = tmp_path / "home"
    home.mkdir(exist_ok=True)
    env = dict(os.environ)
    env.update({"HOME": str(home), "NO_COLOR": "1", "TERM": "dumb", "COLUMNS": "200",
                "XDG_CONFIG_HOME": str(home / ".config")})
    env.pop("FLUX_SECRETS_KEY", None)
    return env


@pytest.fixture
def flux(flux_env: dict[str, str]) -> FluxRunner:
    """Run `.venv/bin/flux ARGS` as a real subprocess in `cwd`; returns (rc, stdout, stderr)."""

    def run(*args: str, cwd: Path, timeout: float = 120, env: dict[str, str] | None = None,
            input: str | None = None) -> tuple[int, str, str]:
        proc = subprocess.run(
            [str(FLUX_BIN), *args], cwd=cwd, capture_output=True, text=True, timeout=timeout,
            env={**flux_env, **(env or {})}, input=input, check=False,
        )
        return proc.returncode, proc.stdout, proc.stderr

    return run
