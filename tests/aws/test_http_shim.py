"""The HTTP contract (DESIGN §7) through the Lambda shims, node bundle and Deno layer, run for real under the
Lambda Runtime API harness with API Gateway v2 (payload 2.0) events: returned Responses (status, headers, text,
binary base64, streamed bodies, cookies), path parameters with the query string, HEAD, log levels and the access
record, and a module whose defineFunction name differs from flux.json failing at init."""

from __future__ import annotations

import base64
import io
import json
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from aws_lib import FaultyMotoServer
from flux_aws import packaging
from test_runtime import Runner, _secrets, deno_layer, spawn

from flux_plan.artifacts import ArtifactStore
from flux_plan.project import load_project

__all__ = ["deno_layer"]  # the fixture, shared with test_runtime

HTTP_FN = """
import { defineFunction } from "@flux/functions";

export default defineFunction({
  name: "FNNAME",
  handler: async ({ input, ctx }) => {
    switch (input.kind) {
      case "created":
        return new Response("<h1>hi</h1>", { status: 201, headers: { "content-type": "text/html", "x-note": "n-" + input.id } });
      case "missing":
        return Response.json({ error: "no such note", id: input.id }, { status: 404 });
      case "binary":
        return new Response(new Uint8Array([0, 1, 2, 254, 255]), { headers: { "content-type": "image/png" } });
      case "stream":
        return new Response(new ReadableStream({
          async start(c) {
            for (const part of ["a;", "b;", "c;"]) {
              await new Promise((r) => setTimeout(r, 5));
              c.enqueue(new TextEncoder().encode(part));
            }
            c.close();
          },
        }), { headers: { "content-type": "text/plain" } });
      case "cookies": {
        const h = new Headers({ "content-type": "text/plain" });
        h.append("set-cookie", "a=1; Path=/");
        h.append("set-cookie", "b=2; Path=/");
        return new Response("ok", { headers: h });
      }
      case "levels":
        ctx.log("plain");
        ctx.log.debug("dbg");
        ctx.log.warn("wrn", { w: 1 });
        ctx.log.error("err");
        return { ok: true };
      default:
        return { input };
    }
  },
});
"""


@pytest.fixture(scope="module")
def http_bundles(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("httpshim")
    (root / "flux.project.json").write_text(json.dumps({"name": "probe"}))
    for name, runtime in (("probe_node", "node"), ("probe_deno", "deno")):
        d = root / "functions" / name
        d.mkdir(parents=True)
        (d / "index.ts").write_text(HTTP_FN.replace("FNNAME", name))
        (d / "flux.json").write_text(json.dumps({"name": name, "runtime": runtime}))
    project = load_project(root)
    store = ArtifactStore(root)
    out: dict[str, Path] = {}
    for spec in project.functions:
        art = store.ensure(spec)
        data = packaging.node_zip(art) if spec.runtime == "node" else packaging.deno_zip(art)
        task = root / "task" / spec.name
        task.mkdir(parents=True)
        zipfile.ZipFile(io.BytesIO(data)).extractall(task)
        out[spec.runtime] = task
    return out


@pytest.fixture(params=["node", "deno"])
def shim(request: pytest.FixtureRequest, moto: FaultyMotoServer, http_bundles: dict[str, Path],
         deno_layer: Path, tmp_path: Path) -> Iterator[Runner]:
    _secrets(moto)
    r = spawn(request.param, moto, http_bundles, deno_layer, tmp_path)
    try:
        yield r
    finally:
        r.stop()


def event(method: str, route: str, path: str, *, body: Any = None, query: dict[str, str] | None = None,
          params: dict[str, str] | None = None) -> dict[str, Any]:
    ev: dict[str, Any] = {
        "version": "2.0", "routeKey": f"{method} {route}", "rawPath": path,
        "rawQueryString": "&".join(f"{k}={v}" for k, v in (query or {}).items()),
        "headers": {"content-type": "application/json"},
        "requestContext": {"http": {"method": method, "path": path}, "requestId": "gw-req"},
        "isBase64Encoded": False,
    }
    if body is not None:
        ev["body"] = json.dumps(body)
    if query:
        ev["queryStringParameters"] = query
    if params:
        ev["pathParameters"] = params
    return ev


def test_returned_response_maps_to_the_api_gateway_v2_format(shim: Runner) -> None:
    out = shim.invoke(event("POST", "/r", "/r", body={"kind": "created", "id": 7})).body
    assert out["statusCode"] == 201 and out["body"] == "<h1>hi</h1>" and out["isBase64Encoded"] is False
    assert out["headers"]["content-type"] == "text/html" and out["headers"]["x-note"] == "n-7"
    assert out["headers"]["x-flux-request-id"]

    out = shim.invoke(event("GET", "/r", "/r", query={"kind": "missing", "id": "9"})).body
    assert out["statusCode"] == 404 and json.loads(out["body"]) == {"error": "no such note", "id": "9"}

    out = shim.invoke(event("GET", "/r", "/r", query={"kind": "binary"})).body
    assert out["statusCode"] == 200 and out["isBase64Encoded"] is True
    assert base64.b64decode(out["body"]) == bytes([0, 1, 2, 254, 255])

    out = shim.invoke(event("GET", "/r", "/r", query={"kind": "stream"})).body
    assert out["statusCode"] == 200 and out["body"] == "a;b;c;"  # Lambda's buffered mode: read to the end

    out = shim.invoke(event("GET", "/r", "/r", query={"kind": "cookies"})).body
    assert out["cookies"] == ["a=1; Path=/", "b=2; Path=/"] and "set-cookie" not in out["headers"]

    out = shim.invoke(event("HEAD", "/r", "/r", query={"kind": "created", "id": "1"})).body
    assert out["statusCode"] == 201 and out["body"] == "" and out["headers"]["x-note"] == "n-1"

    out = shim.invoke(event("GET", "/r", "/r", query={"x": "1"})).body  # a plain value stays JSON 200
    assert out["statusCode"] == 200 and json.loads(out["body"]) == {"input": {"x": "1"}}


def test_path_parameters_merge_with_query_and_body(shim: Runner) -> None:
    out = shim.invoke(event("GET", "/notes/{id}", "/notes/42", query={"x": "1", "id": "evil"}, params={"id": "42"})).body
    assert json.loads(out["body"]) == {"input": {"x": "1", "id": "42"}}
    out = shim.invoke(event("POST", "/notes/{id}", "/notes/5", body={"title": "t"}, params={"id": "5"})).body
    assert json.loads(out["body"]) == {"input": {"title": "t", "id": "5"}}
    out = shim.invoke(event("GET", "/files/{path+}", "/files/a/b.txt", params={"path": "a/b.txt"})).body
    assert json.loads(out["body"]) == {"input": {"path": "a/b.txt"}}


def test_log_levels_and_the_access_record(shim: Runner) -> None:
    res = shim.invoke(event("POST", "/r", "/r", body={"kind": "levels"}))
    rid = res.request_id
    access = shim.wait_record(lambda r: r.get("msg") == "access" and r.get("request_id") == rid)
    assert access["level"] == "info"
    assert access["data"]["method"] == "POST" and access["data"]["path"] == "/r" and access["data"]["status"] == 200
    assert access["data"]["request_id"] == rid and access["data"]["duration_ms"] >= 0
    got = {r["msg"]: r for r in shim.records() if r.get("request_id") == rid}
    assert (got["plain"]["level"], got["dbg"]["level"], got["wrn"]["level"], got["err"]["level"]) == (
        "info", "debug", "warn", "error")
    assert got["wrn"]["data"] == {"w": 1}
    assert len([r for r in shim.records() if r.get("msg") == "access" and r.get("request_id") == rid]) == 1


@pytest.mark.parametrize("runtime", ["node", "deno"])
def test_defineFunction_name_differing_from_flux_json_fails_init(runtime: str, moto: FaultyMotoServer,
                                                                 http_bundles: dict[str, Path], deno_layer: Path,
                                                                 tmp_path: Path) -> None:
    _secrets(moto)
    r = spawn(runtime, moto, http_bundles, deno_layer, tmp_path, FLUX_FUNCTION="another_name")
    try:
        r.proc.wait(timeout=30)
        assert len(r.api.init_errors) == 1
        msg = r.api.init_errors[0]["errorMessage"]
        assert f'defineFunction name "probe_{runtime}" differs from flux.json name "another_name"' in msg
    finally:
        r.stop()
