#!/usr/bin/env python3
"""CLI start-up: `flux --help`, `flux version` and `flux validate` (5 functions) against `python -c pass`
of the same interpreter, run in turn (A B C D, A B C D, ...) so a drifting machine affects all alike.

Prints, per command, the median wall time and CPU time (user + sys of the child) and their ratio to
`python -c pass`. DESIGN §9 targets: --help and version <= 150 ms, validate <= 300 ms wall.

    .venv/bin/python bench/cli_startup.py [--runs 15]

Results also go to bench/results/cli_startup.json (bench/readme_table.py turns them into the README table).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from plan_scale import FLUX, RESULTS, compile_bytecode, machine, write_function

PY = Path(sys.executable)


def timed(cmd: list[str], cwd: Path, env: dict[str, str]) -> tuple[float, float]:
    """(wall, cpu) seconds of one run of `cmd` as a child process."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=cwd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, check=False)
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed (exit {proc.returncode}): {proc.stderr.decode()[-1000:]}")
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return wall, cpu


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=15, help="counted runs of each command (after one warm-up)")
    ap.add_argument("--no-save", action="store_true", help="do not write bench/results/cli_startup.json")
    args = ap.parse_args()
    compile_bytecode()
    work = Path(tempfile.mkdtemp(prefix="flux-startup-"))
    try:
        root = work / "p5"
        (root / "functions").mkdir(parents=True)
        (root / "flux.project.json").write_text(json.dumps({"name": "p5", "stages": {"dev": {"provider": "local"}}}))
        (root / ".env.example").write_text("")
        for i in range(5):
            write_function(root, i)
        old = time.time() - 10  # as files of a checkout: older than the scan cache's two-second window
        for dirpath, _, files in os.walk(root / "functions"):
            for f in files:
                os.utime(os.path.join(dirpath, f), (old, old))
        home = work / "home"
        env = {**os.environ, "HOME": str(home), "XDG_CACHE_HOME": str(home / ".cache"), "NO_COLOR": "1",
               "TERM": "dumb"}
        commands = {
            "python -c pass": [str(PY), "-c", "pass"],
            "flux --help": [str(FLUX), "--help"],
            "flux version": [str(FLUX), "version"],
            "flux validate (5 functions)": [str(FLUX), "validate"],
        }
        samples: dict[str, list[tuple[float, float]]] = {k: [] for k in commands}
        for i in range(args.runs + 1):
            for name, cmd in commands.items():
                sample = timed(cmd, root, env)
                if i:  # the first round warms caches (bytecode, provider discovery, scan cache)
                    samples[name].append(sample)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    info = machine()
    print(f"# CLI start-up, {args.runs} runs each, in turn; machine: {info}")
    base_wall = statistics.median(w for w, _ in samples["python -c pass"])
    base_cpu = statistics.median(c for _, c in samples["python -c pass"])
    rows = {}
    print(f"{'command':<30} {'wall ms':>8} {'cpu ms':>8} {'wall/py':>8} {'cpu/py':>8}")
    for name, got in samples.items():
        wall = statistics.median(w for w, _ in got)
        cpu = statistics.median(c for _, c in got)
        rows[name] = {"wall_ms": round(wall * 1000, 1), "cpu_ms": round(cpu * 1000, 1),
                      "wall_ratio": round(wall / base_wall, 2), "cpu_ratio": round(cpu / base_cpu, 2)}
        print(f"{name:<30} {wall * 1000:8.1f} {cpu * 1000:8.1f} {wall / base_wall:8.2f} {cpu / base_cpu:8.2f}")
    if not args.no_save:
        RESULTS.mkdir(parents=True, exist_ok=True)
        doc = {"bench": "cli_startup", "when": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "machine": info,
               "runs": args.runs, "results": rows}
        (RESULTS / "cli_startup.json").write_text(json.dumps(doc, indent=2) + "\n")


if __name__ == "__main__":
    main()
