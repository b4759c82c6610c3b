"""Retrying AWS calls: throttling, 5xx, timeouts and Lambda's "update in progress" conflicts are
expected weather in AWS, so every call goes through `aws_call`, which retries them with exponential
backoff + jitter and turns exhaustion into `TransientProviderError` (the engine may retry again)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

from botocore.exceptions import (
    ClientError,
    ConnectionClosedError,
    ConnectTimeoutError,
    EndpointConnectionError,
    ReadTimeoutError,
)
from tenacity import (
    Retrying,
    retry_if_exception,
    stop_after_attempt,
    stop_after_delay,
    wait_exponential_jitter,
)

from flux_plan.errors import TransientProviderError

T = TypeVar("T")

TRANSIENT_CODES = frozenset(
    {
        "Throttling",
        "ThrottlingException",
        "ThrottledException",
        "TooManyRequestsException",
        "RequestLimitExceeded",
        "RequestThrottled",
        "SlowDown",
        "ServiceUnavailable",
        "ServiceUnavailableException",
        "InternalFailure",
        "InternalError",
        "InternalServerError",
        "ServiceException",
        "RequestTimeout",
        "RequestTimeoutException",
        "PriorRequestNotComplete",
        "ResourceConflictException",  # Lambda: "An update is in progress for resource"
        "ConcurrentModificationException",  # API Gateway / IAM
        "ConflictException",  # API Gateway v2
        "OperationAbortedException",  # CloudWatch Logs
    }
)

# IAM is eventually consistent: a role created a moment ago may not be assumable by Lambda yet.
_TRANSIENT_MESSAGES = ("cannot be assumed by Lambda", "role defined for the function cannot be assumed")


def error_code(exc: BaseException) -> str:
    if isinstance(exc, ClientError):
        return str(exc.response.get("Error", {}).get("Code", ""))
    return ""


def is_transient(exc: BaseException) -> bool:
    if isinstance(exc, ReadTimeoutError | ConnectTimeoutError | EndpointConnectionError | ConnectionClosedError):
        return True
    if isinstance(exc, ClientError):
        code = error_code(exc)
        status = int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0)
        msg = str(exc.response.get("Error", {}).get("Message", ""))
        return code in TRANSIENT_CODES or status >= 500 or any(m in msg for m in _TRANSIENT_MESSAGES)
    return False


def aws_call(fn: Callable[..., T], *args: Any, attempts: int = 8, max_delay: float = 90.0, **kwargs: Any) -> T:
    """Call `fn(*args, **kwargs)`, retrying transient failures; non-transient `ClientError`s propagate
    unchanged so callers can branch on codes like `ResourceNotFoundException`."""
    retrying = Retrying(
        stop=stop_after_attempt(attempts) | stop_after_delay(max_delay),
        wait=wait_exponential_jitter(multiplier=0.1, max=4.0, jitter=0.3),
        retry=retry_if_exception(is_transient),
        reraise=True,
    )
    try:
        return retrying(fn, *args, **kwargs)
    except Exception as exc:
        if is_transient(exc):
            name = getattr(fn, "__name__", "call")
            raise TransientProviderError(f"AWS {name}: still failing after retries: {exc}") from exc
        raise
