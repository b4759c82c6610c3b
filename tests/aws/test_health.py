"""A new Lambda version gets one health invocation before the `live` alias moves to it (DESIGN §7): a version whose
module fails to load (Lambda answers the invocation with a function error) never takes traffic: its resource fails
with the error, its route is skipped, `live` keeps the previous version, and every other function deploys."""

from __future__ import annotations

import json
from pathlib import Path

from aws_faults import Rule
from aws_lib import FaultyMotoServer, make_project


def test_a_version_failing_its_health_invocation_never_takes_traffic(moto: FaultyMotoServer, tmp_path: Path,
                                                                     pg_url: str) -> None:
    proj = make_project(moto, tmp_path, pg_url)
    lam = proj.client("lambda")
    proj.flux("deploy", "--stage", "prod")
    greet = "flux-todo-prod-greet"
    live_before = lam.get_alias(FunctionName=greet, Name="live")["FunctionVersion"]
    health = [(s, op) for s, op in moto.faults.calls if s == "lambda" and "/invocations" in op]
    assert any(greet in op for _, op in health), "every new version is invoked once before live moves"
    # HEAD is served on GET routes: a HEAD route beside each GET route, to the same integration
    gw = proj.client("apigatewayv2")
    api_id = gw.get_apis()["Items"][0]["ApiId"]
    routes = {r["RouteKey"]: r["Target"] for r in gw.get_routes(ApiId=api_id)["Items"]}
    gets = [k for k in routes if k.startswith("GET ")]
    assert gets and all(routes["HEAD " + k[4:]] == routes[k] for k in gets), routes

    # the next version of greet fails to load on Lambda (the invocation answers with a function error)
    moto.faults.rules[:] = [Rule("function-error", service="lambda", operation=f"/functions/{greet}/invocations")]
    src = proj.root / "functions" / "greet" / "index.ts"
    src.write_text(src.read_text().replace("Hello", "Howdy"))
    (proj.root / "functions" / "slugify_title" / "index.ts").write_text(
        (proj.root / "functions" / "slugify_title" / "index.ts").read_text() + "\n// v2\n")
    out = proj.flux("deploy", "--stage", "prod", check=False)
    assert out.returncode == 1, out.stdout + out.stderr
    text = out.stdout + out.stderr
    assert "failed its health invocation" in text and "boom at init" in text and "Traceback" not in text, text
    assert lam.get_alias(FunctionName=greet, Name="live")["FunctionVersion"] == live_before
    # the independent function went on: its live alias moved to its new version
    slug = "flux-todo-prod-slugify_title"
    versions = [v["Version"] for v in lam.list_versions_by_function(FunctionName=slug)["Versions"] if v["Version"] != "$LATEST"]
    assert lam.get_alias(FunctionName=slug, Name="live")["FunctionVersion"] == max(versions, key=int)
    # the failed function stays planned (nothing recorded as deployed that never took traffic)
    moto.faults.rules[:] = []
    plan = json.loads(proj.flux("plan", "--stage", "prod", "--json").stdout)
    changed = {c["address"] for c in plan["changes"] if c["action"] not in ("noop", "read")}
    assert "function.greet" in changed
    proj.flux("deploy", "--stage", "prod")
    assert lam.get_alias(FunctionName=greet, Name="live")["FunctionVersion"] != live_before
