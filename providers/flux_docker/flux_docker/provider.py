"""DockerProvider: the `docker` entry of `flux.providers`.

Everything but the functions' code is the local provider's (this class subclasses it): the stage daemon, the Deno
host's gateway on 127.0.0.1, ctx.secrets / ctx.db, logs, the async queue, migrations and PostgreSQL. Each function
runs in its own container; the host reaches it as a worker over a private channel (the node worker protocol as JSON
lines over one TCP connection to 127.0.0.1:<port>, authenticated by a per-container token), so secrets and queries
are answered by the host and no database credential enters a container.

Containers (one per function): named `flux-<project>-<stage>-<function>-<image id>`, labelled flux.project,
flux.stage, flux.function, flux.digest, flux.port; read-only root file system (+ a small /tmp tmpfs), uid 65532,
every capability dropped, no-new-privileges, memory (flux.json `memory`, default 256 MB), CPU (stage `cpus`,
default 1.0) and pids (stage `pids`, default 256) limits, no Docker socket, no volumes. The engines this was built
for run with `--bridge=none`, so containers use host networking, each on its own loopback port.

An update builds the new image, starts its container, waits until it answers, lets the host pre-warm it and switch
(old requests finish on the old container), then stops the old one (SIGTERM: it exits once the host closed its
channel). `flux rollback` runs the previous image again. Refresh reads the containers back: one stopped or removed
by hand makes its function read as absent, and the next apply recreates it.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import socket
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from flux_local.provider import LocalProvider, _q
from flux_local.table_entry import function_config

from flux_docker import engine, image
from flux_plan.errors import ProviderError
from flux_plan.model import FunctionSpec, ProviderResult, Resource, ResourceState

DEFAULT_CPUS = 1.0
DEFAULT_PIDS = 256
TMPFS_SIZE = "64m"
HEALTH_TIMEOUT_S = 30.0
HISTORY_FILE = "docker.json"
KEEP_IMAGES = 5  # previous images per function kept for rollback


def _name_part(text: str) -> str:
    return re.sub(r"[^a-zA-Z0-9_.-]", "-", text)[:40]


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def ping(port: int, token: str, timeout: float = 1.0) -> bool:
    """True when the container's worker answers its channel (the health check)."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
            s.sendall((json.dumps({"t": "ping", "token": token}) + "\n").encode())
            data = b""
            while b"\n" not in data:
                chunk = s.recv(4096)
                if not chunk:
                    break
                data += chunk
        return json.loads(data.split(b"\n", 1)[0] or b"{}").get("t") == "pong"
    except (OSError, ValueError):
        return False


class DockerProvider(LocalProvider):
    name = "docker"
    prechecks = False  # a container is health-checked by its own deploy, not load-checked in the host

    def __init__(self) -> None:
        super().__init__()
        self._client: Any = None
        self._client_lock = threading.Lock()
        self._history_lock = threading.Lock()
        # containers replaced or deleted by this apply: removed in after_apply, once the host serves the new table
        # (an apply holds the host's table until its end: stopping them earlier would fail their requests)
        self._retire: list[tuple[Any, int]] = []
        self._retire_lock = threading.Lock()

    # -- engine -------------------------------------------------------------------------------------
    @property
    def docker(self) -> Any:
        with self._client_lock:
            if self._client is None:
                self._client = engine.client()
            return self._client

    def _labels(self, fn: str | None = None) -> dict[str, str]:
        ctx = self._ctx
        labels = {"flux.project": ctx.project.name, "flux.stage": ctx.stage.name}
        if fn is not None:
            labels["flux.function"] = fn
        return labels

    def _containers(self, fn: str | None = None) -> list[Any]:
        import docker.errors

        filters = {"label": [f"{k}={v}" for k, v in self._labels(fn).items()]}
        try:
            # a container removed between the listing and its inspection (a replace in flight) is gone, not an error
            return list(self.docker.containers.list(all=True, filters=filters, ignore_removed=True))
        except docker.errors.APIError as exc:
            raise ProviderError(f"listing the stage's containers failed: {exc.explanation or exc}") from None

    def _setting(self, key: str, default: Any, kind: type) -> Any:
        raw = self._ctx.stage.settings.get(key, default)
        try:
            value = kind(raw)
        except (TypeError, ValueError):
            value = None
        if value is None or value <= 0 or isinstance(raw, bool):
            raise ProviderError(f"flux.project.json (stages.{self._ctx.stage.name}.{key}): must be a positive "
                                f"number, got {raw!r}")
        return value

    # -- containers ---------------------------------------------------------------------------------
    def _command(self, runtime: str, port: int, memory_mb: int) -> list[str]:
        heap = max(32, int(memory_mb * 0.75))
        if runtime == "node":
            return ["/flux/node", "--experimental-permission", "--no-warnings", "--allow-fs-read=/flux/*",
                    "--allow-fs-read=/app/*", f"--max-old-space-size={heap}", "/flux/container_worker.mjs", str(port)]
        return ["/flux/deno", "run", "--no-prompt", "--no-config", "--no-lock", "--allow-net", "--allow-env",
                "--allow-read=/flux,/app", f"--v8-flags=--max-old-space-size={heap}", "/flux/container_worker.mjs",
                str(port)]

    def _run(self, spec: FunctionSpec, tag: str, digest: str) -> tuple[Any, int, str]:
        """Start (or adopt) the container of `spec` on image `tag`; returns it once it answers its channel."""
        import docker.errors

        ctx = self._ctx
        cname = "flux-" + "-".join(_name_part(x) for x in (ctx.project.name, ctx.stage.name, spec.name,
                                                            tag.split(":", 1)[1][:12]))
        for c in self._containers(spec.name):
            if c.name != cname:
                continue
            port, token = self._endpoint_of(c)
            if c.status == "running" and port and token and ping(port, token):
                return c, port, token  # a crash between start and record: adopt it, never a duplicate
            self._remove(c)
        cpus = self._setting("cpus", DEFAULT_CPUS, float)
        pids = int(self._setting("pids", DEFAULT_PIDS, int))
        memory = int(spec.memory)
        last = ""
        for _attempt in range(3):  # a free port can be taken between the probe and the container's listen
            port, token = free_port(), secrets.token_urlsafe(24)
            try:
                c = self.docker.containers.run(
                    tag, self._command(spec.runtime, port, memory), name=cname, detach=True,
                    labels={**self._labels(spec.name), "flux.digest": digest, "flux.port": str(port),
                            "flux.image": tag},
                    environment={"FLUX_CHANNEL_TOKEN": token, "HOME": "/tmp", "DENO_DIR": "/tmp/deno",
                                 "NO_COLOR": "1"},
                    user=f"{image.CONTAINER_UID}:{image.CONTAINER_UID}", read_only=True,
                    tmpfs={"/tmp": f"size={TMPFS_SIZE},mode=1777"}, cap_drop=["ALL"],
                    security_opt=["no-new-privileges:true"], mem_limit=f"{memory}m", memswap_limit=f"{memory}m",
                    nano_cpus=int(cpus * 1e9), pids_limit=pids, network_mode="host", ipc_mode="private",
                    restart_policy={"Name": "on-failure", "MaximumRetryCount": 5}, init=False,
                )
            except docker.errors.APIError as exc:
                raise ProviderError(f"starting the container of {spec.name} failed: {exc.explanation or exc}",
                                    address=f"function.{spec.name}") from None
            deadline = time.monotonic() + HEALTH_TIMEOUT_S
            while time.monotonic() < deadline:
                if ping(port, token):
                    return c, port, token
                c.reload()
                if c.status in ("exited", "dead"):
                    break
                time.sleep(0.05)
            last = self._tail(c)
            self._remove(c)
        raise ProviderError(f"the container of {spec.name} did not become healthy: {last or 'no output'}; "
                            "`flux logs` and `docker logs` have details", address=f"function.{spec.name}")

    @staticmethod
    def _tail(c: Any) -> str:
        try:
            return " | ".join(c.logs(tail=5).decode(errors="replace").strip().splitlines())[:500]
        except Exception:  # best effort diagnostics of a container that is going away
            return ""

    @staticmethod
    def _endpoint_of(c: Any) -> tuple[int, str]:
        env = dict(x.split("=", 1) for x in (c.attrs.get("Config", {}).get("Env") or []) if "=" in x)
        try:
            port = int(c.labels.get("flux.port", "0"))
        except ValueError:
            port = 0
        return port, env.get("FLUX_CHANNEL_TOKEN", "")

    def _remove(self, c: Any, grace_s: int = 0) -> None:
        import docker.errors

        try:
            if grace_s and c.status == "running":
                c.stop(timeout=grace_s)
            c.remove(force=True)
        except docker.errors.NotFound:
            pass
        except docker.errors.APIError as exc:
            raise ProviderError(f"removing container {c.name} failed: {exc.explanation or exc}") from None

    # -- history (rollback) -------------------------------------------------------------------------
    def _history_path(self) -> Path:
        return self._ctx.state_dir / HISTORY_FILE

    def _history(self) -> dict[str, list[dict[str, str]]]:
        try:
            doc = json.loads(self._history_path().read_text(encoding="utf-8"))
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as exc:
            raise ProviderError(f"{self._history_path()}: unreadable ({exc}); delete it (only rollback needs it)") \
                from None
        return doc if isinstance(doc, dict) else {}

    def _remember(self, fn: str, entry: dict[str, str]) -> None:
        with self._history_lock:
            doc = self._history()
            items = [e for e in doc.get(fn, []) if e.get("image") != entry["image"]] + [entry]
            doc[fn] = items[-KEEP_IMAGES:]
            path = self._history_path()
            tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
            tmp.write_text(json.dumps(doc, indent=2, sort_keys=True), encoding="utf-8")
            tmp.replace(path)

    # -- resources ----------------------------------------------------------------------------------
    def _check_ready(self, changes: list[tuple[str, str]]) -> None:
        """Fail before anything changes or starts: an unreachable engine or a bad limit setting."""
        if any(a.startswith("function.") and action not in ("noop", "read") for a, action in changes):
            self._setting("cpus", DEFAULT_CPUS, float)
            self._setting("pids", DEFAULT_PIDS, int)
            _ = self.docker

    def get_ready(self, changes: list[tuple[str, str]]) -> Callable[[], None] | None:
        # before the local runtime starts in the background: a refused deploy must not leave it running
        self._check_ready(changes)
        return super().get_ready(changes)

    def before_apply(self, changes: list[tuple[str, str]]) -> None:
        self._check_ready(changes)
        super().before_apply(changes)

    def _put(self, resource: Resource) -> ProviderResult:
        if resource.type != "function":
            return super()._put(resource)
        spec = self._spec(resource.name)
        bundle = self._ctx.artifacts.ensure(spec)
        tag = image.ensure_function_image(self.docker, spec.runtime, bundle)
        out = self._deploy(spec, tag, spec.source_digest, str(bundle / "index.mjs"))
        self._remember(spec.name, {"image": tag, "digest": spec.source_digest, "bundle": str(bundle / "index.mjs")})
        return ProviderResult(outputs={"bundle": str(bundle / "index.mjs"), "image": tag, "container": out})

    def _deploy(self, spec: FunctionSpec, tag: str, digest: str, bundle: str) -> str:
        """New container healthy -> host switches to it (pre-warmed) -> old containers stopped after draining."""
        self.ensure_daemon()
        c, port, token = self._run(spec, tag, digest)
        cfg = function_config(spec, bundle)
        cfg["digest"] = digest
        cfg["endpoint"] = {"port": port, "token": token}
        self.client.ok("PUT", f"/admin/functions/{_q(spec.name)}", cfg)
        with self._retire_lock:
            self._retire += [(old, spec.timeout + 5) for old in self._containers(spec.name) if old.id != c.id]
        return str(c.name)

    def delete(self, address: str, prior: ResourceState) -> None:
        super().delete(address, prior)
        kind, name = address.split(".", 1)
        if kind == "function":
            with self._retire_lock:
                self._retire += [(c, 5) for c in self._containers(name)]

    def after_apply(self, resources: dict[str, ResourceState]) -> dict[str, Any]:
        """The host serves the new table from here on (the hold ends in the local provider's after_apply): now stop
        what it no longer routes to, plus any container a crashed apply left beside the one the table names."""
        out = super().after_apply(resources)
        with self._retire_lock:
            retire, self._retire = self._retire, []
        seen = {c.id for c, _ in retire}
        table = self._table()["functions"]
        for c in self._containers():
            fn = c.labels.get("flux.function", "")
            port = ((table.get(fn) or {}).get("endpoint") or {}).get("port")
            if c.id not in seen and (fn not in table or self._endpoint_of(c)[0] != port):
                retire.append((c, 5))
        for c, grace in retire:
            self._remove(c, grace_s=grace)
        return out

    def read_many(self, items: dict[str, ResourceState]) -> dict[str, dict[str, Any] | None]:
        """The local provider's view, and a function counts only while its container runs and answers."""
        out = super().read_many(items)
        fns = [a for a in items if a.startswith("function.") and out.get(a) is not None]
        if not fns:
            return out
        table = self._table()
        live: dict[str, list[Any]] = {}
        for c in self._containers():
            if c.status == "running":
                live.setdefault(c.labels.get("flux.function", ""), []).append(c)
        for addr in fns:
            name = addr.split(".", 1)[1]
            ep = (table["functions"].get(name) or {}).get("endpoint") or {}
            ok = any(self._endpoint_of(c)[0] == ep.get("port") for c in live.get(name, []))
            if not ok:
                out[addr] = None
        return out

    def destroy_stage(self, *, purge: bool = False) -> None:
        """Stop the daemon (local provider), remove the stage's containers and the Flux-built images only they used;
        with `purge` also the stage's data: the local provider's (database, queue, logs) and the docker volumes
        labelled with the stage."""
        import docker.errors

        super().destroy_stage(purge=purge)
        try:
            containers = self._containers()
        except ProviderError:
            raise
        images = {c.labels.get("flux.image", "") for c in containers}
        for c in containers:
            self._remove(c)
        for entries in self._history().values():
            images.update(e.get("image", "") for e in entries)
        for tag in sorted(t for t in images if t.startswith(image.FUNCTION_REPO + ":")):
            try:
                img = self.docker.images.get(tag)
                if img.labels.get(image.BUILT_LABEL) == "1":
                    self.docker.images.remove(tag, noprune=False)
            except docker.errors.ImageNotFound:
                pass
            except docker.errors.APIError:
                pass  # still used by another stage's container (identical functions share images)
        self._history_path().unlink(missing_ok=True)
        if purge:
            for vol in self.docker.volumes.list(filters={"label": [f"{k}={v}" for k, v in self._labels().items()]}):
                try:
                    vol.remove(force=True)
                except docker.errors.APIError as exc:
                    raise ProviderError(f"docker volume {vol.name} of the stage could not be removed ({exc}); "
                                        "remove what uses it, then run `flux destroy --purge` again") from None
            self._ctx.log("purged the stage's docker volumes")

    # -- rollback -----------------------------------------------------------------------------------
    def rollback(self, function: str, to_version: str | None = None) -> dict[str, str]:
        """Run the function's previous image again (the next apply deploys the project's code again)."""
        spec = self._spec(function)
        entries = self._history().get(function, [])
        current = next((c.labels.get("flux.image", "") for c in self._containers(function) if c.status == "running"),
                       entries[-1]["image"] if entries else "")
        if to_version is not None:
            target = next((e for e in entries if e["image"] == to_version or e["image"].endswith(":" + to_version)), None)
            if target is None:
                known = ", ".join(e["image"].split(":", 1)[1] for e in entries) or "none"
                raise ProviderError(f"function.{function}: no deployed image {to_version!r} (known: {known})")
        else:
            older = [e for e in entries if e["image"] != current]
            if not older:
                raise ProviderError(f"function.{function}: no previous image to roll back to (deploy a change first)")
            target = older[-1]
        if not image.image_exists(self.docker, target["image"]):
            raise ProviderError(f"function.{function}: image {target['image']} was removed; deploy that code again")
        self._deploy(spec, target["image"], target["digest"], target["bundle"])
        self._remember(function, target)
        return {"function": function, "from_version": current.split(":", 1)[-1],
                "to_version": target["image"].split(":", 1)[1]}
