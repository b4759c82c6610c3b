"""The supervisor's end of the host channel: JSON lines on the Deno host's stdin/stdout (protocol: host.ts header).

Why stdin/stdout: the supervisor starts the host and owns those pipes anyway; no listener, port or token is
needed between the two, and nothing else on the machine can speak on them. One reader thread per host
demultiplexes its stdout (replies by id, requests such as `enqueue`, log records); requests are answered by a
second thread, so the reader never blocks on a writer (a writer may wait on a full stdin pipe until the host
has drained it, and the host may wait on its full stdout until the reader drains that).
"""

from __future__ import annotations

import contextlib
import json
import queue
import subprocess
import threading
from collections.abc import Callable, Iterator
from typing import Any

Record = dict[str, Any]


class HostDown(Exception):
    """The Deno host is not (yet) running, or went away before it answered."""


class HostError(RuntimeError):
    """The host refused a request (its error reply)."""


class Waiter:
    """One request waiting for its reply (or for the host's end)."""

    def __init__(self) -> None:
        self.done = threading.Event()
        self.reply: Record | None = None

    def wait(self, timeout: float) -> Record:
        if not self.done.wait(timeout):
            raise HostDown("the Deno host did not answer in time")
        if self.reply is None:
            raise HostDown("the Deno host exited")
        if not self.reply.get("ok"):
            raise HostError(str(self.reply.get("error") or "refused"))
        return self.reply


class HostChannel:
    """Requests to one host process and its replies; `on_record` gets each log record (and each stdout line
    that is not JSON, as a record), `on_request` answers the host's requests (returns the reply's fields)."""

    def __init__(self, proc: subprocess.Popen[bytes], on_record: Callable[[Record], None],
                 on_request: Callable[[Record], Record], *, counter: dict[str, int] | None = None,
                 on_raw: Callable[[bytes], None] | None = None,
                 on_log_lines: Callable[[list[bytes]], None] | None = None) -> None:
        self.proc = proc
        self.on_raw = on_raw  # a line that is not a JSON object (default: logged as a record)
        self.on_record = on_record
        # given: the host's log records (the lines starting {"ts":, host.ts log()/accessLog()) go to it unparsed,
        # all those of one read in one call (one per request under load: parsing each in Python cost more CPU
        # than the host's whole request path)
        self.on_log_lines = on_log_lines
        self.on_request = on_request
        # messages sent, by op (the daemon passes one dict for all its hosts: /admin/status shows it)
        self.sent: dict[str, int] = counter if counter is not None else {}
        self.closed = threading.Event()
        self._write_lock = threading.Lock()
        self._lock = threading.Lock()
        self._next = 0
        self._waiting: dict[int, Waiter] = {}
        self._requests: queue.SimpleQueue[Record | None] = queue.SimpleQueue()

    def start(self) -> None:
        """Start reading stdout (after the caller consumed the ready line)."""
        threading.Thread(target=self._read, name="flux-host-channel", daemon=True).start()
        threading.Thread(target=self._answer, name="flux-host-requests", daemon=True).start()

    def send(self, op: str, body: Record | None = None) -> Waiter:
        """Write one request; the returned waiter gets its reply (or learns the host is gone)."""
        waiter = Waiter()
        with self._lock:
            if self.closed.is_set():
                waiter.done.set()
                return waiter
            self._next += 1
            mid = self._next
            self._waiting[mid] = waiter
            self.sent[op] = self.sent.get(op, 0) + 1
        if not self._write({**(body or {}), "id": mid, "op": op}):
            with self._lock:
                self._waiting.pop(mid, None)
            waiter.done.set()
        return waiter

    def call(self, op: str, body: Record | None = None, timeout: float = 60) -> Record:
        return self.send(op, body).wait(timeout)

    def _write(self, doc: Record) -> bool:
        line = json.dumps(doc, separators=(",", ":")).encode() + b"\n"
        with self._write_lock:
            try:
                assert self.proc.stdin is not None
                self.proc.stdin.write(line)
                self.proc.stdin.flush()
                return True
            except (OSError, ValueError):
                return False

    def close_stdin(self) -> None:
        """EOF on the host's stdin: it drains and exits (what it also does when the supervisor dies)."""
        with self._write_lock, contextlib.suppress(OSError, ValueError):
            assert self.proc.stdin is not None
            self.proc.stdin.close()

    def _chunks(self) -> Iterator[list[bytes]]:
        """The host's stdout as lists of lines, one list per read (all that had arrived)."""
        assert self.proc.stdout is not None
        stream = self.proc.stdout
        partial: list[bytes] = []  # a line longer than one read (an invoke reply's body): joined once, not per read
        while chunk := stream.read1(1 << 16):  # type: ignore[attr-defined]
            if b"\n" not in chunk:
                partial.append(chunk)
                continue
            if partial:
                chunk = b"".join([*partial, chunk])
            lines = chunk.split(b"\n")
            rest = lines.pop()
            partial = [rest] if rest else []
            yield lines
        if partial:
            yield [b"".join(partial)]

    def _read(self) -> None:
        logs: list[bytes] = []
        for lines in self._chunks():
            for raw in lines:
                if self.on_log_lines is not None and raw.startswith(b'{"ts":'):
                    logs.append(raw)
                    continue
                if logs:  # records written before this line are stored before it is acted on
                    self.on_log_lines(logs)  # type: ignore[misc]
                    logs = []
                if raw.strip():
                    self._line(raw)
            if logs:
                self.on_log_lines(logs)  # type: ignore[misc]
                logs = []
        with self._lock:
            self.closed.set()
            gone, self._waiting = self._waiting, {}
        for waiter in gone.values():
            waiter.done.set()
        self._requests.put(None)

    def _line(self, raw: bytes) -> None:
        """One line that is not a log record: a reply, a request of the host, or anything else (a record)."""
        try:
            rec = json.loads(raw)
            if not isinstance(rec, dict):
                raise ValueError
        except ValueError:
            if self.on_raw is not None:
                self.on_raw(raw)
                return
            text = raw.decode(errors="replace").rstrip()
            if text:
                self.on_record({"level": "info", "function": None, "msg": text})
            return
        if "reply_to" in rec:
            with self._lock:
                waiter = self._waiting.pop(rec["reply_to"], None) if isinstance(rec["reply_to"], int) else None
            if waiter is not None:
                waiter.reply = rec
                waiter.done.set()
        elif "op" in rec and isinstance(rec.get("id"), int):
            self._requests.put(rec)
        else:
            self.on_record(rec)

    def _answer(self) -> None:
        while (req := self._requests.get()) is not None:
            try:
                doc = {"ok": True, **self.on_request(req)}
            except Exception as exc:  # the host gets a refusal, never a hang
                doc = {"ok": False, "error": str(exc) or type(exc).__name__}
            self._write({**doc, "reply_to": req["id"]})
