"""Remote state on S3: the state object is only ever written with a conditional put (If-Match on the
ETag we read, If-None-Match: * when creating), so two writers can never silently overwrite each
other; the lock is a `<key>.lock` object created with If-None-Match: * that carries its holder."""

from __future__ import annotations

import os
import socket
import time
from typing import TYPE_CHECKING, Any

from botocore.exceptions import ClientError

from flux_aws.retry import aws_call, error_code
from flux_plan.errors import FluxError, LockError, StateError

if TYPE_CHECKING:
    from flux_plan.state import LockInfo

_PRECONDITION = {"PreconditionFailed", "412", "ConditionalRequestConflict", "409"}
_MISSING = {"NoSuchKey", "404", "NotFound"}


def _status(exc: ClientError) -> int:
    return int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0)


def _lock_info_cls() -> type[LockInfo]:
    from flux_plan.state import LockInfo

    return LockInfo


class S3Backend:
    """`StateBackend` (see flux_plan.state) on one S3 object; versions are ETags."""

    poll_interval = 0.5

    def __init__(self, s3: Any, bucket: str, key: str) -> None:
        self.s3 = s3
        self.bucket = bucket
        self.key = key
        self.lock_key = f"{key}.lock"
        self.backup_key = f"{key}.backup"

    def describe(self) -> str:
        return f"s3://{self.bucket}/{self.key}"

    def _where(self, key: str | None = None) -> str:
        return f"s3://{self.bucket}/{key or self.key}"

    def _get(self, key: str) -> tuple[bytes | None, str | None]:
        try:
            obj = aws_call(self.s3.get_object, Bucket=self.bucket, Key=key)
        except ClientError as exc:
            self._check_bucket(exc)  # before the 404 test: a missing bucket is a 404 too
            if error_code(exc) in _MISSING or _status(exc) == 404:
                return None, None
            raise StateError(f"{self._where(key)}: cannot read: {exc}") from exc
        return obj["Body"].read(), str(obj["ETag"])

    def _check_bucket(self, exc: ClientError) -> None:
        """A missing state bucket is a configuration error, never "no state yet" (which would plan
        to create everything again)."""
        if error_code(exc) == "NoSuchBucket":
            raise FluxError(
                f"flux.project.json (state.bucket): bucket {self.bucket!r} does not exist",
                hint="create the bucket (versioning recommended) or fix the stage's state.bucket",
            ) from exc

    def _current_etag_if(self, key: str, data: bytes) -> str | None:
        """The ETag of `key` when it already holds exactly `data`: a retried conditional put whose
        first answer was lost finds its own write there (adopt it instead of failing with 412)."""
        try:
            obj = self.s3.get_object(Bucket=self.bucket, Key=key)
        except ClientError as exc:
            if error_code(exc) in _MISSING or _status(exc) == 404:
                return None
            raise
        return str(obj["ETag"]) if obj["Body"].read() == data else None

    def read(self) -> tuple[bytes | None, str | None]:
        return self._get(self.key)

    def read_backup(self) -> bytes | None:
        return self._get(self.backup_key)[0]

    def write(self, data: bytes, expected_version: str | None) -> str:
        """Conditional put; on success the replaced snapshot is kept as `<key>.backup`. The old bytes
        are read (If-Match) before and the backup written after the put, so a refused writer never
        touches the backup."""
        cond: dict[str, str]
        previous: bytes | None = None
        if expected_version is None:
            cond = {"IfNoneMatch": "*"}
        else:
            cond = {"IfMatch": expected_version}
            try:
                obj = aws_call(self.s3.get_object, Bucket=self.bucket, Key=self.key, IfMatch=expected_version)
                previous = obj["Body"].read()
            except ClientError as exc:
                self._check_bucket(exc)
                if error_code(exc) in _PRECONDITION | _MISSING or _status(exc) in (404, 409, 412):
                    raise self._moved_on() from exc
                raise StateError(f"{self._where()}: cannot read: {exc}") from exc
        try:
            etag = aws_call(
                lambda: str(self.s3.put_object(Bucket=self.bucket, Key=self.key, Body=data,
                                               ContentType="application/json", **cond)["ETag"]),
                adopt=lambda: self._current_etag_if(self.key, data),
            )
        except ClientError as exc:
            self._check_bucket(exc)
            if error_code(exc) in _PRECONDITION | _MISSING or _status(exc) in (404, 409, 412):
                raise self._moved_on() from exc
            raise StateError(f"{self._where()}: cannot write: {exc}") from exc
        if previous is not None:
            aws_call(self.s3.put_object, Bucket=self.bucket, Key=self.backup_key, Body=previous,
                     ContentType="application/json")
        return etag

    def _moved_on(self) -> StateError:
        return StateError(
            f"{self._where()}: the state moved on since it was read (another run wrote it)",
            hint="run the command again; it will read the new state",
        )

    def lock_info(self) -> LockInfo | None:
        data, _ = self._get(self.lock_key)
        if data is None:
            return None
        return _lock_info_cls().model_validate_json(data)

    def lock(self, info: LockInfo, timeout: float) -> None:
        """Create the lock object; while someone else holds it, poll until `timeout` seconds."""
        body = info.model_dump_json().encode()
        deadline = time.monotonic() + max(0.0, timeout)
        while True:
            try:
                aws_call(
                    self.s3.put_object,
                    Bucket=self.bucket,
                    Key=self.lock_key,
                    Body=body,
                    ContentType="application/json",
                    IfNoneMatch="*",
                    adopt=lambda: {} if self._current_etag_if(self.lock_key, body) else None,
                )
                return
            except ClientError as exc:
                self._check_bucket(exc)
                if not (error_code(exc) in _PRECONDITION or _status(exc) in (409, 412)):
                    raise StateError(f"{self._where(self.lock_key)}: cannot take the lock: {exc}") from exc
            holder = self.lock_info()
            if holder is not None and holder.id == info.id:
                return  # our own lock: an earlier attempt's answer was lost, its put did happen
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                holder = self.lock_info()
                if holder is None:  # released between our put and our read: try once more
                    deadline = time.monotonic()
                    continue
                raise LockError(
                    f"{self._where()}: state is locked by {holder.who} (pid {holder.pid} on {holder.host}, "
                    f"operation {holder.operation!r}, since {holder.created}); lock ID {holder.id}",
                    hint=f"wait and retry, raise --lock-timeout, or run `flux state unlock {holder.id}` "
                    "if that run is gone",
                )
            time.sleep(min(self.poll_interval, remaining))

    def unlock(self, lock_id: str, force: bool = False) -> None:
        """Release lock `lock_id` (it must be the current one); `force` also releases another
        process's lock (`flux state unlock ID`). The delete carries If-Match on the ETag we read, so a
        lock taken by someone else in between is never removed."""
        data, etag = self._get(self.lock_key)
        if data is None:
            raise LockError(f"{self._where()}: the stage is not locked (no lock {lock_id})")
        holder = _lock_info_cls().model_validate_json(data)
        if holder.id != lock_id:
            raise LockError(
                f"{self._where()}: lock {lock_id} is not the current lock; held by {holder.who} "
                f"(pid {holder.pid} on {holder.host}, lock ID {holder.id})",
                hint=f"to release the current lock run `flux state unlock {holder.id}`",
            )
        if not force and (holder.pid != os.getpid() or holder.host != socket.gethostname()):
            raise LockError(
                f"{self._where()}: lock {lock_id} belongs to pid {holder.pid} on {holder.host}, not to this process",
                hint="use `flux state unlock ID` to release another command's lock",
            )
        try:
            aws_call(self.s3.delete_object, Bucket=self.bucket, Key=self.lock_key, IfMatch=etag,
                     adopt=lambda: None if self._get(self.lock_key)[1] == etag else {})
        except ClientError as exc:
            if error_code(exc) in _MISSING or _status(exc) == 404:
                return  # a retried delete whose first answer was lost: it is gone
            if error_code(exc) in _PRECONDITION or _status(exc) == 412:
                raise LockError(f"{self._where()}: the lock changed while unlocking; check `flux state`") from exc
            raise StateError(f"{self._where(self.lock_key)}: cannot remove the lock: {exc}") from exc
