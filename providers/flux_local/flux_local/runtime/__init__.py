"""The JavaScript side of the local provider: the Deno host (gateway + admin API + worker pools), the Deno
worker bootstrap and the Node worker host. The Python daemon only starts the host with `host_command()`."""

from __future__ import annotations

import os
import shutil
from pathlib import Path


def runtime_dir() -> Path:
    """Directory of host.ts, worker.ts, core.mjs and node_host.mjs (the host may read only this + artifacts)."""
    return Path(__file__).resolve().parent


def deno_bin() -> str:
    """The deno executable shipped by the PyPI `deno` wheel (no system install needed)."""
    import deno

    return str(deno.find_deno_bin())


def _node_paths(node_bin: str | None) -> list[str]:
    found = node_bin or shutil.which("node")
    if not found:
        return []
    paths = {found, os.path.realpath(found)}
    return sorted(paths)


def host_command(deno_bin: str, artifacts_dir: Path | str, node_bin: str | None = None) -> list[str]:
    """argv of the runtime host. Its permissions bound every worker's: net (functions may call out), reads of the
    runtime files and the artifact store only, the one env var carrying its config, and running `node`.
    `node_bin` must be the FLUX_HOST_CONFIG `node_bin` (default: `node` on PATH)."""
    rt = runtime_dir()
    shared = rt.parents[3] / "flux_plan" / "runtime"  # http.mjs: the HTTP contract every provider shares
    reads = [str(rt), str(shared), str(Path(artifacts_dir).resolve())]
    cmd = [
        str(deno_bin), "run", "--unstable-worker-options", "--no-prompt", "--no-config", "--no-lock",
        "--allow-net", f"--allow-read={','.join(reads)}", "--allow-env=FLUX_HOST_CONFIG",
    ]
    nodes = _node_paths(node_bin)
    if nodes:
        cmd.append(f"--allow-run={','.join(nodes)}")
    cmd.append(str(rt / "host.ts"))
    return cmd
