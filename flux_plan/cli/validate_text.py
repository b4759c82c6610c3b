"""The text `flux validate` prints, as rich markup lines: the app's view and the fast path (`fast.py`)
both print these, so both paths print the same bytes."""

from __future__ import annotations

from typing import Any


def validation_markup(problems: list[Any], n_functions: int, n_migrations: int) -> list[str]:
    """One line per problem, then the summary."""
    from flux_plan.cli.output import escape

    lines = []
    n_errors = 0
    for p in problems:
        n_errors += p.severity == "error"
        color = "red" if p.severity == "error" else "yellow"
        lines.append(escape(p.render()).replace(f": {p.severity}:", f": [{color}]{p.severity}[/]:", 1))
    n_warnings = len(problems) - n_errors
    if n_errors:
        lines.append(f"[bold red]{n_errors} error(s)[/], {n_warnings} warning(s).")
    else:
        lines.append(f"[green]Valid:[/] {n_functions} function(s), {n_migrations} "
                     f"migration(s), {n_warnings} warning(s).")
    return lines
