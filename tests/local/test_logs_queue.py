"""Log store (masking, rotation, filters, follow) and the durable async queue (retries, backoff,
survives a restart) on real files and threads."""

from __future__ import annotations

import json
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

from flux_local.asyncqueue import AsyncQueue
from flux_local.logstore import LogStore, Masker, query
from flux_local.runtime import deno_bin


def test_logstore_masks_rotates_filters_and_follows(tmp_path: Path) -> None:
    masker = Masker()
    masker.set_values(["s3cr3t-value"])
    store = LogStore(tmp_path, mask=masker, max_bytes=2000, keep=3)
    for i in range(60):
        store.append({"level": "error" if i % 10 == 0 else "info", "function": "f" if i % 2 else "g",
                      "request_id": f"r{i}", "msg": f"m{i} token=s3cr3t-value"})
    assert len(store.files()) == 4  # 3 rotated + current
    text = "".join(p.read_text() for p in store.files())
    assert "s3cr3t-value" not in text and "********" in text
    recs = list(query(tmp_path))
    assert [r["request_id"] for r in recs] == [f"r{i}" for i in range(60 - len(recs), 60)]
    assert {r["function"] for r in query(tmp_path, function="f")} == {"f"}
    assert [r["request_id"] for r in query(tmp_path, request_id="r59")] == ["r59"]
    assert all(r["level"] == "error" for r in query(tmp_path, level="warn"))
    got: list[dict[str, Any]] = []

    def follow() -> None:
        for rec in query(tmp_path, request_id="later", follow=True, poll_s=0.05):
            got.append(rec)
            return

    t = threading.Thread(target=follow, daemon=True)
    t.start()
    time.sleep(0.2)
    store.append({"function": "f", "request_id": "later", "msg": "new"})
    t.join(timeout=5)
    assert got and got[0]["msg"] == "new"


def test_host_lines_are_stored_as_written_unless_a_secret_may_be_in_them(tmp_path: Path) -> None:
    """append_lines (the daemon's path for the host's records): lines JSON.stringify wrote (by a real deno) are
    kept byte for byte when no secret value can be in them, and masked as append masks when one can: verbatim,
    a short whole-word value next to an escape, or (any value JSON escapes: every line parsed) a quoted one."""
    msgs = ["plain access", "key long-secret-value-1 leaked", 'quoted pa"ss\\word here', "\nabcd\t", "abcdef"]
    script = ("for (const [i, m] of JSON.parse(Deno.args[0]).entries()) console.log(JSON.stringify("
              "{ts: '2026-01-01T00:00:00.000Z', level: 'info', stage: 'dev', function: 'f', request_id: 'r' + i, "
              "msg: m, data: {path: '/p'}}))")
    out = subprocess.run([deno_bin(), "eval", script, json.dumps(msgs)], capture_output=True, check=True).stdout
    lines = out.splitlines()
    assert len(lines) == len(msgs)

    plain = Masker()
    plain.set_values(["abcd", "long-secret-value-1"])
    store = LogStore(tmp_path / "a", mask=plain)
    store.append_lines(lines)
    stored = store.current.read_bytes().splitlines()
    assert stored[0] == lines[0] and stored[2] == lines[2]  # nothing to mask: as the host wrote them
    assert json.loads(stored[4]) == json.loads(lines[4])  # "abcd" is in the text, not as a word: parsed, unchanged
    recs = list(query(tmp_path / "a"))
    assert [r["msg"] for r in recs] == [msgs[0], "key ******** leaked", msgs[2], "\n********\t", "abcdef"]
    assert [r["request_id"] for r in recs] == [f"r{i}" for i in range(5)] and recs[1]["data"] == {"path": "/p"}
    assert "long-secret-value-1" not in store.current.read_text()

    quoted = Masker()
    quoted.set_values(['pa"ss\\word'])
    store = LogStore(tmp_path / "b", mask=quoted)
    store.append_lines(lines)
    assert [r["msg"] for r in query(tmp_path / "b")] == [*msgs[:2], "quoted ******** here", *msgs[3:]]
    assert 'pa\\"ss' not in store.current.read_text()


def test_queue_retries_then_delivers_and_survives_restart(tmp_path: Path) -> None:
    seen: list[tuple[str, int]] = []
    logs: list[dict[str, Any]] = []
    done = threading.Event()

    def flaky(fn: str, rid: str, payload: Any, attempt: int) -> tuple[int, Any]:
        seen.append((rid, attempt))
        if attempt < 2:
            return 500, {"error": "boom"}
        done.set()
        return 200, {"ok": True}

    # first "daemon": enqueue only (never started), as if it crashed right after answering 202
    AsyncQueue(tmp_path, flaky, logs.append).enqueue("send", "rid-1", {"x": 1})
    q = AsyncQueue(tmp_path, flaky, logs.append)
    q.start()
    try:
        assert done.wait(10)
        deadline = time.monotonic() + 5
        while q.pending_count() and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        q.stop()
    assert seen == [("rid-1", 1), ("rid-1", 2)]
    assert q.pending_count() == 0
    assert [r["msg"] for r in logs] == ["async invocation queued", "async invocation failed; will retry",
                                        "async invocation delivered"]
    assert all(r["request_id"] == "rid-1" for r in logs)


def test_queue_gives_up_after_three_attempts(tmp_path: Path) -> None:
    attempts: list[int] = []
    q = AsyncQueue(tmp_path, lambda f, r, p, a: (attempts.append(a), (500, {"error": "no"}))[1], lambda r: None)
    q.enqueue("send", "rid-2", {})
    q.start()
    try:
        deadline = time.monotonic() + 15
        while not list((tmp_path / "dead").glob("*.json")) and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        q.stop()
    assert attempts == [1, 2, 3]
    assert len(list((tmp_path / "dead").glob("*.json"))) == 1 and q.pending_count() == 0


def test_channel_hands_log_lines_over_in_order_and_a_long_reply_whole(tmp_path: Path) -> None:
    """HostChannel with on_log_lines, against a real deno process speaking the host's side: the records written
    before a reply are stored before the reply is seen, a reply far longer than one read (3 MB) arrives whole, and
    lines that are not records still reach on_record / the waiter."""
    from flux_local.channel import HostChannel

    script = """const buf = new Uint8Array(4096); const n = await Deno.stdin.read(buf);
const req = JSON.parse(new TextDecoder().decode(buf.subarray(0, n)));
const rec = (i) => JSON.stringify({ts: "2026-01-01T00:00:00.000Z", level: "info", stage: "dev", function: "f",
  request_id: "r" + i, msg: "access", data: null});
const out = [rec(1), rec(2), JSON.stringify({reply_to: req.id, ok: true, body: "x".repeat(3 * 1024 * 1024)}),
  rec(3), "not json"].join("\\n") + "\\n" + rec(4);
const data = new TextEncoder().encode(out);
for (let off = 0; off < data.length;) off += Deno.stdout.writeSync(data.subarray(off, off + 1000));"""
    proc = subprocess.Popen([deno_bin(), "eval", script], stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    store = LogStore(tmp_path, mask=Masker())
    events: list[Any] = []

    def on_lines(lines: list[bytes]) -> None:
        events.append([json.loads(x)["request_id"] for x in lines])
        store.append_lines(lines)

    channel = HostChannel(proc, lambda rec: events.append(rec["msg"]), lambda req: {}, on_log_lines=on_lines)
    try:
        channel.start()
        reply = channel.call("probe", {}, 60)
        assert reply["body"] == "x" * (3 * 1024 * 1024)
        assert proc.wait(timeout=30) == 0
        assert channel.closed.wait(10)
    finally:
        proc.kill()
        proc.wait()
    # records are handed over (and stored) before the next line that is not one is acted on, in their order
    flat = [e for ev in events for e in (ev if isinstance(ev, list) else [ev])]
    assert flat == ["r1", "r2", "r3", "not json", "r4"]
    # the reply between r2 and r3 split them: r1, r2 were stored before the waiter got its reply
    assert not any(isinstance(ev, list) and "r2" in ev and "r3" in ev for ev in events)
    assert [r["request_id"] for r in query(tmp_path)] == ["r1", "r2", "r3", "r4"]
