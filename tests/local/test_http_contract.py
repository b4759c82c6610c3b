"""The HTTP contract of DESIGN §7 on the local gateway, for deno AND node functions: returned Responses (status,
headers, text/binary/streamed bodies), path parameters, HEAD, 503 on overflow, CORS, log levels and the access
record. Real host process, real workers, real HTTP on 127.0.0.1 (the host harness of test_host.py)."""

from __future__ import annotations

import http.client
import json
import os
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import urlsplit

import pytest
from test_host import HEADER, ControlPeer, Host, request

from flux_plan.artifacts import ArtifactStore
from flux_plan.digest import source_digest
from flux_plan.model import FunctionSpec

pytestmark = pytest.mark.xdist_group("flux-host")

RESPONSES = HEADER + """
export default defineFunction({ name: "NAME", handler: async ({ input, ctx }) => {
  switch (input.kind) {
    case "created":
      return new Response("<h1>hi</h1>", { status: 201, headers: { "content-type": "text/html", "x-note": "n-" + input.id } });
    case "missing":
      return Response.json({ error: "no such note", id: input.id }, { status: 404 });
    case "binary":
      return new Response(new Uint8Array([0, 1, 2, 254, 255]), { headers: { "content-type": "application/octet-stream" } });
    case "selfcors":
      return new Response("mine", { headers: { "access-control-allow-origin": "*", "x-own": "1" } });
    case "empty":
      return new Response(null, { status: 204, headers: { "x-empty": "yes" } });
    case "cookies": {
      const h = new Headers({ "content-type": "text/plain" });
      h.append("set-cookie", "a=1; Path=/");
      h.append("set-cookie", "b=2; Path=/");
      return new Response("ok", { headers: h });
    }
    case "stream":
      // the second chunk waits for another request ("release"): the first must reach the client before it
      return new Response(new ReadableStream({
        async start(c) {
          c.enqueue(new TextEncoder().encode("first;"));
          await (await fetch(ctx.env.GATE_URL)).text();
          c.enqueue(new TextEncoder().encode("second;"));
          c.close();
        },
      }), { status: 200, headers: { "content-type": "text/plain", "x-streamed": "1" } });
    case "hold":
      await (await fetch(ctx.env.GATE_URL)).text();
      return { held: true };
    case "sleep":
      await new Promise((r) => setTimeout(r, input.ms));
      return { input };
    case "levels":
      ctx.log("plain info", { a: 1 });
      ctx.log.debug("dbg");
      ctx.log.info("inf");
      ctx.log.warn("wrn", 2);
      ctx.log.error("err", { e: 3 });
      return { ok: true };
    default:
      return { input, runtime: typeof Deno === "undefined" ? "node" : "deno" };
  }
} });
"""

MISNAMED = HEADER + 'export default defineFunction({ name: "someone_else", handler: async () => ({ ok: true }) });\n'
THROWS = HEADER + 'throw new Error("cannot start: missing config");\n'


@pytest.fixture(scope="module")
def bundles(tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict[str, str]]:
    root = tmp_path_factory.mktemp("httpproj")
    store = ArtifactStore(root)
    sources = {"rdeno": ("deno", RESPONSES.replace("NAME", "rdeno")), "rnode": ("node", RESPONSES.replace("NAME", "rnode")),
               "misnamed": ("deno", MISNAMED), "throws": ("node", THROWS)}
    out: dict[str, dict[str, str]] = {}
    for name, (runtime, src) in sources.items():
        d = root / "functions" / name
        d.mkdir(parents=True)
        (d / "index.ts").write_text(src)
        rel = f"functions/{name}"
        spec = FunctionSpec(name=name, dir=rel, runtime=runtime, route=f"/{name}",
                            source_digest=source_digest(root, rel, runtime))
        out[name] = {"runtime": runtime, "bundle": str(store.ensure(spec) / "index.mjs"), "digest": spec.source_digest,
                     "artifacts": str(store.dir)}
    return out


class Gate:
    """An HTTP server on 127.0.0.1 whose answer waits until the test opens it: a handler that awaits
    fetch(ctx.env.GATE_URL) is provably still running (no sleeps)."""

    def __init__(self) -> None:
        self.opened = threading.Event()
        gate = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def do_GET(self) -> None:
                gate.opened.wait(30)
                self.send_response(200)
                self.send_header("content-length", "4")
                self.end_headers()
                self.wfile.write(b"open")

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/gate"

    def close(self) -> None:
        self.opened.set()
        self.server.shutdown()
        self.server.server_close()


class GatedHost(Host):
    gate: Gate


@pytest.fixture
def host(bundles: dict[str, dict[str, str]]) -> Iterator[GatedHost]:
    gate = Gate()
    peer = ControlPeer("control-" + os.urandom(8).hex(), {})
    h = GatedHost(next(iter(bundles.values()))["artifacts"], peer)
    h.gate = gate
    try:
        yield h
    finally:
        gate.opened.set()
        h.stop()
        peer.close()
        gate.close()
        assert h.proc.poll() is not None
        assert not h.bad_lines, h.bad_lines


def configure(host: GatedHost, bundles: dict[str, Any], functions: dict[str, dict[str, Any]],
              routes: list[tuple[str, str, str]], cors: dict[str, Any] | None = None) -> None:
    fns = {}
    for name, extra in functions.items():
        b = bundles[name]
        fns[name] = {"runtime": b["runtime"], "bundle": b["bundle"], "digest": b["digest"],
                     "env": {"GATE_URL": host.gate.url},
                     "timeout_ms": 5000, "concurrency": 10, "queue_limit": 50, "idle_ms": 60000, "async": False, **extra}
    doc: dict[str, Any] = {"functions": fns, "routes": [{"method": m, "path": p, "function": f} for m, p, f in routes]}
    if cors is not None:
        doc["cors"] = cors
    host.call("load", doc)


def raw(url: str, method: str = "GET", body: bytes | None = None,
        headers: dict[str, str] | None = None) -> tuple[int, bytes, http.client.HTTPMessage]:
    """One request with http.client: any status, raw bytes, repeated headers kept."""
    u = urlsplit(url)
    conn = http.client.HTTPConnection(u.hostname, u.port, timeout=20)
    try:
        conn.request(method, u.path + (f"?{u.query}" if u.query else ""), body=body, headers=headers or {})
        r = conn.getresponse()
        return r.status, r.read(), r.headers
    finally:
        conn.close()


RUNTIMES = ["rdeno", "rnode"]


@pytest.mark.parametrize("fn", RUNTIMES)
def test_returned_response_status_headers_and_bodies(host: GatedHost, bundles: dict[str, Any], fn: str) -> None:
    configure(host, bundles, {fn: {}}, [("POST", "/r", fn), ("GET", "/r", fn)])
    status, body, headers = raw(f"{host.gw}/r", "POST", json.dumps({"kind": "created", "id": 7}).encode())
    assert status == 201 and body == b"<h1>hi</h1>"
    assert headers["content-type"] == "text/html" and headers["x-note"] == "n-7"
    assert headers["x-flux-request-id"]

    status, body, headers = raw(f"{host.gw}/r?kind=missing&id=9")
    assert status == 404 and json.loads(body) == {"error": "no such note", "id": "9"}  # the handler's own 404
    assert headers["content-type"].startswith("application/json")

    status, body, headers = raw(f"{host.gw}/r?kind=binary")
    assert status == 200 and body == bytes([0, 1, 2, 254, 255])
    assert headers["content-type"] == "application/octet-stream"

    status, body, headers = raw(f"{host.gw}/r?kind=empty")
    assert status == 204 and body == b"" and headers["x-empty"] == "yes"

    status, body, headers = raw(f"{host.gw}/r?kind=cookies")
    assert status == 200 and body == b"ok"
    assert headers.get_all("set-cookie") == ["a=1; Path=/", "b=2; Path=/"]

    # a plain value is still JSON 200
    status, body, headers = raw(f"{host.gw}/r?x=1")
    assert status == 200 and json.loads(body) == {"input": {"x": "1"}, "runtime": fn[1:]}

    # the supervisor's invoke (the async queue) gets the Response too
    doc = host.call("invoke", {"function": fn, "input": {"kind": "created", "id": 1}})
    assert doc["status"] == 201 and doc["body"] == "<h1>hi</h1>" and doc["headers"]["x-note"] == "n-1"


@pytest.mark.parametrize("fn", RUNTIMES)
def test_streamed_body_reaches_the_client_chunk_by_chunk(host: GatedHost, bundles: dict[str, Any], fn: str) -> None:
    configure(host, bundles, {fn: {"max_workers": 1}}, [("GET", "/r", fn)])
    u = urlsplit(host.gw)
    conn = http.client.HTTPConnection(u.hostname, u.port, timeout=20)
    try:
        conn.request("GET", "/r?kind=stream")
        r = conn.getresponse()
        assert r.status == 200 and r.headers["x-streamed"] == "1"
        # the function is still blocked before its second chunk: the first arrives anyway
        assert r.read1(64) == b"first;"
        host.gate.opened.set()
        assert r.read() == b"second;"
    finally:
        conn.close()


@pytest.mark.parametrize("fn", RUNTIMES)
def test_path_parameters_with_query_string_and_body(host: GatedHost, bundles: dict[str, Any], fn: str) -> None:
    configure(host, bundles, {fn: {}}, [
        ("GET", "/notes/{id}", fn), ("POST", "/notes/{id}", fn), ("GET", "/notes/new", fn),
        ("GET", "/files/{path+}", fn), ("DELETE", "/notes/{id}/tags/{tag}", fn)])
    status, body, _ = request(f"{host.gw}/notes/42?x=1", None, "GET")
    assert status == 200 and body["input"] == {"id": "42", "x": "1"}
    # the URL names the resource: a body or query field of the same name does not override it
    status, body, _ = request(f"{host.gw}/notes/42?id=evil", None, "GET")
    assert body["input"] == {"id": "42"}
    status, body, _ = request(f"{host.gw}/notes/a%20b", {"title": "t", "id": "other"})
    assert status == 200 and body["input"] == {"title": "t", "id": "a b"}
    status, body, _ = request(f"{host.gw}/notes/new", None, "GET")
    assert status == 200 and body["input"] == {}  # the literal route wins over the pattern
    status, body, _ = request(f"{host.gw}/files/a/b/c.txt", None, "GET")
    assert status == 200 and body["input"] == {"path": "a/b/c.txt"}
    status, body, _ = request(f"{host.gw}/notes/5/tags/red", None, "DELETE")
    assert status == 200 and body["input"] == {"id": "5", "tag": "red"}
    # a segment parameter never spans segments; wrong method lists what is served there
    status, body, headers = request(f"{host.gw}/notes/1/2", None, "GET")
    assert status == 404
    status, body, headers = request(f"{host.gw}/notes/42", None, "PUT")
    assert status == 405 and headers["allow"] == "GET, HEAD, POST"
    status, body, _ = raw(f"{host.gw}/notes/42", "POST", b"{broken")
    assert status == 400 and "invalid JSON" in json.loads(body)["error"]


@pytest.mark.parametrize("fn", RUNTIMES)
def test_head_on_get_routes_has_headers_and_no_body(host: GatedHost, bundles: dict[str, Any], fn: str) -> None:
    configure(host, bundles, {fn: {}}, [("GET", "/r", fn), ("POST", "/p", fn)])
    status, body, headers = raw(f"{host.gw}/r?kind=created&id=3", "HEAD")
    assert status == 201 and body == b"" and headers["x-note"] == "n-3"
    status, body, headers = raw(f"{host.gw}/r?a=1", "HEAD")
    _, get_body, _ = raw(f"{host.gw}/r?a=1")
    assert status == 200 and body == b"" and int(headers["content-length"]) == len(get_body)
    status, body, headers = raw(f"{host.gw}/p", "HEAD")
    assert status == 405 and headers["allow"] == "POST"


@pytest.mark.parametrize("fn", RUNTIMES)
def test_overflow_is_503_with_retry_after_and_the_worker_keeps_serving(host: GatedHost, bundles: dict[str, Any],
                                                                       fn: str) -> None:
    configure(host, bundles, {fn: {"concurrency": 1, "queue_limit": 0, "max_workers": 1}}, [("GET", "/r", fn)])
    held: dict[str, Any] = {}
    t = threading.Thread(target=lambda: held.update(r=request(f"{host.gw}/r?kind=hold", None, "GET")))
    t.start()
    try:
        host.wait_log(lambda r: r["msg"] == "cold start" and r["function"] == fn, timeout=15)
        status, body, headers = request(f"{host.gw}/r?kind=x", None, "GET")
        assert status == 503 and headers["retry-after"] == "1"
        assert "concurrency limit" in body["error"] and body["request_id"] == headers["x-flux-request-id"]
    finally:
        host.gate.opened.set()
        t.join(20)
    assert held["r"][0] == 200 and held["r"][1] == {"held": True}
    assert not [r for r in host.logs if r["msg"] in ("worker retired after a timeout", "worker crashed")]


def test_queued_time_is_not_charged_to_the_handler_timeout(host: GatedHost, bundles: dict[str, Any]) -> None:
    configure(host, bundles, {"rdeno": {"concurrency": 1, "queue_limit": 4, "max_workers": 1, "timeout_ms": 3000}},
              [("GET", "/r", "rdeno")])
    held: dict[str, Any] = {}
    t1 = threading.Thread(target=lambda: held.update(a=request(f"{host.gw}/r?kind=hold", None, "GET")))
    t1.start()
    host.wait_log(lambda r: r["msg"] == "cold start", timeout=15)
    t2 = threading.Thread(target=lambda: held.update(b=request(f"{host.gw}/r?kind=sleep&ms=1500", None, "GET")))
    t2.start()
    # the second request queues behind the held one for most of a timeout (2.2 of 3 s), then runs 1.5 s: over the
    # timeout counted from arrival, well within it counted from when it reached the worker
    threading.Event().wait(2.2)
    host.gate.opened.set()
    t1.join(20)
    t2.join(20)
    assert held["a"][0] == 200 and held["b"][0] == 200 and held["b"][1]["input"]["ms"] == "1500"
    assert not [r for r in host.logs if r["msg"] in ("worker retired after a timeout", "function timed out")]


@pytest.mark.parametrize("fn", RUNTIMES)
def test_cors_preflight_allowed_refused_and_actual_request(host: GatedHost, bundles: dict[str, Any], fn: str) -> None:
    cors = {"allow_origins": ["http://app.test:3000"], "allow_methods": ["GET", "POST"],
            "allow_headers": ["content-type", "x-api-key"], "expose_headers": ["x-note"], "max_age": 600}
    configure(host, bundles, {fn: {}}, [("POST", "/r", fn), ("GET", "/notes/{id}", fn)], cors=cors)
    pre = {"origin": "http://app.test:3000", "access-control-request-method": "POST",
           "access-control-request-headers": "content-type,x-api-key"}
    status, body, headers = raw(f"{host.gw}/r", "OPTIONS", headers=pre)
    assert status == 204 and body == b""
    assert headers["access-control-allow-origin"] == "http://app.test:3000"
    assert headers["access-control-allow-methods"] == "GET, POST"
    assert headers["access-control-allow-headers"] == "content-type, x-api-key"
    assert headers["access-control-max-age"] == "600" and "Origin" in headers["vary"]

    status, body, headers = raw(f"{host.gw}/notes/1", "OPTIONS", headers={**pre, "origin": "http://evil.test"})
    assert status == 403 and "access-control-allow-origin" not in headers
    assert "http://evil.test" in json.loads(body)["error"]
    status, body, headers = raw(f"{host.gw}/r", "OPTIONS", headers={**pre, "access-control-request-headers": "x-other"})
    assert status == 403 and "x-other" in json.loads(body)["error"] and "access-control-allow-origin" not in headers
    status, body, headers = raw(f"{host.gw}/r", "OPTIONS", headers={**pre, "access-control-request-method": "DELETE"})
    assert status == 403 and "access-control-allow-origin" not in headers

    # actual requests: the allowed origin is echoed with the exposed headers, another origin gets none
    status, body, headers = raw(f"{host.gw}/r", "POST", json.dumps({"kind": "created", "id": 2}).encode(),
                                {"origin": "http://app.test:3000", "content-type": "application/json"})
    assert status == 201 and headers["access-control-allow-origin"] == "http://app.test:3000"
    assert headers["access-control-expose-headers"] == "x-note" and headers["x-note"] == "n-2"
    status, body, headers = raw(f"{host.gw}/notes/5", headers={"origin": "http://evil.test"})
    assert status == 200 and json.loads(body)["input"] == {"id": "5"}
    assert "access-control-allow-origin" not in headers
    # a function's own CORS headers do not override the stage's setting (as on API Gateway)
    status, body, headers = raw(f"{host.gw}/r", "POST", json.dumps({"kind": "selfcors"}).encode(),
                                {"origin": "http://evil.test"})
    assert status == 200 and body == b"mine" and headers["x-own"] == "1"
    assert "access-control-allow-origin" not in headers
    # without a cors setting there is no preflight answer: OPTIONS is an unrouted method
    configure(host, bundles, {fn: {}}, [("POST", "/r", fn)])
    status, body, headers = raw(f"{host.gw}/r", "OPTIONS", headers=pre)
    assert status == 405 and "access-control-allow-origin" not in headers


@pytest.mark.parametrize("fn", RUNTIMES)
def test_log_levels_and_one_access_record_per_request(host: GatedHost, bundles: dict[str, Any], fn: str) -> None:
    configure(host, bundles, {fn: {}}, [("POST", "/r", fn)])
    status, _, headers = request(f"{host.gw}/r", {"kind": "levels"})
    assert status == 200
    rid = headers["x-flux-request-id"]
    host.wait_log(lambda r: r["request_id"] == rid and r["msg"] == "access")
    got = {r["msg"]: r for r in list(host.logs) if r["request_id"] == rid}
    assert got["plain info"]["level"] == "info" and got["plain info"]["data"] == {"a": 1}
    assert (got["dbg"]["level"], got["inf"]["level"], got["wrn"]["level"], got["err"]["level"]) == (
        "debug", "info", "warn", "error")
    assert got["wrn"]["data"] == 2 and got["err"]["data"] == {"e": 3}
    access = got["access"]
    assert access["level"] == "info" and access["function"] == fn
    assert access["data"]["method"] == "POST" and access["data"]["path"] == "/r" and access["data"]["status"] == 200
    assert access["data"]["request_id"] == rid and access["data"]["duration_ms"] >= 0
    status, _, headers = request(f"{host.gw}/nowhere", {})
    rec = host.wait_log(lambda r: r["msg"] == "access" and r["request_id"] == headers["x-flux-request-id"])
    assert rec["function"] is None and rec["data"]["status"] == 404
    assert len([r for r in list(host.logs) if r["msg"] == "access" and r["request_id"] == rid]) == 1


def test_misnamed_or_throwing_module_fails_with_the_load_error(host: GatedHost, bundles: dict[str, Any]) -> None:
    configure(host, bundles, {"misnamed": {}, "throws": {}}, [("POST", "/m", "misnamed"), ("POST", "/t", "throws")])
    status, body, _ = request(f"{host.gw}/m", {})
    assert status == 500 and '"someone_else" differs from flux.json name "misnamed"' in body["error"]
    status, body, _ = request(f"{host.gw}/t", {})
    assert status == 500 and body["error"] == "function throws failed to load (the error is in flux logs)"
    rec = host.wait_log(lambda r: r["msg"] == "function failed to initialize" and r["function"] == "throws")
    assert "cannot start: missing config" in rec["data"]["error"]
    # the load check the provider runs at apply time gets the real error (not the callers' generic one)
    for name, needle in (("throws", "cannot start: missing config"), ("misnamed", '"someone_else" differs')):
        b = bundles[name]
        doc = host.call("check", {"function": name, "config": {
            "runtime": b["runtime"], "bundle": b["bundle"], "digest": b["digest"], "env": {}}})
        assert doc["loaded"] is False and needle in doc["error"]
    b = bundles["rdeno"]
    doc = host.call("check", {"function": "rdeno", "config": {
        "runtime": "deno", "bundle": b["bundle"], "digest": b["digest"], "env": {}}})
    assert doc == {"loaded": True}
