"""The HTTP contract end to end through the real CLI on the local provider: a stage's `cors` setting deployed,
shown in the plan, drifted by hand and repaired; Response + path-parameter functions; access records and levels
in `flux logs`; `flux logs` of an unknown function; a module that throws on load or is misnamed failing its
resource at apply time while the previous version keeps serving."""

from __future__ import annotations

import json
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from local_lib import Project
from test_provider_e2e import add_function, http, logs, wait_for

pytestmark = [pytest.mark.slow]

NOTE = """import { defineFunction } from "@flux/functions";
export default defineFunction({ name: "get_note", handler: async ({ input, ctx }) => {
  if (input.id === "0") {
    ctx.log.warn("no such note", { id: input.id });
    return Response.json({ error: "no such note" }, { status: 404 });
  }
  ctx.log.debug("found", { id: input.id });
  return new Response(JSON.stringify({ id: input.id, q: input.q ?? null }),
                      { status: 200, headers: { "content-type": "application/json", "x-note": "n-" + input.id } });
} });
"""
CORS = {"allow_origins": ["http://app.test:5173"], "allow_methods": ["GET", "POST"],
        "allow_headers": ["content-type"], "expose_headers": ["x-note"], "max_age": 300}


def set_cors(todo: Project, cors: dict[str, Any] | None) -> None:
    path = todo.root / "flux.project.json"
    cfg = json.loads(path.read_text())
    if cors is None:
        cfg["stages"]["dev"].pop("cors", None)
    else:
        cfg["stages"]["dev"]["cors"] = cors
    path.write_text(json.dumps(cfg, indent=2))


def preflight(port: int, origin: str) -> tuple[int, dict[str, str]]:
    req = urllib.request.Request(f"http://127.0.0.1:{port}/notes/1", method="OPTIONS", headers={
        "Origin": origin, "Access-Control-Request-Method": "GET"})
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status, {k.lower(): v for k, v in r.headers.items()}
    except urllib.error.HTTPError as e:
        return e.code, {k.lower(): v for k, v in e.headers.items()}


def daemon_put(todo: Project, path: str, body: Any) -> None:
    """An edit by hand behind Flux's back: the daemon's own admin API with its token (daemon.json)."""
    info = todo.daemon_info()
    assert info
    req = urllib.request.Request(f"http://127.0.0.1:{info['control_port']}{path}", data=json.dumps(body).encode(),
                                 method="PUT", headers={"Authorization": f"Bearer {info['token']}",
                                                        "Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=30) as r:
        assert r.status == 200


def test_cors_path_params_logs_and_load_checks(todo: Project) -> None:
    add_function(todo, "get_note", NOTE, route="/notes/{id}", method="GET")
    set_cors(todo, CORS)
    plan = todo.flux("plan").stdout
    assert "cors" in plan and "http://app.test:5173" in plan
    todo.flux("deploy")
    port = todo.port

    status, body, headers = http(port, "GET", "/notes/42?q=x")
    assert (status, body) == (200, {"id": "42", "q": "x"}) and headers["x-note"] == "n-42"
    rid = headers["x-flux-request-id"]
    status, body, _ = http(port, "GET", "/notes/0")
    assert (status, body) == (404, {"error": "no such note"})
    status, headers = preflight(port, "http://app.test:5173")
    assert status == 204 and headers["access-control-allow-origin"] == "http://app.test:5173"
    status, headers = preflight(port, "http://evil.test")
    assert status == 403 and "access-control-allow-origin" not in headers

    # the access record and the levels in `flux logs`
    access = wait_for(lambda: [r for r in logs(todo, "get_note", "--request-id", rid) if r["msg"] == "access"])
    assert access[0]["data"]["method"] == "GET" and access[0]["data"]["path"] == "/notes/42"
    assert access[0]["data"]["status"] == 200 and access[0]["data"]["duration_ms"] >= 0
    assert [r["level"] for r in logs(todo, "get_note") if r["msg"] == "no such note"] == ["warn"]
    assert not [r for r in logs(todo, "get_note") if r["msg"] == "found"]  # debug is below the default level
    assert [r["msg"] for r in logs(todo, "get_note", "--level", "debug", "--request-id", rid)
            if r["msg"] == "found"] == ["found"]
    bad = todo.flux("logs", "get_nte", check=False)
    assert bad.returncode == 1 and "unknown function 'get_nte'" in bad.stdout + bad.stderr
    assert "get_note" in bad.stdout + bad.stderr and "greet" in bad.stdout + bad.stderr
    assert "Traceback" not in bad.stdout + bad.stderr
    assert todo.flux("plan", "--detailed-exitcode", check=False).returncode == 0

    # drift by hand: the gateway's CORS changed behind Flux's back -> the plan shows it, apply repairs it
    daemon_put(todo, "/admin/cors", {"cors": {"allow_origins": ["http://evil.test"]}})
    assert preflight(port, "http://evil.test")[0] == 204
    drift = todo.flux("plan", "--detailed-exitcode", check=False)
    assert drift.returncode == 2 and "api.dev" in drift.stdout and "http://evil.test" in drift.stdout
    todo.flux("deploy")
    assert preflight(port, "http://evil.test")[0] == 403
    assert preflight(port, "http://app.test:5173")[0] == 204

    # a module that throws on load fails its resource at apply time; the old version keeps serving
    (todo.root / "functions" / "get_note" / "index.ts").write_text(
        'import { defineFunction } from "@flux/functions";\nthrow new Error("config missing at load");\n'
        'export default defineFunction({ name: "get_note", handler: async () => ({}) });\n')
    failed = todo.flux("deploy", check=False)
    out = failed.stdout + failed.stderr
    assert failed.returncode == 1 and "config missing at load" in out and "functions/get_note/index.ts" in out
    assert "Traceback" not in out
    assert http(port, "GET", "/notes/7")[1] == {"id": "7", "q": None}
    assert todo.flux("plan", "--detailed-exitcode", check=False).returncode == 2  # still to do

    # a defineFunction name differing from flux.json (computed, so the scan cannot see it) fails the same way
    (todo.root / "functions" / "get_note" / "index.ts").write_text(
        'import { defineFunction } from "@flux/functions";\nconst n = ["get", "other"].join("_");\n'
        'export default defineFunction({ name: n, handler: async () => ({}) });\n')
    failed = todo.flux("deploy", check=False)
    out = failed.stdout + failed.stderr
    assert failed.returncode == 1 and 'defineFunction name "get_other" differs from flux.json name "get_note"' in out
    assert http(port, "GET", "/notes/8")[1] == {"id": "8", "q": None}

    # removing the cors setting removes it from the gateway
    (todo.root / "functions" / "get_note" / "index.ts").write_text(NOTE)
    set_cors(todo, None)
    todo.flux("deploy")
    assert preflight(port, "http://app.test:5173")[0] == 405
    assert todo.flux("plan", "--detailed-exitcode", check=False).returncode == 0


def test_flux_invoke_shows_a_returned_response(todo: Project, tmp_path: Path) -> None:
    add_function(todo, "get_note", NOTE, route="/notes/{id}", method="GET")
    todo.flux("deploy")
    doc = json.loads(todo.flux("invoke", "get_note", "--payload", '{"id": "5"}', "--json").stdout)
    assert doc["status"] == 200 and doc["body"] == {"id": "5", "q": None}
    missing = todo.flux("invoke", "get_note", "--payload", '{"id": "0"}', check=False)
    assert missing.returncode == 1 and "status 404" in missing.stdout and "no such note" in missing.stdout
    no_id = todo.flux("invoke", "get_note", "--payload", "{}", check=False)
    assert no_id.returncode == 1 and "route /notes/{id} needs a value for {id}" in no_id.stdout + no_id.stderr
    assert "Traceback" not in no_id.stdout + no_id.stderr
