"""The one duration parser of every flag that takes a time (`--lock-timeout 30s`, `--since 10m`)."""

from __future__ import annotations

import re

from flux_plan.errors import FluxError

_DURATION_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?\s*$")
_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, None: 1.0}


def parse_duration(text: str, what: str = "duration") -> float:
    """'500ms', '30s', '2m', '1.5h', '1d' or plain seconds -> seconds."""
    m = _DURATION_RE.match(text or "")
    if not m:
        raise FluxError(f"invalid {what} {text!r}", hint="write a number with a unit: 500ms, 30s, 10m, 2h, 1d")
    return float(m.group(1)) * _UNITS[m.group(2)]
