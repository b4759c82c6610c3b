#!/usr/bin/env python3
"""How plan/apply cost grows with the number of functions, against Terraform, in one run.

For each N it generates a project of N deno functions and times the real `flux` executable on it:
`flux validate`, create-apply (`flux apply --auto-approve`), no-op `flux plan` (with refresh), an
update-one apply (one function's code edited) and `flux destroy`. It does so with the REAL local
provider (daemon, Deno host, embedded PostgreSQL, real esbuild bundles: what a user gets), and once
more with the test-only `record` provider, whose "cloud" is a local file: that line measures the engine
alone. When `terraform` is on PATH it times `apply` (create), `plan -refresh=true` (no-op), an update-one
apply and `destroy` of two anchors, each against flux in the same run:
- `terraform`: DESIGN §9's anchor, one `terraform_data` per function and no references (the targets of
  issue 15 are set against it), up to --design-max;
- `terraform_graph`: the same graph as flux's (per function: the function + its route referencing it,
  plus one API), up to --graph-max. Terraform evaluates `terraform_data.function[count.index]` against the
  whole list, so this anchor grows about quadratically (at 1000: ~5x the DESIGN anchor's plan). Above
  --terraform-max its state is synthesized (as `terraform apply` writes it) and only its plan is timed.
Prints seconds, ratios terraform/flux (> 1: flux faster) and growth factors.

    .venv/bin/python bench/plan_scale.py --quick             # N = 20, 100
    .venv/bin/python bench/plan_scale.py                     # N = 100, 1000
    .venv/bin/python bench/plan_scale.py --big               # N = 100, 1000, 5000 (bounded: --op-timeout)
    .venv/bin/python bench/plan_scale.py -n 1000 --providers record --no-terraform

Results also go to bench/results/plan_scale.json (bench/readme_table.py turns them into the README table).
"""

from __future__ import annotations

import argparse
import copy
import itertools
import json
import os
import platform
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
FLUX = REPO / ".venv" / "bin" / "flux"
RESULTS = REPO / "bench" / "results"
CODE = """import {{ defineFunction }} from "@flux/functions";

export default defineFunction({{
  name: "{name}",
  handler: async ({{ input, ctx }}) => {{
    ctx.log("invoked", input);
    return {{ fn: "{name}", version: {version} }};
  }},
}});
"""
# DESIGN §9's anchor (`terraform`, what the issue measured): one `terraform_data` per function, no references.
TF_DESIGN = """terraform {{
  backend "local" {{ path = "terraform.tfstate" }}
}}
variable "edited" {{
  type    = number
  default = 0
}}
resource "terraform_data" "function" {{
  count = {n}
  input = {{ name = "fn${{count.index}}", runtime = "deno", version = count.index == 0 ? var.edited : 0 }}
}}
"""
# The same graph as flux's (`terraform_graph`): + one API and a route per function referencing it. Terraform's
# cost grows with such references, so this is the slower anchor of the two.
TF_MAIN = TF_DESIGN + """resource "terraform_data" "api" {{
  input = {{ stage = "dev" }}
}}
resource "terraform_data" "route" {{
  count = {n}
  input = {{ path = "/fn${{count.index}}", function = terraform_data.function[count.index].id,
            api = terraform_data.api.id }}
}}
"""
ANCHORS = {"terraform": TF_DESIGN, "terraform_graph": TF_MAIN}

OPS = ("validate", "create_apply", "noop_plan", "update_one_apply", "destroy")
# A no-op plan changes nothing, so it can run again: its figure is the median of this many runs, for both tools
# (one run of a sub-second command is mostly this machine's noise: 0.46-0.72 s for six runs in a row).
NOOP_RUNS = 3


class OpFailed(SystemExit):
    pass


class OpTimedOut(OpFailed):
    pass


def run(cmd: list[str], cwd: Path, env: dict[str, str], timeout: float, ok: tuple[int, ...] = (0, 2)) -> float:
    t0 = time.perf_counter()
    try:
        proc = subprocess.run(cmd, cwd=cwd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                              timeout=timeout)
    except subprocess.TimeoutExpired as exc:
        raise OpTimedOut(f"{' '.join(cmd)} took more than {timeout:.0f} s in {cwd}") from exc
    elapsed = time.perf_counter() - t0
    if proc.returncode not in ok:
        raise OpFailed(f"{' '.join(cmd)} failed in {cwd} (exit {proc.returncode}):\n{proc.stderr[-2000:]}")
    return elapsed


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def write_function(root: Path, i: int, version: int = 0) -> None:
    d = root / "functions" / f"fn{i}"
    d.mkdir(parents=True, exist_ok=True)
    (d / "flux.json").write_text(json.dumps({"name": f"fn{i}", "runtime": "deno"}) + "\n")
    (d / "index.ts").write_text(CODE.format(name=f"fn{i}", version=version))


def _age(root: Path, seconds: float = 10.0) -> None:
    """Date the generated files a few seconds back, as files of a real checkout are (the scan cache
    never trusts files written within the last two seconds)."""
    old = time.time() - seconds
    for dirpath, dirnames, filenames in os.walk(root / "functions"):
        for name in filenames + dirnames:
            os.utime(os.path.join(dirpath, name), (old, old))
        os.utime(dirpath, (old, old))


def bench_flux(n: int, work: Path, provider: str, parallelism: int, timeout: float) -> dict[str, float]:
    root = work / f"flux-{provider}-{n}"
    root.mkdir()
    stage: dict[str, Any] = {"provider": provider}
    if provider == "local":
        stage["port"] = free_port()
    (root / "flux.project.json").write_text(json.dumps({"name": "bench", "stages": {"dev": stage}}))
    (root / ".env.example").write_text("")
    for i in range(n):
        write_function(root, i)
    _age(root)
    home = work / "home"
    env = {**os.environ, "HOME": str(home), "XDG_CONFIG_HOME": str(home / ".config"),
           "XDG_CACHE_HOME": str(home / ".cache"), "NO_COLOR": "1", "TERM": "dumb"}
    env.pop("FLUX_RECORD_DELAY", None)
    apply = [str(FLUX), "apply", "--auto-approve", "--parallelism", str(parallelism)]
    out: dict[str, float] = {}
    try:
        out["validate"] = run([str(FLUX), "validate"], root, env, timeout, ok=(0,))
        out["create_apply"] = run(apply, root, env, timeout, ok=(0,))
        out["noop_plan"] = statistics.median(run([str(FLUX), "plan", "--detailed-exitcode"], root, env, timeout, ok=(0,))
                                             for _ in range(NOOP_RUNS))
        write_function(root, 0, version=1)
        out["update_one_apply"] = run(apply, root, env, timeout, ok=(0,))
        state = json.loads((root / ".flux" / "dev" / "state.json").read_text())
        if len(state["resources"]) != 2 * n + 1:
            raise OpFailed(f"flux state has {len(state['resources'])} resources, expected {2 * n + 1}")
        out["destroy"] = run([str(FLUX), "destroy", "--auto-approve", "--parallelism", str(parallelism)],
                             root, env, timeout, ok=(0,))
    finally:
        if provider == "local":
            _stop_local(root)
    return out


def _stop_local(root: Path) -> None:
    """Whatever happened: no daemon, host or database of this bench outlives it (by PID, ours only)."""
    from flux_local.client import DaemonClient
    from flux_local.pg import EmbeddedPostgres

    stage = root / ".flux" / "dev"
    if stage.is_dir():
        DaemonClient(stage).stop()
        EmbeddedPostgres(stage / "pg").stop()


def _tf_env() -> dict[str, str]:
    return {**os.environ, "TF_IN_AUTOMATION": "1", "CHECKPOINT_DISABLE": "1", "TF_CLI_CONFIG_FILE": "/dev/null"}


def synthesize_tfstate(root: Path, n: int, template: dict[str, Any]) -> None:
    """terraform.tfstate of N functions (+ their routes and the api, when the anchor has them), shaped like
    `template` (the state terraform itself wrote for a tiny N): same attributes, fresh ids, routes pointing at
    their function."""
    state = copy.deepcopy(template)
    state["lineage"] = str(uuid.uuid4())
    state["serial"] = 1
    blocks = {r["name"]: r for r in state["resources"]}
    fn_tpl = blocks["function"]["instances"][0]
    route_tpl = blocks["route"]["instances"][0] if "route" in blocks else None
    api_id = blocks["api"]["instances"][0]["attributes"]["id"] if "api" in blocks else None
    fns, routes = [], []
    for i in range(n):
        fid, rid = str(uuid.uuid4()), str(uuid.uuid4())
        f = copy.deepcopy(fn_tpl)
        f["index_key"] = i
        f["attributes"]["id"] = fid
        for side in ("input", "output"):
            f["attributes"][side]["value"]["name"] = f"fn{i}"
        fns.append(f)
        if route_tpl is None:
            continue
        r = copy.deepcopy(route_tpl)
        r["index_key"] = i
        r["attributes"]["id"] = rid
        for side in ("input", "output"):
            r["attributes"][side]["value"].update({"path": f"/fn{i}", "function": fid, "api": api_id})
        routes.append(r)
    blocks["function"]["instances"] = fns
    if route_tpl is not None:
        blocks["route"]["instances"] = routes
    (root / "terraform.tfstate").write_text(json.dumps(state))


def tf_template(work: Path, parallelism: int, timeout: float, anchor: str) -> dict[str, Any]:
    root = work / f"{anchor}-template"
    root.mkdir()
    (root / "main.tf").write_text(ANCHORS[anchor].format(n=2))
    tf = shutil.which("terraform") or "terraform"
    run([tf, "init", "-input=false", "-no-color"], root, _tf_env(), timeout, ok=(0,))
    run([tf, "apply", "-auto-approve", "-input=false", "-no-color"], root, _tf_env(), timeout, ok=(0,))
    return dict(json.loads((root / "terraform.tfstate").read_text()))


def bench_terraform(n: int, work: Path, parallelism: int, timeout: float, synth: dict[str, Any] | None,
                    anchor: str = "terraform_graph") -> dict[str, float]:
    root = work / f"{anchor}-{n}"
    root.mkdir()
    (root / "main.tf").write_text(ANCHORS[anchor].format(n=n))
    env = _tf_env()
    tf = shutil.which("terraform") or "terraform"
    run([tf, "init", "-input=false", "-no-color"], root, env, timeout, ok=(0,))
    out = {"validate": run([tf, "validate", "-no-color"], root, env, timeout, ok=(0,))}
    common = ["-input=false", "-no-color", f"-parallelism={parallelism}"]
    if synth is not None:
        synthesize_tfstate(root, n, synth)
    ops: list[tuple[str, list[str]]] = [] if synth is not None else [("create_apply", ["apply", "-auto-approve"])]
    # exit 0 only: a synthesized state that terraform would change is a broken anchor, not a result
    ops.append(("noop_plan", ["plan", "-refresh=true", "-detailed-exitcode"]))
    if synth is None:
        ops += [("update_one_apply", ["apply", "-auto-approve", "-var", "edited=1"]),
                ("destroy", ["destroy", "-auto-approve"])]
    for op, cmd in ops:
        try:
            runs = NOOP_RUNS if op == "noop_plan" else 1
            out[op] = statistics.median(run([tf, *cmd, *common], root, env, timeout, ok=(0,)) for _ in range(runs))
        except OpTimedOut:
            # at large N terraform may outlast the bound: a lower bound is a result (printed "> T"), and the
            # figures of the whole run are not thrown away with it; what would follow has no known start state
            out[op] = timeout
            out[op + "_timed_out"] = 1.0
            break
    return out


def compile_bytecode() -> None:
    """Byte-compile flux and its providers, as installing a wheel does: with PYTHONDONTWRITEBYTECODE set
    (as here) an editable checkout would otherwise compile every changed module on every command."""
    subprocess.run([sys.executable, "-m", "compileall", "-q", str(REPO / "flux_plan"), str(REPO / "providers"),
                    str(REPO / "tests" / "fixtures")], stdout=subprocess.DEVNULL, check=False)


def machine() -> str:
    cpu = "?"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    load = os.getloadavg()[0]
    return f"{platform.system()} {platform.machine()}, {os.cpu_count()} CPUs ({cpu}), {mem:.0f} GiB, load {load:.1f}"


def _fmt_row(n: int, vals: dict[str, float], bounds: dict[str, float] | None = None) -> str:
    """One table row; an op whose `<op>_timed_out` flag is set in `bounds` is a lower bound ("> T")."""
    flags = bounds or vals

    def cell(op: str) -> str:
        if op not in vals:
            return f"{'-':>8}"
        return f"{'>' if flags.get(op + '_timed_out') else ''}{vals[op]:.2f}".rjust(8)

    return f"{n:>6} | " + " | ".join(cell(op) for op in OPS)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("-n", "--sizes", default="100,1000", help="comma-separated numbers of functions")
    ap.add_argument("--big", action="store_true", help="add N=5000 (local create-apply takes minutes)")
    ap.add_argument("--quick", action="store_true", help="small sizes (20,100) for a smoke run")
    ap.add_argument("--providers", default="local,record", help="local (what users get), record (engine alone)")
    ap.add_argument("--no-terraform", action="store_true", help="skip the terraform comparison")
    ap.add_argument("--terraform-max", type=int, default=1000,
                    help="above this N the same-graph anchor's state is synthesized and only its no-op plan is timed")
    ap.add_argument("--graph-max", type=int, default=1000,
                    help="above this N the same-graph anchor is not run at all (its plan at 5000 outlasts 900 s)")
    ap.add_argument("--design-max", type=int, default=5000,
                    help="above this N the DESIGN §9 anchor (one terraform_data per function) is not run")
    ap.add_argument("--design-synth-above", type=int, default=1 << 30,
                    help="above this N the DESIGN anchor's state is synthesized and only its no-op plan is timed "
                         "(its create-apply of 5000 outlasted 900 s)")
    ap.add_argument("--parallelism", type=int, default=10, help="for both tools (terraform's default is 10)")
    ap.add_argument("--op-timeout", type=float, default=900, help="bound on each timed command (seconds)")
    ap.add_argument("--keep", action="store_true", help="keep the generated projects")
    ap.add_argument("--no-save", action="store_true", help="do not write bench/results/plan_scale.json")
    ap.add_argument("--merge", action="store_true",
                    help="add this run's sizes to bench/results/plan_scale.json instead of replacing it (each "
                         "run's sizes and time are listed under \"runs\"; ratios are only ever taken within one run)")
    args = ap.parse_args()
    sizes = [20, 100] if args.quick else [int(s) for s in args.sizes.split(",") if s.strip()]
    if args.big and 5000 not in sizes:
        sizes.append(5000)
    providers = [p.strip() for p in args.providers.split(",") if p.strip()]
    tf_bin = shutil.which("terraform")
    with_tf = not args.no_terraform and tf_bin is not None
    if not FLUX.exists():
        raise SystemExit(f"{FLUX} missing: run ./scripts/setup.sh first")
    compile_bytecode()
    work = Path(tempfile.mkdtemp(prefix="flux-bench-"))
    info = machine()
    print(f"# plan/apply scaling: flux ({', '.join(providers)}; 2 resources per function + 1) vs terraform_data "
          f"(DESIGN anchor: 1 per function; same graph: 2 per function + 1); parallelism {args.parallelism}\n"
          f"# machine: {info}")
    if not with_tf:
        print("# terraform: skipped: " + ("--no-terraform" if args.no_terraform else "terraform not on PATH"))
    results: dict[str, dict[int, dict[str, float]]] = {p: {} for p in [*providers, *ANCHORS]}
    try:
        # above its --*-synth-above N an anchor's state is synthesized and only its plan is timed
        synth_above = {"terraform": args.design_synth_above, "terraform_graph": args.terraform_max}
        run_upto = {"terraform": args.design_max, "terraform_graph": args.graph_max}  # not run above
        synth = {a: tf_template(work, args.parallelism, args.op_timeout, a) for a, upto in run_upto.items()
                 if with_tf and any(synth_above[a] < n <= upto for n in sizes)}
        for n in sizes:  # flux first: at large N terraform's plan alone may take many minutes
            for provider in providers:
                fx = bench_flux(n, work, provider, args.parallelism, args.op_timeout)
                results[provider][n] = fx
                print(f"N={n:<6} flux/{provider}: " + "  ".join(f"{k}={v:.2f}s" for k, v in fx.items()), flush=True)
            for anchor, upto in run_upto.items():
                if not with_tf or n > upto:
                    continue
                tf = bench_terraform(n, work, args.parallelism, args.op_timeout,
                                     synth.get(anchor) if n > synth_above[anchor] else None, anchor)
                results[anchor][n] = tf
                print(f"N={n:<6} {anchor}: " + "  ".join(f"{k}={'>' if tf.get(k + '_timed_out') else ''}{v:.2f}s"
                                                       for k, v in tf.items() if not k.endswith("_timed_out")),
                      flush=True)
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    header = f"{'N':>6} | " + " | ".join(f"{op[:8]:>8}" for op in OPS)
    labels = {"local": "flux, local provider (what a user gets)", "record": "flux, record provider (engine alone)",
              "terraform": "terraform, DESIGN §9 anchor (one terraform_data per function" + (
                  f"; no-op plan on a synthesized state above N={args.design_synth_above})"
                  if args.design_synth_above < 1 << 30 else ")"),
              "terraform_graph": "terraform, same graph as flux (function + route per function + api, routes "
                                 "referencing their function" + (f"; no-op plan on a synthesized state above N="
                                                                  f"{args.terraform_max})" if with_tf else ")")}
    print(f"\nseconds; columns: {', '.join(OPS)}")
    for name, rows in results.items():
        if rows:
            print(f"\n{labels[name]}\n{header}")
            for n, vals in rows.items():
                print(_fmt_row(n, vals))
    for anchor in ANCHORS:
        tf_rows = results[anchor]
        for provider in providers:
            common = [n for n in results[provider] if n in tf_rows]
            if common:
                print(f"\n{anchor} / flux-{provider} (> 1: flux faster)\n{header}")
                for n in common:
                    fx, tf = results[provider][n], tf_rows[n]
                    print(_fmt_row(n, {op: tf[op] / fx[op] for op in OPS if op in tf and op in fx}, tf))
    for name, rows in results.items():
        ns = sorted(rows)
        if len(ns) >= 2:
            print(f"\n{labels[name]}: growth factor cost(N1)/cost(N0) (linear: N1/N0)")
            for n0, n1 in itertools.pairwise(ns):
                a, b = rows[n0], rows[n1]
                print(f"  {n0:>5} -> {n1:<5} ({n1 / n0:.0f}x the work): " + "  ".join(
                    f"{op} {b[op] / a[op]:.2f}" for op in OPS if op in a and op in b))
    if not args.no_save:
        RESULTS.mkdir(parents=True, exist_ok=True)
        when = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
        doc = {"bench": "plan_scale", "when": when, "machine": info,
               "parallelism": args.parallelism, "noop_runs": NOOP_RUNS, "terraform_max": args.terraform_max,
               "graph_max": args.graph_max,
               "design_synth_above": args.design_synth_above if args.design_synth_above < 1 << 30 else None,
               "terraform_version": _tf_version(tf_bin) if with_tf else None,
               "results": {k: {str(n): v for n, v in rows.items()} for k, rows in results.items()},
               "runs": [{"when": when, "machine": info, "sizes": sizes}]}
        target = RESULTS / "plan_scale.json"
        if args.merge and target.is_file():
            old = json.loads(target.read_text())
            for name, rows in old.get("results", {}).items():
                for n, vals in rows.items():
                    if n not in {str(m) for m in sizes}:
                        doc["results"].setdefault(name, {})[n] = vals
            doc["runs"] = [*old.get("runs", [{"when": old.get("when"), "machine": old.get("machine"),
                                              "sizes": sorted(int(n) for r in old.get("results", {}).values()
                                                              for n in r)}]),
                           *doc["runs"]]
        target.write_text(json.dumps(doc, indent=2) + "\n")
    sys.stdout.flush()


def _tf_version(tf: str | None) -> str | None:
    if not tf:
        return None
    proc = subprocess.run([tf, "version", "-json"], capture_output=True, text=True, check=False)
    try:
        return str(json.loads(proc.stdout)["terraform_version"])
    except (ValueError, KeyError):
        return None


if __name__ == "__main__":
    main()
