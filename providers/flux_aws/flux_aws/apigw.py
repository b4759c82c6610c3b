"""API Gateway v2: one HTTP API per stage with an auto-deployed `$default` stage; per route an
AWS_PROXY (payload 2.0) integration to the function's `live` alias, the route itself, and a Lambda
permission that lets exactly this API invoke it on exactly this method + path."""

from __future__ import annotations

import hashlib
from typing import Any

from botocore.exceptions import ClientError

from flux_aws.retry import aws_call, error_code

STAGE = "$default"
# The integration outwaits the function by this much: a cold start (init) counts for API Gateway, not for the
# function's timeout, and the shim answers the contract's 504 just before the function's own deadline.
COLD_START_MS = 5000


def _pages(gw: Any, op: str, **kwargs: Any) -> list[dict[str, Any]]:
    """Every page of a paginated call, retried as one unit."""
    return aws_call(lambda: list(gw.get_paginator(op).paginate(**kwargs)))


def find_api(gw: Any, name: str, tags: dict[str, str]) -> dict[str, Any] | None:
    """The stage's API by name and Flux's project/stage tags (user tags may change, these do not)."""
    want = {k: v for k, v in tags.items() if k.startswith("flux:") and k != "flux:address"}
    for page in _pages(gw, "get_apis"):
        for api in page.get("Items", []):
            api_tags = api.get("Tags") or {}
            if api["Name"] == name and all(api_tags.get(k) == v for k, v in want.items()):
                return dict(api)
    return None


# The stage's `cors` setting (flux.project.json, snake_case) <-> the HTTP API's CorsConfiguration.
_CORS_FIELDS = {"allow_origins": "AllowOrigins", "allow_methods": "AllowMethods", "allow_headers": "AllowHeaders",
                "expose_headers": "ExposeHeaders", "max_age": "MaxAge", "allow_credentials": "AllowCredentials"}


def cors_configuration(cors: dict[str, Any] | None) -> dict[str, Any] | None:
    if not cors:
        return None
    return {aws: cors[k] for k, aws in _CORS_FIELDS.items() if k in cors}


def cors_setting(config: dict[str, Any] | None) -> dict[str, Any] | None:
    """The live CorsConfiguration as the setting it came from (None: no CORS)."""
    if not config:
        return None
    out = {k: config[aws] for k, aws in _CORS_FIELDS.items() if config.get(aws) not in (None, [])}
    return out or None


def _norm(cors: dict[str, Any] | None) -> Any:
    """API Gateway may lower-case header names and reorder lists: compare what it means, not how it is spelt."""
    if not cors:
        return None
    out: dict[str, Any] = {}
    for k, v in cors.items():
        if isinstance(v, list):
            out[k] = sorted(str(x).lower() if k != "allow_origins" else str(x) for x in v)
        elif v not in (None, False):
            out[k] = v
    return out


def same_cors(a: dict[str, Any] | None, b: dict[str, Any] | None) -> bool:
    return _norm(a) == _norm(b)


def read_api_cors(gw: Any, api_id: str) -> tuple[bool, dict[str, Any] | None]:
    """(exists, live cors setting)."""
    try:
        api = aws_call(gw.get_api, ApiId=api_id)
    except ClientError as exc:
        if error_code(exc) == "NotFoundException":
            return False, None
        raise
    return True, cors_setting(api.get("CorsConfiguration"))


def ensure_api(gw: Any, name: str, tags: dict[str, str], cors: dict[str, Any] | None = None) -> dict[str, str]:
    api = find_api(gw, name, tags)
    want = cors_configuration(cors)
    if api is None:
        extra: dict[str, Any] = {"CorsConfiguration": want} if want else {}
        api = aws_call(gw.create_api, Name=name, ProtocolType="HTTP", Tags=tags, **extra,
                       adopt=lambda: find_api(gw, name, tags))
    else:
        if not same_cors(cors_setting(api.get("CorsConfiguration")), cors):
            # one field dropped from the setting must be dropped live too: clear, then set the whole configuration
            try:
                aws_call(gw.delete_cors_configuration, ApiId=api["ApiId"])
            except ClientError as exc:
                if error_code(exc) != "NotFoundException":
                    raise
            if want:
                aws_call(gw.update_api, ApiId=api["ApiId"], CorsConfiguration=want)
        if {k: v for k, v in (api.get("Tags") or {}).items()} != tags:
            aws_call(gw.tag_resource, ResourceArn=_api_arn(gw, api["ApiId"]), Tags=tags)
    api_id = api["ApiId"]
    try:
        aws_call(gw.get_stage, ApiId=api_id, StageName=STAGE)
    except ClientError as exc:
        if error_code(exc) != "NotFoundException":
            raise
        aws_call(gw.create_stage, ApiId=api_id, StageName=STAGE, AutoDeploy=True, Tags=tags,
                 adopt=lambda: _stage_if_exists(gw, api_id))
    endpoint = str(api["ApiEndpoint"])
    return {"api_id": api_id, "api_endpoint": endpoint, "url": endpoint.rstrip("/") + "/"}


def _stage_if_exists(gw: Any, api_id: str) -> dict[str, Any] | None:
    """The `$default` stage when a create whose answer was lost did make it."""
    try:
        return dict(gw.get_stage(ApiId=api_id, StageName=STAGE))
    except ClientError as exc:
        if error_code(exc) == "NotFoundException":
            return None
        raise


def _api_arn(gw: Any, api_id: str) -> str:
    region = gw.meta.region_name
    partition = gw.meta.partition
    return f"arn:{partition}:apigateway:{region}::/apis/{api_id}"


def api_exists(gw: Any, api_id: str) -> bool:
    try:
        aws_call(gw.get_api, ApiId=api_id)
        return True
    except ClientError as exc:
        if error_code(exc) == "NotFoundException":
            return False
        raise


def delete_api(gw: Any, api_id: str) -> None:
    try:
        aws_call(gw.delete_api, ApiId=api_id)
    except ClientError as exc:
        if error_code(exc) != "NotFoundException":
            raise


def route_key(method: str, path: str) -> str:
    return f"{method.upper()} {path}"


def permission_id(method: str, path: str) -> str:
    return "flux-apigw-" + hashlib.sha256(route_key(method, path).encode()).hexdigest()[:16]


def find_route(gw: Any, api_id: str, key: str) -> dict[str, Any] | None:
    for page in _pages(gw, "get_routes", ApiId=api_id):
        for r in page.get("Items", []):
            if r["RouteKey"] == key:
                return dict(r)
    return None


def find_integration(gw: Any, api_id: str, uri: str) -> dict[str, Any] | None:
    for page in _pages(gw, "get_integrations", ApiId=api_id):
        for i in page.get("Items", []):
            if i.get("IntegrationUri") == uri:
                return dict(i)
    return None


def ensure_route(
    gw: Any,
    lam: Any,
    *,
    api_id: str,
    method: str,
    path: str,
    function_name: str,
    alias_arn: str,
    source_arn: str,
    timeout_s: int = 30,
) -> dict[str, str]:
    """Integration + route + permission, each looked up first (idempotent after a crash) and adopted
    when a create's answer was lost. The integration waits COLD_START_MS longer than the function's timeout (a
    cold start counts for the gateway, not for the function; the shim answers 504 just before its own deadline),
    at most 30 s (HTTP APIs' limit)."""
    millis = max(50, min(30_000, timeout_s * 1000 + COLD_START_MS))
    integ = find_integration(gw, api_id, alias_arn)
    if integ is None:
        integ = aws_call(
            gw.create_integration,
            ApiId=api_id,
            IntegrationType="AWS_PROXY",
            IntegrationUri=alias_arn,
            IntegrationMethod="POST",
            PayloadFormatVersion="2.0",
            TimeoutInMillis=millis,
            adopt=lambda: find_integration(gw, api_id, alias_arn),
        )
    elif int(integ.get("TimeoutInMillis") or 30000) != millis:
        aws_call(gw.update_integration, ApiId=api_id, IntegrationId=integ["IntegrationId"], TimeoutInMillis=millis)
    target = f"integrations/{integ['IntegrationId']}"
    route = _ensure_route_key(gw, api_id, route_key(method, path), target)
    sid = permission_id(method, path)
    _permit(lam, function_name, sid, source_arn)
    out = {"route_id": route["RouteId"], "integration_id": integ["IntegrationId"], "permission_sid": sid}
    if method.upper() == "GET":
        # HEAD is served on GET routes (DESIGN §7): HTTP APIs route it only when a HEAD route exists; the shim
        # answers it without a body
        head = _ensure_route_key(gw, api_id, route_key("HEAD", path), target)
        head_sid = permission_id("HEAD", path)
        _permit(lam, function_name, head_sid, source_arn.replace("/GET/", "/HEAD/", 1))
        out.update({"head_route_id": head["RouteId"], "head_permission_sid": head_sid})
    return out


def _ensure_route_key(gw: Any, api_id: str, key: str, target: str) -> dict[str, Any]:
    """The route `key` to `target`: found, retargeted, or created (adopted when a create's answer was lost)."""
    route = find_route(gw, api_id, key)
    if route is None:
        return dict(aws_call(gw.create_route, ApiId=api_id, RouteKey=key, Target=target,
                             adopt=lambda: find_route(gw, api_id, key)))
    if route.get("Target") != target:
        aws_call(gw.update_route, ApiId=api_id, RouteId=route["RouteId"], Target=target)
    return route


def _permit(lam: Any, function_name: str, sid: str, source_arn: str) -> None:
    """API Gateway may invoke the `live` alias for requests matching `source_arn` (statement `sid`, replaced)."""
    try:
        aws_call(lam.remove_permission, FunctionName=function_name, Qualifier="live", StatementId=sid)
    except ClientError as exc:
        if error_code(exc) != "ResourceNotFoundException":
            raise
    try:
        aws_call(
            lam.add_permission,
            FunctionName=function_name,
            Qualifier="live",
            StatementId=sid,
            Action="lambda:InvokeFunction",
            Principal="apigateway.amazonaws.com",
            SourceArn=source_arn,
            adopt=lambda: {} if _has_permission(lam, function_name, sid) else None,
        )
    except ClientError as exc:  # "already exists": a retried add whose first answer was lost
        if error_code(exc) != "ResourceConflictException":
            raise


def _has_permission(lam: Any, function_name: str, sid: str) -> bool:
    """Whether the `live` alias's resource policy already holds statement `sid`."""
    import json

    try:
        doc = json.loads(lam.get_policy(FunctionName=function_name, Qualifier="live")["Policy"])
    except ClientError as exc:
        if error_code(exc) == "ResourceNotFoundException":
            return False
        raise
    return any(st.get("Sid") == sid for st in doc.get("Statement", []))


def route_target(gw: Any, api_id: str, route_id: str) -> str | None:
    try:
        return str(aws_call(gw.get_route, ApiId=api_id, RouteId=route_id).get("Target", ""))
    except ClientError as exc:
        if error_code(exc) == "NotFoundException":
            return None
        raise


def delete_route(gw: Any, lam: Any, *, api_id: str, outputs: dict[str, Any], function_name: str | None) -> None:
    for key in ("head_route_id", "route_id"):
        if outputs.get(key):
            try:
                aws_call(gw.delete_route, ApiId=api_id, RouteId=outputs[key])
            except ClientError as exc:
                if error_code(exc) != "NotFoundException":
                    raise
    if outputs.get("integration_id"):
        try:
            aws_call(gw.delete_integration, ApiId=api_id, IntegrationId=outputs["integration_id"])
        except ClientError as exc:
            if error_code(exc) != "NotFoundException":
                raise
    for key in ("permission_sid", "head_permission_sid"):
        if function_name and outputs.get(key):
            try:
                aws_call(lam.remove_permission, FunctionName=function_name, Qualifier="live", StatementId=outputs[key])
            except ClientError as exc:
                if error_code(exc) != "ResourceNotFoundException":
                    raise
