"""Consoles: rich on a terminal, plain lines when stdout is not a TTY (CI logs).

rich is imported on first use: `flux --help` and `flux version` never print through it."""

from __future__ import annotations

import functools
import json
import sys
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from rich.console import Console


def escape(markup: str) -> str:
    """rich.markup.escape, imported when a command first prints markup."""
    from rich.markup import escape as rich_escape

    return rich_escape(markup)


@functools.cache
def console() -> Console:
    from rich.console import Console

    return Console(highlight=False, soft_wrap=True)


@functools.cache
def err_console() -> Console:
    from rich.console import Console

    return Console(stderr=True, highlight=False, soft_wrap=True)


def is_tty() -> bool:
    return sys.stdout.isatty()


def print_json(doc: Any) -> None:
    """Machine output goes straight to stdout, unstyled."""
    sys.stdout.write(json.dumps(doc, indent=2, sort_keys=False, default=str) + "\n")
    sys.stdout.flush()


def print_error(message: str) -> None:
    err_console().print(f"[bold red]Error:[/] {escape(message)}")
