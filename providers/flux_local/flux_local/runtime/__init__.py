"""The JavaScript side of the local provider: the Deno host (gateway + admin API + worker pools), the Deno
worker bootstrap and the Node worker host. The Python daemon only starts the host with `host_command()`.
The worker-side runtime (core.mjs) and the query compiler (query.mjs) are shared with the other providers and
live in flux_plan/runtime; the host reaches them through the import map of `host_command()`."""

from __future__ import annotations

import os
import shutil
from pathlib import Path


def runtime_dir() -> Path:
    """Directory of host.ts, worker.ts and node_host.mjs (the host may read only this, the shared runtime and
    the artifacts)."""
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
    runtime files (its own and the shared ones) and the artifact store only, the one env var carrying its config,
    and running `node`. `node_bin` must be the FLUX_HOST_CONFIG `node_bin` (default: `node` on PATH)."""
    from flux_plan.runtime import import_map_flag, shared_runtime_dir

    rt = runtime_dir()
    reads = [str(rt), str(shared_runtime_dir()), str(Path(artifacts_dir).resolve())]
    cmd = [
        str(deno_bin), "run", "--unstable-worker-options", "--no-prompt", "--no-config", "--no-lock",
        import_map_flag(),
        "--allow-net", f"--allow-read={','.join(reads)}", "--allow-env=FLUX_HOST_CONFIG",
    ]
    nodes = _node_paths(node_bin)
    if nodes:
        cmd.append(f"--allow-run={','.join(nodes)}")
    cmd.append(str(rt / "host.ts"))
    return cmd
