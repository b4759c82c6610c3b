"""A private Docker engine for the tests: its own data-root, exec-root, pidfile and unix socket, no iptables and
no bridge (what works on this machine kind, see issue 14). Stopped by PID and its directories removed at the end,
whatever the tests did."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path


class PrivateDockerd:
    def __init__(self) -> None:
        # short path: a unix socket path must stay under 108 bytes
        self.dir = Path(tempfile.mkdtemp(prefix="flux-dockerd-", dir="/tmp"))
        self.sock = self.dir / "docker.sock"
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def host(self) -> str:
        return f"unix://{self.sock}"

    def start(self, timeout: float = 60) -> str:
        log = (self.dir / "dockerd.log").open("wb")
        self.proc = subprocess.Popen(
            ["dockerd", "--data-root", str(self.dir / "data"), "--exec-root", str(self.dir / "exec"),
             "--pidfile", str(self.dir / "dockerd.pid"), "-H", self.host, "--iptables=false",
             "--ip6tables=false", "--bridge=none", "--storage-driver=overlay2"],
            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        log.close()
        import docker

        deadline = time.monotonic() + timeout
        last: Exception | None = None
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                break
            try:
                client = docker.DockerClient(base_url=self.host, timeout=10)
                client.ping()
                client.close()
                return self.host
            except Exception as exc:
                last = exc
                time.sleep(0.2)
        tail = (self.dir / "dockerd.log").read_text(errors="replace")[-2000:]
        self.stop()
        raise RuntimeError(f"private dockerd did not start ({last}):\n{tail}")

    def stop(self) -> None:
        """Containers first (their shims outlive dockerd otherwise), then dockerd by PID, then the files."""
        if self.proc is not None and self.proc.poll() is None:
            with contextlib.suppress(Exception):
                import docker

                client = docker.DockerClient(base_url=self.host, timeout=30)
                for c in client.containers.list(all=True):
                    with contextlib.suppress(Exception):
                        c.remove(force=True)
                client.close()
            with contextlib.suppress(ProcessLookupError):
                self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    self.proc.kill()
                self.proc.wait(timeout=30)
        # a killed engine can leave overlay / shm mounts under its roots: unmount them before removing
        mounts = []
        with contextlib.suppress(OSError):
            for line in Path("/proc/self/mounts").read_text().splitlines():
                target = line.split()[1].replace("\\040", " ")
                if target.startswith(str(self.dir) + os.sep):
                    mounts.append(target)
        for target in sorted(mounts, key=len, reverse=True):
            subprocess.run(["umount", "-l", target], check=False, capture_output=True)
        shutil.rmtree(self.dir, ignore_errors=True)
