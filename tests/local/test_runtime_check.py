"""The JavaScript runtime type-checks as the host runs it: host.ts + worker.ts + node_host.mjs resolve the shared
flux_plan/runtime files (core.mjs, query.mjs) through the import map of host_command(), so a moved or renamed
shared file fails here, not at the first request."""

from __future__ import annotations

import subprocess

from flux_local.runtime import deno_bin, host_command, runtime_dir

from flux_plan.runtime import import_map, import_map_flag, shared_runtime_dir


def test_shared_runtime_files_exist_and_are_mapped() -> None:
    mapped = import_map()["imports"]
    assert set(mapped) == {"flux:core", "flux:query"}
    for name in ("core.mjs", "query.mjs"):
        assert (shared_runtime_dir() / name).is_file()
    flags = [a for a in host_command("deno", "/tmp/artifacts") if a.startswith("--import-map=")]
    assert len(flags) == 1 and flags[0].startswith(import_map_flag()[:-2])  # + the host's own entries


def test_deno_check_is_clean() -> None:
    rt = runtime_dir()
    flag = next(a for a in host_command(deno_bin(), "/tmp/artifacts") if a.startswith("--import-map="))
    proc = subprocess.run(
        [deno_bin(), "check", "--quiet", "--no-config", "--no-lock", flag,
         str(rt / "host.ts"), str(rt / "worker.ts"), str(rt / "node_host.mjs")],
        capture_output=True, text=True, timeout=300, check=False,
    )
    assert proc.returncode == 0, proc.stderr + proc.stdout
