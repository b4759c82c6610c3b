"""Where Flux keeps its files: one place, so no module invents its own layout."""

from __future__ import annotations

import os
from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parent
REPO_DIR = PACKAGE_DIR.parent
SCHEMAS_DIR = PACKAGE_DIR / "schemas"  # a link to the top-level schemas/, packaged into wheels
SDK_DIR = PACKAGE_DIR / "sdk"


def flux_dir(project_root: Path) -> Path:
    """`.flux/` under the project: state, artifacts, daemon files. Never committed."""
    return project_root / ".flux"


def stage_dir(project_root: Path, stage: str) -> Path:
    return flux_dir(project_root) / stage


def artifacts_dir(project_root: Path) -> Path:
    return flux_dir(project_root) / "artifacts"


def schema_path(name: str) -> Path:
    """`name` like "flux" -> schemas/flux.schema.json."""
    return SCHEMAS_DIR / f"{name}.schema.json"


def user_cache_dir() -> Path:
    """Flux's per-user cache (tools, npm installs, provider discovery); honours XDG_CACHE_HOME."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "flux"
