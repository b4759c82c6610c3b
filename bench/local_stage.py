"""Local stage benchmarks through the real local provider (`flux deploy` of a throw-away project), in one run.

Two parts (DESIGN §9), ratios measured side by side in interleaved rounds on this machine:

- db: GET /get_item?id=N (ctx.db.query select by primary key) vs a bare `Deno.serve` + postgres.js doing the
  same query on the SAME embedded PostgreSQL (the stage's own): throughput at 50 connections, p50 at 1 connection.
  Targets: >= 50% of bare throughput, p50 <= 2x.
- memory: 100 warm deno functions; RSS and PSS (/proc/<pid>/smaps_rollup) of the stage's whole process tree
  (daemon, PostgreSQL, host, workers) / 100, what a worker process is made of (anonymous vs file-backed, V8
  heap from Deno.memoryUsage() inside the function) next to a bare idle `deno run`, and cold start (first
  request of each function after deploy -> 200) vs bare `deno run` spawn -> first 200.

The db part uses wrk when it is on PATH (`apt-get install -y wrk`), else the bounded Deno load generator of
bench/gateway.py (it saturates before a bare server does, so its ratios are optimistic: install wrk for figures).
Load is bounded: --rounds x (--duration + --lat-duration) seconds per target; 127.0.0.1 only.

    .venv/bin/python bench/local_stage.py [--only db,memory] [--rounds 3] [--duration 3] [--functions 100]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "bench"))

from gateway import Load, cpu_seconds, free_port  # noqa: E402

FLUX = str(Path(sys.executable).parent / "flux")

ITEMS_SQL = """CREATE TABLE items (
  id bigint PRIMARY KEY,
  title text NOT NULL,
  done boolean NOT NULL DEFAULT false
);
INSERT INTO items (id, title) SELECT g, 'item ' || g FROM generate_series(1, 1000) g;
"""
GET_ITEM_TS = """import { defineFunction } from "@flux/functions";
export default defineFunction({
  name: "get_item",
  handler: async ({ input, ctx }) => {
    const rows = await ctx.db.query({ table: "items", operation: "select", columns: ["id", "title", "done"],
      filters: [{ column: "id", op: "eq", value: Number(input.id) }] });
    return { item: rows[0] ?? null };
  },
});
"""
# The bare baseline: same PostgreSQL (the stage's socket and owner role), postgres.js with the host's pool size and
# prepared statements, same query and the same JSON answer.
BARE_DB_TS = """import postgres from "flux:postgres";
const [port, opts] = [Number(Deno.args[0]), JSON.parse(Deno.args[1])];
// int8 as a JS number, as the host's ctx.db gives it
const int8 = { to: 20, from: [20], serialize: (x) => String(x), parse: (t) => Number(t) };
// the host's postgres.js options (host.ts pgOptions), so that the driver is configured the same on both sides
const sql = postgres({ ...opts, ssl: false, max: 10, sslnegotiation: null, idle_timeout: 60, connect_timeout: 10,
  max_lifetime: null, max_pipeline: 100, backoff: 0.2, keep_alive: 60, prepare: true, debug: false,
  fetch_types: false, publications: "alltables", target_session_attrs: null, onnotice: () => {}, types: { int8 } });
Deno.serve({ hostname: "127.0.0.1", port, onListen() {} }, async (req) => {
  const id = Number(new URL(req.url).searchParams.get("id"));
  const rows = await sql`SELECT "id", "title", "done" FROM "items" WHERE "id" = ${id}`;
  return new Response(JSON.stringify({ item: rows[0] ?? null }), { headers: { "content-type": "application/json" } });
});
"""
HELLO_TS = """import { defineFunction } from "@flux/functions";
export default defineFunction({
  name: "NAME",
  handler: async ({ input }) => {
    // the V8 heap of this worker process, to tell heap from process baseline (needs no permission)
    const mem = typeof Deno !== "undefined" ? Deno.memoryUsage() : null;
    return { message: `Hello, ${input.name}!`, mem };
  },
});
"""
IDLE_TS = "Deno.serve({ hostname: '127.0.0.1', port: Number(Deno.args[0]), onListen() {} }, () => new Response('{}'));\n"


def load_avg() -> str:
    with contextlib.suppress(OSError):
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    return "n/a"


def get(url: str, timeout: float = 30) -> tuple[int, Any]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            return r.status, json.loads(r.read() or b"null")
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read() or b"null")


# -------------------------------------------------------------------------------------------- a real stage
def write_project(root: Path, functions: dict[str, tuple[str, dict[str, Any]]], migrations: dict[str, str],
                  port: int) -> None:
    root.mkdir(parents=True)
    (root / "flux.project.json").write_text(json.dumps(
        {"name": "bench", "stages": {"dev": {"provider": "local", "port": port}}}))
    (root / "schema").mkdir()
    for name, sql in migrations.items():
        (root / "schema" / name).write_text(sql)
    for name, (code, cfg) in functions.items():
        d = root / "functions" / name
        d.mkdir(parents=True)
        (d / "index.ts").write_text(code)
        (d / "flux.json").write_text(json.dumps({"name": name, "runtime": "deno", **cfg}))


def flux(root: Path, *args: str, timeout: float = 900) -> subprocess.CompletedProcess[str]:
    return subprocess.run([FLUX, *args, "-C", str(root)], capture_output=True, text=True, timeout=timeout,
                          cwd=root)


@contextlib.contextmanager
def stage(root: Path) -> Iterator[dict[str, Any]]:
    """`flux deploy`, yield daemon.json (+ deploy seconds); `flux destroy` (and kill what is left) on the way out."""
    t0 = time.perf_counter()
    info: dict[str, Any] = {}
    try:
        r = flux(root, "deploy")
        if r.returncode != 0:
            raise RuntimeError(f"flux deploy failed ({r.returncode}): {r.stdout[-2000:]} {r.stderr[-2000:]}")
        info = json.loads((root / ".flux" / "dev" / "daemon.json").read_text())
        info["deploy_s"] = time.perf_counter() - t0
        yield info
    finally:
        flux(root, "destroy", "--auto-approve", timeout=300)
        for key in ("pid", "host_pid", "pg_pid"):  # a failed destroy must not leave daemons behind
            pid = info.get(key)
            if pid and Path(f"/proc/{pid}").exists():
                with contextlib.suppress(OSError):
                    os.kill(pid, 9)


def own_cpu_seconds(pid: int) -> float:
    """CPU time (user + system, all threads) of one process, without its children."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return float("nan")
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


# -------------------------------------------------------------------------------------------- load
def run_load(url: str, conns: int, secs: int, fallback: Load | None) -> dict[str, float]:
    """GET load on `url`: wrk when on PATH, else gateway.py's Deno load generator (what the project installs)."""
    if fallback is not None:
        return fallback.run(url, conns, secs, body=None)
    out_text = subprocess.run(["wrk", "-t1" if conns < 4 else "-t2", f"-c{conns}", f"-d{secs}s", "--latency", url],
                              capture_output=True, text=True, check=True, timeout=secs + 30).stdout
    non2xx = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out_text)
    if non2xx:
        raise RuntimeError(f"{url}: {non2xx.group(1)} non-2xx responses under load")
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out_text).group(1))  # type: ignore[union-attr]
    m = re.search(r"^\s+50%\s+([\d.]+)(us|ms|s)\s*$", out_text, re.M)
    p50 = float(m.group(1)) * {"us": 1, "ms": 1000, "s": 1_000_000}[m.group(2)] if m else float("nan")
    return {"rps": rps, "p50_us": p50}


def load_name() -> str:
    return "wrk" if shutil.which("wrk") else "the shipped Deno load generator (optimistic ratios: install wrk)"


def bench_db(args: argparse.Namespace, work: Path) -> None:
    fallback = None if shutil.which("wrk") else Load(work, "deno")
    root = work / "db"
    write_project(root, {"get_item": (GET_ITEM_TS, {"route": "/get_item", "method": "GET"})},
                  {"001_items.sql": ITEMS_SQL}, free_port())
    with stage(root) as info:
        from urllib.parse import unquote, urlsplit

        from flux_local.runtime import deno_bin, postgres_js_dir

        u = urlsplit(info["db_uri"])
        sock = dict(p.split("=", 1) for p in u.query.split("&") if "=" in p)["host"]
        opts = {"host": unquote(sock), "port": u.port or 5432, "user": unquote(u.username or ""),
                "pass": unquote(u.password or ""), "database": u.path.lstrip("/") or "postgres"}
        pg = postgres_js_dir()
        assert pg is not None, "npm postgres missing: run ./scripts/setup.sh"
        imap = {"imports": {"flux:postgres": (pg / "src" / "index.js").as_uri(),
                            **{b: f"node:{b}" for b in ("crypto", "fs", "net", "os", "perf_hooks", "stream", "tls")}}}
        (work / "bare_db.ts").write_text(BARE_DB_TS)
        (work / "bare_db_map.json").write_text(json.dumps(imap))
        port = free_port()
        bare = subprocess.Popen([deno_bin(), "run", "--no-config", "--no-lock", f"--import-map={work / 'bare_db_map.json'}",
                                 "--allow-net", f"--allow-read={pg},{opts['host']}",
                                 f"--allow-write={opts['host']}", "--allow-env", "--allow-sys",
                                 str(work / "bare_db.ts"), str(port), json.dumps(opts)])
        try:
            targets = {"bare": f"http://127.0.0.1:{port}/?id=500",
                       "flux": f"http://127.0.0.1:{info['gateway_port']}/get_item?id=500"}
            deadline = time.time() + 30
            for name, url in targets.items():
                last: Any = None
                while True:  # both answer the same row before any load
                    try:
                        last = get(url, timeout=5)
                        if last[0] == 200 and last[1]["item"]["id"] == 500:
                            break
                    except (OSError, ValueError, KeyError, TypeError) as exc:
                        last = exc
                    if time.time() > deadline:
                        raise RuntimeError(f"{name} at {url} did not answer the row (last: {last!r})")
                    time.sleep(0.05)
                run_load(url, args.connections, 2, fallback)  # JIT, pools, prepared statements
            # CPU of the serving side: the bare process vs the host and its worker processes (PostgreSQL does the
            # same work for both); steadier than req/s when other tenants share the cores
            pids = {"bare": bare.pid, "flux": info["host_pid"]}
            rounds: dict[str, list[dict[str, float]]] = {n: [] for n in targets}
            for _ in range(args.rounds):
                for name, url in targets.items():
                    c0, s0 = cpu_seconds(pids[name]), own_cpu_seconds(info["pid"])
                    thr = run_load(url, args.connections, args.duration, fallback)
                    c1, s1 = cpu_seconds(pids[name]), own_cpu_seconds(info["pid"])
                    lat = run_load(url, 1, args.lat_duration, fallback)
                    n = thr["rps"] * args.duration
                    cpu = (c1 - c0) / n * 1e6 if c0 is not None and c1 is not None and n > 0 else float("nan")
                    # the supervisor (it stores the host's access record of every request): flux only
                    sup = (s1 - s0) / n * 1e6 if name == "flux" and n > 0 else float("nan")
                    rounds[name].append({"rps": thr["rps"], "p50_us": lat["p50_us"], "cpu_us": cpu, "sup_us": sup})
        finally:
            bare.terminate()
            bare.wait(timeout=10)
    pairs = list(zip(rounds["bare"], rounds["flux"], strict=True))
    thr_r = statistics.median(f["rps"] / b["rps"] for b, f in pairs)
    p50_r = statistics.median(f["p50_us"] / b["p50_us"] for b, f in pairs)
    cpu_r = statistics.median(f["cpu_us"] / b["cpu_us"] for b, f in pairs)
    med = {n: {k: statistics.median(r[k] for r in rs) for k in ("rps", "p50_us", "cpu_us", "sup_us")}
           for n, rs in rounds.items()}
    print(f"db: GET by primary key, {load_name()}: {args.connections} connections x {args.duration}s and 1 x {args.lat_duration}s, "
          f"{args.rounds} interleaved rounds (medians); load average {load_avg()}")
    for label, n in (("bare Deno.serve + postgres.js", "bare"), ("flux GET /get_item (ctx.db)", "flux")):
        print(f"  {label:<30} {med[n]['rps']:>7.0f} req/s  p50 {med[n]['p50_us']:>6.0f} us  "
              f"cpu {med[n]['cpu_us']:>5.0f} us/req")
    print(f"  the supervisor's own CPU (the daemon storing every access record): {med['flux']['sup_us']:.1f} us/req")
    print(f"    -> throughput {100 * thr_r:.0f}% of bare [{'ok' if thr_r >= 0.5 else 'MISSED'} >= 50%]  "
          f"p50 {p50_r:.2f}x [{'ok' if p50_r <= 2 else 'MISSED'} <= 2x]  cpu/request {cpu_r:.2f}x")
    print("       per round: throughput " + ", ".join(f"{100 * f['rps'] / b['rps']:.0f}%" for b, f in pairs)
          + "; p50 " + ", ".join(f"{f['p50_us'] / b['p50_us']:.2f}x" for b, f in pairs))


# -------------------------------------------------------------------------------------------- memory
def smaps(pid: int) -> dict[str, int]:
    """kB fields of /proc/<pid>/smaps_rollup (Rss, Pss, Pss_Anon, Pss_File, ...); {} when the process is gone."""
    out: dict[str, int] = {}
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines()[1:]:
            parts = line.split()
            if len(parts) >= 2 and parts[1].isdigit():
                out[parts[0].rstrip(":")] = int(parts[1])
    return out


def process_tree(roots: list[int]) -> list[int]:
    children: dict[int, list[int]] = {}
    for p in Path("/proc").iterdir():
        if p.name.isdigit():
            with contextlib.suppress(OSError, IndexError, ValueError):
                ppid = int((p / "stat").read_text().rsplit(")", 1)[1].split()[1])
                children.setdefault(ppid, []).append(int(p.name))
    seen: list[int] = []
    todo = [r for r in roots if r]
    while todo:
        pid = todo.pop()
        if pid not in seen and Path(f"/proc/{pid}").exists():
            seen.append(pid)
            todo.extend(children.get(pid, []))
    return seen


def kind(pid: int) -> str:
    with contextlib.suppress(OSError):
        cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        if "node_host.mjs" in cmd:
            return "deno worker" if "deno" in cmd.split(" ", 1)[0] else "node worker"
        if "host.ts" in cmd:
            return "deno host"
        if "postgres" in cmd:
            return "postgresql"
        if "flux_local" in cmd or "python" in cmd:
            return "python daemon"
        return cmd.split(" ", 1)[0].rsplit("/", 1)[-1] or "?"
    return "gone"


def tree_memory(info: dict[str, Any]) -> dict[str, dict[str, float]]:
    by: dict[str, dict[str, float]] = {}
    for pid in process_tree([info["pid"], info.get("pg_pid") or 0]):
        s = smaps(pid)
        k = by.setdefault(kind(pid), {"n": 0, "Rss": 0, "Pss": 0, "Pss_Anon": 0, "Pss_File": 0})
        k["n"] += 1
        for f in ("Rss", "Pss", "Pss_Anon", "Pss_File"):
            k[f] += s.get(f, 0)
    return by


def bench_memory(args: argparse.Namespace, work: Path) -> None:
    from flux_local.runtime import deno_bin

    n = args.functions
    root = work / "mem"
    names = [f"hello{i:03d}" for i in range(n)]
    write_project(root, {nm: (HELLO_TS.replace("NAME", nm), {"route": f"/{nm}", "method": "GET"}) for nm in names},
                  {}, free_port())
    # bare: a `deno run` Deno.serve spawned -> first 200 (what a cold function is measured against), and its memory
    (work / "idle.ts").write_text(IDLE_TS)
    bare_cold, bare_mem = [], []
    for _ in range(5):
        port = free_port()
        t0 = time.perf_counter()
        p = subprocess.Popen([deno_bin(), "run", "--allow-net=127.0.0.1", str(work / "idle.ts"), str(port)])
        try:
            while True:
                with contextlib.suppress(OSError):
                    if get(f"http://127.0.0.1:{port}/", timeout=2)[0] == 200:
                        break
                if time.perf_counter() - t0 > 30:
                    raise RuntimeError("bare deno did not answer within 30 s")
                time.sleep(0.001)
            bare_cold.append(time.perf_counter() - t0)
            bare_mem.append(smaps(p.pid))
        finally:
            p.terminate()
            p.wait(timeout=10)
    with stage(root) as info:
        base = tree_memory(info)
        gw = f"http://127.0.0.1:{info['gateway_port']}"
        cold, heaps = [], []
        for nm in names:  # first request of every function after the deploy: a new worker process each
            t0 = time.perf_counter()
            status, doc = get(f"{gw}/{nm}?name=x")
            cold.append(time.perf_counter() - t0)
            if status != 200:
                raise RuntimeError(f"{nm}: {status} {doc}")
        for nm in names:  # all warm at once (second touch, so none idled out while the others started)
            status, doc = get(f"{gw}/{nm}?name=x")
            if status == 200 and doc.get("mem"):
                heaps.append(doc["mem"])
        warm = tree_memory(info)
        la = load_avg()
        deploy_s = info["deploy_s"]
    total = {f: sum(v[f] for v in warm.values()) for f in ("Rss", "Pss")}
    total0 = {f: sum(v[f] for v in base.values()) for f in ("Rss", "Pss")}
    w = warm.get("deno worker", {"n": 0, "Rss": 0, "Pss": 0, "Pss_Anon": 0, "Pss_File": 0})
    mb = 1024
    print(f"memory: {n} deno functions, `flux deploy` {deploy_s:.1f} s; load average {la}")
    print(f"  stage process tree with {n} warm functions: RSS {total['Rss'] / mb:.0f} MB, PSS {total['Pss'] / mb:.0f} MB"
          f"  (before any request: RSS {total0['Rss'] / mb:.0f} MB, PSS {total0['Pss'] / mb:.0f} MB)")
    print(f"  -> per warm function: RSS {total['Rss'] / n / mb:.1f} MB, PSS {total['Pss'] / n / mb:.1f} MB "
          f"(whole tree / {n}); added by warming: RSS {(total['Rss'] - total0['Rss']) / n / mb:.1f} MB, "
          f"PSS {(total['Pss'] - total0['Pss']) / n / mb:.1f} MB per function")
    for k, v in sorted(warm.items(), key=lambda kv: -kv[1]["Pss"]):
        print(f"     {k:<14} x{v['n']:<4.0f} RSS {v['Rss'] / mb:>7.1f} MB  PSS {v['Pss'] / mb:>7.1f} MB "
              f"(anon {v['Pss_Anon'] / mb:.1f}, file {v['Pss_File'] / mb:.1f})")
    if w["n"]:
        per = {f: w[f] / w["n"] / mb for f in ("Rss", "Pss", "Pss_Anon", "Pss_File")}
        b = {f: statistics.median(m.get(f, 0) for m in bare_mem) / mb for f in ("Rss", "Pss", "Pss_Anon")}
        print(f"  one deno worker process: RSS {per['Rss']:.1f} MB, PSS {per['Pss']:.1f} MB = anonymous "
              f"{per['Pss_Anon']:.1f} + file-backed (deno binary, shared) {per['Pss_File']:.1f}; bare idle "
              f"`deno run` Deno.serve: RSS {b['Rss']:.1f} MB, anonymous {b['Pss_Anon']:.1f} MB -> worker/bare RSS "
              f"{per['Rss'] / b['Rss']:.2f}x")
    if heaps:
        hu = statistics.median(h["heapUsed"] for h in heaps) / 2**20
        ht = statistics.median(h["heapTotal"] for h in heaps) / 2**20
        rss = statistics.median(h["rss"] for h in heaps) / 2**20
        print(f"  inside a worker (Deno.memoryUsage, median): V8 heap used {hu:.1f} MB of {ht:.1f} MB reserved, "
              f"process RSS {rss:.1f} MB -> V8 heap is {100 * ht / rss:.0f}% of it; the rest is the deno process "
              f"baseline (runtime, snapshot, code, malloc)")
    bc, fc = statistics.median(bare_cold), statistics.median(cold)
    fc200 = sorted(cold)
    print(f"  cold start: bare `deno run` spawn -> first 200 {bc * 1000:.0f} ms (median of 5); flux first request "
          f"after deploy -> 200 {fc * 1000:.0f} ms (median of {n}, p90 {fc200[int(0.9 * len(fc200))] * 1000:.0f} ms)"
          f" -> {fc / bc:.2f}x [{'ok' if fc / bc <= 2 else 'MISSED'} <= 2x]")


PARTS = ("db", "memory")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--only", default=",".join(PARTS), help=f"comma-separated subset of {','.join(PARTS)}")
    ap.add_argument("--rounds", type=int, default=3, help="interleaved rounds of the db part (medians)")
    ap.add_argument("--duration", type=int, default=3, help="seconds of each run at --connections")
    ap.add_argument("--lat-duration", type=int, default=2, help="seconds of each 1-connection run")
    ap.add_argument("--connections", type=int, default=50)
    ap.add_argument("--functions", type=int, default=100, help="warm functions of the memory part")
    args = ap.parse_args()
    parts = {p.strip() for p in args.only.split(",") if p.strip()}
    if parts - set(PARTS):
        ap.error(f"--only: unknown part(s) {', '.join(sorted(parts - set(PARTS)))}; choose from {', '.join(PARTS)}")
    if args.functions < 1 or args.rounds < 1:
        ap.error("--functions and --rounds must be at least 1")
    with tempfile.TemporaryDirectory(prefix="flux-bench-stage-") as tmp:
        if "db" in parts:
            bench_db(args, Path(tmp))
        if "memory" in parts:
            bench_memory(args, Path(tmp))


if __name__ == "__main__":
    main()
