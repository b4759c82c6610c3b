"""A real browser as the client of the local gateway: headless Chromium (Debian's `chromium`, installed by
.ci/run) loads a page served from ANOTHER 127.0.0.1 origin whose script makes a preflighted JSON POST and a
path-parameter GET to the gateway and reads the status, an exposed custom header and the body — the browser, not
this test, enforces CORS. The page writes what it saw into the DOM, read back with --dump-dom."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import tempfile
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from test_http_contract import ControlPeer, Gate, GatedHost, bundles, configure  # noqa: F401  (fixture)

pytestmark = pytest.mark.xdist_group("flux-host")

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")

PAGE = """<!doctype html><html><head><meta charset="utf-8"><title>flux browser test</title></head>
<body><pre id="out">pending</pre><script>
(async () => {
  const gw = "GATEWAY";
  const out = {};
  try {
    // content-type application/json + a custom header: the browser sends a preflight first
    const r1 = await fetch(gw + "/r", { method: "POST", headers: { "content-type": "application/json", "x-api-key": "k-1" },
                                      body: JSON.stringify({ kind: "created", id: 7 }) });
    out.post = { status: r1.status, note: r1.headers.get("x-note"), rid: r1.headers.get("x-flux-request-id"),
                 body: await r1.text() };
    const r2 = await fetch(gw + "/notes/42?q=from-browser");
    out.get = { status: r2.status, type: r2.headers.get("content-type"), body: await r2.json() };
    // a header the stage does not allow: the preflight is refused and the browser never sends the request
    try {
      await fetch(gw + "/r", { method: "POST", headers: { "content-type": "application/json", "x-other": "1" },
                               body: JSON.stringify({ kind: "created", id: 8 }) });
      out.refused = "sent";
    } catch (e) {
      out.refused = e.name;
    }
  } catch (e) {
    out.error = String(e);
  }
  document.getElementById("out").textContent = "RESULT" + JSON.stringify(out) + "END";
})();
</script></body></html>
"""


class PageServer:
    """The frontend's origin: serves the one page."""

    def __init__(self, html: str) -> None:
        body = html.encode()

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def do_GET(self) -> None:
                self.send_response(200)
                self.send_header("content-type", "text/html; charset=utf-8")
                self.send_header("content-length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.origin = f"http://127.0.0.1:{self.server.server_address[1]}"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def host(bundles: dict[str, dict[str, str]]) -> Iterator[GatedHost]:  # noqa: F811
    gate = Gate()
    gate.opened.set()
    peer = ControlPeer("control-" + os.urandom(8).hex(), {})
    h = GatedHost(next(iter(bundles.values()))["artifacts"], peer)
    h.gate = gate
    try:
        yield h
    finally:
        h.stop()
        peer.close()
        gate.close()


def run_chromium(url: str) -> str:
    assert CHROMIUM
    with tempfile.TemporaryDirectory(prefix="flux-chromium-") as profile:
        proc = subprocess.run(
            [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
             "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-dev-shm-usage",
             f"--user-data-dir={profile}", "--virtual-time-budget=20000", "--dump-dom", url],
            capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc.stdout


@pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (.ci/run installs it with apt as root)")
@pytest.mark.parametrize("fn", ["rdeno", "rnode"])
def test_browser_on_another_origin_calls_the_gateway(host: GatedHost, bundles: dict[str, Any],  # noqa: F811
                                                     fn: str) -> None:
    page = PageServer(PAGE.replace("GATEWAY", host.gw))
    try:
        cors = {"allow_origins": [page.origin], "allow_methods": ["GET", "POST"],
                "allow_headers": ["content-type", "x-api-key"], "expose_headers": ["x-note"], "max_age": 60}
        configure(host, bundles, {fn: {}}, [("POST", "/r", fn), ("GET", "/notes/{id}", fn)], cors=cors)
        dom = run_chromium(page.origin + "/")
    finally:
        page.close()
    m = re.search(r"RESULT(.*?)END", dom, re.S)
    assert m, dom[-2000:]
    seen = json.loads(m.group(1).replace("&quot;", '"').replace("&amp;", "&").replace("&lt;", "<").replace("&gt;", ">"))
    assert "error" not in seen, seen
    assert seen["post"] == {"status": 201, "note": "n-7", "rid": None, "body": "<h1>hi</h1>"}  # rid: not exposed
    assert seen["get"]["status"] == 200 and seen["get"]["type"].startswith("application/json")
    assert seen["get"]["body"]["input"] == {"id": "42", "q": "from-browser"}
    assert seen["refused"] == "TypeError"
    # the gateway saw the browser's preflights (one answered, one refused) and no request with x-other
    access = [r["data"] for r in list(host.logs) if r["msg"] == "access"]
    assert {"OPTIONS"} <= {a["method"] for a in access}
    assert sorted(a["status"] for a in access if a["method"] == "OPTIONS") == [204, 403]
    assert len([a for a in access if a["method"] == "POST"]) == 1
