"""The Deno runtime host: real deno/node workers behind a real gateway on 127.0.0.1.

The test is the supervisor: it speaks the host's stdin/stdout channel (flux_local.channel, as the daemon does) and
records the host's requests (enqueue) in a ControlPeer; the daemon's side is exercised end-to-end by the provider
tests. Secrets and ctx.db are answered inside the host.
"""

from __future__ import annotations

import concurrent.futures
import json
import os
import shutil
import subprocess
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from flux_local.channel import HostChannel
from flux_local.runtime import deno_bin, host_command

from flux_plan.artifacts import ArtifactStore
from flux_plan.digest import source_digest
from flux_plan.model import FunctionSpec

pytestmark = pytest.mark.xdist_group("flux-host")

HEADER = 'import { defineFunction } from "@flux/functions";\n'


def fn(name: str, body: str) -> str:
    return HEADER + f'export default defineFunction({{ name: "{name}", handler: async ({{ input, ctx }}) => {{\n{body}\n}} }});\n'


SOURCES: dict[str, tuple[str, str]] = {
    "hello": ("deno", fn("hello", """
      ctx.log("hello called", { name: input.name });
      console.warn("careful", 42);
      return { message: `Hello, ${input.name}!`, greeting: ctx.env.GREETING ?? null, frozen: Object.isFrozen(ctx.env) };
    """)),
    "echo": ("deno", fn("echo", "return { input };")),
    "logmany": ("deno", fn("logmany", """
      await new Promise((r) => setTimeout(r, 20 + Math.random() * 30));
      console.log("tick", input.n);
      ctx.log("tock", { n: input.n });
      return { n: input.n, rid: ctx.requestId };
    """)),
    "secret": ("deno", fn("secret", "return { value: await ctx.secrets.get(input.key) };")),
    "db": ("deno", fn("db", 'return { rows: await ctx.db.query({ table: "todos", operation: "select", limit: 1 }) };')),
    "boom": ("deno", fn("boom", 'throw new Error("kaput: " + input.why);')),
    "crash": ("deno", fn("crash", """
      setTimeout(() => { throw new Error("worker-killing error"); }, 0);
      await new Promise((r) => setTimeout(r, 2000));
      return { survived: true };
    """)),
    "spin": ("deno", fn("spin", "if (input.spin) { while (true) {} } return { ok: true };")),
    "slow": ("deno", fn("slow", "await new Promise((r) => setTimeout(r, input.ms ?? 300)); return { slept: input.ms ?? 300 };")),
    "sandbox": ("deno", fn("sandbox", """
      const out = {};
      try { await Deno.readTextFile(input.path); out.read = "allowed"; } catch (e) { out.read = e.name; }
      try { Deno.env.get("HOME"); out.env = "allowed"; } catch (e) { out.env = e.name; }
      try { await Deno.writeTextFile(input.path + ".w", "x"); out.write = "allowed"; } catch (e) { out.write = e.name; }
      try { new Deno.Command("true").outputSync(); out.run = "allowed"; } catch (e) { out.run = e.name; }
      return out;
    """)),
    "noexport": ("deno", "export default { name: 'noexport', handler: async () => ({ ok: true }) };\n"),
    "version": ("deno", fn("version", 'await new Promise((r) => setTimeout(r, 2)); return { v: "A" };')),
    "asyncjob": ("deno", fn("asyncjob", "return { done: true };")),
    "nodehello": ("node", fn("nodehello", """
      ctx.log("node says", { name: input.name });
      console.log("plain console");
      return { message: `Hi ${input.name}`, runtime: process.version, greeting: ctx.env.GREETING ?? null,
               home: process.env.HOME ?? null, secret: input.key ? await ctx.secrets.get(input.key) : null };
    """)),
    "nodesandbox": ("node", HEADER + 'import { readFileSync } from "node:fs";\n' + """
export default defineFunction({ name: "nodesandbox", handler: async ({ input }) => {
  try { readFileSync(input.path, "utf8"); return { read: "allowed" }; } catch (e) { return { read: e.code }; }
} });
"""),
    "rawwrite": ("deno", fn("rawwrite", """
      process.stdout.write("raw out " + input.n + "\\n");
      process.stderr.write("raw err " + input.n);
      let home = null;
      try { home = process.env.HOME ?? null; } catch (e) { home = e.name; }
      return { ok: true, home };
    """)),
    # a polyfill's assignment at load (strict ESM): must replace the global, not throw
    "procpolyfill": ("deno", HEADER + 'globalThis.process = { env: { FROM_POLYFILL: "yes" } };\n' +
                     'export default defineFunction({ name: "procpolyfill", handler: async () => '
                     '({ env: globalThis.process.env.FROM_POLYFILL }) });\n'),
    "noderawwrite": ("node", fn("noderawwrite", """
      process.stdout.write("raw out " + input.n + "\\n");
      process.stderr.write("raw err " + input.n);
      return { ok: true, home: process.env.HOME ?? null };
    """)),
    # batch load check cases: a throw at load, a module that ends its process, one that forges checker output
    "loadthrow": ("deno", HEADER + 'throw new Error("bad config at load");\n' + fn("loadthrow", "return {};")[len(HEADER):]),
    "exiter": ("deno", HEADER + "Deno.exit(0);\n" + fn("exiter", "return {};")[len(HEADER):]),
    "forger": ("deno", HEADER + 'console.log("noise");\nDeno.stdout.writeSync(new TextEncoder().encode('
               '\'{"function":"loadthrow","ok":true}\\n\'));\n' + fn("forger", "return { forged: false };")[len(HEADER):]),
    "misnamed": ("deno", fn("othername", "return {};")),
    "nodecrash": ("node", fn("nodecrash", "setTimeout(() => process.exit(3), 5); await new Promise((r) => setTimeout(r, 2000)); return {};")),
}


@pytest.fixture(scope="module")
def bundles(tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict[str, str]]:
    """Every test function bundled once through the real ArtifactStore."""
    root = tmp_path_factory.mktemp("hostproj")
    store = ArtifactStore(root)
    out: dict[str, dict[str, str]] = {}
    sources = {**SOURCES, "version_b": ("deno", fn("version", 'return { v: "B" };'))}
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


class ControlPeer:
    """The supervisor's answers to the host's requests on the channel (enqueue), recorded."""

    def __init__(self, token: str, secrets: dict[str, str]) -> None:
        self.token = token
        self.secrets = secrets
        self.enqueued: list[dict[str, Any]] = []
        self.calls: list[tuple[str, dict[str, Any]]] = []

    def answer(self, req: dict[str, Any]) -> dict[str, Any]:
        doc = {k: v for k, v in req.items() if k not in ("id", "op")}
        self.calls.append((str(req.get("op")), doc))
        if req.get("op") != "enqueue":
            raise ValueError(f"unknown op {req.get('op')}")
        self.enqueued.append(doc)
        return {"request_id": doc["request_id"]}

    def close(self) -> None:
        pass


class Host:
    """A running host process, driven over its stdin/stdout channel; `logs` fills from its stdout in a thread."""

    def __init__(self, artifacts: str, control: ControlPeer, max_body: int = 6291456, **extra: Any) -> None:
        cfg = {"stage": "test", "gateway_host": "127.0.0.1", "gateway_port": 0,
               "node_bin": shutil.which("node"), "max_body_bytes": max_body, **extra}
        env = {"PATH": os.environ.get("PATH", ""), "HOME": os.environ.get("HOME", "/root"),
               "FLUX_HOST_CONFIG": json.dumps(cfg)}
        if "DENO_DIR" in os.environ:
            env["DENO_DIR"] = os.environ["DENO_DIR"]
        self.proc = subprocess.Popen(host_command(deno_bin(), artifacts), stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, env=env)
        assert self.proc.stdout is not None
        ready = json.loads(self.proc.stdout.readline())
        assert ready["event"] == "ready" and set(ready) == {"event", "gateway_port"}
        self.gw = f"http://127.0.0.1:{ready['gateway_port']}"
        self.logs: list[dict[str, Any]] = []
        self.bad_lines: list[bytes] = []
        self.channel = HostChannel(self.proc, self.logs.append, control.answer, on_raw=self.bad_lines.append)
        self.channel.start()

    def call(self, op: str, body: dict[str, Any] | None = None, timeout: float = 60) -> dict[str, Any]:
        """One request on the channel; its reply without the envelope (raises HostError on a refusal)."""
        reply = self.channel.call(op, body, timeout)
        return {k: v for k, v in reply.items() if k not in ("reply_to", "ok")}

    def configure(self, bundles: dict[str, dict[str, str]], functions: dict[str, dict[str, Any]],
                  routes: list[tuple[str, str, str]] | None = None) -> None:
        fns = {}
        for name, extra in functions.items():
            b = bundles[extra.pop("bundle_of", name)]
            fns[name] = {"runtime": b["runtime"], "bundle": b["bundle"], "digest": b["digest"], "env": {},
                         "timeout_ms": 5000, "concurrency": 10, "queue_limit": 50, "idle_ms": 60000,
                         "async": False, **extra}
        if routes is None:
            routes = [("POST", f"/{n}", n) for n in functions]
        self.call("load", {"functions": fns, "routes": [
            {"method": m, "path": p, "function": f} for m, p, f in routes]})

    def health(self) -> dict[str, Any]:
        return self.call("health")["functions"]

    def wait_log(self, pred: Any, timeout: float = 5) -> dict[str, Any]:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            for rec in list(self.logs):
                if pred(rec):
                    return rec
            time.sleep(0.02)
        raise AssertionError(f"no matching log record; got {self.logs[-10:]}")

    def wait_count(self, pred: Any, n: int, timeout: float = 5) -> None:
        end = time.monotonic() + timeout
        while time.monotonic() < end and len([r for r in list(self.logs) if pred(r)]) < n:
            time.sleep(0.02)
        assert len([r for r in list(self.logs) if pred(r)]) == n

    def stop(self) -> None:
        if self.proc.poll() is None:
            try:
                self.call("shutdown", {}, timeout=10)
                self.proc.wait(timeout=15)
            except Exception:
                self.proc.kill()
                self.proc.wait(timeout=5)


def _listening_ports(pid: int) -> set[int]:
    """TCP ports process `pid` listens on (its own sockets, from /proc: no tool needed)."""
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            target = os.readlink(fd)
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    ports = set()
    for table in ("tcp", "tcp6"):
        for line in Path(f"/proc/{pid}/net/{table}").read_text().splitlines()[1:]:
            f = line.split()
            if f[3] == "0A" and f[9] in inodes:  # 0A: LISTEN
                ports.add(int(f[1].rsplit(":", 1)[1], 16))
    return ports


def request(url: str, body: Any = None, method: str = "POST", token: str | None = None,
            raw: bytes | None = None, timeout: float = 20) -> tuple[int, Any, dict[str, str]]:
    data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
    headers = {"content-type": "application/json"}
    if token:
        headers["authorization"] = f"Bearer {token}"
    req = urllib.request.Request(url, data=data, method=method, headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, json.loads(r.read() or b"null"), {k.lower(): v for k, v in r.headers.items()}
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read() or b"null"), {k.lower(): v for k, v in e.headers.items()}


@pytest.fixture
def control() -> Iterator[ControlPeer]:
    peer = ControlPeer("control-" + os.urandom(8).hex(), {"API_KEY": "s3cr3t-value"})
    try:
        yield peer
    finally:
        peer.close()


@pytest.fixture
def host(bundles: dict[str, dict[str, str]], control: ControlPeer) -> Iterator[Host]:
    h = Host(next(iter(bundles.values()))["artifacts"], control, max_body=4096)
    try:
        yield h
    finally:
        h.stop()
        assert h.proc.poll() is not None
        assert not h.bad_lines, h.bad_lines  # stdout carries only JSON records


def test_deno_and_node_functions_through_the_gateway(host: Host, bundles: dict[str, Any]) -> None:
    host.configure(bundles, {"hello": {"env": {"GREETING": "hi"}},
                             "nodehello": {"env": {"GREETING": "yo", "API_KEY": "s3cr3t-value"}}})
    status, body, headers = request(f"{host.gw}/hello", {"name": "Ada"})
    assert status == 200
    assert body == {"message": "Hello, Ada!", "greeting": "hi", "frozen": True}
    rid = headers["x-flux-request-id"]
    rec = host.wait_log(lambda r: r["msg"] == "hello called")
    assert rec == {**rec, "level": "info", "stage": "test", "function": "hello", "request_id": rid,
                   "data": {"name": "Ada"}}
    warn = host.wait_log(lambda r: r["msg"] == "careful")
    assert warn["level"] == "warn" and warn["request_id"] == rid and warn["data"] == 42
    assert {"ts", "level", "stage", "function", "request_id", "msg", "data"} <= set(rec)

    status, body, headers = request(f"{host.gw}/nodehello", {"name": "Bo", "key": "API_KEY"})
    assert status == 200
    assert body["message"] == "Hi Bo" and body["runtime"].startswith("v20")
    assert body["greeting"] == "yo" and body["home"] is None  # scrubbed env: only the function's keys
    assert body["secret"] == "s3cr3t-value"
    nrid = headers["x-flux-request-id"]
    assert host.wait_log(lambda r: r["msg"] == "node says")["request_id"] == nrid
    assert host.wait_log(lambda r: r["msg"] == "plain console")["request_id"] == nrid
    assert host.wait_log(lambda r: r["msg"] == "cold start" and r["function"] == "nodehello")["data"]["runtime"] == "node"


def test_http_statuses(host: Host, bundles: dict[str, Any]) -> None:
    host.configure(bundles, {"echo": {}, "boom": {}}, routes=[
        ("POST", "/echo", "echo"), ("GET", "/echo", "echo"), ("POST", "/boom", "boom")])
    status, body, headers = request(f"{host.gw}/echo?a=1&b=x%20y", None, "GET")
    assert status == 200 and body == {"input": {"a": "1", "b": "x y"}}
    status, body, headers = request(f"{host.gw}/echo", raw=b"")
    assert status == 200 and body == {"input": {}}

    for raw, why in [(b"{not json", "invalid JSON"), (b"[1,2]", "JSON object"), (b'"str"', "JSON object")]:
        status, body, headers = request(f"{host.gw}/echo", raw=raw)
        assert status == 400 and why in body["error"]
        assert body["request_id"] == headers["x-flux-request-id"]

    status, body, headers = request(f"{host.gw}/missing", {})
    assert status == 404 and headers["x-flux-request-id"] == body["request_id"]
    status, body, headers = request(f"{host.gw}/echo", None, "DELETE")
    assert status == 405 and headers["allow"] == "GET, HEAD, POST"  # HEAD is served on GET routes
    status, body, headers = request(f"{host.gw}/echo", raw=b'{"x":"' + b"y" * 5000 + b'"}')
    assert status == 413 and "x-flux-request-id" in headers

    status, body, headers = request(f"{host.gw}/boom", {"why": "bad day"})
    assert status == 500
    # neither the message nor the stack reach the caller; both are in the log record
    assert body == {"error": "function boom failed; its error is in flux logs under this request id",
                    "request_id": headers["x-flux-request-id"]}
    rec = host.wait_log(lambda r: r["msg"] == "handler failed")
    assert rec["request_id"] == headers["x-flux-request-id"] and "at " in rec["data"]["stack"]
    assert rec["data"]["error"] == "kaput: bad day"


def test_concurrent_invocations_keep_their_request_ids(host: Host, bundles: dict[str, Any]) -> None:
    host.configure(bundles, {"logmany": {"max_workers": 1}})
    with concurrent.futures.ThreadPoolExecutor(12) as ex:
        results = list(ex.map(lambda n: request(f"{host.gw}/logmany", {"n": n}), range(12)))
    for n, (status, body, headers) in enumerate(results):
        assert status == 200 and body == {"n": n, "rid": headers["x-flux-request-id"]}
        rid = headers["x-flux-request-id"]
        tick = host.wait_log(lambda r, n=n: r["msg"] == "tick" and r["data"] == n)
        tock = host.wait_log(lambda r, n=n: r["msg"] == "tock" and r["data"] == {"n": n})
        assert tick["request_id"] == rid == tock["request_id"]


def test_env_push_without_redeploy_and_secrets_db(host: Host, bundles: dict[str, Any], control: ControlPeer) -> None:
    granted = {"API_KEY": "s3cr3t-value"}
    host.configure(bundles, {"hello": {"env": {"GREETING": "v1"}}, "secret": {"env": granted}, "db": {}})
    assert request(f"{host.gw}/hello", {"name": "a"})[1]["greeting"] == "v1"
    host.configure(bundles, {"hello": {"env": {"GREETING": "v2"}}, "secret": {"env": granted}, "db": {}})  # same digest
    assert request(f"{host.gw}/hello", {"name": "a"})[1]["greeting"] == "v2"
    assert host.health()["hello"]["workers"] == 1  # the running worker got the new env; no cold start
    host.wait_count(lambda r: r["msg"] == "cold start" and r["function"] == "hello", 1)

    # secrets are answered by the host from the function's granted keys, with no call out of the host
    assert request(f"{host.gw}/secret", {"key": "API_KEY"})[:2] == (200, {"value": "s3cr3t-value"})
    assert request(f"{host.gw}/hello", {"name": "a"})[0] == 200
    status, body, headers = request(f"{host.gw}/secret", {"key": "NOPE"})
    assert status == 500 and "NOPE" not in body["error"]  # an uncaught error: generic to the caller ...
    rec = host.wait_log(lambda r: r["msg"] == "handler failed" and r["request_id"] == headers["x-flux-request-id"])
    assert rec["data"]["error"] == "secret NOPE is not set (flux secrets set NOPE=...)"  # ... the message in logs
    # ctx.db runs inside the host (postgres.js; see test_provider_e2e for a real database): none configured here
    status, body, headers = request(f"{host.gw}/db", {})
    assert status == 500
    rec = host.wait_log(lambda r: r["msg"] == "handler failed" and r["request_id"] == headers["x-flux-request-id"])
    assert rec["data"]["error"] == "ctx.db.query: this stage has no database"
    host.configure(bundles, {"db": {"uses_db": False}})
    status, body, headers = request(f"{host.gw}/db", {})
    rec = host.wait_log(lambda r: r["msg"] == "handler failed" and r["request_id"] == headers["x-flux-request-id"])
    assert rec["data"]["error"].startswith("ctx.db is not available to this function")
    assert not [c for c in control.calls if c[0] != "enqueue"]  # no secret or db call left the host
    assert "s3cr3t-value" not in json.dumps(host.logs)


def test_sandbox_denies_reads_outside_the_bundle_and_env(host: Host, bundles: dict[str, Any],
                                                         tmp_path: Path) -> None:
    outside = tmp_path / "secrets.enc"
    outside.write_text("top secret")
    sibling = Path(bundles["hello"]["bundle"])  # another function's bundle
    host.configure(bundles, {"sandbox": {}, "nodesandbox": {}})
    status, body, _ = request(f"{host.gw}/sandbox", {"path": str(outside)})
    assert status == 200
    assert body == {"read": "NotCapable", "env": "NotCapable", "write": "NotCapable", "run": "NotCapable"}
    assert request(f"{host.gw}/sandbox", {"path": str(sibling)})[1]["read"] == "NotCapable"
    assert request(f"{host.gw}/sandbox", {"path": bundles["sandbox"]["bundle"]})[1]["read"] == "allowed"

    assert request(f"{host.gw}/nodesandbox", {"path": str(outside)})[1] == {"read": "ERR_ACCESS_DENIED"}
    assert request(f"{host.gw}/nodesandbox", {"path": str(sibling)})[1] == {"read": "ERR_ACCESS_DENIED"}
    assert request(f"{host.gw}/nodesandbox", {"path": bundles["nodesandbox"]["bundle"]})[1] == {"read": "allowed"}


def test_missing_define_function_is_a_500_with_a_clear_message(host: Host, bundles: dict[str, Any]) -> None:
    host.configure(bundles, {"noexport": {}})
    status, body, _ = request(f"{host.gw}/noexport", {})
    assert status == 500 and body["error"] == "function noexport does not export defineFunction(...)"
    host.wait_log(lambda r: r["msg"] == "function failed to initialize" and r["function"] == "noexport")


def test_worker_crash_is_502_then_replaced(host: Host, bundles: dict[str, Any]) -> None:
    host.configure(bundles, {"crash": {}, "nodecrash": {}, "hello": {}})
    for name in ("crash", "nodecrash"):
        status, body, headers = request(f"{host.gw}/{name}", {})
        assert status == 502 and body["request_id"] == headers["x-flux-request-id"]
        rec = host.wait_log(lambda r, name=name: r["msg"] == "worker crashed" and r["function"] == name)
        assert headers["x-flux-request-id"] in rec["data"]["requests"]
    assert host.health()["crash"]["workers"] == 0
    assert request(f"{host.gw}/hello", {"name": "still up"})[0] == 200  # the host survived
    # the next request gets a fresh worker (which crashes again, proving it was replaced and ran)
    assert request(f"{host.gw}/crash", {})[0] == 502
    host.wait_count(lambda r: r["msg"] == "cold start" and r["function"] == "crash", 2)


def test_timeout_is_504_and_the_worker_is_replaced(host: Host, bundles: dict[str, Any]) -> None:
    # warm it first under a long timeout (a worker process's cold start on a loaded machine may take longer than
    # 400 ms), then lower the timeout: same digest, so the warm worker stays
    host.configure(bundles, {"spin": {"timeout_ms": 60000}})
    assert request(f"{host.gw}/spin", {"spin": False})[:2] == (200, {"ok": True})
    host.configure(bundles, {"spin": {"timeout_ms": 400}})
    assert host.health()["spin"]["workers"] == 1
    t0 = time.monotonic()
    status, body, _headers = request(f"{host.gw}/spin", {"spin": True})
    assert status == 504 and "timed out after 400 ms" in body["error"]
    assert 0.35 < time.monotonic() - t0 < 3
    host.wait_log(lambda r: r["msg"] == "worker retired after a timeout")
    host.configure(bundles, {"spin": {"timeout_ms": 60000}})  # the replacement's cold start is no handler time
    assert request(f"{host.gw}/spin", {"spin": False})[:2] == (200, {"ok": True})
    host.wait_count(lambda r: r["msg"] == "cold start" and r["function"] == "spin", 2)  # a new worker served it


def test_scale_to_zero_and_back(host: Host, bundles: dict[str, Any]) -> None:
    host.configure(bundles, {"hello": {"idle_ms": 300}})
    assert request(f"{host.gw}/hello", {"name": "x"})[0] == 200
    assert host.health()["hello"]["workers"] == 1
    host.wait_log(lambda r: r["msg"] == "scaled to zero" and r["function"] == "hello", timeout=5)
    assert host.health()["hello"]["workers"] == 0
    assert request(f"{host.gw}/hello", {"name": "y"})[0] == 200
    host.wait_count(lambda r: r["msg"] == "cold start" and r["function"] == "hello", 2)


def test_idle_warm_workers_are_bounded_stage_wide(bundles: dict[str, Any], control: ControlPeer) -> None:
    """An apply of thousands of functions must not leave a warm process per function: over max_warm_workers the
    least recently used idle workers stop, and their functions cold-start again on their next request."""
    h = Host(next(iter(bundles.values()))["artifacts"], control, max_warm_workers=2)
    try:
        h.configure(bundles, {"hello": {}, "echo": {}, "nodehello": {}})
        for name in ("hello", "echo", "nodehello"):
            assert request(f"{h.gw}/{name}", {"name": "x"})[0] == 200
        rec = h.wait_log(lambda r: r["msg"] == "warm worker stopped")
        assert rec["function"] == "hello" and rec["data"]["max_warm_workers"] == 2  # the least recently used
        health = h.health()
        assert sum(f["workers"] for f in health.values()) <= 2 and health["hello"]["workers"] == 0
        assert request(f"{h.gw}/hello", {"name": "y"})[0] == 200  # served again, by a new cold start
        h.wait_count(lambda r: r["msg"] == "cold start" and r["function"] == "hello", 2)
        h.wait_log(lambda r: r["msg"] == "warm worker stopped" and r["function"] == "echo")
        assert sum(f["workers"] for f in h.health().values()) <= 2
    finally:
        h.stop()


def test_concurrency_cap_and_bounded_queue_503(host: Host, bundles: dict[str, Any]) -> None:
    host.configure(bundles, {"slow": {"concurrency": 2, "queue_limit": 1}})
    with concurrent.futures.ThreadPoolExecutor(5) as ex:
        futs = [ex.submit(request, f"{host.gw}/slow", {"ms": 600}) for _ in range(5)]
        statuses = sorted(f.result()[0] for f in futs)
    assert statuses == [200, 200, 200, 503, 503]


def test_async_function_is_queued_with_202(host: Host, bundles: dict[str, Any], control: ControlPeer) -> None:
    host.configure(bundles, {"asyncjob": {"async": True}})
    status, body, headers = request(f"{host.gw}/asyncjob", {"email": "a@b.c"})
    assert status == 202 and body == {"request_id": headers["x-flux-request-id"]}
    assert control.enqueued == [{"function": "asyncjob", "request_id": body["request_id"], "input": {"email": "a@b.c"}}]
    # the supervisor later runs it over the channel
    res = host.call("invoke", {"function": "asyncjob", "request_id": body["request_id"], "input": {}, "attempt": 1})
    assert res == {"status": 200, "body": {"done": True}}
    # the host listens on the gateway port only: no admin or control port to reach it by
    assert _listening_ports(host.proc.pid) == {int(host.gw.rsplit(":", 1)[1])}


def test_atomic_switch_under_load(host: Host, bundles: dict[str, Any]) -> None:
    host.configure(bundles, {"version": {}})
    assert request(f"{host.gw}/version", {})[1] == {"v": "A"}
    stop = threading.Event()
    seen: list[tuple[int, Any]] = []

    def hammer() -> None:
        while not stop.is_set():
            status, body, _ = request(f"{host.gw}/version", {})
            seen.append((status, body))

    threads = [threading.Thread(target=hammer) for _ in range(6)]
    for t in threads:
        t.start()
    time.sleep(0.4)
    host.configure(bundles, {"version": {"bundle_of": "version_b"}})
    time.sleep(0.4)
    stop.set()
    for t in threads:
        t.join()
    assert seen and all(s == 200 for s, _ in seen), [x for x in seen if x[0] != 200][:3]
    versions = [b["v"] for _, b in seen]
    assert "A" in versions and "B" in versions
    last_a = max(i for i, v in enumerate(versions) if v == "A")
    assert all(v == "B" for v in versions[last_a + 1:])
    assert request(f"{host.gw}/version", {})[1] == {"v": "B"}
    assert host.health()["version"]["digest"] == bundles["version_b"]["digest"]


def test_load_check_worker_becomes_the_first_warm_worker(host: Host, bundles: dict[str, Any]) -> None:
    def check(name: str, **extra: Any) -> dict[str, Any]:
        b = bundles[name]
        cfg = {"runtime": b["runtime"], "bundle": b["bundle"], "digest": b["digest"], "env": {}, **extra}
        doc = host.call("check", {"function": name, "config": cfg})
        return {"ok": doc.pop("loaded"), **doc}  # the daemon's /admin/check answers in these words

    def cold(name: str) -> int:
        return len([r for r in list(host.logs) if r["msg"] == "cold start" and r["function"] == name])

    assert check("hello") == {"ok": True}
    host.wait_count(lambda r: r["msg"] == "cold start" and r["function"] == "hello", 1)
    assert "hello" not in host.health()  # checked, but takes no traffic
    host.configure(bundles, {"hello": {"env": {"GREETING": "pushed"}}})
    assert host.health()["hello"]["workers"] == 1  # the checked worker, with the pushed env
    status, body, headers = request(f"{host.gw}/hello", {"name": "Ada"})
    assert status == 200 and body["greeting"] == "pushed"
    rid = headers["x-flux-request-id"]
    host.wait_log(lambda r: r["msg"] == "access" and r["request_id"] == rid)  # records before it are in too
    assert cold("hello") == 1  # no second cold start
    # other process flags (the memory limit) are a different worker: not taken, a new one serves
    assert check("echo", memory_mb=96) == {"ok": True}
    host.configure(bundles, {"echo": {"memory_mb": 128}})
    assert request(f"{host.gw}/echo", {"a": 1})[:2] == (200, {"input": {"a": 1}})
    host.wait_count(lambda r: r["msg"] == "cold start" and r["function"] == "echo", 2)
    assert host.health()["echo"]["workers"] == 1
    # a module that fails the check leaves nothing behind for a later push
    doc = check("noexport")
    assert doc == {"ok": False, "error": "function noexport does not export defineFunction(...)"}
    host.configure(bundles, {"noexport": {}})
    assert request(f"{host.gw}/noexport", {})[0] == 500


def test_many_load_checks_at_once_are_batched_with_the_same_verdicts(host: Host, bundles: dict[str, Any]) -> None:
    """An apply of many functions checks deno bundles several per process (checker.mjs): each verdict must be the
    one a check of its own gives, whatever the other modules of the batch do at load (throw, end the process,
    write to stdout)."""
    from concurrent.futures import ThreadPoolExecutor

    def check(name: str) -> dict[str, Any]:
        b = bundles[name]
        cfg = {"runtime": b["runtime"], "bundle": b["bundle"], "digest": b["digest"], "env": {}}
        return host.call("check", {"function": name, "config": cfg})

    with ThreadPoolExecutor(24) as pool:  # more than CHECKED_KEEP_MAX (16) at once: the rest go in batches
        list(pool.map(check, ["echo"] * 24))
        cold_before = len([r for r in list(host.logs) if r["msg"] == "cold start"])
        names = ["loadthrow", "forger", "misnamed", "hello", "exiter", "noexport", "echo", "slow"] * 2
        got = dict(zip(names, pool.map(check, names), strict=False))
    assert got["hello"] == got["echo"] == got["slow"] == got["forger"] == {"loaded": True}
    assert got["loadthrow"] == {"loaded": False, "error": "function loadthrow failed to load: bad config at load"}
    assert got["misnamed"] == {"loaded": False, "error": 'function misnamed: defineFunction name "othername" '
                                                         'differs from flux.json name "misnamed" (make them equal)'}
    assert got["noexport"] == {"loaded": False, "error": "function noexport does not export defineFunction(...)"}
    assert got["exiter"]["loaded"] is False and "exiter" in got["exiter"]["error"]  # checked on its own
    # batched checks start no worker: only the functions that fell back to a check of their own did (those that
    # shared the batch of `exiter` after it, whose process ended before their turn)
    colds = [r["function"] for r in list(host.logs)[cold_before:] if r["msg"] == "cold start"]
    assert len(colds) < len(names) - 4, colds
    host.wait_log(lambda r: r["msg"] == "function failed to initialize" and r["function"] == "loadthrow")
    host.configure(bundles, {"forger": {}, "hello": {}})  # a batch-checked function serves from a cold start
    assert request(f"{host.gw}/forger", {})[:2] == (200, {"forged": False})


def test_a_library_may_replace_the_process_global(host: Host, bundles: dict[str, Any]) -> None:
    host.configure(bundles, {"procpolyfill": {}})
    assert request(f"{host.gw}/procpolyfill", {})[:2] == (200, {"env": "yes"})


@pytest.mark.parametrize("name", ["rawwrite", "noderawwrite"])
def test_raw_process_writes_become_log_records_and_the_channel_holds(host: Host, bundles: dict[str, Any],
                                                                    name: str) -> None:
    host.configure(bundles, {name: {}})
    for n in (1, 2):
        status, body, headers = request(f"{host.gw}/{name}", {"n": n})
        assert status == 200 and body["ok"] is True
        assert body["home"] in (None, "NotCapable")  # nothing of the host's environment
        rid = headers["x-flux-request-id"]
        out = host.wait_log(lambda r, rid=rid, n=n: r["request_id"] == rid and r["msg"] == f"raw out {n}")
        err = host.wait_log(lambda r, rid=rid, n=n: r["request_id"] == rid and r["msg"] == f"raw err {n}")
        assert (out["level"], err["level"]) == ("info", "error") and out["function"] == name
