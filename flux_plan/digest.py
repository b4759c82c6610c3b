"""Content digests of function sources: cheap enough to run on every plan (no bundling)."""

from __future__ import annotations

import functools
import hashlib
import re
from pathlib import Path

from flux_plan.paths import SDK_DIR

# Relative import specifiers ("./x", "../shared/y") in TS/JS: followed so a shared helper outside the
# function directory still changes the digest of every function that imports it.
_IMPORT_RE = re.compile(r"""(?:import|export)[^'"]*?from\s*['"](\.{1,2}/[^'"]+)['"]|import\(\s*['"](\.{1,2}/[^'"]+)['"]""")
_SKIP_DIRS = {"node_modules", ".flux", ".git", "__pycache__"}
_CODE_SUFFIXES = ("", ".ts", ".tsx", ".js", ".mjs", ".jsx", "/index.ts", "/index.js")

BUNDLE_FORMAT = "1"  # bump when the bundling recipe changes, so every artifact is rebuilt


def _resolve(spec: str, base: Path) -> Path | None:
    for suffix in _CODE_SUFFIXES:
        cand = (base / (spec + suffix)).resolve()
        if cand.is_file():
            return cand
    return None


def _dir_files(d: Path) -> list[Path]:
    out: list[Path] = []
    for p in sorted(d.rglob("*")):
        if p.is_file() and not any(part in _SKIP_DIRS for part in p.relative_to(d).parts):
            out.append(p)
    return out


@functools.cache
def sdk_digest() -> str:
    h = hashlib.sha256()
    if SDK_DIR.exists():
        for p in _dir_files(SDK_DIR):
            h.update(p.relative_to(SDK_DIR).as_posix().encode())
            h.update(p.read_bytes())
    return h.hexdigest()


def source_digest(project_root: Path, fn_dir: str, runtime: str) -> str:
    """sha256 over the function directory's files, the files it imports from outside it, the runtime,
    the SDK and the bundle recipe version. Same digest <=> same bundle."""
    root = project_root.resolve()
    base = (root / fn_dir).resolve()
    files = _dir_files(base)
    seen: set[Path] = set(files)
    queue = [p for p in files if p.suffix in {".ts", ".tsx", ".js", ".mjs", ".jsx"}]
    while queue:
        p = queue.pop()
        try:
            text = p.read_text(encoding="utf-8", errors="replace")
        except OSError:
            continue
        for m in _IMPORT_RE.finditer(text):
            spec = m.group(1) or m.group(2)
            target = _resolve(spec, p.parent)
            if target and target not in seen and root in target.parents:
                seen.add(target)
                queue.append(target)
    h = hashlib.sha256()
    h.update(f"bundle-format={BUNDLE_FORMAT};runtime={runtime};sdk={sdk_digest()}\n".encode())
    for p in sorted(seen):
        h.update(p.relative_to(root).as_posix().encode() + b"\0")
        h.update(p.read_bytes())
        h.update(b"\0")
    return h.hexdigest()
