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


# postgres.js (npm `postgres`, ESM source) imports node built-ins by bare name: map them for Deno
_PG_BUILTINS = ("crypto", "fs", "net", "os", "perf_hooks", "stream", "tls")


def postgres_js_dir() -> Path | None:
    """npm `postgres` (postgres.js, ctx.db inside the host) as installed by scripts/setup.sh, if it is."""
    from flux_plan.paths import REPO_DIR

    d = REPO_DIR / "node_modules" / "postgres"
    return d if (d / "src" / "index.js").is_file() else None


def db_import_map() -> dict[str, str]:
    """Import-map entries of ctx.db (db.ts) beyond the shared runtime: `flux:postgres` and the node built-ins
    postgres.js names bare; empty when postgres.js is not installed."""
    pg = postgres_js_dir()
    if pg is None:
        return {}
    return {"flux:postgres": (pg / "src" / "index.js").as_uri(), **{b: f"node:{b}" for b in _PG_BUILTINS}}


def host_command(deno_bin: str, artifacts_dir: Path | str, node_bin: str | None = None,
                 db_socket_dir: str | None = None) -> list[str]:
    """argv of the runtime host. Its permissions bound every worker's: net (functions may call out), reads of the
    runtime files (its own and the shared ones) and the artifact store only, the one env var carrying its config,
    and running `node`. `node_bin` must be the FLUX_HOST_CONFIG `node_bin` (default: `node` on PATH).
    ctx.db: postgres.js is readable, and the embedded server's socket directory `db_socket_dir` (Deno gates Unix
    sockets by read+write permission); postgres.js looks at PGAPPNAME/PGTARGETSESSIONATTRS (never set: the
    supervisor passes a scrubbed environment)."""
    from flux_plan.runtime import import_map_flag, shared_runtime_dir

    rt = runtime_dir()
    reads = [str(rt), str(shared_runtime_dir()), str(Path(artifacts_dir).resolve())]
    extra = db_import_map()
    pg = postgres_js_dir()
    if pg is not None:
        reads.append(str(pg))
    writes = []
    if db_socket_dir:
        reads.append(db_socket_dir)
        writes.append(db_socket_dir)
    cmd = [
        str(deno_bin), "run", "--unstable-worker-options", "--no-prompt", "--no-config", "--no-lock",
        import_map_flag(extra),
        "--allow-net", f"--allow-read={','.join(reads)}",
        "--allow-env=FLUX_HOST_CONFIG,PGAPPNAME,PGTARGETSESSIONATTRS",
    ]
    if writes:
        cmd.append(f"--allow-write={','.join(writes)}")
    # node functions run `node`; deno functions run this same deno (one process per worker: memory limits)
    runs = sorted({*_node_paths(node_bin), str(deno_bin), os.path.realpath(str(deno_bin))})
    cmd.append(f"--allow-run={','.join(runs)}")
    cmd.append(str(rt / "host.ts"))
    return cmd
