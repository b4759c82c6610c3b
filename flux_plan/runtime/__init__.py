"""The one JavaScript function runtime shared by every provider (DESIGN §7): `core.mjs` (FluxContext +
invoke, worker side) and `query.mjs` (the ctx.db.query compiler). Plain ESM with only `node:` imports, so
Deno, Node and the Lambda shims load the very same files. Providers locate them through this module; the
Deno host resolves them by the bare specifiers `flux:core` / `flux:query` of `import_map()`."""

from __future__ import annotations

import json
from pathlib import Path

SHARED_FILES = ("core.mjs", "query.mjs")


def shared_runtime_dir() -> Path:
    """Directory of core.mjs and query.mjs (inside the flux_plan package, so wheels carry them)."""
    return Path(__file__).resolve().parent


def import_map(extra: dict[str, str] | None = None) -> dict[str, dict[str, str]]:
    """Deno import map naming the shared files `flux:core` and `flux:query`: host.ts and worker.ts import
    them by these names wherever the two packages are installed (editable checkout or site-packages).
    `extra`: more specifier -> URL entries (a provider's own, e.g. its database driver)."""
    rt = shared_runtime_dir()
    return {"imports": {**{f"flux:{Path(n).stem}": (rt / n).as_uri() for n in SHARED_FILES}, **(extra or {})}}


def import_map_flag(extra: dict[str, str] | None = None) -> str:
    """`--import-map=` flag carrying `import_map()` inline as a data: URL (no file to write or clean up)."""
    return "--import-map=data:application/json," + json.dumps(import_map(extra), separators=(",", ":"))
