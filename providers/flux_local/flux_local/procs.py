"""Process checks and stops for the processes the local provider starts (by PID, never by name)."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Sequence

DAEMON_FILE = "daemon.json"  # what a running daemon writes: here so clients need not import the daemon
# Bumped when the daemon's admin API changes: a provider finding a daemon of another revision restarts it
# (the table survives in runtime.json), instead of talking to endpoints it does not have.
# 3: admin hold (one push per apply); 4: PUT /admin/cors, POST /admin/check/<fn>; 5: host channel over stdin/stdout
# with deltas (no hold, POST /admin/save, runtime.journal); 6: GET /admin/table; 7: a table entry's `plain_env`
# (flux.json `env`), which an older daemon would drop
ADMIN_REVISION = 7


def pid_alive(pid: int | None) -> bool:
    """Whether `pid` runs (a zombie does not)."""
    if not pid:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        with open(f"/proc/{pid}/stat", encoding="utf-8") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return True


def stop_pid(pid: int, steps: Sequence[tuple[signal.Signals, float]]) -> None:
    """Send each signal in turn, waiting up to its seconds for the process to go, until it is gone."""
    for sig, wait in steps:
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            if not pid_alive(pid):
                return
            time.sleep(0.05)
