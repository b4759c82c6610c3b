"""A small Lambda Runtime API server (the HTTP interface Lambda gives a runtime: next ->
response | error) so the Flux node shim and Deno bootstrap run as real processes in tests. One server per
sandbox (a process takes one invocation at a time, as on Lambda); the conformance suite's API Gateway + Lambda
emulator (tests/conformance/aws_emulator.py) runs every deployed function through it."""

from __future__ import annotations

import contextlib
import json
import queue
import socket
import threading
import time
import uuid
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

PREFIX = "/2018-06-01/runtime"


@dataclass
class Outcome:
    request_id: str
    kind: str  # "response" | "error"
    body: Any
    error_type: str | None = None


@dataclass
class RuntimeApi:
    function_arn: str
    pending: queue.Queue[tuple[str, Any, float | None]] = field(default_factory=queue.Queue)
    outcomes: dict[str, queue.Queue[Outcome]] = field(default_factory=dict)
    init_errors: list[Any] = field(default_factory=list)
    _server: ThreadingHTTPServer | None = None

    def start(self) -> str:
        api = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                """Quiet."""

            def _reply(self, status: int, body: bytes = b"{}", headers: dict[str, str] | None = None) -> None:
                self.send_response(status)
                for k, v in (headers or {}).items():
                    self.send_header(k, v)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_GET(self) -> None:
                if self.path != f"{PREFIX}/invocation/next":
                    return self._reply(404)
                rid, event, budget_s = api.pending.get()
                # the deadline runs from the moment the runtime takes the invocation (init is not billed to it)
                deadline = "9999999999999" if budget_s is None else str(int((time.time() + budget_s) * 1000))
                self._reply(200, json.dumps(event).encode(), {
                    "Lambda-Runtime-Aws-Request-Id": rid,
                    "Lambda-Runtime-Deadline-Ms": deadline,
                    "Lambda-Runtime-Invoked-Function-Arn": api.function_arn,
                    "Content-Type": "application/json",
                })

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                parts = self.path[len(PREFIX):].strip("/").split("/")
                if parts == ["init", "error"]:
                    api.init_errors.append(json.loads(body))
                    return self._reply(202)
                if len(parts) == 3 and parts[0] == "invocation" and parts[2] in ("response", "error"):
                    out = Outcome(parts[1], parts[2], json.loads(body) if body else None,
                                  self.headers.get("Lambda-Runtime-Function-Error-Type"))
                    api.outcomes.setdefault(parts[1], queue.Queue()).put(out)
                    return self._reply(202)
                return self._reply(404)

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return f"127.0.0.1:{self._server.server_address[1]}"

    def invoke(self, event: Any, timeout: float = 30, *, rid: str | None = None,
               budget_s: float | None = None) -> Outcome:
        """One invocation; raises queue.Empty after `timeout` s. `budget_s`: the function's timeout, sent as
        Lambda-Runtime-Deadline-Ms (None: no deadline)."""
        rid = rid or str(uuid.uuid4())
        self.outcomes[rid] = queue.Queue()
        self.pending.put((rid, event, budget_s))
        try:
            return self.outcomes[rid].get(timeout=timeout)
        finally:
            self.outcomes.pop(rid, None)

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()


class UnixForwarder:
    """127.0.0.1:port -> a Unix socket: Lambda reaches its database over TCP, the embedded PostgreSQL listens on a
    socket only."""

    def __init__(self, socket_path: str) -> None:
        self.socket_path = socket_path
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = int(self.listener.getsockname()[1])
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            upstream = socket.socket(socket.AF_UNIX)
            try:
                upstream.connect(self.socket_path)
            except OSError:
                client.close()
                continue
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    @staticmethod
    def _pipe(src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)

    def close(self) -> None:
        self.listener.close()
