"""The SDK's types describe the HTTP contract: `deno check` (real deno) accepts a function using ctx.log levels,
path parameters in input and a returned Response, and rejects a log level that does not exist."""

from __future__ import annotations

import subprocess
from pathlib import Path

from flux_plan.paths import SDK_DIR

GOOD = """import { defineFunction, type FluxContext, type HandlerResult, type Logger } from "SDK";

export default defineFunction<{ id: string; q?: string }>({
  name: "get_note",
  handler: async ({ input, ctx }): Promise<HandlerResult> => {
    ctx.log("plain", { id: input.id });
    ctx.log.debug("d");
    ctx.log.info("i");
    ctx.log.warn("w", 1);
    ctx.log.error("e", new Error("x"));
    const log: Logger = ctx.log;
    log.info("again");
    const c: FluxContext = ctx;
    if (input.id === "0") return Response.json({ error: "no such note" }, { status: 404 });
    if (input.q) return new Response(new ReadableStream<Uint8Array>(), { headers: { "x-id": c.requestId } });
    return { id: input.id };
  },
});
"""
BAD = GOOD.replace('ctx.log.debug("d");', 'ctx.log.verbose("d");')


def _check(tmp_path: Path, src: str) -> subprocess.CompletedProcess[str]:
    import deno

    f = tmp_path / "fn.ts"
    f.write_text(src.replace('"SDK"', repr(str(SDK_DIR / "functions" / "index.ts")).replace("'", '"')))
    return subprocess.run([deno.find_deno_bin(), "check", "--no-config", "--no-lock", str(f)], capture_output=True,
                          text=True, timeout=120, check=False)


def test_sdk_types_cover_log_levels_and_responses(tmp_path: Path) -> None:
    ok = _check(tmp_path, GOOD)
    assert ok.returncode == 0, ok.stderr
    bad = _check(tmp_path, BAD)
    assert bad.returncode != 0 and "verbose" in bad.stderr
