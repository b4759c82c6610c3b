"""filelock's FileLock, imported on first use: the package costs ~30 ms to import, which read-only commands
(`flux plan`, `flux validate`, `flux --help`) never need to pay."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from filelock import FileLock


def file_lock(path: str | os.PathLike[str], timeout: float = -1) -> FileLock:
    from filelock import FileLock as Lock

    return Lock(path, timeout=timeout)
