"""Helpers every command shares (typer-free: the fast paths use them too; the typer options are in `options`)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

from flux_plan.errors import FluxError
from flux_plan.units import parse_duration

if TYPE_CHECKING:  # the workspace pulls in pydantic: loaded by the commands that open one, not by --help
    from flux_plan.workspace import Workspace

__all__ = ["check_single_dash", "lock_seconds", "open_workspace", "parse_duration", "project_root"]

# Terraform-style `-out=FILE` would parse as `-o ut=FILE` and silently write a file named `ut=FILE`.
_SINGLE_DASH_LONG = re.compile(r"^-([A-Za-z][A-Za-z-]+)(=.*)?$")


def lock_seconds(text: str) -> float:
    """`--lock-timeout` (or FLUX_LOCK_TIMEOUT) in seconds; a bad value names where it came from."""
    return parse_duration(text, "--lock-timeout (FLUX_LOCK_TIMEOUT)")


def check_single_dash(args: list[str]) -> None:
    """Refuse `-out=FILE`, `-auto-approve`, `-input=false`: flux's long options take two dashes."""
    for arg in args:
        if arg == "--":
            return
        m = _SINGLE_DASH_LONG.match(arg)
        if m:
            name = m.group(1)
            fixed = "--" + ("out" if name == "out" else name) + (m.group(2) or "")
            raise FluxError(f"{arg}: long options take two dashes", hint=f"did you mean {fixed}?")


def project_root(directory: Path | None = None) -> Path:
    """The project root from `--dir`, or found upwards from the current directory."""
    if directory is not None and not directory.is_dir():
        raise FluxError(f"{directory}: no such directory", hint="pass the project directory to --dir")
    from flux_plan.workspace import find_root

    return find_root(directory)


def open_workspace(stage: str | None = None, directory: Path | None = None, *, lenient: bool = False,
                   **options: Any) -> Workspace:
    """Scan the project (raising every validation problem at once) and bind the stage. `lenient`:
    for commands that deploy no code, broken functions are left out instead (DESIGN §6)."""
    from flux_plan.workspace import Workspace

    if lenient:
        return Workspace.open_lenient(project_root(directory), stage, **options)
    return Workspace.open(project_root(directory), stage, **options)
