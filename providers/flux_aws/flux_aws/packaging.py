"""Lambda deployment packages: deterministic zips (fixed timestamps and modes, so an unchanged
function has an unchanged CodeSha256 and is not re-uploaded) built from the artifact store's bundle
plus the Flux runtime files in `runtime/`."""

from __future__ import annotations

import base64
import hashlib
import io
import shutil
import subprocess
import tempfile
import zipfile
from pathlib import Path

from flux_plan.errors import ProviderError
from flux_plan.paths import REPO_DIR

RUNTIME_DIR = Path(__file__).resolve().parent / "runtime"
_EPOCH = (1980, 1, 1, 0, 0, 0)
NODE_BANNER = "import { createRequire as __fluxCreateRequire } from 'node:module';" \
    "const require = __fluxCreateRequire(import.meta.url);"


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


def node_bundle(artifact_dir: Path, node_target: str = "node20") -> bytes:
    """One ESM file: the user's bundle + the Flux Lambda shim, exporting `handler` (Handler
    `index.handler` of the nodejs runtimes)."""
    with tempfile.TemporaryDirectory(prefix="flux-aws-") as tmp:
        entry = Path(tmp) / "entry.mjs"
        entry.write_text(
            f'import def from {str((artifact_dir / "index.mjs").resolve())!r};\n'
            f'import {{ makeHandler }} from {str(RUNTIME_DIR / "flux_handler.mjs")!r};\n'
            'export const handler = makeHandler(def, { runtime: "node" });\n'
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
                f"--banner:js={NODE_BANNER}",
                "--log-level=error",
            ],
            capture_output=True,
            text=True,
            check=False,
        )
        if proc.returncode != 0:
            raise ProviderError(f"esbuild failed to bundle the Lambda shim for {artifact_dir}: {proc.stderr[-2000:]}")
        return out.read_bytes()


def node_zip(artifact_dir: Path, node_target: str = "node20") -> bytes:
    return zip_entries([("index.mjs", node_bundle(artifact_dir, node_target), 0o644)])


def deno_zip(artifact_dir: Path) -> bytes:
    """The function package of a Deno function: only its bundle (the runtime is in the layer)."""
    return zip_entries([("index.mjs", (artifact_dir / "index.mjs").read_bytes(), 0o644)])


def runtime_files() -> list[tuple[str, bytes, int]]:
    """Shared JS runtime files (loop, shim, SigV4 client, query compiler) as zip entries under flux/."""
    return [
        (f"flux/{p.name}", p.read_bytes(), 0o644) for p in sorted(RUNTIME_DIR.glob("*.mjs"))
    ]
