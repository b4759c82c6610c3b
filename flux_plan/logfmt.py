"""Log records as one line each, and consoles for them: shared by `flux logs` and by providers that
print records themselves (`flux dev`), so providers never import the CLI. Colors follow NO_COLOR
(which `--no-color` sets)."""

from __future__ import annotations

import functools
import json
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from rich.console import Console

LEVEL_STYLE = {"debug": "dim", "info": "cyan", "warn": "yellow", "error": "bold red"}


@functools.cache
def console() -> Console:
    from rich.console import Console

    return Console(highlight=False, soft_wrap=True)


@functools.cache
def err_console() -> Console:
    from rich.console import Console

    return Console(stderr=True, highlight=False, soft_wrap=True)


def format_record(rec: dict[str, Any], *, color: bool) -> str:
    ts = str(rec.get("ts", ""))[11:23] or "-"
    level = str(rec.get("level", "info"))
    fn = rec.get("function") or "-"
    rid = rec.get("request_id") or "-"
    data = rec.get("data")
    extra = "" if data in (None, {}, []) else " " + json.dumps(data, ensure_ascii=False, default=str)
    msg = str(rec.get("msg", ""))
    if not color:
        return f"{ts} {level.upper():5} {fn} {rid} {msg}{extra}"
    from rich.markup import escape

    style = LEVEL_STYLE.get(level, "")
    return (f"[dim]{ts}[/] [{style}]{level.upper():5}[/] [bold]{escape(fn)}[/] [dim]{escape(rid)}[/] "
            f"{escape(msg)}{escape(extra)}")
