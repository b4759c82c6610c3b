"""The query compiler (flux_plan/runtime/query.mjs, what ctx.db.query runs on Lambda and in the local host) gives
exactly the statements and errors of the shared vectors, under node and deno (tests/local/test_query.py runs them
on PostgreSQL)."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from flux_plan.runtime import shared_runtime_dir

RUNTIME_DIR = shared_runtime_dir()
VECTORS = Path(__file__).resolve().parents[1] / "fixtures" / "query_vectors.json"
RUNNER = """
import { compileQuery } from "QUERY";
const doc = JSON.parse(await (globalThis.Deno ? Deno.readTextFile(process_argv()) : (await import("node:fs/promises")).readFile(process_argv(), "utf8")));
function process_argv() { return globalThis.Deno ? Deno.args[0] : process.argv[2]; }
const out = doc.cases.map((c) => {
  try { const [sql, args] = compileQuery(c.params, doc.schema); return { sql, args }; }
  catch (e) { return { error: e.message, type: e.name }; }
});
console.log(JSON.stringify(out));
"""


def _expected(case: dict) -> dict:
    return {"error": case["error"]} if "error" in case else {"sql": case["sql"], "args": case["args"]}


@pytest.mark.parametrize("runtime", ["node", "deno"])
def test_js_port_matches_the_vectors(runtime: str, tmp_path: Path) -> None:
    import deno

    doc = json.loads(VECTORS.read_text())
    script = tmp_path / "run.mjs"
    script.write_text(RUNNER.replace("QUERY", (RUNTIME_DIR / "query.mjs").as_uri()))
    cmd = (["node", str(script), str(VECTORS)] if runtime == "node" else
           [deno.find_deno_bin(), "run", "--quiet", "--no-config", f"--allow-read={RUNTIME_DIR},{VECTORS},{tmp_path}",
            str(script), str(VECTORS)])
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=True)
    results = json.loads(proc.stdout)
    assert len(results) == len(doc["cases"]) >= 40
    for case, got in zip(doc["cases"], results, strict=True):
        if "error" in case:
            assert got == {"error": case["error"], "type": "QueryError"}, case["name"]
        else:
            assert got == _expected(case), case["name"]
