"""Content digests of function sources: cheap enough to run on every plan (no bundling)."""

from __future__ import annotations

import functools
import hashlib
import os
import re
from pathlib import Path

from flux_plan.paths import SDK_DIR

# Relative import specifiers ("./x", "../shared/y") in TS/JS: followed so a shared helper outside the
# function directory still changes the digest of every function that imports it.
_IMPORT_RE = re.compile(r"""(?:import|export)[^'"]*?from\s*['"](\.{1,2}/[^'"]+)['"]|import\(\s*['"](\.{1,2}/[^'"]+)['"]""")
_SKIP_DIRS = {"node_modules", ".flux", ".git", "__pycache__"}
_CODE_SUFFIXES = ("", ".ts", ".tsx", ".js", ".mjs", ".jsx", "/index.ts", "/index.js")
_CODE_EXTS = (".ts", ".tsx", ".js", ".mjs", ".jsx")

BUNDLE_FORMAT = "1"  # bump when the bundling recipe changes, so every artifact is rebuilt


def _resolve(spec: str, base: str) -> str | None:
    for suffix in _CODE_SUFFIXES:
        cand = os.path.normpath(os.path.join(base, spec + suffix))
        if os.path.isfile(cand):
            return cand
    return None


def _dir_files(d: str) -> list[str]:
    """Every file below `d` (absolute, normalised), skipping dependency and tool folders."""
    out: list[str] = []
    for dirpath, dirnames, filenames in os.walk(d):
        dirnames[:] = [n for n in dirnames if n not in _SKIP_DIRS]
        out.extend(os.path.join(dirpath, f) for f in filenames)
    return out


@functools.cache
def sdk_digest() -> str:
    h = hashlib.sha256()
    if SDK_DIR.exists():
        base = str(SDK_DIR)
        for p in sorted(_dir_files(base)):
            h.update(os.path.relpath(p, base).encode())
            with open(p, "rb") as f:
                h.update(f.read())
    return h.hexdigest()


def source_digest(project_root: Path, fn_dir: str, runtime: str) -> str:
    """sha256 over the function directory's files, the files it imports from outside it, the runtime,
    the SDK and the bundle recipe version. Same digest <=> same bundle."""
    return source_digest_deps(project_root, fn_dir, runtime)[0]


def source_digest_deps(project_root: Path, fn_dir: str, runtime: str) -> tuple[str, list[str]]:
    """The digest and what outside the function directory it depends on: the files imported from
    outside it and every directory an import was looked up in (a file appearing there can change what
    the import resolves to). The scan cache watches these besides the directory itself."""
    root = os.path.realpath(project_root)
    base = os.path.join(root, fn_dir)
    contents: dict[str, bytes] = {}
    queue: list[str] = []
    watched: set[str] = set()
    for p in _dir_files(base):
        with open(p, "rb") as f:
            contents[p] = f.read()
        if p.endswith(_CODE_EXTS):
            queue.append(p)
    inside = base + os.sep
    while queue:
        p = queue.pop()
        text = contents[p].decode("utf-8", errors="replace")
        if "./" not in text:
            continue
        for m in _IMPORT_RE.finditer(text):
            spec = m.group(1) or m.group(2)
            here = os.path.dirname(p)
            target = _resolve(spec, here)
            for probed in {os.path.dirname(os.path.normpath(os.path.join(here, spec))),
                           os.path.normpath(os.path.join(here, spec))}:
                if not probed.startswith(inside) and probed != base:
                    watched.add(probed)
            if target and target not in contents and target.startswith(root + os.sep):
                with open(target, "rb") as f:
                    contents[target] = f.read()
                if target.endswith(_CODE_EXTS):
                    queue.append(target)
    h = hashlib.sha256()
    h.update(f"bundle-format={BUNDLE_FORMAT};runtime={runtime};sdk={sdk_digest()}\n".encode())
    for p in sorted(contents):
        h.update(os.path.relpath(p, root).replace(os.sep, "/").encode() + b"\0")
        h.update(contents[p])
        h.update(b"\0")
    watched.update(p for p in contents if not p.startswith(inside))
    return h.hexdigest(), sorted(watched)
