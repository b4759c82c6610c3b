"""A test-side API Gateway (HTTP API) + Lambda emulator, so the conformance suite executes functions deployed on moto.

Everything it serves is read BACK FROM MOTO after `flux apply`, never from Flux's state or the project tree: the
HTTP API (by name), its routes, integrations and CorsConfiguration (apigatewayv2), each integration's alias
(`live`) and the version it points at, that version's configuration (runtime, handler, timeout, env, layers,
reserved concurrency) with boto3 (lambda), and the version's code zip and layer zips. moto answers a ZipFile
upload's `Code.Location` with an address it does not serve, so the zip bytes come from moto's in-process Lambda
backend (the server runs in this process) and are checked against the CodeSha256 boto3 reports.

Each function version runs in sandboxes: one real process per sandbox (the Deno layer's own `bootstrap` for
provided.al2023, `node` with node_ric.mjs -- a stand-in for AWS's Node runtime client -- for nodejs20.x) talking
the Lambda Runtime API of tests/aws/lambda_runtime_api.py, one invocation at a time, new sandboxes on demand up to
the reserved concurrency. A request becomes an API Gateway v2 (payload 2.0) event; the result maps back to HTTP.
Secrets come from moto's Secrets Manager through the shim's own client (AWS_ENDPOINT_URL = moto); the shim's
Event self-invocations (async functions) come here (AWS_ENDPOINT_URL_LAMBDA). Process output goes to CloudWatch
Logs on moto (one stream per sandbox, with Lambda's START/END/REPORT lines), where `flux logs` reads it.

API Gateway semantics kept: no matching route -> 404 {"message":"Not Found"} (HTTP APIs have no 405); CORS
preflights answered by the gateway from CorsConfiguration, allowed origins echoed, backend CORS headers replaced;
an integration that does not answer within TimeoutInMillis -> 503; a Lambda invoke error (function error, throttle,
missing function, payload over 6 MB) -> 500 {"message":"Internal Server Error"}; a deleted API -> the connection
is dropped (its hostname would no longer resolve)."""

from __future__ import annotations

import base64
import contextlib
import hashlib
import io
import json
import os
import queue
import shutil
import socket
import subprocess
import sys
import threading
import time
import urllib.parse
import uuid
import zipfile
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import boto3
from botocore.exceptions import ClientError

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "aws"))
from lambda_runtime_api import RuntimeApi, UnixForwarder

ACCOUNT = "123456789012"  # moto's default account
NODE_RIC = Path(__file__).with_name("node_ric.mjs")
INVOKE_LIMIT = 6 * 1024 * 1024  # Lambda's synchronous invocation payload limit
GATEWAY_LIMIT = 10 * 1024 * 1024  # HTTP API's request payload limit
TEXT_TYPES = ("text/", "application/json", "application/xml", "application/javascript",
              "application/x-www-form-urlencoded")


def tcp_url(uri: str, forwarder_for: dict[str, UnixForwarder]) -> str:
    """A libpq URI on a Unix socket (?host=/dir[&port=N]) as the same database over a TCP forwarder."""
    u = urllib.parse.urlsplit(uri)
    q = urllib.parse.parse_qs(u.query)
    sock = f"{q['host'][0]}/.s.PGSQL.{q.get('port', [u.port or 5432])[0]}"
    fwd = forwarder_for.setdefault(sock, UnixForwarder(sock))
    auth = u.netloc.rsplit("@", 1)[0]
    rest = {k: v for k, v in q.items() if k not in ("host", "port")}
    query = urllib.parse.urlencode({k: v[0] for k, v in rest.items()})
    return urllib.parse.urlunsplit((u.scheme, f"{auth}@127.0.0.1:{fwd.port}", u.path, query, ""))


class ApiGone(Exception):
    """The HTTP API no longer exists on moto."""


class InvokeError(Exception):
    """Lambda did not run the invocation (throttled, no such function, payload too large, timed out, crashed)."""


@dataclass
class FunctionVersion:
    """One published version, as moto holds it: configuration + unpacked code + layers."""

    name: str
    version: str
    key: tuple[str, ...]
    arn: str
    runtime: str
    handler: str
    timeout: int
    env: dict[str, str]
    task_root: Path
    layer_dir: Path | None
    reserved: int | None


@dataclass
class Sandbox:
    fv: FunctionVersion
    api: RuntimeApi
    proc: subprocess.Popen[bytes]
    stream: str
    busy: bool = False


@dataclass
class Pool:
    fv: FunctionVersion
    sandboxes: list[Sandbox] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)


class LogShipper:
    """Lines -> CloudWatch Logs on moto, in small batches (as Lambda's log agent does)."""

    def __init__(self, logs: Any) -> None:
        self.logs = logs
        self.q: queue.Queue[tuple[str, str, int, str] | None] = queue.Queue()
        self.known: set[tuple[str, str]] = set()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def put(self, group: str, stream: str, text: str) -> None:
        self.q.put((group, stream, int(time.time() * 1000), text))

    def _ensure(self, group: str, stream: str) -> None:
        if (group, stream) in self.known:
            return
        with contextlib.suppress(ClientError):
            self.logs.create_log_group(logGroupName=group)  # Lambda creates a missing group itself
        with contextlib.suppress(ClientError):
            self.logs.create_log_stream(logGroupName=group, logStreamName=stream)
        self.known.add((group, stream))

    def _run(self) -> None:
        while True:
            item = self.q.get()
            if item is None:
                return
            batch = [item]
            time.sleep(0.05)
            while True:
                try:
                    nxt = self.q.get_nowait()
                except queue.Empty:
                    break
                if nxt is None:
                    self._flush(batch)
                    return
                batch.append(nxt)
            self._flush(batch)

    def _flush(self, batch: list[tuple[str, str, int, str]]) -> None:
        by: dict[tuple[str, str], list[dict[str, Any]]] = {}
        for group, stream, ts, text in batch:
            by.setdefault((group, stream), []).append({"timestamp": ts, "message": text})
        for (group, stream), events in by.items():
            try:
                self._ensure(group, stream)
                self.logs.put_log_events(logGroupName=group, logStreamName=stream, logEvents=events)
            except ClientError:
                pass  # a destroyed group: the lines are lost, as on Lambda

    def drain(self, timeout: float = 5) -> None:
        deadline = time.monotonic() + timeout
        while not self.q.empty() and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(0.15)

    def stop(self) -> None:
        self.q.put(None)
        self.thread.join(timeout=5)


class AwsEmulator:
    """API Gateway + Lambda for one HTTP API (found by name) on a moto server running in this process."""

    def __init__(self, moto_url: str, region: str, api_name: str, workdir: Path) -> None:
        self.moto_url, self.region, self.api_name = moto_url, region, api_name
        self.workdir = workdir
        self.gw = boto3.client("apigatewayv2", endpoint_url=moto_url, region_name=region)
        self.lam = boto3.client("lambda", endpoint_url=moto_url, region_name=region)
        self.shipper = LogShipper(boto3.client("logs", endpoint_url=moto_url, region_name=region))
        self.versions: dict[tuple[str, ...], FunctionVersion] = {}
        self.pools: dict[tuple[str, ...], Pool] = {}
        self.layers: dict[str, Path] = {}
        self.lock = threading.Lock()
        self.server: ThreadingHTTPServer | None = None
        self.port = 0

    # ------------------------------------------------------------------ moto reads
    def _api(self) -> dict[str, Any]:
        for api in self.gw.get_apis().get("Items", []):
            if api["Name"] == self.api_name:
                return dict(api)
        raise ApiGone(self.api_name)

    def _routes(self, api_id: str) -> tuple[list[dict[str, Any]], dict[str, dict[str, Any]]]:
        routes = self.gw.get_routes(ApiId=api_id).get("Items", [])
        integ = {i["IntegrationId"]: dict(i) for i in self.gw.get_integrations(ApiId=api_id).get("Items", [])}
        return [dict(r) for r in routes], integ

    def _backend(self, account: str) -> Any:
        """moto's in-process Lambda backend (the "simple" one when the server runs without Docker)."""
        from moto.awslambda.models import lambda_backends
        from moto.awslambda_simple.models import lambda_simple_backends

        simple = lambda_simple_backends[account][self.region]
        return simple if simple._lambdas._functions else lambda_backends[account][self.region]

    def _backend_code(self, account: str, name: str, version: str) -> bytes:
        return bytes(self._backend(account).get_function(name, version).code_bytes)

    def _backend_layer(self, arn: str) -> bytes:
        lv = self._backend(arn.split(":")[4]).layers_versions_by_arn(arn)
        if lv is None:
            raise InvokeError(f"layer {arn} is gone")
        return bytes(lv.code_bytes)

    @staticmethod
    def _sha(data: bytes) -> str:
        return base64.b64encode(hashlib.sha256(data).digest()).decode()

    @staticmethod
    def _unzip(data: bytes, dest: Path) -> None:
        dest.mkdir(parents=True, exist_ok=True)
        with zipfile.ZipFile(io.BytesIO(data)) as zf:
            for info in zf.infolist():
                zf.extract(info, dest)
                mode = (info.external_attr >> 16) & 0o777
                if mode:
                    (dest / info.filename).chmod(mode)

    def _layer(self, arn: str) -> Path:
        with self.lock:
            if arn in self.layers:
                return self.layers[arn]
        layer_arn, _, number = arn.rpartition(":")
        detail = self.lam.get_layer_version(LayerName=layer_arn, VersionNumber=int(number))
        data = self._backend_layer(arn)
        assert self._sha(data) == detail["Content"]["CodeSha256"], f"layer {arn}: bytes differ from CodeSha256"
        dest = self.workdir / "layers" / hashlib.sha256(arn.encode()).hexdigest()[:16]
        if not dest.exists():
            self._unzip(data, dest)
        with self.lock:
            self.layers[arn] = dest
        return dest

    def _resolve(self, function_arn: str) -> FunctionVersion:
        """An alias ARN (the integration's target) -> the version it points at now, loaded once per version."""
        parts = function_arn.split(":")
        name, qualifier = parts[6], (parts[7] if len(parts) > 7 else "$LATEST")
        try:
            version = self.lam.get_alias(FunctionName=name, Name=qualifier)["FunctionVersion"] \
                if not qualifier.isdigit() and qualifier != "$LATEST" else qualifier
        except ClientError as exc:
            raise InvokeError(f"{name}:{qualifier}: {exc}") from exc
        try:  # a function deleted and created again numbers its versions anew: the key holds the code and date too
            head = self.lam.get_function_configuration(FunctionName=name, Qualifier=version)
        except ClientError as exc:
            raise InvokeError(f"{name}:{version}: {exc}") from exc
        key = (name, version, head["CodeSha256"], head.get("LastModified", ""))
        with self.lock:
            if key in self.versions:
                return self.versions[key]
        try:
            got = self.lam.get_function(FunctionName=name, Qualifier=version)
        except ClientError as exc:
            raise InvokeError(f"{name}:{version}: {exc}") from exc
        cfg = got["Configuration"]
        data = self._backend_code(cfg["FunctionArn"].split(":")[4], name, version)
        assert self._sha(data) == cfg["CodeSha256"], f"{name}:{version}: code bytes differ from CodeSha256"
        task = self.workdir / "task" / name / f"{version}-{hashlib.sha256(repr(key).encode()).hexdigest()[:8]}"
        if not task.exists():
            self._unzip(data, task)
        layers = [self._layer(layer["Arn"]) for layer in cfg.get("Layers", [])]
        fv = FunctionVersion(
            name=name, version=version, key=key, arn=function_arn,
            runtime=cfg["Runtime"], handler=cfg["Handler"], timeout=int(cfg.get("Timeout", 3)),
            env=dict(cfg.get("Environment", {}).get("Variables", {})), task_root=task,
            layer_dir=layers[0] if layers else None,
            reserved=(got.get("Concurrency") or {}).get("ReservedConcurrentExecutions"))
        with self.lock:
            self.versions.setdefault(key, fv)
            return self.versions[key]

    # ------------------------------------------------------------------ sandboxes
    def _spawn(self, fv: FunctionVersion) -> Sandbox:
        api = RuntimeApi(function_arn=fv.arn)
        address = api.start()
        stream = f"{datetime.now(UTC):%Y/%m/%d}/[{fv.version}]{uuid.uuid4().hex}"
        group = f"/aws/lambda/{fv.name}"
        home = self.workdir / "home" / uuid.uuid4().hex[:8]
        home.mkdir(parents=True)
        env = {
            **fv.env,
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(home), "TZ": ":UTC", "LANG": "en_US.UTF-8",
            "AWS_LAMBDA_RUNTIME_API": address, "LAMBDA_TASK_ROOT": str(fv.task_root), "_HANDLER": fv.handler,
            "AWS_LAMBDA_FUNCTION_NAME": fv.name, "AWS_LAMBDA_FUNCTION_VERSION": fv.version,
            "AWS_LAMBDA_FUNCTION_TIMEOUT": str(fv.timeout), "AWS_LAMBDA_LOG_GROUP_NAME": group,
            "AWS_LAMBDA_LOG_STREAM_NAME": stream, "AWS_REGION": self.region, "AWS_DEFAULT_REGION": self.region,
            "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_SESSION_TOKEN": "testing",
            "AWS_ENDPOINT_URL": self.moto_url, "AWS_ENDPOINT_URL_LAMBDA": f"http://127.0.0.1:{self.port}",
        }
        if fv.runtime.startswith("provided"):
            if fv.layer_dir is None:
                raise InvokeError(f"{fv.name}: a custom runtime without a layer has no bootstrap")
            cmd = [str(fv.layer_dir / "bootstrap")]
            env.update({"FLUX_LAYER_DIR": str(fv.layer_dir), "DENO_DIR": str(home / "deno")})
        elif fv.runtime.startswith("nodejs"):
            cmd = ["node", str(NODE_RIC)]
        else:
            raise InvokeError(f"{fv.name}: runtime {fv.runtime} is not emulated")
        proc = subprocess.Popen(cmd, env=env, cwd=fv.task_root, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                start_new_session=True)
        sb = Sandbox(fv=fv, api=api, proc=proc, stream=stream)
        threading.Thread(target=self._drain, args=(sb, group), daemon=True).start()
        return sb

    def _drain(self, sb: Sandbox, group: str) -> None:
        assert sb.proc.stdout is not None
        for raw in sb.proc.stdout:
            line = raw.decode(errors="replace").rstrip("\n")
            if line:
                self.shipper.put(group, sb.stream, line)

    def _kill(self, sb: Sandbox) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(sb.proc.pid, 9)
        with contextlib.suppress(subprocess.TimeoutExpired):
            sb.proc.wait(timeout=10)
        sb.api.stop()

    def invoke(self, function_arn: str, event: Any) -> dict[str, Any]:
        """One synchronous invocation -> {"kind": response|error, "body": ..., "request_id": ...}."""
        payload = json.dumps(event)
        if len(payload.encode()) > INVOKE_LIMIT:
            raise InvokeError(f"RequestEntityTooLargeException: payload over {INVOKE_LIMIT} bytes")
        fv = self._resolve(function_arn)
        with self.lock:
            pool = self.pools.setdefault(fv.key, Pool(fv))
        with pool.lock:
            pool.sandboxes = [s for s in pool.sandboxes if s.proc.poll() is None]
            sb = next((s for s in pool.sandboxes if not s.busy), None)
            if sb is None:
                if fv.reserved is not None and len(pool.sandboxes) >= fv.reserved:
                    raise InvokeError("TooManyRequestsException: Rate Exceeded (reserved concurrency)")
                sb = self._spawn(fv)
                pool.sandboxes.append(sb)
            sb.busy = True
        rid = str(uuid.uuid4())
        group = f"/aws/lambda/{fv.name}"
        self.shipper.put(group, sb.stream, f"START RequestId: {rid} Version: {fv.version}")
        t0 = time.monotonic()
        try:  # the deadline starts when the runtime takes the invocation: the +10 s cover a cold start's init
            out = sb.api.invoke(event, timeout=fv.timeout + 10, rid=rid, budget_s=fv.timeout) \
                if sb.proc.poll() is None else None
        except queue.Empty:
            out = None
        finally:
            sb.busy = False
        took = (time.monotonic() - t0) * 1000
        if out is None:
            self.shipper.put(group, sb.stream, f"{datetime.now(UTC).isoformat()} {rid} Task timed out after "
                                               f"{fv.timeout:.2f} seconds")
            self._kill(sb)
            raise InvokeError("Task timed out")
        self.shipper.put(group, sb.stream, f"END RequestId: {rid}")
        self.shipper.put(group, sb.stream, f"REPORT RequestId: {rid}\tDuration: {took:.2f} ms")
        return {"kind": out.kind, "body": out.body, "request_id": rid}

    # ------------------------------------------------------------------ API Gateway
    @staticmethod
    def _match(routes: list[dict[str, Any]], method: str, path: str) -> tuple[dict[str, Any], dict[str, str]] | None:
        """HTTP API route selection: the method's routes, then ANY, then $default; literal paths before variables,
        greedy {x+} last."""
        best: tuple[tuple[int, int, int], dict[str, Any], dict[str, str]] | None = None
        segs = [urllib.parse.unquote(s) for s in path.strip("/").split("/")] if path.strip("/") else []
        for r in routes:
            key = r["RouteKey"]
            if key == "$default":
                cand = ((3, 0, 0), r, {})
            else:
                m, _, tmpl = key.partition(" ")
                if m not in (method, "ANY"):
                    continue
                tsegs = tmpl.strip("/").split("/") if tmpl.strip("/") else []
                params: dict[str, str] = {}
                ok, variables, greedy = True, 0, 0
                for i, t in enumerate(tsegs):
                    if t.startswith("{") and t.endswith("+}"):
                        if i >= len(segs):
                            ok = False
                            break
                        params[t[1:-2]] = "/".join(segs[i:])
                        greedy = 1
                        break
                    if i >= len(segs):
                        ok = False
                        break
                    if t.startswith("{") and t.endswith("}"):
                        params[t[1:-1]] = segs[i]
                        variables += 1
                    elif t != segs[i]:
                        ok = False
                        break
                else:
                    ok = ok and len(tsegs) == len(segs)
                if not ok:
                    continue
                cand = ((1 if m == "ANY" else 0, greedy, variables), r, params)
            if best is None or cand[0] < best[0]:
                best = cand
        return None if best is None else (best[1], best[2])

    def serve(self, handler: BaseHTTPRequestHandler) -> None:
        method = handler.command
        url = urllib.parse.urlsplit(handler.path)
        length = int(handler.headers.get("Content-Length") or 0)
        if url.path.startswith("/2015-03-31/functions/"):
            return self._lambda_invoke(handler, url.path, handler.rfile.read(length) if length else b"")
        try:
            api = self._api()
        except ApiGone:
            handler.close_connection = True
            with contextlib.suppress(OSError):
                handler.connection.shutdown(socket.SHUT_RDWR)
            return None
        if length > GATEWAY_LIMIT:
            return self._send(handler, 413, {"content-type": "application/json"},
                              b'{"message":"Request Entity Too Large"}')
        body = handler.rfile.read(length) if length else b""
        headers: dict[str, str] = {}
        for k, v in handler.headers.items():
            k = k.lower()
            headers[k] = f"{headers[k]},{v}" if k in headers else v
        cors = api.get("CorsConfiguration") or None
        origin = headers.get("origin")
        gw_rid = base64.b32encode(uuid.uuid4().bytes[:10]).decode().rstrip("=")
        if cors and method == "OPTIONS" and origin and "access-control-request-method" in headers:
            return self._preflight(handler, cors, origin, headers)
        routes, integrations = self._routes(api["ApiId"])
        found = self._match(routes, method, url.path)
        extra = {"apigw-requestid": gw_rid}
        if cors and origin:
            extra.update(self._cors_headers(cors, origin))
        if found is None:
            return self._send(handler, 404, {"content-type": "application/json", **extra}, b'{"message":"Not Found"}')
        route, params = found
        integ = integrations.get(str(route.get("Target", "")).removeprefix("integrations/"))
        if integ is None:
            return self._send(handler, 500, {"content-type": "application/json", **extra},
                              b'{"message":"Internal Server Error"}')
        ctype = headers.get("content-type", "")
        text = not body or ctype.startswith(TEXT_TYPES)
        try:
            body_text = body.decode() if text else None
        except UnicodeDecodeError:
            body_text = None
        qs = urllib.parse.parse_qs(url.query, keep_blank_values=True)
        now = datetime.now(UTC)
        event: dict[str, Any] = {
            "version": "2.0", "routeKey": route["RouteKey"], "rawPath": url.path, "rawQueryString": url.query,
            "headers": headers,
            "requestContext": {
                "accountId": ACCOUNT, "apiId": api["ApiId"], "domainName": headers.get("host", ""),
                "domainPrefix": api["ApiId"], "requestId": gw_rid, "routeKey": route["RouteKey"],
                "stage": "$default", "time": now.strftime("%d/%b/%Y:%H:%M:%S +0000"),
                "timeEpoch": int(now.timestamp() * 1000),
                "http": {"method": method, "path": url.path, "protocol": "HTTP/1.1",
                         "sourceIp": handler.client_address[0], "userAgent": headers.get("user-agent", "")},
            },
            "isBase64Encoded": body_text is None,
        }
        if "cookie" in headers:
            event["cookies"] = [c.strip() for c in headers["cookie"].split(";")]
        if qs:
            event["queryStringParameters"] = {k: ",".join(v) for k, v in qs.items()}
        if params:
            event["pathParameters"] = params
        if body:
            event["body"] = body_text if body_text is not None else base64.b64encode(body).decode()
        wait_s = int(integ.get("TimeoutInMillis") or 30000) / 1000
        done: queue.Queue[dict[str, Any] | Exception] = queue.Queue()

        def call() -> None:
            try:
                done.put(self.invoke(integ["IntegrationUri"], event))
            except Exception as exc:  # every invoke failure is API Gateway's 500
                done.put(exc)

        threading.Thread(target=call, daemon=True).start()
        try:
            result = done.get(timeout=wait_s)
        except queue.Empty:
            return self._send(handler, 503, {"content-type": "application/json", **extra},
                              b'{"message":"Service Unavailable"}')
        if isinstance(result, Exception) or result["kind"] != "response":
            # shown by pytest when a scenario fails: why the gateway answered 500
            print(f"aws_emulator: {method} {url.path} -> 500: {result!r}"[:2000], file=sys.stderr)
            return self._send(handler, 500, {"content-type": "application/json", **extra},
                              b'{"message":"Internal Server Error"}')
        return self._respond(handler, result["body"], extra, head=method == "HEAD")

    def _respond(self, handler: BaseHTTPRequestHandler, out: Any, extra: dict[str, str], head: bool) -> None:
        """Payload 2.0 response mapping: {statusCode, headers, cookies, body, isBase64Encoded}, or any other JSON
        value as a 200 application/json body."""
        if not (isinstance(out, dict) and "statusCode" in out):
            return self._send(handler, 200, {"content-type": "application/json", **extra},
                              json.dumps(out).encode(), head=head)
        hdrs = {str(k).lower(): str(v) for k, v in (out.get("headers") or {}).items()}
        for k in [k for k in hdrs if k.startswith("access-control-")]:
            if any(e.startswith("access-control-") for e in extra) or k != "access-control-allow-origin":
                hdrs.pop(k)  # with CorsConfiguration set, the gateway's CORS headers replace the backend's
        body = out.get("body") or ""
        data = base64.b64decode(body) if out.get("isBase64Encoded") else str(body).encode()
        hdrs.setdefault("content-type", "application/json")
        cookies = [str(c) for c in out.get("cookies") or []]
        return self._send(handler, int(out["statusCode"]), {**hdrs, **extra}, data, cookies=cookies, head=head)

    @staticmethod
    def _allowed(cors: dict[str, Any], origin: str) -> bool:
        origins = cors.get("AllowOrigins") or []
        return "*" in origins or origin in origins

    def _cors_headers(self, cors: dict[str, Any], origin: str) -> dict[str, str]:
        if not self._allowed(cors, origin):
            return {}
        out = {"access-control-allow-origin": "*" if "*" in cors["AllowOrigins"] and not cors.get(
            "AllowCredentials") else origin}
        if cors.get("ExposeHeaders"):
            out["access-control-expose-headers"] = ",".join(cors["ExposeHeaders"])
        if cors.get("AllowCredentials"):
            out["access-control-allow-credentials"] = "true"
        return out

    def _preflight(self, handler: BaseHTTPRequestHandler, cors: dict[str, Any], origin: str,
                   headers: dict[str, str]) -> None:
        want = headers["access-control-request-method"].upper()
        methods = [m.upper() for m in cors.get("AllowMethods") or []]
        if not self._allowed(cors, origin) or (methods and "*" not in methods and want not in methods):
            return self._send(handler, 204, {})
        out = self._cors_headers(cors, origin)
        out.pop("access-control-expose-headers", None)
        out["access-control-allow-methods"] = ",".join(methods or [want])
        if cors.get("AllowHeaders"):
            out["access-control-allow-headers"] = ",".join(cors["AllowHeaders"])
        if cors.get("MaxAge") is not None:
            out["access-control-max-age"] = str(cors["MaxAge"])
        return self._send(handler, 204, out)

    @staticmethod
    def _send(handler: BaseHTTPRequestHandler, status: int, headers: dict[str, str], body: bytes = b"",
              cookies: list[str] | None = None, head: bool = False) -> None:
        handler.send_response(status)
        for k, v in headers.items():
            if k not in ("content-length", "transfer-encoding", "connection"):
                handler.send_header(k, v)
        for c in cookies or []:
            handler.send_header("set-cookie", c)
        handler.send_header("Content-Length", str(len(body)))
        handler.end_headers()
        if not head and body:
            handler.wfile.write(body)

    def _lambda_invoke(self, handler: BaseHTTPRequestHandler, path: str, body: bytes) -> None:
        """Lambda's Invoke API for the shims' own calls: Event invocations run in the background (two retries on
        a function error, as Lambda's async queue does); RequestResponse runs now."""
        arn = urllib.parse.unquote(path.split("/")[3])
        if not arn.startswith("arn:"):
            arn = f"arn:aws:lambda:{self.region}:{ACCOUNT}:function:{arn}"
        try:
            event = json.loads(body or b"{}")
        except ValueError:
            return self._send(handler, 400, {"content-type": "application/json"}, b'{"message":"invalid payload"}')
        if handler.headers.get("X-Amz-Invocation-Type", "RequestResponse") == "Event":
            def later() -> None:
                for _ in range(3):
                    try:
                        if self.invoke(arn, event)["kind"] == "response":
                            return
                    except InvokeError:
                        pass
                    time.sleep(0.5)

            threading.Thread(target=later, daemon=True).start()
            return self._send(handler, 202, {"content-type": "application/json"}, b"")
        try:
            out = self.invoke(arn, event)
        except InvokeError as exc:
            return self._send(handler, 500, {"content-type": "application/json"},
                              json.dumps({"message": str(exc)}).encode())
        hdrs = {"content-type": "application/json"}
        if out["kind"] == "error":
            hdrs["x-amz-function-error"] = "Unhandled"
        return self._send(handler, 200, hdrs, json.dumps(out["body"]).encode())

    # ------------------------------------------------------------------ lifecycle
    def start(self, port: int = 0) -> int:
        emu = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:
                """Quiet."""

            def handle_one_request(self) -> None:
                try:
                    super().handle_one_request()
                except (BrokenPipeError, ConnectionResetError):
                    self.close_connection = True

            def _any(self) -> None:
                emu.serve(self)

            do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = do_HEAD = do_OPTIONS = _any

        class Server(ThreadingHTTPServer):
            request_queue_size = 256
            daemon_threads = True

        self.server = Server(("127.0.0.1", port), Handler)
        self.port = int(self.server.server_address[1])
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self.port

    def stop(self) -> None:
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()
        for pool in list(self.pools.values()):
            for sb in pool.sandboxes:
                self._kill(sb)
        self.shipper.drain()
        self.shipper.stop()
        shutil.rmtree(self.workdir, ignore_errors=True)
