"""Start-up work: commands import only what they use (no boto3 for a local stage, no rich or pydantic
for `flux version`), and provider discovery is cached yet sees every install and uninstall at once."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

FLUX_BIN = Path(__file__).resolve().parents[2] / ".venv" / "bin" / "flux"

FluxRunner = Callable[..., tuple[int, str, str]]
HEAVY = ("boto3", "botocore", "flux_aws", "rich", "pydantic", "jsonschema", "deepdiff", "pglast", "typer",
         "psycopg")
PROBE = """
import atexit, json, sys
atexit.register(lambda: sys.stderr.write("MODULES " + json.dumps(sorted({m.split('.')[0] for m in sys.modules})) + "\\n"))
sys.argv = ["flux", *json.loads(sys.argv[1])]
from flux_plan.cli import main
main()
"""


def _imported(args: list[str], cwd: Path, env: dict[str, str]) -> tuple[int, str, set[str]]:
    proc = subprocess.run([str(FLUX_BIN.parent / "python"), "-c", PROBE, json.dumps(args)], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=120, check=False)
    line = next(x for x in proc.stderr.splitlines() if x.startswith("MODULES "))
    return proc.returncode, proc.stdout, set(json.loads(line[len("MODULES "):])) & set(HEAVY)


def test_commands_import_only_what_they_need(tmp_path: Path, flux_env: dict[str, str],
                                             make_project: Callable[..., Path]) -> None:
    root = make_project(tmp_path, functions={"a": None, "b": None},
                        project={"name": "proj", "stages": {"dev": {"provider": "local"}}})
    rc, out, heavy = _imported(["version"], root, flux_env)
    assert rc == 0 and out.startswith("flux ") and "provider local: flux_local:LocalProvider" in out
    assert heavy == set()
    rc, out, heavy = _imported(["--help"], root, flux_env)
    assert rc == 0 and "validate" in out and "plan" in out
    assert heavy == {"typer"}
    rc, out, heavy = _imported(["validate"], root, flux_env)
    assert rc == 0 and "Valid: 2 function(s)" in out
    assert not heavy & {"boto3", "flux_aws", "jsonschema", "deepdiff", "pglast"}
    rc, out, heavy = _imported(["plan"], root, flux_env)  # a local stage: the local provider only
    assert rc == 0 and "5 to add" in out, out
    assert not heavy & {"boto3", "botocore", "flux_aws", "jsonschema"}


def _dist(site: Path, dist: str, entry: str) -> Path:
    info = site / f"{dist}-1.0.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text(f"[flux.providers]\n{entry}\n")
    return info


def test_provider_discovery_cache_follows_installs(tmp_path: Path, flux: FluxRunner, flux_env: dict[str, str],
                                                   make_project: Callable[..., Path]) -> None:
    site = tmp_path / "site"
    site.mkdir()
    env = {"PYTHONPATH": str(site)}
    rc, out, _ = flux("version", cwd=tmp_path, env=env)
    assert rc == 0 and "provider fake" not in out
    caches = list(Path(flux_env["HOME"], ".cache", "flux", "providers").glob("*.json"))
    assert len(caches) == 1 and "local" in json.loads(caches[0].read_text())
    broken = _dist(site, "fakeprov", "fake = fakeprov_missing:Nope")  # installing changes site/'s mtime
    rc, out, _ = flux("version", cwd=tmp_path, env=env)
    assert "provider fake: fakeprov_missing:Nope" in out

    root = make_project(tmp_path, project={"name": "proj", "stages": {"dev": {"provider": "fake"}}})
    rc, out, err = flux("plan", cwd=root, env=env)
    assert rc == 1
    assert "flux.project.json: provider 'fake' is registered as 'fakeprov_missing:Nope' but cannot be loaded" in err
    assert "No module named 'fakeprov_missing'" in err and "Traceback" not in err
    assert not (root / ".flux" / "dev" / "state.json").exists()

    import shutil

    shutil.rmtree(broken)  # uninstall: gone at once
    rc, out, err = flux("plan", cwd=root, env=env)
    assert rc == 1 and "unknown provider 'fake' (installed: aws, docker, local, record)" in err
    # an entry the cache still names but that no longer loads is looked up afresh, not trusted
    cache = next(Path(flux_env["HOME"], ".cache", "flux", "providers").glob("*.json"))
    for current in Path(flux_env["HOME"], ".cache", "flux", "providers").glob("*.json"):
        doc = json.loads(current.read_text())
        doc["ghost"] = "ghost_module_gone:Provider"
        current.write_text(json.dumps(doc))
    rc, out, _ = flux("version", cwd=tmp_path, env=env)
    assert "provider ghost" in out  # served from the cache, as designed
    root2 = make_project(tmp_path, name="proj2", project={"name": "proj2", "stages": {"dev": {"provider": "ghost"}}})
    rc, out, err = flux("plan", cwd=root2, env=env)
    assert rc == 1 and "unknown provider 'ghost'" in err and "Traceback" not in err
    assert cache.exists() or list(cache.parent.glob("*.json"))


@pytest.mark.parametrize("args", [["--help"], ["version"], ["validate", "--help"]])
def test_fast_paths_print_what_typer_prints(args: list[str], tmp_path: Path, flux: FluxRunner) -> None:
    rc, out, err = flux(*args, cwd=tmp_path)
    assert rc == 0, err
    if args == ["version"]:  # the same lines through the typer command (an extra option defeats the fast path)
        proc = subprocess.run([sys.executable, "-c", "from flux_plan.cli import app;"
                               "app(args=['version'], prog_name='flux', standalone_mode=False)"],
                              capture_output=True, text=True, check=True)
        assert proc.stdout == out
    else:
        assert out.startswith("Usage: flux")
