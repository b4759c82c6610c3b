"""What the AWS tests share beyond fixtures (the fault-injecting moto server, a project pointed at it), in a module
of its own name: `from conftest import` would find whichever tests directory's conftest pytest loaded last
when several are collected together. Importing it sets fake credentials in the environment, read by boto3
exactly as in production."""

from __future__ import annotations

import base64
import json
import os
import shutil
import subprocess
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aws_faults import FaultInjector
from moto.moto_server.threaded_moto_server import ThreadedMotoServer
from moto.moto_server.werkzeug_app import DomainDispatcherApplication, MotoRequestHandler, create_backend_app
from werkzeug.serving import make_server

REGION = "eu-west-1"

for _k, _v in {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_SESSION_TOKEN": "testing",
    "AWS_DEFAULT_REGION": REGION,
}.items():
    os.environ[_k] = _v
os.environ.pop("AWS_PROFILE", None)


class _QuietHandler(MotoRequestHandler):
    def log_request(self, *args: object, **kwargs: object) -> None:
        """Per-request lines would drown the test output."""


class FaultyMotoServer(ThreadedMotoServer):
    """ThreadedMotoServer whose WSGI app is wrapped by a `FaultInjector`."""

    def __init__(self) -> None:
        super().__init__(ip_address="127.0.0.1", port=0, verbose=False)
        self.faults = FaultInjector(DomainDispatcherApplication(create_backend_app))

    def _server_entry(self) -> None:
        self._server = make_server(
            self._ip_address, self._port, self.faults, True, request_handler=_QuietHandler
        )
        self._server_ready_event.set()
        self._server.serve_forever()

    @property
    def url(self) -> str:
        host, port = self.get_host_and_port()
        return f"http://{host}:{port}"

    def reset(self) -> None:
        self.faults.clear()
        req = urllib.request.Request(f"{self.url}/moto-api/reset", method="POST", data=b"")
        urllib.request.urlopen(req, timeout=30).read()
        # Lambda without Docker: invocations are accepted and answered by moto's "simple" backend
        cfg = json.dumps({"lambda": {"use_docker": False}}).encode()
        req = urllib.request.Request(f"{self.url}/moto-api/config", method="POST", data=cfg,
                                     headers={"Content-Type": "application/json"})
        urllib.request.urlopen(req, timeout=30).read()


REPO = Path(__file__).resolve().parents[2]
FLUX = str(REPO / ".venv" / "bin" / "flux")
STATE_BUCKET = "flux-state-e2e"


@dataclass
class AwsProject:
    """A copy of examples/todo whose `prod` stage points at the session's moto server."""

    root: Path
    env: dict[str, str]
    moto: FaultyMotoServer

    def flux(self, *args: str, check: bool = True, cwd: Path | None = None, timeout: float = 600) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run([FLUX, *args], cwd=cwd or self.root, env=self.env, capture_output=True, text=True,
                              timeout=timeout, check=False)
        if check and proc.returncode != 0:
            raise AssertionError(f"flux {' '.join(args)} -> {proc.returncode}\n{proc.stdout}\n{proc.stderr}")
        return proc

    def client(self, service: str) -> Any:
        import boto3

        return boto3.client(service, endpoint_url=self.moto.url, region_name=REGION)


def make_project(moto: FaultyMotoServer, tmp_path: Path, pg_url: str, **settings: Any) -> AwsProject:
    import boto3

    root = tmp_path / "todo"
    shutil.copytree(REPO / "examples" / "todo", root, ignore=shutil.ignore_patterns(".flux", "node_modules"))
    cfg = json.loads((root / "flux.project.json").read_text())
    cfg["stages"]["prod"].update({"endpoint_url": moto.url, "region": REGION,
                                  "state": {"backend": "s3", "bucket": STATE_BUCKET, "key": "todo/prod.json"},
                                  "database_url_env": "DATABASE_URL", **settings})
    (root / "flux.project.json").write_text(json.dumps(cfg, indent=2))
    boto3.client("s3", endpoint_url=moto.url, region_name=REGION).create_bucket(
        Bucket=STATE_BUCKET, CreateBucketConfiguration={"LocationConstraint": REGION})
    env = {**os.environ, "DATABASE_URL": pg_url,
           "FLUX_SECRETS_KEY": base64.b64encode(os.urandom(32)).decode(), "NO_COLOR": "1"}
    proj = AwsProject(root=root, env=env, moto=moto)
    proj.flux("secrets", "set", "REMINDER_WEBHOOK_TOKEN=tok-very-secret-123", "APP_NAME=todo-on-aws",
              "--stage", "prod")
    return proj
