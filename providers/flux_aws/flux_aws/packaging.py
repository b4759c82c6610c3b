"""Lambda deployment packages: deterministic zips (fixed timestamps and modes, so an unchanged
function has an unchanged CodeSha256 and is not re-uploaded) built from the artifact store's bundle
plus the Flux runtime files in `runtime/` and the shared ones of flux_plan/runtime (query.mjs)."""

from __future__ import annotations

import base64
import hashlib
import io
import os
import re
import shutil
import subprocess
import tempfile
import threading
import zipfile
from pathlib import Path

from flux_plan.errors import ProviderError
from flux_plan.paths import REPO_DIR
from flux_plan.runtime import shared_runtime_dir

RUNTIME_DIR = Path(__file__).resolve().parent / "runtime"
_EPOCH = (1980, 1, 1, 0, 0, 0)
# esbuild heads each input module with `// <path relative to the working directory>`: a random
# temporary directory, the project's location or $HOME would make every build differ.
_PATH_COMMENT = re.compile(rb"^([ \t]*)// (?:[^\s]*/)?([^/\s]+\.(?:[cm]?[jt]sx?|json))$", re.MULTILINE)


def stable_paths(js: bytes) -> bytes:
    """esbuild output with its module path comments reduced to file names (byte-for-byte the same
    bundle wherever and whenever it is built)."""
    return _PATH_COMMENT.sub(rb"\1// \2", js)


def zip_entries(entries: list[tuple[str, bytes, int]], level: int = 6) -> bytes:
    """[(name, data, mode)] -> zip bytes, byte-for-byte reproducible."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED, compresslevel=level) as zf:
        for name, data, mode in sorted(entries):
            info = zipfile.ZipInfo(name, date_time=_EPOCH)
            info.external_attr = (0o100000 | mode) << 16
            info.compress_type = zipfile.ZIP_DEFLATED
            zf.writestr(info, data, compresslevel=level)
    return buf.getvalue()


def code_sha256(data: bytes) -> str:
    """The CodeSha256 Lambda reports: base64 of the sha256 of the zip."""
    return base64.b64encode(hashlib.sha256(data).digest()).decode()


def esbuild_bin() -> str:
    local = REPO_DIR / "node_modules" / ".bin" / "esbuild"
    if local.exists():
        return str(local)
    found = shutil.which("esbuild")
    if not found:
        raise ProviderError("esbuild not found (run ./scripts/setup.sh or `npm i -g esbuild`)")
    return found


PG_VERSION = "8.16.3"
_PG_BANNER = 'import { createRequire as __fluxPgRequire } from "node:module"; const require = __fluxPgRequire(import.meta.url);'


def cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    d = Path(base) / "flux" / "aws"
    d.mkdir(parents=True, exist_ok=True)
    return d


def _run(cmd: list[str], cwd: Path, what: str) -> None:
    proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, check=False, timeout=600)
    if proc.returncode != 0:
        raise ProviderError(f"{what} failed: {(proc.stderr or proc.stdout)[-2000:]}")


def pg_bundle() -> Path:
    """node-postgres as one ESM file (for ctx.db.query on Lambda, node and Deno alike): installed
    once from the npm registry into the user cache, bundled with esbuild."""
    out = cache_dir() / f"pg-{PG_VERSION}.mjs"
    if out.exists():
        return out
    with tempfile.TemporaryDirectory(prefix="flux-pg-") as tmp:
        work = Path(tmp)
        (work / "package.json").write_text('{"private": true, "type": "module"}')
        npm = shutil.which("npm")
        if not npm:
            raise ProviderError("npm not found: it is needed once to fetch node-postgres for ctx.db on AWS")
        _run([npm, "install", "--no-audit", "--no-fund", "--loglevel=error", f"pg@{PG_VERSION}"], work, "npm install pg")
        (work / "entry.mjs").write_text('import pg from "pg";\nexport default pg;\n')
        part = work / "pg.mjs"
        _run([esbuild_bin(), "entry.mjs", "--bundle", "--format=esm", "--platform=node", "--target=node20",
              "--external:pg-native", f"--banner:js={_PG_BANNER}", f"--outfile={part}", "--log-level=error"],
             work, "esbuild pg")
        tmp_out = out.with_suffix(f".{os.getpid()}.{threading.get_ident()}.tmp")
        tmp_out.write_bytes(stable_paths(part.read_bytes()))
        os.replace(tmp_out, out)
    return out


def node_bundle(artifact_dir: Path, node_target: str = "node20") -> bytes:
    """One ESM file: the user's bundle + the Flux Lambda shim, exporting `handler` (Handler
    `index.handler` of the nodejs runtimes). The artifact bundle already carries its own
    `require` shim for CommonJS dependencies, so no banner is added here."""
    with tempfile.TemporaryDirectory(prefix="flux-aws-") as tmp:
        entry = Path(tmp) / "entry.mjs"
        shim = Path(tmp) / "flux"  # the runtime files laid out as in the layer, so relative imports resolve
        shim.mkdir()
        for name, data, _mode in _shim_files():
            (Path(tmp) / name).write_bytes(data)
        entry.write_text(
            f'import def from {str((artifact_dir / "index.mjs").resolve())!r};\n'
            f'import pg from {str(pg_bundle())!r};\n'
            f'import {{ makeHandler }} from {str(shim / "flux_handler.mjs")!r};\n'
            'export const handler = makeHandler(def, { runtime: "node", pg });\n'
        )
        out = Path(tmp) / "index.mjs"
        proc = subprocess.run(
            [
                esbuild_bin(),
                str(entry),
                "--bundle",
                "--format=esm",
                "--platform=node",
                f"--target={node_target}",
                f"--outfile={out}",
                "--log-level=error",
            ],
            capture_output=True,
            text=True,
            check=False,
        )
        if proc.returncode != 0:
            raise ProviderError(f"esbuild failed to bundle the Lambda shim for {artifact_dir}: {proc.stderr[-2000:]}")
        return stable_paths(out.read_bytes())


def node_zip(artifact_dir: Path, node_target: str = "node20") -> bytes:
    return zip_entries([("index.mjs", node_bundle(artifact_dir, node_target), 0o644)])


def deno_zip(artifact_dir: Path) -> bytes:
    """The function package of a Deno function: only its bundle (the runtime is in the layer)."""
    return zip_entries([("index.mjs", (artifact_dir / "index.mjs").read_bytes(), 0o644)])


def runtime_files() -> list[tuple[str, bytes, int]]:
    """Shared JS runtime files (loop, shim, SigV4 client, query compiler, node-postgres) as zip
    entries under flux/."""
    return [*_shim_files(), ("flux/pg.mjs", stable_paths(pg_bundle().read_bytes()), 0o644)]


def _shim_files() -> list[tuple[str, bytes, int]]:
    """The runtime files of this package plus the shared query compiler, side by side under flux/."""
    paths = [*sorted(RUNTIME_DIR.glob("*.mjs")), shared_runtime_dir() / "query.mjs", shared_runtime_dir() / "http.mjs"]
    return [(f"flux/{p.name}", p.read_bytes(), 0o644) for p in paths]
