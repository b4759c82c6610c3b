"""Option helpers shared by every command group, so `--stage` and `--lock-timeout` mean one thing."""

from __future__ import annotations

import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer

from flux_plan.errors import FluxError

if TYPE_CHECKING:  # the workspace pulls in pydantic: loaded by the commands that open one, not by --help
    from flux_plan.workspace import Workspace

_DURATION_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h)?\s*$")
_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, None: 1.0}

StageOption = typer.Option(None, "--stage", "-s", help="Stage of flux.project.json (default: dev).")
LockTimeoutOption = typer.Option("30s", "--lock-timeout", help="How long to wait for the stage lock (30s, 2m).")
DirOption = typer.Option(None, "--dir", "-C", help="Project directory (default: found from the current one).")


def parse_duration(text: str) -> float:
    """'30s', '2m', '1.5h', '500ms' or plain seconds -> seconds."""
    m = _DURATION_RE.match(text or "")
    if not m:
        raise FluxError(f"invalid duration {text!r}", hint="write a number with a unit: 500ms, 30s, 2m, 1h")
    return float(m.group(1)) * _UNITS[m.group(2)]


def project_root(directory: Path | None = None) -> Path:
    """The project root from `--dir`, or found upwards from the current directory."""
    if directory is not None and not directory.is_dir():
        raise FluxError(f"{directory}: no such directory", hint="pass the project directory to --dir")
    from flux_plan.workspace import find_root

    return find_root(directory)


def open_workspace(stage: str | None = None, directory: Path | None = None, **options: Any) -> Workspace:
    """Scan the project (raising every validation problem at once) and bind the stage."""
    from flux_plan.workspace import Workspace

    return Workspace.open(project_root(directory), stage, **options)
