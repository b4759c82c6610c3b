"""One conformance suite for every provider (DESIGN §8): the same scenarios against `local`, `docker` (a private
dockerd started here when the `dockerd` binary exists; skipped with the reason otherwise) and `aws` (a moto server;
moto stores Lambda code without running it, so aws_emulator.py serves the deployed HTTP API: it reads routes,
integrations, CORS, aliases, versions, env and code back from moto and runs each function's real zip with its
real shim as processes on the Lambda Runtime API).

Each provider gets one deployment of the `conf` project (module scope) that the scenarios of test_scenarios.py
walk through in order: deploy, no-op re-plan, HTTP checks, update under requests, routes, secrets, migrations,
drift, rollback, destroy."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from aws_emulator import AwsEmulator, UnixForwarder, tcp_url
from dockerd import PrivateDockerd
from helpers import free_port, stop_daemons

REPO = Path(__file__).resolve().parents[2]
FLUX = REPO / ".venv" / "bin" / "flux"
REGION = "eu-west-1"
PROVIDERS = ("local", "docker", "aws")
TOKEN_V1 = "tok-conformance-v1-5e1f"
TOKEN_V2 = "tok-conformance-v2-a9c3"
# What cannot hold on a provider's platform at all: the scenario reports n/a with this reason (README table).
PLATFORM_LIMITS: dict[tuple[str, str], str] = {
    ("aws", "unknown_route_404_wrong_method_405"):
        "API Gateway HTTP APIs answer any unrouted method + path themselves: 404 {\"message\":\"Not Found\"}, "
        "no 405 with Allow, no Flux error body",
    ("aws", "overload_503"):
        "Lambda has no request queue: past the reserved concurrency it throttles, and API Gateway answers 500",
}
# The request body limit (413 above it): the local gateway's (docker reuses it); on aws the shim's default
# FLUX_MAX_BODY_BYTES (Lambda itself refuses invoke payloads over 6 MB before any code runs).
MAX_BODY = {"local": 6 * 1024 * 1024, "docker": 6 * 1024 * 1024, "aws": 1024 * 1024}


# ------------------------------------------------------------------------------------------ the project
def fn(name: str, code: str, **cfg: Any) -> dict[str, str]:
    return {f"functions/{name}/flux.json": json.dumps({"name": name, **cfg}, indent=2),
            f"functions/{name}/index.ts": 'import { defineFunction } from "@flux/functions";\n\n' + code}


def hello_code(version: str) -> str:
    return (
        'export default defineFunction({\n  name: "hello",\n  handler: async ({ input, ctx }) => {\n'
        '    ctx.log("hello called", { who: input.name ?? null });\n'
        '    console.warn("a warning from hello");\n'
        '    console.error("an error line from hello");\n'
        f'    return {{ message: "hello {version}", who: input.name ?? null, app: ctx.env.APP_NAME ?? null,\n'
        '             style: ctx.env.GREETING_STYLE ?? null,\n'
        '             request_id: ctx.requestId };\n  },\n});\n'
    )


FILES: dict[str, str] = {
    ".env.example": "APP_NAME=conformance\n",
    "schema/001_items.sql": "CREATE TABLE items (id serial PRIMARY KEY, name text NOT NULL);\n",
    **fn("hello", hello_code("v1"), route="/hello", method="POST", env={"GREETING_STYLE": "warm"}),  # a plain value
    **fn("secret_hash", (
        'export default defineFunction({\n  name: "secret_hash",\n  handler: async ({ ctx }) => {\n'
        '    const token = await ctx.secrets.get("API_TOKEN");\n'
        '    const d = new Uint8Array(await crypto.subtle.digest("SHA-256", new TextEncoder().encode(token)));\n'
        '    return { sha256: Array.from(d).map((b) => b.toString(16).padStart(2, "0")).join(""),\n'
        '             env_has_token: (ctx.env.API_TOKEN ?? "") === token };\n  },\n});\n'
    ), route="/secret_hash", method="POST"),
    **fn("snoop", (
        'export default defineFunction({\n  name: "snoop",\n  handler: async ({ input, ctx }) => {\n'
        '    const key = String(input.key);\n'
        '    try { await ctx.secrets.get(key); return { got: true }; }\n'
        '    catch (e) { return { got: false, error: String((e as Error).message) }; }\n  },\n});\n'
    ), route="/snoop", method="POST"),
    **fn("items", (
        'export default defineFunction({\n  name: "items",\n  handler: async ({ input, ctx }) => {\n'
        '    if (input.name) await ctx.db.query({ table: "items", operation: "insert", values: { name: input.name } });\n'
        '    const rows = await ctx.db.query({ table: "items", operation: "select", columns: ["id", "name"],\n'
        '      order: [{ column: "id", direction: "asc" }], limit: 100 });\n'
        '    return { items: rows, runtime: typeof Deno === "undefined" ? "node" : "deno" };\n  },\n});\n'
    ), route="/items", method="POST", runtime="node"),
    **fn("list_items", (
        'export default defineFunction({\n  name: "list_items",\n  handler: async ({ input, ctx }) => {\n'
        '    const rows = await ctx.db.query({ table: "items", operation: "select", columns: ["id", "name"],\n'
        '      order: [{ column: "id", direction: "asc" }], limit: 100 });\n'
        '    return { count: rows.length, q: input.q ?? null };\n  },\n});\n'
    ), route="/items", method="GET"),
    **fn("job", (
        'export default defineFunction({\n  name: "job",\n  handler: async ({ input, ctx }) => {\n'
        '    ctx.log("job ran", { n: input.n });\n    return { n: input.n };\n  },\n});\n'
    ), route="/job", method="POST", **{"async": True}),
    **fn("boom", (
        'export default defineFunction({\n  name: "boom",\n  handler: async () => {\n'
        '    throw new Error("kaboom from the handler");\n  },\n});\n'
    ), route="/boom", method="POST"),
    **fn("slow", (
        'export default defineFunction({\n  name: "slow",\n  handler: async ({ input }) => {\n'
        '    await new Promise((r) => setTimeout(r, Number(input.ms ?? 100)));\n'
        '    return { slept: Number(input.ms ?? 100) };\n  },\n});\n'
    ), route="/slow", method="POST", timeout=2, concurrency=1),
    **fn("note", (
        'export default defineFunction({\n  name: "note",\n  handler: async ({ input, ctx }) => {\n'
        '    ctx.log.debug("note debug", { id: input.id });\n'
        '    ctx.log.warn("note warn");\n'
        '    if (input.id === "missing") return Response.json({ error: "no such note" }, { status: 404 });\n'
        '    return new Response(JSON.stringify({ id: input.id, q: input.q ?? null }),\n'
        '      { status: 201, headers: { "content-type": "application/json", "x-note": "v1" } });\n  },\n});\n'
    ), route="/notes/{id}", method="GET"),
}
# The stage's CORS setting (DESIGN §7): the same on every provider.
CORS = {"allow_origins": ["http://app.test"], "allow_methods": ["GET", "POST"], "allow_headers": ["content-type"],
        "expose_headers": ["x-note"], "max_age": 600}


# ------------------------------------------------------------------------------------------ engines
@pytest.fixture(scope="session")
def docker_host() -> Iterator[str]:
    """DOCKER_HOST of a private dockerd for this session (xdist worker)."""
    if shutil.which("dockerd") is None:
        pytest.skip("docker provider: no `dockerd` binary on this machine (Debian: apt-get install docker.io; "
                    ".ci/run installs it when it runs as root)")
    if os.geteuid() != 0:
        pytest.skip("docker provider: starting a private dockerd needs root")
    engine = PrivateDockerd()
    try:
        yield engine.start()
    finally:
        engine.stop()


@pytest.fixture(scope="session")
def moto_url() -> Iterator[str]:
    from moto.moto_server.threaded_moto_server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    url = f"http://{host}:{port}"
    cfg = json.dumps({"lambda": {"use_docker": False}}).encode()
    urllib.request.urlopen(urllib.request.Request(f"{url}/moto-api/config", data=cfg, method="POST",
                                                  headers={"Content-Type": "application/json"}), timeout=30).read()
    try:
        yield url
    finally:
        server.stop()


@pytest.fixture(scope="session")
def aws_pg() -> Iterator[str]:
    """The stage database of the aws target (DATABASE_URL): an embedded PostgreSQL, reached over TCP (as Lambda
    reaches its database) through a forwarder to its socket. Outside pytest's 0700 tmp tree: as root, the server
    runs as another user."""
    from flux_local.pg import EmbeddedPostgres

    base = Path(tempfile.mkdtemp(prefix="flux-conf-pg-", dir="/tmp"))
    base.chmod(0o755)
    server = EmbeddedPostgres(base / "data")
    forwarders: dict[str, UnixForwarder] = {}
    try:
        yield tcp_url(server.start(), forwarders)
    finally:
        for f in forwarders.values():
            f.close()
        server.stop()
        shutil.rmtree(base, ignore_errors=True)


# ------------------------------------------------------------------------------------------ a stage
@dataclass
class Stage:
    """The conf project deployed with one provider, driven through the real CLI."""

    provider: str
    root: Path
    env: dict[str, str]
    port: int
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def executes(self) -> bool:
        """Whether the provider's functions run here (aws: through aws_emulator.py on what moto holds)."""
        return self.provider in ("local", "docker", "aws")

    @property
    def max_body(self) -> int:
        return MAX_BODY[self.provider]

    def flux(self, *args: str, check: bool = True, timeout: float = 600) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run([str(FLUX), *args], cwd=self.root, env=self.env, text=True, capture_output=True,
                              timeout=timeout)
        if check and proc.returncode != 0:
            raise AssertionError(f"[{self.provider}] flux {' '.join(args)} exited {proc.returncode}\n"
                                 f"stdout:\n{proc.stdout}\nstderr:\n{proc.stderr}")
        return proc

    def plan_json(self, *args: str) -> dict[str, Any]:
        return json.loads(self.flux("plan", "--json", *args).stdout)

    def write(self, rel: str, text: str) -> None:
        p = self.root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(text)

    def http(self, method: str, path: str, body: Any = None, raw: bytes | None = None,
             headers: dict[str, str] | None = None, timeout: float = 60) -> tuple[int, Any, dict[str, str]]:
        data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
        req = urllib.request.Request(f"http://127.0.0.1:{self.port}{path}", data=data, method=method,
                                     headers={"Content-Type": "application/json", **(headers or {})})
        try:
            with urllib.request.urlopen(req, timeout=timeout) as resp:
                status, payload, hdrs = resp.status, resp.read(), resp.headers
        except urllib.error.HTTPError as exc:
            status, payload, hdrs = exc.code, exc.read(), exc.headers
        try:
            doc: Any = json.loads(payload) if payload else None
        except ValueError:
            doc = payload.decode(errors="replace")
        return status, doc, {k.lower(): v for k, v in hdrs.items()}

    def logs(self, *args: str) -> list[dict[str, Any]]:
        out = self.flux("logs", "--json", *args).stdout
        return [json.loads(line) for line in out.splitlines() if line.strip().startswith("{")]

    # -- provider-specific views of "the real thing", used to break it by hand and to check leftovers
    def docker(self) -> Any:
        import docker

        return docker.DockerClient(base_url=self.env["DOCKER_HOST"], timeout=60)

    def aws(self, service: str) -> Any:
        import boto3

        return boto3.client(service, endpoint_url=self.extra["moto_url"], region_name=REGION)

    def instances(self) -> dict[str, str]:
        """What runs each function right now (container id, Lambda version, local pool digest)."""
        if self.provider == "docker":
            with contextlib.closing(self.docker()) as d:
                return {c.labels["flux.function"]: c.id
                        for c in d.containers.list(filters={"label": "flux.project=conf"})}
        if self.provider == "aws":
            lam = self.aws("lambda")
            prefix = "flux-conf-dev-"
            return {f["FunctionName"][len(prefix):]:
                    lam.get_alias(FunctionName=f["FunctionName"], Name="live")["FunctionVersion"]
                    for f in lam.list_functions()["Functions"] if f["FunctionName"].startswith(prefix)}
        doc = json.loads((self.root / ".flux" / "dev" / "runtime.json").read_text())
        return {k: v["digest"] for k, v in doc["functions"].items()}

    def remember_images(self) -> None:
        if self.provider == "docker":
            with contextlib.closing(self.docker()) as d:
                self.extra["images"] = {c.labels.get("flux.image", "")
                                        for c in d.containers.list(all=True, filters={"label": "flux.project=conf"})}

    def break_function(self, name: str) -> None:
        """Take a deployed function away behind Flux's back, the way an operator would."""
        if self.provider == "docker":
            with contextlib.closing(self.docker()) as d:
                found = d.containers.list(filters={"label": ["flux.project=conf", f"flux.function={name}"]})
                assert found, f"no running container of {name}"
                for c in found:
                    c.stop(timeout=1)
        elif self.provider == "aws":
            self.aws("lambda").delete_function(FunctionName=f"flux-conf-dev-{name}")
        else:
            from flux_local.client import DaemonClient

            DaemonClient(self.root / ".flux" / "dev").ok("DELETE", f"/admin/functions/{name}")

    def leftovers(self) -> list[str]:
        """What of the stage still exists after destroy (must be nothing)."""
        left: list[str] = []
        info = self.root / ".flux" / "dev" / "daemon.json"
        if info.exists():
            from flux_local.client import pid_alive

            doc = json.loads(info.read_text())
            left += [f"process {doc[k]}" for k in ("pid", "host_pid") if pid_alive(doc.get(k))]
        if self.provider == "docker":
            with contextlib.closing(self.docker()) as d:
                left += [f"container {c.name}" for c in d.containers.list(all=True, filters={"label": "flux.project=conf"})]
                used = {i for i in self.extra.get("images", set())}
                left += [f"image {t}" for img in d.images.list() for t in img.tags if t in used]
        if self.provider == "aws":
            left += [f"lambda {f['FunctionName']}" for f in self.aws("lambda").list_functions()["Functions"]
                     if f["FunctionName"].startswith("flux-conf-dev-")]
            left += [f"api {a['Name']}" for a in self.aws("apigatewayv2").get_apis()["Items"]
                     if a["Name"].startswith("flux-conf-dev")]
        return left


def scratch_project(provider: str, name: str, files: dict[str, str]) -> tuple[Path, Path, dict[str, str]]:
    """(base, root, env) of a throw-away project `name` with `files`, under /tmp (outside pytest's 0700 tmp tree:
    as root, the embedded PostgreSQL runs as another user), with its own HOME and the checkout's flux on PATH;
    the caller removes `base`."""
    base = Path(tempfile.mkdtemp(prefix=f"flux-{name}-{provider}-", dir="/tmp"))
    base.chmod(0o755)
    root = base / name
    for rel, text in files.items():
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(text)
    home = base / "home"
    home.mkdir()
    env = {**os.environ, "HOME": str(home), "XDG_CONFIG_HOME": str(home), "NO_COLOR": "1",
           "PATH": f"{REPO / '.venv' / 'bin'}:{os.environ.get('PATH', '')}"}
    env.pop("DATABASE_URL", None)
    return base, root, env


@pytest.fixture(scope="module")
def stage(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stage]:
    provider: str = request.param
    base, root, env = scratch_project(provider, "conf", FILES)
    port = free_port()
    extra: dict[str, Any] = {}
    if provider == "docker":
        env["DOCKER_HOST"] = request.getfixturevalue("docker_host")
        cfg: dict[str, Any] = {"provider": "docker", "port": port}
    elif provider == "aws":
        extra["moto_url"] = request.getfixturevalue("moto_url")
        env.update({"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_SESSION_TOKEN": "testing",
                    "AWS_DEFAULT_REGION": REGION, "DATABASE_URL": request.getfixturevalue("aws_pg")})
        env.pop("AWS_PROFILE", None)
        os.environ.update({k: env[k] for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN",
                                                 "AWS_DEFAULT_REGION")})
        cfg = {"provider": "aws", "region": REGION, "endpoint_url": extra["moto_url"],
               "database_url_env": "DATABASE_URL"}
        emulator = AwsEmulator(extra["moto_url"], REGION, "flux-conf-dev", base / "lambda")
        port = emulator.start(port)
        extra["emulator"] = emulator
    else:
        cfg = {"provider": "local", "port": port}
    cfg["cors"] = CORS
    (root / "flux.project.json").write_text(json.dumps({"name": "conf", "stages": {"dev": cfg}}, indent=2))
    st = Stage(provider=provider, root=root, env=env, port=port, extra=extra)
    st.flux("secrets", "set", f"API_TOKEN={TOKEN_V1}", "APP_NAME=conformance-app")
    try:
        yield st
    finally:
        with contextlib.suppress(Exception):  # a failed scenario may have left the stage up
            st.flux("destroy", "--auto-approve", check=False, timeout=300)
        stop_daemons(root)
        if "emulator" in extra:
            extra["emulator"].stop()
        if provider == "docker":
            with contextlib.suppress(Exception), contextlib.closing(st.docker()) as d:
                for c in d.containers.list(all=True, filters={"label": "flux.project=conf"}):
                    c.remove(force=True)
        shutil.rmtree(base, ignore_errors=True)



def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """The suite once per provider."""
    if "stage" in metafunc.fixturenames:
        metafunc.parametrize("stage", PROVIDERS, indirect=True, scope="module")
