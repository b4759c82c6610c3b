#!/usr/bin/env python3
"""How plan/apply cost grows with the number of functions, against Terraform on the same graph.

For each N it generates a project of N functions on the test-only `record` provider (like
`terraform_data`: the "cloud" is a local file), then times, with the real `flux` executable:
`flux validate`, create-apply (`flux apply --auto-approve`), no-op `flux plan` (with refresh) and an
update-one apply (one function's code edited). When `terraform` is on PATH it builds the same graph of
`terraform_data` resources (per function: the function + its route depending on it, plus one API),
runs `terraform init` once, then times `apply` (create), `plan -refresh=true` (no-op) and an update-one
apply. Prints seconds, ratios flux/terraform and time per function (constant = linear scaling).

    .venv/bin/python bench/plan_scale.py --quick          # N = 20, 100, 300
    .venv/bin/python bench/plan_scale.py                   # N = 100, 1000, 5000
    .venv/bin/python bench/plan_scale.py -n 2000 --no-terraform
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
FLUX = REPO / ".venv" / "bin" / "flux"
CODE = """import {{ defineFunction }} from "@flux/functions";

export default defineFunction({{
  name: "{name}",
  handler: async ({{ input, ctx }}) => {{
    ctx.log("invoked", input);
    return {{ fn: "{name}", version: {version} }};
  }},
}});
"""
TF_MAIN = """terraform {{
  backend "local" {{ path = "terraform.tfstate" }}
}}
variable "edited" {{
  type    = number
  default = 0
}}
resource "terraform_data" "api" {{
  input = {{ stage = "dev" }}
}}
resource "terraform_data" "function" {{
  count = {n}
  input = {{ name = "fn${{count.index}}", runtime = "deno", version = count.index == 0 ? var.edited : 0 }}
}}
resource "terraform_data" "route" {{
  count = {n}
  input = {{ path = "/fn${{count.index}}", function = terraform_data.function[count.index].id,
            api = terraform_data.api.id }}
}}
"""

OPS = ("validate", "create_apply", "noop_plan", "update_one_apply")


def run(cmd: list[str], cwd: Path, env: dict[str, str]) -> float:
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=cwd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    elapsed = time.perf_counter() - t0
    if proc.returncode not in (0, 2):
        raise SystemExit(f"{' '.join(cmd)} failed in {cwd} (exit {proc.returncode}):\n{proc.stderr[-2000:]}")
    return elapsed


def write_function(root: Path, i: int, version: int = 0) -> None:
    d = root / "functions" / f"fn{i}"
    d.mkdir(parents=True, exist_ok=True)
    (d / "flux.json").write_text(json.dumps({"name": f"fn{i}", "runtime": "deno"}) + "\n")
    (d / "index.ts").write_text(CODE.format(name=f"fn{i}", version=version))


def bench_flux(n: int, work: Path, parallelism: int) -> dict[str, float]:
    root = work / f"flux-{n}"
    root.mkdir()
    (root / "flux.project.json").write_text(json.dumps({"name": "bench", "stages": {"dev": {"provider": "record"}}}))
    (root / ".env.example").write_text("")
    for i in range(n):
        write_function(root, i)
    env = {**os.environ, "HOME": str(work / "home"), "XDG_CONFIG_HOME": str(work / "home" / ".config"),
           "NO_COLOR": "1", "TERM": "dumb"}
    env.pop("FLUX_RECORD_DELAY", None)
    out = {"validate": run([str(FLUX), "validate"], root, env)}
    out["create_apply"] = run([str(FLUX), "apply", "--auto-approve", "--parallelism", str(parallelism)], root, env)
    out["noop_plan"] = run([str(FLUX), "plan", "--detailed-exitcode"], root, env)
    write_function(root, 0, version=1)
    out["update_one_apply"] = run([str(FLUX), "apply", "--auto-approve", "--parallelism", str(parallelism)],
                                  root, env)
    state = json.loads((root / ".flux" / "dev" / "state.json").read_text())
    if len(state["resources"]) != 2 * n + 1:
        raise SystemExit(f"flux state has {len(state['resources'])} resources, expected {2 * n + 1}")
    return out


def bench_terraform(n: int, work: Path, parallelism: int) -> dict[str, float]:
    root = work / f"tf-{n}"
    root.mkdir()
    (root / "main.tf").write_text(TF_MAIN.format(n=n))
    env = {**os.environ, "TF_IN_AUTOMATION": "1", "CHECKPOINT_DISABLE": "1", "TF_CLI_CONFIG_FILE": "/dev/null"}
    tf = shutil.which("terraform") or "terraform"
    run([tf, "init", "-input=false", "-no-color"], root, env)
    out = {"validate": run([tf, "validate", "-no-color"], root, env)}
    common = ["-input=false", "-no-color", f"-parallelism={parallelism}"]
    out["create_apply"] = run([tf, "apply", "-auto-approve", *common], root, env)
    out["noop_plan"] = run([tf, "plan", "-refresh=true", "-detailed-exitcode", *common], root, env)
    out["update_one_apply"] = run([tf, "apply", "-auto-approve", "-var", "edited=1", *common], root, env)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("-n", "--sizes", default="100,1000,5000", help="comma-separated numbers of functions")
    ap.add_argument("--quick", action="store_true", help="small sizes (20,100,300) for a smoke run")
    ap.add_argument("--no-terraform", action="store_true", help="skip the terraform comparison")
    ap.add_argument("--terraform-max", type=int, default=1000,
                    help="skip terraform above this N (its create-apply grows quadratically: hours at 5000)")
    ap.add_argument("--parallelism", type=int, default=10, help="for both tools (terraform's default is 10)")
    ap.add_argument("--keep", action="store_true", help="keep the generated projects")
    args = ap.parse_args()
    sizes = [20, 100, 300] if args.quick else [int(s) for s in args.sizes.split(",") if s.strip()]
    with_tf = not args.no_terraform and shutil.which("terraform") is not None
    if not FLUX.exists():
        raise SystemExit(f"{FLUX} missing: run ./scripts/setup.sh first")
    work = Path(tempfile.mkdtemp(prefix="flux-bench-"))
    print(f"# plan/apply scaling, record provider vs terraform_data ({'with' if with_tf else 'without'} terraform);"
          f" {2} resources per function + 1; parallelism {args.parallelism}; work dir {work}")
    rows: list[tuple[int, dict[str, float], dict[str, float] | None]] = []
    try:
        for n in sizes:
            fx = bench_flux(n, work, args.parallelism)
            tf = bench_terraform(n, work, args.parallelism) if with_tf and n <= args.terraform_max else None
            rows.append((n, fx, tf))
            line = "  ".join(f"{op}={fx[op]:.2f}s" for op in OPS)
            print(f"N={n:<6} flux: {line}", flush=True)
            if tf:
                line = "  ".join(f"{op}={tf[op]:.2f}s" for op in OPS)
                print(f"N={n:<6} terraform: {line}", flush=True)
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    print()
    header = f"{'N':>6} | " + " | ".join(f"{op:>16}" for op in OPS)
    print("flux seconds (ms per function)")
    print(header)
    for n, fx, _ in rows:
        print(f"{n:>6} | " + " | ".join(f"{fx[op]:7.2f} ({fx[op] / n * 1000:5.2f})" for op in OPS))
    tf_rows = [(n, fx, tf) for n, fx, tf in rows if tf is not None]
    if tf_rows:
        print("\nterraform seconds (ms per function)")
        print(header)
        for n, _, tf in tf_rows:
            print(f"{n:>6} | " + " | ".join(f"{tf[op]:7.2f} ({tf[op] / n * 1000:5.2f})" for op in OPS))
        print("\nratio flux / terraform (< 1: flux faster)")
        print(header)
        for n, fx, tf in tf_rows:
            print(f"{n:>6} | " + " | ".join(f"{fx[op] / tf[op]:16.2f}" for op in OPS))
    for label, col in (("flux", 1), ("terraform", 2)):
        pts = [(r[0], r[col]) for r in rows if r[col] is not None]
        if len(pts) < 2:
            continue
        print(f"\n{label}: marginal ms per added function between sizes (constant = linear growth)")
        for (n0, a), (n1, b) in itertools.pairwise(pts):
            print(f"  {n0:>5} -> {n1:<5} " + "  ".join(
                f"{op} {(b[op] - a[op]) / (n1 - n0) * 1000:6.2f}" for op in OPS))
    sys.stdout.flush()


if __name__ == "__main__":
    main()
