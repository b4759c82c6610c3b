"""CORS of the stage's HTTP API on AWS (moto's API Gateway v2 with real boto3): the `cors` setting becomes the
API's CorsConfiguration, an edit by hand shows as drift of api.<stage> in the plan and apply repairs it, and
removing the setting removes the configuration."""

from __future__ import annotations

import json
from pathlib import Path

from aws_lib import FaultyMotoServer, make_project

CORS = {"allow_origins": ["https://app.example.com"], "allow_methods": ["GET", "POST"],
        "allow_headers": ["content-type", "x-api-key"], "expose_headers": ["x-note"], "max_age": 600,
        "allow_credentials": True}
LIVE = {"AllowOrigins": ["https://app.example.com"], "AllowMethods": ["GET", "POST"],
        "AllowHeaders": ["content-type", "x-api-key"], "ExposeHeaders": ["x-note"], "MaxAge": 600,
        "AllowCredentials": True}


def test_cors_configuration_created_drifted_reported_repaired(moto: FaultyMotoServer, tmp_path: Path,
                                                              pg_url: str) -> None:
    proj = make_project(moto, tmp_path, pg_url, cors=CORS)
    gw = proj.client("apigatewayv2")
    plan = json.loads(proj.flux("plan", "--stage", "prod", "--json").stdout)
    api = next(c for c in plan["changes"] if c["address"] == "api.prod")
    assert {"path": "cors", "before": None, "after": CORS} in api["diffs"]
    proj.flux("deploy", "--stage", "prod")
    api_id = gw.get_apis()["Items"][0]["ApiId"]
    assert gw.get_api(ApiId=api_id)["CorsConfiguration"] == LIVE
    assert proj.flux("plan", "--stage", "prod", "--detailed-exitcode", check=False).returncode == 0

    # edited by hand in the console: another origin, credentials off
    gw.update_api(ApiId=api_id, CorsConfiguration={**LIVE, "AllowOrigins": ["https://evil.example"],
                                                   "AllowCredentials": False})
    drift = proj.flux("plan", "--stage", "prod", "--json")
    changes = {c["address"]: c for c in json.loads(drift.stdout)["changes"] if c["action"] != "noop"}
    assert set(changes) == {"api.prod"} and changes["api.prod"]["action"] == "update"
    assert any(d["path"].startswith("cors") for d in changes["api.prod"]["diffs"])
    human = proj.flux("plan", "--stage", "prod").stdout
    assert "https://evil.example" in human and "https://app.example.com" in human
    proj.flux("apply", "--stage", "prod", "--auto-approve")
    assert gw.get_api(ApiId=api_id)["CorsConfiguration"] == LIVE
    assert proj.flux("plan", "--stage", "prod", "--detailed-exitcode", check=False).returncode == 0

    # a deleted configuration is drift too; a changed setting updates in place; no setting removes it
    gw.delete_cors_configuration(ApiId=api_id)
    assert proj.flux("plan", "--stage", "prod", "--detailed-exitcode", check=False).returncode == 2
    cfg = json.loads((proj.root / "flux.project.json").read_text())
    cfg["stages"]["prod"]["cors"] = {"allow_origins": ["*"], "max_age": 60}
    (proj.root / "flux.project.json").write_text(json.dumps(cfg))
    proj.flux("apply", "--stage", "prod", "--auto-approve")
    assert gw.get_api(ApiId=api_id)["CorsConfiguration"] == {"AllowOrigins": ["*"], "MaxAge": 60}
    del cfg["stages"]["prod"]["cors"]
    (proj.root / "flux.project.json").write_text(json.dumps(cfg))
    proj.flux("apply", "--stage", "prod", "--auto-approve")
    assert not gw.get_api(ApiId=api_id).get("CorsConfiguration")
    assert proj.flux("plan", "--stage", "prod", "--detailed-exitcode", check=False).returncode == 0
    assert [a["ApiId"] for a in gw.get_apis()["Items"]] == [api_id]  # updated in place, never replaced
