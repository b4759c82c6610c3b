"""Installed the way pipelines install tools: wheels built from this checkout into a fresh virtualenv,
run from outside the checkout. Schemas, SDK and runtime come from the wheels, esbuild from $FLUX_ESBUILD
(the documented CI override), and the test-only `record` provider is not there.

The fresh venv gets the third-party dependencies by a .pth line to a directory of links into the dev venv
(no registry traffic in tests); every flux package, editable finder and dist-info is left out of it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
VENV = REPO / ".venv"
pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]


def _run(args: list[str], **kw: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, capture_output=True, text=True, check=False, timeout=600, **kw)  # type: ignore[call-overload]


def test_wheels_into_a_fresh_venv(tmp_path: Path) -> None:
    wheels = tmp_path / "wheels"
    proc = _run([str(VENV / "bin" / "python"), "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(wheels),
                 str(REPO), str(REPO / "providers" / "flux_local"), str(REPO / "providers" / "flux_aws")])
    assert proc.returncode == 0, proc.stderr[-2000:]
    built = sorted(p.name for p in wheels.glob("*.whl"))
    assert [n.split("-")[0] for n in built] == ["flux_aws", "flux_local", "flux_plan"]

    venv = tmp_path / "venv"
    assert _run([sys.executable, "-m", "venv", "--without-pip", str(venv)]).returncode == 0
    site = next((venv / "lib").glob("python3*/site-packages"))
    deps = tmp_path / "deps"
    deps.mkdir()
    dev_site = next((VENV / "lib").glob("python3*/site-packages"))
    for entry in dev_site.iterdir():
        low = entry.name.lower()
        if low.startswith(("flux", "__editable__", "_virtualenv", "distutils-precedence")) or low.endswith(".pth"):
            continue
        (deps / entry.name).symlink_to(entry)
    (site / "deps.pth").write_text(str(deps) + "\n")
    (venv / "bin" / "deno").symlink_to(VENV / "bin" / "deno")  # the deno wheel's script, as pip installs it
    proc = _run([str(VENV / "bin" / "python"), "-m", "pip", "--python", str(venv / "bin" / "python"), "install",
                 "-q", "--no-deps", "--no-index", *map(str, wheels.glob("*.whl"))])
    assert proc.returncode == 0, proc.stderr[-2000:]

    home = tmp_path / "home"
    home.mkdir()
    env = {"PATH": f"{venv / 'bin'}:/usr/local/bin:/usr/bin:/bin", "HOME": str(home), "NO_COLOR": "1",
           "FLUX_ESBUILD": str(REPO / "node_modules" / ".bin" / "esbuild"), "LANG": "C.UTF-8"}
    flux = str(venv / "bin" / "flux")
    out = _run([flux, "version"], env=env, cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert "provider local: flux_local:LocalProvider" in out.stdout and "provider aws:" in out.stdout
    assert "record" not in out.stdout  # the test-only provider is not part of a user's install
    where = _run([str(venv / "bin" / "python"), "-c",
                  "import flux_plan.paths as p, flux_local, flux_aws; print(p.SCHEMAS_DIR); print(p.SDK_DIR); "
                  "print(flux_local.__file__); print(flux_aws.__file__)"], env=env, cwd=tmp_path)
    assert where.returncode == 0, where.stderr
    for line in where.stdout.split():
        assert line.startswith(str(site)), line  # nothing comes from the checkout

    proj = tmp_path / "proj"
    assert _run([flux, "init", str(proj)], env=env, cwd=tmp_path).returncode == 0
    cfg = json.loads((proj / "flux.project.json").read_text())
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        cfg["stages"]["dev"]["port"] = s.getsockname()[1]
    (proj / "flux.project.json").write_text(json.dumps(cfg))
    for args in (["validate"], ["plan", "-o", "plan.json"], ["show", "plan.json"]):
        res = _run([flux, *args], env=env, cwd=proj)
        assert res.returncode == 0, (args, res.stdout, res.stderr)
    try:
        res = _run([flux, "apply", "plan.json"], env=env, cwd=proj)
        assert res.returncode == 0, res.stdout + res.stderr
        res = _run([flux, "invoke", "hello", "--payload", '{"name": "wheel"}', "--json"], env=env, cwd=proj)
        assert res.returncode == 0, res.stdout + res.stderr
        assert json.loads(res.stdout)["body"] == {"message": "Hello, wheel!"}
    finally:
        res = _run([flux, "destroy", "--auto-approve"], env=env, cwd=proj)
        assert res.returncode == 0, res.stdout + res.stderr
        assert not (proj / ".flux" / "dev" / "daemon.json").exists()
    assert os.environ.get("FLUX_RECORD_FAIL") is None
