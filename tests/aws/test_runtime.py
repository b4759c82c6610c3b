"""The Lambda side of Flux run for real: the node shim (esbuild bundle, as deployed to nodejs20.x)
and the Deno layer (its real bootstrap + deno binary, unpacked from the layer zip) as processes
against a Lambda Runtime API server, with API Gateway v2 events; secrets come from moto's Secrets
Manager through the runtime's own SigV4 client."""

from __future__ import annotations

import base64
import json
import os
import subprocess
import threading
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import unquote

import pytest
from aws_faults import Rule
from aws_lib import REGION, FaultyMotoServer
from flux_aws import layer, packaging
from lambda_runtime_api import RuntimeApi, UnixForwarder

from flux_plan.artifacts import ArtifactStore
from flux_plan.project import load_project

PROBE = """
import { defineFunction } from "@flux/functions";

export default defineFunction({
  name: "FNNAME",
  handler: async ({ input, ctx }) => {
    if (input.fail) throw new Error("boom: " + input.fail);
    if (input.db) return { rows: await ctx.db.query(input.db) };
    const token = await ctx.secrets.get("API_TOKEN");
    ctx.log("probing", { n: input.n });
    ctx.log("token is " + token);
    return {
      n: input.n ?? null,
      app: ctx.env.APP_NAME ?? null,
      token_len: token.length,
      request_id: ctx.requestId,
      runtime: typeof Deno === "undefined" ? "node" : "deno",
    };
  },
});
"""
TOKEN = "tok-3f9a-secret"
FN_ARN = f"arn:aws:lambda:{REGION}:123456789012:function:flux-probe-test-NAME:live"


@pytest.fixture(scope="module")
def bundles(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Task dirs (what Lambda unpacks to /var/task) of a node and a deno probe function."""
    root = tmp_path_factory.mktemp("probe")
    (root / "flux.project.json").write_text(json.dumps({"name": "probe"}))
    for name, runtime in (("probe_node", "node"), ("probe_deno", "deno")):
        d = root / "functions" / name
        d.mkdir(parents=True)
        (d / "index.ts").write_text(PROBE.replace("FNNAME", name))
        (d / "flux.json").write_text(json.dumps({"name": name, "runtime": runtime}))
    project = load_project(root)
    store = ArtifactStore(root)
    out: dict[str, Path] = {}
    for spec in project.functions:
        zip_bytes = packaging.node_zip(store.ensure(spec)) if spec.runtime == "node" else packaging.deno_zip(
            store.ensure(spec))
        task = root / "task" / spec.name
        task.mkdir(parents=True)
        import io

        zipfile.ZipFile(io.BytesIO(zip_bytes)).extractall(task)
        out[spec.runtime] = task
    return out


@pytest.fixture(scope="module")
def deno_layer(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The real layer zip, unpacked (Lambda unpacks it to /opt), modes preserved."""
    dest = tmp_path_factory.mktemp("opt")
    with zipfile.ZipFile(layer.build_layer_zip()) as zf:
        for info in zf.infolist():
            zf.extract(info, dest)
            mode = (info.external_attr >> 16) & 0o777
            if mode:
                (dest / info.filename).chmod(mode)
    return dest


def _secrets(moto: FaultyMotoServer) -> None:
    import boto3

    sm = boto3.client("secretsmanager", endpoint_url=moto.url, region_name=REGION)
    sm.create_secret(Name="flux/probe/test/API_TOKEN", SecretString=TOKEN)
    sm.create_secret(Name="flux/probe/test/APP_NAME", SecretString="probe-app")


@pytest.fixture
def tcp_database(pg_url: str) -> Iterator[str]:
    """The test database, migrated with examples/todo's schema, as a TCP URL."""
    from urllib.parse import parse_qs, urlparse

    import psycopg

    from flux_plan import migrations
    from flux_plan.project import load_project

    todo = Path(__file__).resolve().parents[2] / "examples" / "todo"
    with psycopg.connect(pg_url, autocommit=True) as conn:
        for mig in load_project(todo).migrations:
            migrations.apply(conn, mig, (todo / mig.path).read_text())
    u = urlparse(pg_url)
    sock_dir = parse_qs(u.query)["host"][0]
    fwd = UnixForwarder(f"{sock_dir}/.s.PGSQL.5432")
    try:
        yield f"postgresql://postgres:db-pass-9z@127.0.0.1:{fwd.port}{u.path}"
    finally:
        fwd.close()


def _target_function(moto: FaultyMotoServer, name: str) -> None:
    """The function (with its `live` alias) the async shim re-invokes; moto accepts the Event call."""
    import io

    import boto3

    iam = boto3.client("iam", endpoint_url=moto.url, region_name=REGION)
    role = iam.create_role(RoleName=name, AssumeRolePolicyDocument=json.dumps({"Version": "2012-10-17", "Statement": []}))
    lam = boto3.client("lambda", endpoint_url=moto.url, region_name=REGION)
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("index.mjs", "export const handler = async () => ({});")
    lam.create_function(FunctionName=name, Runtime="nodejs20.x", Role=role["Role"]["Arn"], Handler="index.handler",
                        Code={"ZipFile": buf.getvalue()})
    version = lam.publish_version(FunctionName=name)["Version"]
    lam.create_alias(FunctionName=name, Name="live", FunctionVersion=version)


class Runner:
    def __init__(self, proc: subprocess.Popen[str], api: RuntimeApi) -> None:
        self.proc, self.api = proc, api
        self.lines: list[str] = []
        threading.Thread(target=self._drain, daemon=True).start()

    def _drain(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line.rstrip("\n"))

    def invoke(self, event: Any) -> Any:
        try:
            return self.api.invoke(event, timeout=20)
        except Exception as exc:
            raise AssertionError("no answer; process output:\n" + "\n".join(self.lines[-30:])) from exc

    def stop(self) -> None:
        self.proc.kill()
        self.proc.wait(timeout=10)
        self.api.stop()

    def wait_record(self, pred: Any, timeout: float = 10.0) -> dict[str, Any]:
        """The first log record matching `pred`; stdout is drained by a thread, so a record can
        arrive a moment after the Runtime API got the response."""
        import time

        deadline = time.monotonic() + timeout
        while True:
            for rec in self.records():
                if pred(rec):
                    return rec
            if time.monotonic() > deadline:
                raise AssertionError("no such log record; output:\n" + "\n".join(self.lines[-20:]))
            time.sleep(0.05)

    def records(self) -> list[dict[str, Any]]:
        out = []
        for line in self.lines:
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(rec, dict):
                out.append(rec)
        return out


def spawn(runtime: str, moto: FaultyMotoServer, bundles: dict[str, Path], deno_layer: Path, tmp_path: Path,
          **extra: str) -> Runner:
    name = f"probe_{runtime}"
    api = RuntimeApi(function_arn=FN_ARN.replace("NAME", name))
    address = api.start()
    env = {
        "PATH": os.environ["PATH"],
        "HOME": str(tmp_path),
        "AWS_LAMBDA_RUNTIME_API": address,
        "LAMBDA_TASK_ROOT": str(bundles[runtime]),
        "_HANDLER": "index.mjs",
        "AWS_LAMBDA_FUNCTION_NAME": f"flux-probe-test-{name}",
        "AWS_REGION": REGION,
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_SESSION_TOKEN": "testing",
        "AWS_ENDPOINT_URL": moto.url,
        "FLUX_FUNCTION": name,
        "FLUX_SECRET_PREFIX": "flux/probe/test/",
        "FLUX_SECRET_KEYS": "API_TOKEN",
        "FLUX_ENV_KEYS": "APP_NAME",
        "FLUX_ASYNC": "0",
        "FLUX_MAX_BODY_BYTES": "2000",
        **extra,
    }
    if runtime == "deno":
        cmd = [str(deno_layer / "bootstrap")]
        env.update({"FLUX_LAYER_DIR": str(deno_layer), "DENO_DIR": str(tmp_path / "deno")})
    else:  # nodejs20.x calls index.handler; the same runtime loop stands in for AWS's node runtime client
        # (run from the layer's flux/ dir: the shared query.mjs sits beside the shim there, as on AWS)
        cmd = ["node", str(deno_layer / "flux" / "loop.mjs")]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    return Runner(proc, api)


@pytest.fixture(params=["node", "deno"])
def runner(request: pytest.FixtureRequest, moto: FaultyMotoServer, bundles: dict[str, Path],
           deno_layer: Path, tmp_path: Path) -> Iterator[Runner]:
    _secrets(moto)
    r = spawn(request.param, moto, bundles, deno_layer, tmp_path)
    try:
        yield r
    finally:
        r.stop()


def apigw_event(body: str | None, *, b64: bool = False, method: str = "POST") -> dict[str, Any]:
    return {
        "version": "2.0",
        "routeKey": f"{method} /probe",
        "rawPath": "/probe",
        "headers": {"content-type": "application/json"},
        "requestContext": {"http": {"method": method, "path": "/probe"}, "requestId": "gw-req"},
        "body": base64.b64encode(body.encode()).decode() if (b64 and body is not None) else body,
        "isBase64Encoded": b64,
    }


def test_shim_serves_api_gateway_events(runner: Runner) -> None:
    ok = runner.invoke(apigw_event(json.dumps({"n": 7})))
    assert ok.kind == "response" and ok.body["statusCode"] == 200
    assert ok.body["headers"]["x-flux-request-id"] == ok.request_id
    result = json.loads(ok.body["body"])
    runtime = result["runtime"]
    assert result == {"n": 7, "app": "probe-app", "token_len": len(TOKEN), "request_id": ok.request_id,
                      "runtime": runtime}

    b64 = runner.invoke(apigw_event(json.dumps({"n": 8}), b64=True))
    assert json.loads(b64.body["body"])["n"] == 8

    bad = runner.invoke(apigw_event("{not json"))
    assert bad.body["statusCode"] == 400 and "invalid JSON body" in bad.body["body"]
    big = runner.invoke(apigw_event(json.dumps({"pad": "x" * 3000})))
    assert big.body["statusCode"] == 413

    boom = runner.invoke(apigw_event(json.dumps({"fail": "kaput"})))
    assert boom.body["statusCode"] == 500
    err = json.loads(boom.body["body"])
    assert err == {"error": "internal error", "request_id": boom.request_id}  # no stack to the caller

    # async Event invocation of the function itself: an error propagates (Lambda retries / dead-letters)
    failed = runner.invoke({"flux_async": True, "input": {"fail": "later"}, "request_id": "async-1"})
    assert failed.kind == "error" and "boom: later" in failed.body["errorMessage"]
    done = runner.invoke({"flux_async": True, "input": {"n": 1}, "request_id": "async-2"})
    assert done.kind == "response" and done.body == {"ok": True, "request_id": "async-2"}

    probing = runner.wait_record(lambda r: r.get("msg") == "probing" and r["request_id"] == ok.request_id)
    assert probing["function"] == f"probe_{runtime}" and probing["data"] == {"n": 7}
    assert probing["level"] == "info" and probing["ts"]
    runner.wait_record(lambda r: r.get("msg") == "token is ***")
    failure = runner.wait_record(lambda r: r.get("msg") == "handler failed" and r["request_id"] == boom.request_id)
    runner.wait_record(lambda r: r.get("msg") == "async invocation done" and r["request_id"] == "async-2")
    assert all(TOKEN not in line for line in runner.lines)  # known secret values are masked in logs
    assert "boom: kaput" in failure["data"]["error"] and "Error" in failure["data"]["stack"]


@pytest.mark.parametrize("runtime", ["node", "deno"])
def test_async_route_answers_202_and_invokes_its_alias(runtime: str, moto: FaultyMotoServer,
                                                       bundles: dict[str, Path], deno_layer: Path,
                                                       tmp_path: Path) -> None:
    _secrets(moto)
    _target_function(moto, f"flux-probe-test-probe_{runtime}")
    r = spawn(runtime, moto, bundles, deno_layer, tmp_path, FLUX_ASYNC="1")
    try:
        accepted = r.invoke(apigw_event(json.dumps({"n": 3})))
        assert accepted.body["statusCode"] == 202
        assert json.loads(accepted.body["body"]) == {"request_id": accepted.request_id, "status": "accepted"}
    finally:
        r.stop()
    arn = FN_ARN.replace("NAME", f"probe_{runtime}")
    invocations = [op for svc, op in moto.faults.calls if svc == "lambda" and op.endswith("/invocations")]
    assert len(invocations) == 1 and unquote(invocations[0]).endswith(f"/functions/{arn}/invocations")


@pytest.mark.parametrize("runtime", ["node", "deno"])
def test_ctx_db_query_runs_compiled_statements(runtime: str, moto: FaultyMotoServer, bundles: dict[str, Path],
                                               deno_layer: Path, tmp_path: Path, tcp_database: str) -> None:
    import boto3

    _secrets(moto)
    boto3.client("secretsmanager", endpoint_url=moto.url, region_name=REGION).create_secret(
        Name="flux/probe/test/.database_url", SecretString=tcp_database)
    r = spawn(runtime, moto, bundles, deno_layer, tmp_path, FLUX_DATABASE_SECRET="flux/probe/test/.database_url")

    def db(params: dict) -> Any:
        out = r.invoke(apigw_event(json.dumps({"db": params})))
        assert out.body["statusCode"] == 200, (out.body, r.lines[-5:])
        return json.loads(out.body["body"])["rows"]

    try:
        created = db({"table": "todos", "operation": "insert",
                      "values": [{"title": "write tests", "due_date": "2026-12-01"}, {"title": "ship", "due_date": None}],
                      "returning": ["id", "title", "done", "due_date"]})
        assert created == [{"id": 1, "title": "write tests", "done": False, "due_date": "2026-12-01"},
                           {"id": 2, "title": "ship", "done": False, "due_date": None}]
        db({"table": "todos", "operation": "update", "values": {"done": True},
            "filters": [{"column": "id", "op": "eq", "value": 2}]})
        rows = db({"table": "todos", "operation": "select", "columns": ["id", "title", "created_at"],
                   "filters": [{"column": "done", "op": "eq", "value": False}, {"column": "title", "op": "like", "value": "write%"}],
                   "order": [{"column": "id", "direction": "desc"}], "limit": 10})
        assert [(x["id"], x["title"]) for x in rows] == [(1, "write tests")] and rows[0]["created_at"].startswith("20")
        bad = r.invoke(apigw_event(json.dumps({"db": {"table": "todos; DROP TABLE todos", "operation": "select"}})))
        assert bad.body["statusCode"] == 500
        failure = r.wait_record(lambda x: x.get("request_id") == bad.request_id and x.get("msg") == "handler failed")
        assert 'unknown table "todos; DROP TABLE todos" (tables: todos)' in failure["data"]["error"]
        assert db({"table": "todos", "operation": "select", "columns": ["id"]}) == [{"id": 1}, {"id": 2}]
        assert all("db-pass-9z" not in line for line in r.lines)
    finally:
        r.stop()


@pytest.mark.parametrize("runtime", ["node", "deno"])
def test_a_failed_async_enqueue_is_a_json_503_not_a_bare_502(runtime: str, moto: FaultyMotoServer,
                                                            bundles: dict[str, Path], deno_layer: Path,
                                                            tmp_path: Path) -> None:
    """The self-invoke used to run outside the handler's try: its error escaped the shim and API
    Gateway answered a bare 502 without the request id."""
    _secrets(moto)
    _target_function(moto, f"flux-probe-test-probe_{runtime}")
    moto.faults.rules[:] = [Rule("fail", service="lambda", operation="/invocations")]
    r = spawn(runtime, moto, bundles, deno_layer, tmp_path, FLUX_ASYNC="1")
    try:
        res = r.invoke(apigw_event(json.dumps({"n": 3})))
        assert res.kind == "response" and res.body["statusCode"] == 503
        assert json.loads(res.body["body"]) == {"error": "could not queue the request, retry later",
                                                "request_id": res.request_id}
        r.wait_record(lambda rec: rec.get("msg") == "async enqueue failed" and rec["request_id"] == res.request_id)
    finally:
        r.stop()
    assert moto.faults.injected


@pytest.mark.parametrize("runtime", ["node", "deno"])
def test_plain_env_values_reach_ctx_env(runtime: str, moto: FaultyMotoServer, bundles: dict[str, Path],
                                        deno_layer: Path, tmp_path: Path) -> None:
    """flux.json `env` (non-secret) arrives as FLUX_PLAIN_ENV and is part of ctx.env."""
    _secrets(moto)
    r = spawn(runtime, moto, bundles, deno_layer, tmp_path, FLUX_ENV_KEYS="",
              FLUX_PLAIN_ENV=json.dumps({"APP_NAME": "plain-app"}))
    try:
        ok = r.invoke(apigw_event(json.dumps({"n": 1})))
        assert ok.body["statusCode"] == 200 and json.loads(ok.body["body"])["app"] == "plain-app"
    finally:
        r.stop()
