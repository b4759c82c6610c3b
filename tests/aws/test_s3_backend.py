"""S3 state backend against a real moto server: conditional writes, backups, and the lock object
raced by two real processes."""

from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
import sys
import textwrap
import time
from datetime import UTC, datetime
from pathlib import Path

import boto3
import pytest
from flux_aws.s3_backend import S3Backend

from flux_plan.errors import LockError, StateError
from flux_plan.state import LockInfo

BUCKET = "flux-state-test"


def _backend(url: str, key: str = "todo/prod.json") -> S3Backend:
    s3 = boto3.client("s3", endpoint_url=url, region_name="eu-west-1")
    with contextlib.suppress(s3.exceptions.BucketAlreadyOwnedByYou):
        s3.create_bucket(Bucket=BUCKET, CreateBucketConfiguration={"LocationConstraint": "eu-west-1"})
    return S3Backend(s3, BUCKET, key)


def _info(lock_id: str, who: str = "alice") -> LockInfo:
    return LockInfo(
        id=lock_id, pid=os.getpid(), host=socket.gethostname(), operation="apply", created=datetime.now(UTC).isoformat(), who=who
    )


def test_round_trip_and_conditional_writes(moto) -> None:
    b = _backend(moto.url)
    assert b.describe() == f"s3://{BUCKET}/todo/prod.json"
    assert b.read() == (None, None)
    v1 = b.write(b'{"serial": 1}', None)
    data, etag = b.read()
    assert data == b'{"serial": 1}' and etag == v1
    # creating again (If-None-Match: *) is refused: someone else created it first
    with pytest.raises(StateError, match="moved on"):
        b.write(b'{"serial": 9}', None)
    v2 = b.write(b'{"serial": 2}', v1)
    assert v2 != v1
    assert b.read() == (b'{"serial": 2}', v2)
    assert b.read_backup() == b'{"serial": 1}'
    # a writer still holding the old ETag is refused and changes nothing
    with pytest.raises(StateError, match="moved on"):
        b.write(b'{"serial": 3, "stale": true}', v1)
    assert b.read() == (b'{"serial": 2}', v2)
    assert b.read_backup() == b'{"serial": 1}'


def test_lock_unlock_and_holder_info(moto) -> None:
    b = _backend(moto.url)
    assert b.lock_info() is None
    b.lock(_info("L1"), timeout=0)
    held = b.lock_info()
    assert held is not None and held.id == "L1" and held.who == "alice" and held.host == socket.gethostname()
    t0 = time.monotonic()
    with pytest.raises(LockError) as exc:
        b.lock(_info("L2", who="bob"), timeout=1.2)
    assert time.monotonic() - t0 >= 1.2
    msg = exc.value.render()
    assert "alice" in msg and "L1" in msg and socket.gethostname() in msg and "flux state unlock L1" in msg
    with pytest.raises(LockError, match="not the current lock"):
        b.unlock("L2", force=True)
    assert b.lock_info() is not None
    b.unlock("L1")
    assert b.lock_info() is None
    with pytest.raises(LockError, match="not locked"):
        b.unlock("L1")
    other = _info("L3", who="bob").model_copy(update={"pid": 1, "host": "elsewhere"})
    b.lock(other, timeout=0)
    with pytest.raises(LockError, match="not to this process"):
        b.unlock("L3")
    b.unlock("L3", force=True)  # `flux state unlock L3` of a dead holder
    assert b.lock_info() is None


_RACER = textwrap.dedent(
    """
    import json, os, socket, sys, time
    from datetime import UTC, datetime
    import boto3
    from flux_aws.s3_backend import S3Backend
    from flux_plan.errors import LockError
    from flux_plan.state import LockInfo

    url, bucket, name, start_at, hold, timeout = sys.argv[1:7]
    b = S3Backend(boto3.client("s3", endpoint_url=url, region_name="eu-west-1"), bucket, "race/prod.json")
    info = LockInfo(id=f"id-{name}", pid=os.getpid(), host=socket.gethostname(), operation="apply",
                    created=datetime.now(UTC).isoformat(), who=name)
    while time.time() < float(start_at):
        time.sleep(0.001)
    t0 = time.monotonic()
    try:
        b.lock(info, timeout=float(timeout))
    except LockError as exc:
        print(json.dumps({"name": name, "won": False, "waited": time.monotonic() - t0, "error": exc.render()}))
        sys.exit(3)
    print(json.dumps({"name": name, "won": True}), flush=True)
    time.sleep(float(hold))
    b.unlock(info.id)
    """
)


def test_two_processes_race_for_the_lock(moto, tmp_path: Path) -> None:
    _backend(moto.url, "race/prod.json")
    script = tmp_path / "racer.py"
    script.write_text(_RACER)
    start_at = time.time() + 2.5  # both interpreters are up and polling the clock by then
    procs = [
        subprocess.Popen(
            [sys.executable, str(script), moto.url, BUCKET, name, str(start_at), "5", "2"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for name in ("p1", "p2")
    ]
    try:
        outs = [p.communicate(timeout=60) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    results = [json.loads(o[0].strip().splitlines()[-1]) for o in outs]
    winners = [r for r in results if r["won"]]
    losers = [r for r in results if not r["won"]]
    assert len(winners) == 1 and len(losers) == 1, outs
    loser, winner = losers[0], winners[0]
    assert loser["waited"] >= 2.0
    assert f"id-{winner['name']}" in loser["error"] and "operation 'apply'" in loser["error"]
    assert sorted(p.returncode for p in procs) == [0, 3]
    b = _backend(moto.url, "race/prod.json")
    assert b.lock_info() is None  # the winner released it
