"""Small helpers shared by tests/conformance and tests/docker."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import time
from pathlib import Path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def stop_daemons(root: Path) -> None:
    from flux_local.client import pid_alive
    from flux_local.pg import EmbeddedPostgres

    for info_path in (root / ".flux").glob("*/daemon.json"):
        try:
            info = json.loads(info_path.read_text())
        except (OSError, ValueError):
            continue
        pid = info.get("pid")
        if pid_alive(pid):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pid, signal.SIGTERM)
            for _ in range(150):
                if not pid_alive(pid):
                    break
                time.sleep(0.1)
        for key in ("pid", "host_pid"):
            if pid_alive(info.get(key)):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(info[key], signal.SIGKILL)
    for pgdata in (root / ".flux").glob("*/pg"):
        EmbeddedPostgres(pgdata).stop()
