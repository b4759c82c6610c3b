#!/usr/bin/env python3
"""`flux dev`: from saving a function's file to the first response served by the new code, end to end,
against `deno run --watch` of a bare `Deno.serve` doing the same edit, in one run.

Each round writes a new version into the file, then polls the route (every 2 ms) until the answer
carries that version. Median of the rounds; DESIGN §9 target: <= 150 ms for flux dev.

    .venv/bin/python bench/dev_reload.py [--rounds 7] [--functions 20]

Results also go to bench/results/dev_reload.json (bench/readme_table.py turns them into the README table).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from plan_scale import FLUX, RESULTS, compile_bytecode, free_port, machine, write_function

BARE = """Deno.serve({{ hostname: "127.0.0.1", port: {port}, onListen() {{}} }}, () =>
  Response.json({{ fn: "bare", version: {version} }}));
"""


def _get(url: str) -> dict[str, object] | None:
    try:
        req = urllib.request.Request(url, data=b"{}", method="POST", headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=2) as resp:
            return dict(json.loads(resp.read()))
    except (urllib.error.URLError, OSError, ValueError):
        return None


def _wait_version(url: str, version: int, deadline_s: float) -> float:
    t_end = time.perf_counter() + deadline_s
    while time.perf_counter() < t_end:
        body = _get(url)
        if body is not None and body.get("version") == version:
            return time.perf_counter()
        time.sleep(0.002)
    raise SystemExit(f"{url} did not serve version {version} within {deadline_s:.0f} s")


def rounds(url: str, write: Callable[[int], None], n: int) -> list[float]:
    out = []
    for k in range(1, n + 1):
        time.sleep(0.3)  # let watchers settle: each round is one save
        t0 = time.perf_counter()
        write(k)
        out.append(_wait_version(url, k, 30) - t0)
    return out


def _stop(proc: subprocess.Popen[bytes]) -> None:
    """Ours only, by PID: SIGINT (flux dev stops its daemon on it), then SIGKILL if it lingers."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def bench_flux(work: Path, functions: int, n: int) -> list[float]:
    root = work / "dev"
    (root / "functions").mkdir(parents=True)
    (root / "flux.project.json").write_text(json.dumps({"name": "devbench", "stages": {"dev": {"provider": "local"}}}))
    (root / ".env.example").write_text("")
    for i in range(functions):
        write_function(root, i)
    port = free_port()
    env = {**os.environ, "HOME": str(work / "home"), "XDG_CACHE_HOME": str(work / "home" / ".cache"),
           "NO_COLOR": "1", "TERM": "dumb"}
    log = (work / "dev.log").open("wb")
    proc = subprocess.Popen([str(FLUX), "dev", "--port", str(port)], cwd=root, env=env, stdout=log,
                            stderr=subprocess.STDOUT)
    try:
        url = f"http://127.0.0.1:{port}/fn0"
        _wait_version(url, 0, 120)
        return rounds(url, lambda k: write_function(root, 0, version=k), n)
    finally:
        _stop(proc)
        log.close()


def bench_deno(work: Path, n: int) -> list[float] | None:
    try:
        from flux_local.runtime import deno_bin

        deno = str(deno_bin())
    except Exception:
        return None
    port = free_port()
    script = work / "bare.ts"
    script.write_text(BARE.format(port=port, version=0))
    proc = subprocess.Popen([deno, "run", "--watch", "--allow-net", str(script)], cwd=work,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env={**os.environ, "NO_COLOR": "1"})
    try:
        url = f"http://127.0.0.1:{port}/"
        _wait_version(url, 0, 60)
        return rounds(url, lambda k: script.write_text(BARE.format(port=port, version=k)), n)
    finally:
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--functions", type=int, default=20, help="functions in the project (one is edited)")
    ap.add_argument("--no-save", action="store_true")
    args = ap.parse_args()
    compile_bytecode()
    with tempfile.TemporaryDirectory(prefix="flux-devbench-") as tmp:
        work = Path(tmp)
        fx = bench_flux(work, args.functions, args.rounds)
        bare = bench_deno(work, args.rounds)
    info = machine()
    fx_ms = statistics.median(fx) * 1000
    print(f"# save -> new code served, {args.rounds} rounds; machine: {info}")
    print(f"flux dev ({args.functions} functions): median {fx_ms:.0f} ms  (all: "
          + ", ".join(f"{x * 1000:.0f}" for x in fx) + ")")
    doc = {"bench": "dev_reload", "when": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "machine": info,
           "rounds": args.rounds, "functions": args.functions, "flux_dev_ms": round(fx_ms, 1), "deno_watch_ms": None}
    if bare:
        bare_ms = statistics.median(bare) * 1000
        doc["deno_watch_ms"] = round(bare_ms, 1)
        print(f"deno run --watch (bare Deno.serve): median {bare_ms:.0f} ms  (all: "
              + ", ".join(f"{x * 1000:.0f}" for x in bare) + f")\nratio flux/deno: {fx_ms / bare_ms:.2f}")
    if not args.no_save:
        RESULTS.mkdir(parents=True, exist_ok=True)
        (RESULTS / "dev_reload.json").write_text(json.dumps(doc, indent=2) + "\n")


if __name__ == "__main__":
    main()
