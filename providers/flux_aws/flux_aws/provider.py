"""AwsProvider: Flux's resources as boto3 calls (no CloudFormation, no CDK: Flux is the reconciler).

api.<stage>      -> API Gateway v2 HTTP API + auto-deployed $default stage (output: url)
secret.<KEY>     -> Secrets Manager flux/<project>/<stage>/<KEY> (state: ARN + version + fingerprint)
function.<name>  -> log group + IAM role (least privilege) + Lambda + published version + `live` alias
                    (+ on-failure queue and event-invoke config when async)
route.<M>_<path> -> AWS_PROXY 2.0 integration to the alias + route + lambda permission for that API
migration.<file> -> flux_plan.migrations against the database named by the stage's database_url_env
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import threading
import time
import uuid
from collections.abc import Iterator
from typing import Any

from botocore.exceptions import ClientError

from flux_aws import apigw, iam, lambda_, layer, logs, packaging, secrets
from flux_aws.clients import AwsClients
from flux_aws.naming import Names
from flux_aws.retry import aws_call
from flux_aws.s3_backend import S3Backend
from flux_plan.errors import FluxError, ProviderError
from flux_plan.model import FunctionSpec, ProviderResult, Resource, ResourceState
from flux_plan.providers import InvokeResult, ProviderContext

NODE_RUNTIMES = {"nodejs20.x": "node20", "nodejs22.x": "node22"}
DENO_RUNTIME = "provided.al2023"
ARCHITECTURES = ("x86_64", "arm64")
API_MAX_TIMEOUT = 30  # seconds: API Gateway HTTP APIs end every integration there


class AwsProvider:
    name = "aws"

    def __init__(self) -> None:
        self._layer_lock = threading.Lock()
        self._layer_arns: dict[str, str] = {}
        self._db_lock = threading.Lock()
        self._db_secret: str | None = None
        self._db_secret_known = False  # looked at yet in this command

    # ----------------------------------------------------------------------------- wiring
    def configure(self, ctx: ProviderContext) -> None:
        self.ctx = ctx
        self.settings = ctx.stage.settings
        self.where = f"flux.project.json (stages.{ctx.stage.name})"
        self.aws = AwsClients.from_settings(self.settings, self.where)
        self.names = Names(ctx.project.name, ctx.stage.name, self.aws.region, self.aws.partition)
        self.node_runtime = str(self.settings.get("node_runtime", "nodejs20.x"))
        if self.node_runtime not in NODE_RUNTIMES:
            raise FluxError(f"{self.where}: node_runtime must be one of {sorted(NODE_RUNTIMES)}")
        self.log_retention = int(self.settings.get("log_retention_days", 14))
        self.async_retries = int(self.settings.get("async_retries", 2))
        if not 0 <= self.async_retries <= 2:
            raise FluxError(f"{self.where}.async_retries must be 0, 1 or 2 (Lambda's limit)")
        self.architecture = str(self.settings.get("architecture", "x86_64"))
        if self.architecture not in ARCHITECTURES:
            raise FluxError(f"{self.where}.architecture must be one of {list(ARCHITECTURES)}")
        self.user_tags = {str(k): str(v) for k, v in dict(self.settings.get("tags") or {}).items()}
        vpc = self.settings.get("vpc")
        self.vpc: dict[str, list[str]] | None = None
        if vpc:
            if not isinstance(vpc, dict) or not vpc.get("subnet_ids") or not vpc.get("security_group_ids"):
                raise FluxError(f"{self.where}.vpc needs \"subnet_ids\" and \"security_group_ids\" (non-empty lists)")
            self.vpc = {"SubnetIds": sorted(map(str, vpc["subnet_ids"])),
                        "SecurityGroupIds": sorted(map(str, vpc["security_group_ids"]))}

    def _tags(self, address: str) -> dict[str, str]:
        """The user's `tags` plus Flux's own (which win: destroy finds resources by them)."""
        return {**self.user_tags, **self.names.tags(address)}

    def _arch(self, spec: FunctionSpec) -> str:
        return spec.architecture or self.architecture

    def force_replace(self, resource_type: str) -> frozenset[str]:
        return frozenset()  # Lambda changes runtime, code and config in place

    def state_backend(self) -> S3Backend | None:
        state = self.settings.get("state")
        if not state:
            return None
        if not isinstance(state, dict):
            raise FluxError(f"{self.where}.state must be an object like {{\"backend\": \"s3\", \"bucket\": ..., \"key\": ...}}")
        backend = state.get("backend", "local")
        if backend == "local":
            return None
        if backend != "s3":
            raise FluxError(f"{self.where}.state.backend: unknown backend {backend!r}", hint='use "s3" or "local"')
        bucket, key = state.get("bucket"), state.get("key")
        if not bucket or not key:
            raise FluxError(f"{self.where}.state: the s3 backend needs \"bucket\" and \"key\"")
        return S3Backend(self.aws.client("s3"), str(bucket), str(key))

    def _c(self, service: str) -> Any:
        return self.aws.client(service)

    def _spec(self, name: str) -> FunctionSpec:
        for spec in self.ctx.project.functions:
            if spec.name == name:
                return spec
        raise ProviderError(f"function {name!r} is not in the project", address=f"function.{name}")

    # ----------------------------------------------------------------------------- dispatch
    def create(self, resource: Resource) -> ProviderResult:
        return self._apply(resource, None)

    def update(self, resource: Resource, prior: ResourceState) -> ProviderResult:
        return self._apply(resource, prior)

    def _apply(self, resource: Resource, prior: ResourceState | None) -> ProviderResult:
        handler = getattr(self, f"_put_{resource.type}", None)
        if handler is None:
            raise ProviderError(f"aws provider: unknown resource type {resource.type}", address=resource.address)
        try:
            return handler(resource, prior)
        except ClientError as exc:
            raise ProviderError(f"{resource.address}: {exc}", address=resource.address) from exc

    def read(self, address: str, prior: ResourceState) -> dict[str, Any] | None:
        try:
            return getattr(self, f"_read_{prior.type}")(address, prior)
        except ClientError as exc:
            raise ProviderError(f"{address}: refresh failed: {exc}", address=address) from exc

    def delete(self, address: str, prior: ResourceState) -> None:
        try:
            getattr(self, f"_delete_{prior.type}")(address, prior)
        except ClientError as exc:
            raise ProviderError(f"{address}: delete failed: {exc}", address=address) from exc

    # ----------------------------------------------------------------------------- api
    def _put_api(self, res: Resource, prior: ResourceState | None) -> ProviderResult:
        out = apigw.ensure_api(self._c("apigatewayv2"), self.names.api, self._tags(res.address),
                               cors=res.attributes.get("cors"))
        return ProviderResult(outputs=out)

    def _read_api(self, address: str, prior: ResourceState) -> dict[str, Any] | None:
        api_id = prior.outputs.get("api_id")
        if not api_id:
            return None
        exists, live = apigw.read_api_cors(self._c("apigatewayv2"), api_id)
        if not exists:
            return None
        attrs = dict(prior.attributes)
        if not apigw.same_cors(live, attrs.get("cors")):  # CORS edited by hand: the plan shows it, apply repairs
            if live is None:
                attrs.pop("cors", None)
            else:
                attrs["cors"] = live
        return attrs

    def _delete_api(self, address: str, prior: ResourceState) -> None:
        if prior.outputs.get("api_id"):
            apigw.delete_api(self._c("apigatewayv2"), prior.outputs["api_id"])

    # ----------------------------------------------------------------------------- secrets
    def _put_secret(self, res: Resource, prior: ResourceState | None) -> ProviderResult:
        value = self.ctx.secrets.get(res.name)
        out = secrets.put_secret(
            self._c("secretsmanager"),
            self.names.secret(res.name),
            value,
            str(res.attributes["fingerprint"]),
            self._tags(res.address),
        )
        return ProviderResult(outputs={**out, "name": self.names.secret(res.name)})

    def _read_secret(self, address: str, prior: ResourceState) -> dict[str, Any] | None:
        live = secrets.describe(self._c("secretsmanager"), self.names.secret(address.split(".", 1)[1]))
        if live is None:
            return None
        attrs = dict(prior.attributes)
        if prior.outputs.get("version_id") and live["version_id"] != prior.outputs["version_id"]:
            attrs["fingerprint"] = f"changed outside flux (version {live['version_id']})"
        return attrs

    def _delete_secret(self, address: str, prior: ResourceState) -> None:
        secrets.delete_secret(self._c("secretsmanager"), self.names.secret(address.split(".", 1)[1]))

    # ----------------------------------------------------------------------------- functions
    def _deno_layer(self, arch: str) -> str:
        """This stage's Deno layer for `arch` (one layer name per architecture, built from the `deno`
        wheel of that platform)."""
        with self._layer_lock:
            if arch not in self._layer_arns:
                state = self.settings.get("state") or {}
                bucket = self.settings.get("artifact_bucket") or (state.get("bucket") if isinstance(state, dict) else None)
                key_prefix = f"flux-artifacts/{self.names.project}/{self.names.stage}/"
                self._layer_arns[arch] = layer.ensure_layer(
                    self._c("lambda"), self._c("s3"), self.names.deno_layer_for(arch), bucket, key_prefix, arch
                )
            return self._layer_arns[arch]

    def _database_secret(self) -> str | None:
        """Name of the stage's database-URL secret for ctx.db: written from the variable named by
        `database_url_env` when it is set here, else reused when an earlier deploy wrote it."""
        with self._db_lock:
            if not self._db_secret_known:
                name = self.names.database_secret
                url = self._db_url("function", required=False)
                sm = self._c("secretsmanager")
                if url:
                    secrets.sync_value(sm, name, url, self._tags("database"))
                    self._db_secret = name
                else:
                    self._db_secret = name if secrets.describe(sm, name) else None
                self._db_secret_known = True
            return self._db_secret

    def expected_policy(self, fn: str, secret_keys: list[str], is_async: bool,
                        db_secret: str | None = None, vpc: bool = False) -> dict[str, Any]:
        account = self.aws.account_id()
        n = self.names
        fname = n.function(fn)
        names = [n.secret(k) for k in secret_keys] + ([db_secret] if db_secret else [])
        return iam.function_policy(
            log_group_arn=n.arn("logs", account, f"log-group:{n.log_group(fn)}"),
            secret_arn_patterns=[n.arn("secretsmanager", account, f"secret:{name}-??????") for name in names],
            self_invoke_arn=n.arn("lambda", account, f"function:{fname}:{lambda_.ALIAS}") if is_async else None,
            failure_queue_arn=n.arn("sqs", account, n.failure_queue(fn)) if is_async else None,
            vpc=vpc,
        )

    def _put_function(self, res: Resource, prior: ResourceState | None) -> ProviderResult:
        spec = self._spec(res.name)
        a = res.attributes
        n = self.names
        tags = self._tags(res.address)
        existing = {d.split(".", 1)[1] for d in res.depends_on if d.startswith("secret.")}
        secret_keys = sorted(k for k in a.get("secrets", []) if k in existing)
        env_keys = sorted(k for k in a.get("env_keys", []) if k in existing)
        readable = sorted({*secret_keys, *env_keys})
        is_async = bool(a.get("async"))
        fname = n.function(res.name)

        logs.ensure_log_group(self._c("logs"), n.log_group(res.name), self.log_retention, tags)
        db_secret = self._database_secret() if spec.uses_db else None  # ctx.db callers only
        policy = self.expected_policy(res.name, readable, is_async, db_secret, vpc=self.vpc is not None)
        role_arn = iam.ensure_role(self._c("iam"), n.role(res.name), policy, tags)
        queue_arn = None
        if is_async:
            _, queue_arn = lambda_.ensure_queue(self._c("sqs"), n.failure_queue(res.name), tags)

        bundle_dir = self.ctx.artifacts.ensure(spec)
        arch = self._arch(spec)
        if a["runtime"] == "node":
            package = packaging.node_zip(bundle_dir, NODE_RUNTIMES[self.node_runtime])
            runtime, handler, layers = self.node_runtime, "index.handler", []
        else:
            package = packaging.deno_zip(bundle_dir)
            runtime, handler, layers = DENO_RUNTIME, "index.mjs", [self._deno_layer(arch)]
        env = {
            "FLUX_PROJECT": n.project,
            "FLUX_STAGE": n.stage,
            "FLUX_FUNCTION": res.name,
            "FLUX_DIGEST": str(a.get("digest", "")),
            "FLUX_SECRET_PREFIX": n.secret_prefix,
            "FLUX_SECRET_KEYS": ",".join(secret_keys),
            "FLUX_ENV_KEYS": ",".join(env_keys),
            "FLUX_ASYNC": "1" if is_async else "0",
            "FLUX_DATABASE_SECRET": db_secret or "",
        }
        if spec.env:
            env["FLUX_PLAIN_ENV"] = json.dumps(dict(spec.env), sort_keys=True, separators=(",", ":"))
        cfg = lambda_.FunctionConfig(
            name=fname,
            runtime=runtime,
            handler=handler,
            role_arn=role_arn,
            timeout=int(a.get("timeout", 30)),
            memory=int(a.get("memory", 256)),
            env=env,
            layers=layers,
            tags=tags,
            architecture=arch,
            vpc=self.vpc,
            reserved_concurrency=self._reserved_concurrency(spec),
        )
        out = lambda_.deploy(self._c("lambda"), cfg, package, packaging.code_sha256(package))
        if is_async and queue_arn:
            lambda_.set_async_config(self._c("lambda"), fname, queue_arn, self.async_retries, 3600)
        if prior is None:
            self._restore_route_permissions(fname, out["alias_arn"], spec.timeout)
        history = list((prior.outputs.get("versions") if prior else None) or [])
        if not history or history[-1] != out["version"]:
            history.append(out["version"])
        return ProviderResult(
            outputs={
                **out,
                "function_name": fname,
                "role_name": n.role(res.name),
                "role_arn": role_arn,
                "log_group": n.log_group(res.name),
                "policy": policy,
                "failure_queue_arn": queue_arn,
                "layers": layers,
                "architecture": arch,
                "reserved_concurrency": cfg.reserved_concurrency,
                "versions": history[-20:],
            }
        )

    def _reserved_concurrency(self, spec: FunctionSpec) -> int | None:
        """flux.json `concurrency`, when the file sets it (the model's default of 10 is the local
        pool's size: reserving it on every Lambda would starve the account's shared pool)."""
        cfg = self.ctx.project.root / spec.dir / "flux.json"
        try:
            data = json.loads(cfg.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None
        return spec.concurrency if isinstance(data, dict) and "concurrency" in data else None

    def _read_function(self, address: str, prior: ResourceState) -> dict[str, Any] | None:
        fn = address.split(".", 1)[1]
        fname = prior.outputs.get("function_name") or self.names.function(fn)
        live = lambda_.get(self._c("lambda"), fname)
        if live is None:
            return None
        cfg = live["Configuration"]
        attrs = dict(prior.attributes)
        attrs["memory"] = cfg.get("MemorySize", attrs.get("memory"))
        attrs["timeout"] = cfg.get("Timeout", attrs.get("timeout"))
        attrs["runtime"] = "deno" if str(cfg.get("Runtime", "")).startswith("provided") else "node"
        attrs["digest"] = cfg.get("Environment", {}).get("Variables", {}).get("FLUX_DIGEST", "")
        live_arch = (cfg.get("Architectures") or ["x86_64"])[0]
        if "architecture" in attrs or live_arch != "x86_64":
            attrs["architecture"] = live_arch
        if "reserved_concurrency" in prior.outputs and lambda_.reserved_concurrency(live) != prior.outputs[
                "reserved_concurrency"]:
            attrs["concurrency"] = f"reserved {lambda_.reserved_concurrency(live)} (edited outside flux)"
        vpc = cfg.get("VpcConfig") or {}
        live_vpc = {"subnet_ids": sorted(vpc.get("SubnetIds") or []),
                    "security_group_ids": sorted(vpc.get("SecurityGroupIds") or [])}
        if "vpc" in attrs or live_vpc["subnet_ids"]:
            want = attrs.get("vpc") or {}
            same = want and all(sorted(want.get(k) or []) == live_vpc[k] for k in live_vpc)
            if not same:
                attrs["vpc"] = live_vpc
        if not logs.log_group_exists(self._c("logs"), prior.outputs.get("log_group") or self.names.log_group(fn)):
            attrs["log_group"] = "deleted outside flux"
        version = lambda_.alias_version(self._c("lambda"), fname)
        if version:  # the code that takes traffic is the live version's, not $LATEST's (a failed health check
            # leaves $LATEST on code that never went live)
            served = aws_call(self._c("lambda").get_function_configuration, FunctionName=fname, Qualifier=version)
            attrs["digest"] = served.get("Environment", {}).get("Variables", {}).get("FLUX_DIGEST", "")
        if version != prior.outputs.get("version"):
            if version and version in (prior.outputs.get("versions") or []):  # a version Flux published
                attrs["alias"] = f"by flux rollback: live -> {version}; apply deploys the current code again"
            else:
                attrs["alias"] = f"live -> {version}" if version else "live alias missing"
        role = prior.outputs.get("role_name")
        if role and iam.read_policy(self._c("iam"), role) != prior.outputs.get("policy"):
            attrs["role_policy"] = "edited outside flux"
        return attrs

    def _delete_function(self, address: str, prior: ResourceState) -> None:
        fn = address.split(".", 1)[1]
        n = self.names
        lambda_.delete(self._c("lambda"), prior.outputs.get("function_name") or n.function(fn))
        iam.delete_role(self._c("iam"), prior.outputs.get("role_name") or n.role(fn))
        logs.delete_log_group(self._c("logs"), prior.outputs.get("log_group") or n.log_group(fn))
        if prior.outputs.get("failure_queue_arn") or prior.attributes.get("async"):
            lambda_.delete_queue(self._c("sqs"), n.failure_queue(fn))

    def _restore_route_permissions(self, fname: str, alias_arn: str, timeout: int) -> None:
        """A function (re)created under routes that survived (replace, or deleted outside Flux) lost
        its resource policy with it: grant the API again for every route integrated with it."""
        gw = self._c("apigatewayv2")
        api = apigw.find_api(gw, self.names.api, self.names.tags(f"api.{self.names.stage}"))
        if api is None:
            return
        integ = apigw.find_integration(gw, api["ApiId"], alias_arn)
        if integ is None:
            return
        account = self.aws.account_id()
        for page in apigw._pages(gw, "get_routes", ApiId=api["ApiId"]):
            for route in page.get("Items", []):
                if route.get("Target") != f"integrations/{integ['IntegrationId']}":
                    continue
                method, path = route["RouteKey"].split(" ", 1)
                apigw.ensure_route(
                    gw, self._c("lambda"), api_id=api["ApiId"], method=method, path=path, function_name=fname,
                    alias_arn=alias_arn, timeout_s=timeout,
                    source_arn=self.names.arn("execute-api", account, f"{api['ApiId']}/*/{method}{path}"),
                )

    # ----------------------------------------------------------------------------- routes
    def _api_id(self) -> str:
        api = apigw.find_api(self._c("apigatewayv2"), self.names.api, self.names.tags(f"api.{self.names.stage}"))
        if api is None:
            raise ProviderError(f"api.{self.names.stage}: the HTTP API does not exist (apply it first)")
        return str(api["ApiId"])

    def _put_route(self, res: Resource, prior: ResourceState | None) -> ProviderResult:
        a = res.attributes
        api_id = self._api_id()
        fname = self.names.function(a["function"])
        lam = self._c("lambda")
        alias_arn = str(aws_call(lam.get_alias, FunctionName=fname, Name=lambda_.ALIAS)["AliasArn"])
        account = self.aws.account_id()
        source_arn = self.names.arn("execute-api", account, f"{api_id}/*/{a['method'].upper()}{a['path']}")
        if prior is not None and prior.attributes.get("function") not in (None, a["function"]):
            apigw.delete_route(self._c("apigatewayv2"), lam, api_id=api_id, outputs=prior.outputs,
                               function_name=self.names.function(prior.attributes["function"]))
        timeout = self._spec(a["function"]).timeout
        if timeout > API_MAX_TIMEOUT:
            self.ctx.log(f"warning: {res.address}: function {a['function']!r} may run {timeout} s, but API Gateway "
                         f"HTTP APIs answer 503 after {API_MAX_TIMEOUT} s; make it async or lower its timeout")
        out = apigw.ensure_route(
            self._c("apigatewayv2"), lam, api_id=api_id, method=a["method"], path=a["path"],
            function_name=fname, alias_arn=alias_arn, source_arn=source_arn, timeout_s=timeout,
        )
        return ProviderResult(outputs={**out, "api_id": api_id, "source_arn": source_arn, "alias_arn": alias_arn})

    def _read_route(self, address: str, prior: ResourceState) -> dict[str, Any] | None:
        api_id, route_id = prior.outputs.get("api_id"), prior.outputs.get("route_id")
        if not api_id or not route_id:
            return None
        target = apigw.route_target(self._c("apigatewayv2"), api_id, route_id)
        if target is None:
            return None
        attrs = dict(prior.attributes)
        if target != f"integrations/{prior.outputs.get('integration_id')}":
            attrs["target"] = target
        return attrs

    def _delete_route(self, address: str, prior: ResourceState) -> None:
        api_id = prior.outputs.get("api_id")
        if api_id:
            fn = prior.attributes.get("function")
            apigw.delete_route(self._c("apigatewayv2"), self._c("lambda"), api_id=api_id, outputs=prior.outputs,
                               function_name=self.names.function(fn) if fn else None)

    # ----------------------------------------------------------------------------- migrations
    def _db_url(self, address: str, required: bool) -> str | None:
        var = self.settings.get("database_url_env")
        url = os.environ.get(var) if var else None
        if not url and required:
            raise ProviderError(
                f"{address}: migrations need the stage database: set \"database_url_env\" in {self.where} "
                f"and export that variable ({var or 'e.g. DATABASE_URL'}) before applying",
                address=address,
            )
        return url

    def _put_migration(self, res: Resource, prior: ResourceState | None) -> ProviderResult:
        import psycopg

        from flux_plan import migrations

        mig = next((m for m in self.ctx.project.migrations if m.file == res.name), None)
        if mig is None:
            raise ProviderError(f"{res.address}: schema/{res.name} not found", address=res.address)
        url = self._db_url(res.address, required=True)
        sql = (self.ctx.project.root / mig.path).read_text(encoding="utf-8")
        with psycopg.connect(str(url), autocommit=True) as conn:
            done = migrations.apply(conn, mig, sql)
        return ProviderResult(outputs={"applied_at": str(done.applied_at), "duration_ms": done.duration_ms})

    def _read_migration(self, address: str, prior: ResourceState) -> dict[str, Any] | None:
        url = self._db_url(address, required=False)
        if not url:
            return prior.attributes  # no database reachable from here: trust the state
        import psycopg

        from flux_plan import migrations

        with psycopg.connect(url, autocommit=True) as conn:
            rows = {m.file: m for m in migrations.applied(conn)}
        row = rows.get(address.split(".", 1)[1])
        return None if row is None else {**prior.attributes, "checksum": row.checksum}

    def _delete_migration(self, address: str, prior: ResourceState) -> None:
        """Removing a migration file never drops anything (DESIGN §3)."""

    # ----------------------------------------------------------------------------- hooks
    def after_apply(self, resources: dict[str, ResourceState]) -> dict[str, Any]:
        api = resources.get(f"api.{self.names.stage}")
        return {"url": api.outputs.get("url")} if api and api.outputs.get("url") else {}

    def rollback(self, function: str, to_version: str | None = None) -> dict[str, str]:
        """Point `live` back at the previous published version (the next apply re-deploys the code)."""
        self._spec(function)
        try:
            before, after = lambda_.rollback(self._c("lambda"), self.names.function(function), to_version)
        except ClientError as exc:
            raise ProviderError(f"function.{function}: rollback failed: {exc}") from exc
        return {"function": function, "from_version": before, "to_version": after}

    def invoke(self, function: str, payload: Any, *, method: str | None = None) -> InvokeResult:
        """Invoke `live` directly with an API Gateway v2 event (no public URL needed)."""
        spec = self._spec(function)
        rid = str(uuid.uuid4())
        event = {
            "version": "2.0",
            "routeKey": f"{(method or spec.method).upper()} {spec.route}",
            "rawPath": spec.route,
            "headers": {"content-type": "application/json"},
            "requestContext": {"http": {"method": (method or spec.method).upper(), "path": spec.route}, "requestId": rid},
            "body": json.dumps(payload),
            "isBase64Encoded": False,
        }
        t0 = time.monotonic()
        resp = aws_call(
            self._c("lambda").invoke,
            FunctionName=self.names.function(function),
            Qualifier=lambda_.ALIAS,
            Payload=json.dumps(event).encode(),
            LogType="Tail",
        )
        ms = (time.monotonic() - t0) * 1000
        raw = resp["Payload"].read()
        try:
            doc = json.loads(raw)
        except json.JSONDecodeError:
            doc = raw.decode(errors="replace")
        if isinstance(doc, dict) and "statusCode" in doc:
            body: Any = doc.get("body")
            with contextlib.suppress(json.JSONDecodeError):
                body = json.loads(body) if isinstance(body, str) else body
            headers = {str(k): str(v) for k, v in (doc.get("headers") or {}).items()}
            return InvokeResult(int(doc["statusCode"]), body, headers.get("x-flux-request-id"), ms, headers)
        status = 500 if resp.get("FunctionError") else int(resp.get("StatusCode", 200))
        tail = base64.b64decode(resp.get("LogResult", "") or b"").decode(errors="replace")
        return InvokeResult(status, doc, resp.get("ResponseMetadata", {}).get("RequestId"), ms, {"x-log-tail": tail[-500:]})

    def logs(
        self,
        function: str | None,
        *,
        since_s: float | None,
        request_id: str | None,
        level: str | None,
        follow: bool,
    ) -> Iterator[dict[str, Any]]:
        fns = [function] if function else [f.name for f in self.ctx.project.functions]
        if function:
            self._spec(function)
        groups = {fn: self.names.log_group(fn) for fn in fns}
        return logs.read_records(
            self._c("logs"), groups, self.names.stage, since_s=since_s, request_id=request_id, level=level, follow=follow
        )

    def destroy_stage(self) -> None:
        """After destroy: everything this stage created goes, found by name AND tag as well as by
        state (a resource a crashed run created, or that state forgot, is not left behind): functions,
        roles, log groups, queues, the API, secrets (the database URL's too), both architectures'
        Deno layers and the uploaded layer zips. What cannot be deleted is listed, and the command
        fails (exit 1) so nobody believes the stage is gone."""
        n = self.names
        failed: list[str] = []

        def attempt(what: str, fn: Any, *args: Any) -> None:
            try:
                fn(*args)
            except (ClientError, ProviderError) as exc:
                failed.append(f"{what}: {exc}")

        lam, iam_c, logs_c, sqs, gw, sm = (self._c(x) for x in ("lambda", "iam", "logs", "sqs", "apigatewayv2",
                                                                 "secretsmanager"))

        def functions() -> None:
            for fn in aws_call(lambda: [f for pg in lam.get_paginator("list_functions").paginate()
                                        for f in pg.get("Functions", [])]):
                name = str(fn["FunctionName"])
                if name.startswith(n.prefix + "-") and n.owns(aws_call(lam.list_tags, Resource=fn["FunctionArn"])
                                                               .get("Tags", {})):
                    attempt(f"Lambda function {name}", lambda_.delete, lam, name)

        def roles() -> None:
            for name in aws_call(iam.list_stage_roles, iam_c, n.prefix, {"flux:project": n.project,
                                                                         "flux:stage": n.stage}):
                attempt(f"IAM role {name}", iam.delete_role, iam_c, name)

        def log_groups() -> None:
            prefix = f"/aws/lambda/{n.prefix}-"
            groups = aws_call(lambda: [g for pg in logs_c.get_paginator("describe_log_groups").paginate(
                logGroupNamePrefix=prefix) for g in pg.get("logGroups", [])])
            for g in groups:
                name = str(g["logGroupName"])
                if n.owns(aws_call(logs_c.list_tags_log_group, logGroupName=name).get("tags", {})):
                    attempt(f"log group {name}", logs.delete_log_group, logs_c, name)

        def queues() -> None:
            for url in aws_call(sqs.list_queues, QueueNamePrefix=n.prefix + "-").get("QueueUrls", []):
                if n.owns(aws_call(sqs.list_queue_tags, QueueUrl=url).get("Tags", {})):
                    attempt(f"SQS queue {url}", lambda u=url: aws_call(sqs.delete_queue, QueueUrl=u))

        def apis() -> None:
            while (api := apigw.find_api(gw, n.api, {"flux:project": n.project, "flux:stage": n.stage})) is not None:
                before = len(failed)
                attempt(f"HTTP API {api['ApiId']}", apigw.delete_api, gw, api["ApiId"])
                if len(failed) > before:
                    break

        def stage_secrets() -> None:
            listed = aws_call(lambda: [x for pg in sm.get_paginator("list_secrets").paginate(
                Filters=[{"Key": "name", "Values": [n.secret_prefix]}]) for x in pg.get("SecretList", [])])
            for sec in listed:
                if str(sec["Name"]).startswith(n.secret_prefix):
                    attempt(f"secret {sec['Name']}", secrets.delete_secret, sm, sec["Name"])
            attempt(f"secret {n.database_secret}", secrets.delete_secret, sm, n.database_secret)

        def layers() -> None:
            for arch in ARCHITECTURES:
                attempt(f"Lambda layer {n.deno_layer_for(arch)}", layer.delete_layer, lam, n.deno_layer_for(arch))

        def artifacts() -> None:
            state = self.settings.get("state") or {}
            bucket = self.settings.get("artifact_bucket") or (state.get("bucket") if isinstance(state, dict) else None)
            if not bucket:
                return
            s3 = self._c("s3")
            prefix = f"flux-artifacts/{n.project}/{n.stage}/"
            keys = aws_call(lambda: [o["Key"] for pg in s3.get_paginator("list_objects_v2").paginate(
                Bucket=bucket, Prefix=prefix) for o in pg.get("Contents", [])])
            for key in keys:
                attempt(f"s3://{bucket}/{key}", lambda k=key: aws_call(s3.delete_object, Bucket=bucket, Key=k))

        for what, step in (("Lambda functions", functions), ("IAM roles", roles), ("log groups", log_groups),
                           ("SQS queues", queues), ("HTTP APIs", apis), ("secrets", stage_secrets),
                           ("Deno layers", layers), ("layer zips", artifacts)):
            attempt(f"listing {what}", step)
        if failed:
            raise FluxError(
                f"destroy could not delete {len(failed)} thing(s) of stage {n.stage!r}:\n  - " + "\n  - ".join(failed),
                hint="fix the cause (permissions, a resource in use) and run `flux destroy` again: it finds "
                     "what is left by name and tag",
            )
