"""A WSGI middleware around the moto app that injects the failures AWS really produces (throttling,
500s with and without a parseable body, slow responses whose work did happen, lost responses: moto
did the work and the connection is dropped before the answer, conflicts), so the provider's retry
and idempotency paths run against real HTTP. It also serialises conditional S3 writes: moto checks If-Match/If-None-Match
and then writes in two steps (a race between threads), while real S3 does both atomically."""

from __future__ import annotations

import contextlib
import io
import json
import random
import re
import socket
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs

_SCOPE_RE = re.compile(r"Credential=[^/]+/\d{8}/[^/]+/([^/]+)/aws4_request")
_QUERY_SERVICES = {"iam", "sts"}
_REST_XML_SERVICES = {"s3"}


def request_info(environ: dict[str, Any]) -> tuple[str, str, bytes]:
    """(service, operation, body) of a signed AWS request; the body is re-attached for moto."""
    length = int(environ.get("CONTENT_LENGTH") or 0)
    body = environ["wsgi.input"].read(length) if length else b""
    environ["wsgi.input"] = io.BytesIO(body)
    m = _SCOPE_RE.search(environ.get("HTTP_AUTHORIZATION", ""))
    service = m.group(1) if m else ""
    target = environ.get("HTTP_X_AMZ_TARGET", "")
    if target:
        op = target.rsplit(".", 1)[-1]
    elif service in _QUERY_SERVICES and body:
        op = parse_qs(body.decode(errors="replace")).get("Action", [""])[0]
    else:
        op = f"{environ.get('REQUEST_METHOD')} {environ.get('PATH_INFO', '')}"
    return service, op, body


@dataclass
class Rule:
    """Inject `kind` on requests whose service/operation match, with `probability`, at most `times`."""

    kind: str  # "throttle" | "500" | "500-html" | "timeout" | "lost" | "stall" | "conflict" | "fail" | "function-error"
    service: str | tuple[str, ...] | None = None
    operation: str | None = None  # substring of the operation name / "METHOD path"
    body_contains: str | None = None
    probability: float = 1.0
    times: int | None = None
    delay: float = 3.0  # for "timeout": seconds to hold the answer after the work was done
    hits: int = 0

    def matches(self, service: str, op: str, body: bytes) -> bool:
        services = (self.service,) if isinstance(self.service, str) else self.service
        if services and service not in services:
            return False
        if self.body_contains and self.body_contains.encode() not in body:
            return False
        return not (self.operation and self.operation not in op)


@dataclass
class FaultInjector:
    app: Callable[..., Iterable[bytes]]
    rules: list[Rule] = field(default_factory=list)
    injected: list[tuple[str, str, str]] = field(default_factory=list)
    calls: list[tuple[str, str]] = field(default_factory=list)
    rng: random.Random = field(default_factory=lambda: random.Random(7))
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _s3_write_lock: threading.Lock = field(default_factory=threading.Lock)

    def clear(self) -> None:
        with self._lock:
            self.rules.clear()
            self.injected.clear()
            self.calls.clear()

    def _pick(self, service: str, op: str, body: bytes) -> Rule | None:
        with self._lock:
            self.calls.append((service, op))
            for rule in self.rules:
                if not rule.matches(service, op, body):
                    continue
                if rule.times is not None and rule.hits >= rule.times:
                    continue
                if self.rng.random() < rule.probability:
                    rule.hits += 1
                    self.injected.append((rule.kind, service, op))
                    return rule
        return None

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        if environ.get("PATH_INFO", "").startswith("/moto-api"):
            return self.app(environ, start_response)
        service, op, body = request_info(environ)
        rule = self._pick(service, op, body)
        if rule is not None and rule.kind == "stall":  # held before moto sees it, then refused
            time.sleep(rule.delay)
            return self._error("500", service, start_response)
        if rule is not None and rule.kind not in ("timeout", "lost"):
            return self._error(rule.kind, service, start_response)
        conditional_s3 = service == "s3" and (
            "HTTP_IF_NONE_MATCH" in environ or "HTTP_IF_MATCH" in environ
        ) and environ.get("REQUEST_METHOD") in ("PUT", "DELETE")
        if conditional_s3:
            with self._s3_write_lock:
                out = list(self.app(environ, start_response))
        else:
            out = list(self.app(environ, start_response))
        if rule is not None and rule.kind == "lost":  # the work is done, the answer never arrives
            sock = environ.get("werkzeug.socket")
            if sock is not None:
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
            return []
        if rule is not None:  # "timeout": the work is done, the answer comes too late for the client
            time.sleep(rule.delay)
        return out

    @staticmethod
    def _error(kind: str, service: str, start_response: Callable[..., Any]) -> Iterable[bytes]:
        if kind == "function-error":  # Lambda ran the code and it failed (e.g. its module threw while loading)
            doc = json.dumps({"errorType": "Runtime.ExitError",
                              "errorMessage": "Error: function module failed to load: boom at init"}).encode()
            start_response("200 OK", [("Content-Type", "application/json"), ("X-Amz-Function-Error", "Unhandled"),
                                      ("Content-Length", str(len(doc)))])
            return [doc]
        if kind == "500-html":  # a load balancer's error page: no AWS error document at all
            page = b"<html><body><h1>502 Bad Gateway</h1><hr></body></html>"
            start_response("502 Bad Gateway", [("Content-Type", "text/html"), ("Content-Length", str(len(page)))])
            return [page]
        code, status = {
            "throttle": ("ThrottlingException", "400 Bad Request"),
            "500": ("InternalFailure", "500 Internal Server Error"),
            "conflict": ("ResourceConflictException", "409 Conflict"),
            "fail": ("AccessDeniedException", "403 Forbidden"),
        }[kind]
        if service in _QUERY_SERVICES:
            if kind == "throttle":
                code = "Throttling"
            if kind == "fail":
                code = "AccessDenied"
            body = (
                f"<ErrorResponse><Error><Type>Sender</Type><Code>{code}</Code>"
                f"<Message>injected {kind}</Message></Error><RequestId>x</RequestId></ErrorResponse>"
            ).encode()
            ctype = "text/xml"
        elif service in _REST_XML_SERVICES:
            if kind == "throttle":
                code, status = "SlowDown", "503 Slow Down"
            body = f"<Error><Code>{code}</Code><Message>injected {kind}</Message></Error>".encode()
            ctype = "application/xml"
        else:
            body = json.dumps({"__type": code, "message": f"injected {kind}", "Message": f"injected {kind}"}).encode()
            ctype = "application/x-amz-json-1.1"
        start_response(
            status,
            [("Content-Type", ctype), ("x-amzn-ErrorType", code), ("Content-Length", str(len(body)))],
        )
        return [body]
