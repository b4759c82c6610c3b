"""The ONE retry layer of the AWS provider. Throttling, 5xx (with or without a parseable body),
timeouts, dropped connections and Lambda's "update in progress" conflicts are expected weather in
AWS, so every call goes through `aws_call`, which retries them with exponential backoff + jitter
(tenacity). botocore's own retries are switched off (`clients.py`: total_max_attempts=1) and
exhaustion raises a plain `ProviderError`, so the engine does not retry again: one operation makes at
most `ATTEMPTS` calls, never botocore x aws_call x engine.

A call whose answer was lost may still have been done by AWS. Non-idempotent creates therefore pass
`adopt=`: before every retry it looks the resource up and, when the lost call did create it, returns
that instead of creating a duplicate."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

from botocore.exceptions import (
    ClientError,
    HTTPClientError,
    WaiterError,
)
from botocore.exceptions import (
    ConnectionError as BotoConnectionError,
)
from botocore.parsers import ResponseParserError
from tenacity import (
    Retrying,
    retry_if_exception,
    stop_after_attempt,
    stop_after_delay,
    wait_exponential_jitter,
)

from flux_plan.errors import ProviderError

T = TypeVar("T")

ATTEMPTS = 8
MAX_DELAY = 90.0

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
# A conflict that says the thing exists is an answer, not weather (a retried create whose first
# attempt's answer was lost): the caller adopts it.
_EXISTS_MESSAGES = ("already exist",)


def error_code(exc: BaseException) -> str:
    if isinstance(exc, ClientError):
        return str(exc.response.get("Error", {}).get("Code", ""))
    return ""


def error_message(exc: BaseException) -> str:
    if isinstance(exc, ClientError):
        return str(exc.response.get("Error", {}).get("Message", ""))
    return str(exc)


def _transient_response(resp: dict[str, Any]) -> bool:
    code = str(resp.get("Error", {}).get("Code", ""))
    status = int(resp.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0)
    msg = str(resp.get("Error", {}).get("Message", ""))
    if any(m in msg for m in _EXISTS_MESSAGES):
        return False
    return code in TRANSIENT_CODES or status >= 500 or any(m in msg for m in _TRANSIENT_MESSAGES)


def is_transient(exc: BaseException) -> bool:
    # timeouts, refused/reset/dropped connections, and 5xx bodies botocore cannot parse
    if isinstance(exc, HTTPClientError | BotoConnectionError | ResponseParserError):
        return True
    if isinstance(exc, ClientError):
        return _transient_response(exc.response)
    if isinstance(exc, WaiterError):  # a waiter's poll hit weather: poll again
        last = exc.last_response or {}
        return "Error" in last and _transient_response(last)
    return False


def aws_call(
    fn: Callable[..., T],
    *args: Any,
    attempts: int = ATTEMPTS,
    max_delay: float = MAX_DELAY,
    adopt: Callable[[], T | None] | None = None,
    **kwargs: Any,
) -> T:
    """Call `fn(*args, **kwargs)`, retrying transient failures; non-transient `ClientError`s propagate
    unchanged so callers can branch on codes like `ResourceNotFoundException`. `adopt()` runs before
    each retry: a non-None result means the failed attempt did the work, and is returned."""
    retrying = Retrying(
        stop=stop_after_attempt(attempts) | stop_after_delay(max_delay),
        wait=wait_exponential_jitter(multiplier=0.1, max=4.0, jitter=0.3),
        retry=retry_if_exception(is_transient),
        reraise=True,
    )
    first = True
    try:
        for attempt in retrying:
            with attempt:
                if not first and adopt is not None:
                    found = adopt()
                    if found is not None:
                        return found
                first = False
                return fn(*args, **kwargs)
    except Exception as exc:
        if is_transient(exc):
            name = getattr(fn, "__name__", "call").replace("<lambda>", "call")
            raise ProviderError(f"AWS {name}: still failing after {attempts} attempts: {exc}") from exc
        raise
    raise AssertionError("unreachable")  # pragma: no cover
