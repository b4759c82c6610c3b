"""Consoles: rich on a terminal, plain lines when stdout is not a TTY (CI logs).

rich is imported on first use: `flux --help` and `flux version` never print through it."""

from __future__ import annotations

import functools
import json
import os
import sys
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from rich.console import Console


def escape(markup: str) -> str:
    """rich.markup.escape, imported when a command first prints markup."""
    from rich.markup import escape as rich_escape

    return rich_escape(markup)

_SETTINGS = {"no_color": False, "interactive": True}


def configure(*, no_color: bool, interactive: bool) -> None:
    """Global output options (`--no-color`, `--input=false`), set once by the root callback."""
    _SETTINGS["no_color"] = no_color
    _SETTINGS["interactive"] = interactive
    if no_color:  # also for consoles outside the CLI (providers' `flux dev` output) and child processes
        os.environ["NO_COLOR"] = "1"
    console.cache_clear()
    err_console.cache_clear()


def interactive() -> bool:
    """Whether a command may wait on stdin for an answer (False with --input=false)."""
    return bool(_SETTINGS["interactive"]) and sys.stdin.isatty()


def input_disabled() -> bool:
    return not _SETTINGS["interactive"]


def _no_color() -> bool:
    return bool(_SETTINGS["no_color"]) or bool(os.environ.get("NO_COLOR"))


def _color() -> dict[str, Any]:
    """Console options of --no-color / NO_COLOR: no colors and no styles at all."""
    return {"no_color": True, "color_system": None} if _no_color() else {}


@functools.cache
def console() -> Console:
    from rich.console import Console

    return Console(highlight=False, soft_wrap=True, **_color())


@functools.cache
def err_console() -> Console:
    from rich.console import Console

    return Console(stderr=True, highlight=False, soft_wrap=True, **_color())


def is_tty() -> bool:
    return sys.stdout.isatty()


def plain_stdout() -> bool:
    """Whether rich's console would treat stdout as no terminal (rich's own rules: TTY_COMPATIBLE,
    FORCE_COLOR, then isatty), answered without importing rich (~40 ms of a CI log's `flux plan`)."""
    compat = os.environ.get("TTY_COMPATIBLE", "")
    if compat in ("0", "1"):
        return compat == "0"
    force = os.environ.get("FORCE_COLOR")
    if force is not None:
        return force == ""
    return not is_tty()


def print_json(doc: Any) -> None:
    """Machine output goes straight to stdout, unstyled."""
    sys.stdout.write(json.dumps(doc, indent=2, sort_keys=False, default=str) + "\n")
    sys.stdout.flush()
