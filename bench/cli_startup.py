#!/usr/bin/env python3
"""CLI start-up: `flux --help`, `flux version` and `flux validate` (5 functions) against `python -c pass`
of the same interpreter, run in turn (A B C D, A B C D, ...) so a drifting machine affects all alike.

`flux validate` is measured twice: of an unchanged project (replayed from .flux/validate-cache.json) and
right after an edit of one function (each run rewrites a function of a second project first: the scan,
without the replay, as while developing). --uncached adds --help and validate with FLUX_NO_FAST_PATH=1
(the typer app itself, no cache of any kind).

Prints, per command, the median wall time and CPU time (user + sys of the child) and their ratio to
`python -c pass`. DESIGN §9 targets: --help and version <= 150 ms, validate <= 300 ms wall.

    .venv/bin/python bench/cli_startup.py [--runs 15] [--uncached]

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
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from plan_scale import FLUX, RESULTS, compile_bytecode, machine, write_function

PY = Path(sys.executable)


def project(root: Path) -> Path:
    """A 5-function project dated as a checkout is (older than the scan cache's two-second window)."""
    (root / "functions").mkdir(parents=True)
    (root / "flux.project.json").write_text(json.dumps({"name": "p5", "stages": {"dev": {"provider": "local"}}}))
    (root / ".env.example").write_text("")
    for i in range(5):
        write_function(root, i)
    old = time.time() - 10
    for dirpath, _, files in os.walk(root / "functions"):
        for f in files:
            os.utime(os.path.join(dirpath, f), (old, old))
    return root


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
    ap.add_argument("--uncached", action="store_true",
                    help="also --help and validate with FLUX_NO_FAST_PATH=1 (the app itself)")
    ap.add_argument("--no-save", action="store_true", help="do not write bench/results/cli_startup.json")
    args = ap.parse_args()
    compile_bytecode()
    work = Path(tempfile.mkdtemp(prefix="flux-startup-"))
    try:
        root = project(work / "p5")
        edited = project(work / "p5-edited")  # its own project: an edit voids the replay for a while
        home = work / "home"
        env = {**os.environ, "HOME": str(home), "XDG_CACHE_HOME": str(home / ".cache"), "NO_COLOR": "1",
               "TERM": "dumb"}
        slow = {**env, "FLUX_NO_FAST_PATH": "1"}
        edits = iter(range(1, 1_000_000))

        def edit() -> None:  # what a developer does before validating again: saves one function
            write_function(edited, 0, version=next(edits))

        # name -> (argv, cwd, env, what to do before each run: untimed)
        commands: dict[str, tuple[list[str], Path, dict[str, str], Callable[[], None] | None]] = {
            "python -c pass": ([str(PY), "-c", "pass"], root, env, None),
            "flux --help": ([str(FLUX), "--help"], root, env, None),
            "flux version": ([str(FLUX), "version"], root, env, None),
            "flux validate (5 functions)": ([str(FLUX), "validate"], root, env, None),
            "flux validate after an edit (5 functions)": ([str(FLUX), "validate"], edited, env, edit),
        }
        if args.uncached:
            commands["FLUX_NO_FAST_PATH=1 flux --help"] = ([str(FLUX), "--help"], root, slow, None)
            commands["FLUX_NO_FAST_PATH=1 flux validate (5 functions)"] = ([str(FLUX), "validate"], root, slow,
                                                                             None)
        samples: dict[str, list[tuple[float, float]]] = {k: [] for k in commands}
        for i in range(args.runs + 1):
            for name, (cmd, cwd, cmd_env, first) in commands.items():
                if first is not None:
                    first()
                sample = timed(cmd, cwd, cmd_env)
                if i:  # the first round warms caches (bytecode, provider discovery, scan cache)
                    samples[name].append(sample)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    info = machine()
    print(f"# CLI start-up, {args.runs} runs each, in turn; machine: {info}")
    base_wall = statistics.median(w for w, _ in samples["python -c pass"])
    base_cpu = statistics.median(c for _, c in samples["python -c pass"])
    rows = {}
    width = max(len(n) for n in samples) + 1
    print(f"{'command':<{width}} {'wall ms':>8} {'cpu ms':>8} {'wall/py':>8} {'cpu/py':>8}")
    for name, got in samples.items():
        wall = statistics.median(w for w, _ in got)
        cpu = statistics.median(c for _, c in got)
        rows[name] = {"wall_ms": round(wall * 1000, 1), "cpu_ms": round(cpu * 1000, 1),
                      "wall_ratio": round(wall / base_wall, 2), "cpu_ratio": round(cpu / base_cpu, 2)}
        print(f"{name:<{width}} {wall * 1000:8.1f} {cpu * 1000:8.1f} {wall / base_wall:8.2f} {cpu / base_cpu:8.2f}")
    if not args.no_save:
        RESULTS.mkdir(parents=True, exist_ok=True)
        doc = {"bench": "cli_startup", "when": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "machine": info,
               "runs": args.runs, "results": rows}
        (RESULTS / "cli_startup.json").write_text(json.dumps(doc, indent=2) + "\n")


if __name__ == "__main__":
    main()
