"""ArtifactStore: real esbuild bundles of the example project (npm dependency installed for slugify_title)."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

from flux_plan.artifacts import ArtifactStore
from flux_plan.digest import source_digest
from flux_plan.errors import FluxError
from flux_plan.model import FunctionSpec

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "todo"


def spec_of(root: Path, name: str, runtime: str = "deno") -> FunctionSpec:
    rel = f"functions/{name}"
    return FunctionSpec(name=name, dir=rel, runtime=runtime, route=f"/{name}",
                        source_digest=source_digest(root, rel, runtime))


@pytest.fixture
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    root = tmp_path / "todo"
    shutil.copytree(EXAMPLE, root)
    return root


def test_bundles_every_example_function(project: Path) -> None:
    store = ArtifactStore(project)
    runtimes = {"slugify_title": "node"}
    for fn_dir in sorted((project / "functions").iterdir()):
        spec = spec_of(project, fn_dir.name, runtimes.get(fn_dir.name, "deno"))
        out = store.ensure(spec)
        assert out == project / ".flux" / "artifacts" / spec.source_digest
        assert store.has(spec.source_digest)
        meta = json.loads((out / "meta.json").read_text())
        assert meta["digest"] == spec.source_digest and meta["function"] == spec.name
        assert meta["runtime"] == spec.runtime and meta["bytes"] == (out / "index.mjs").stat().st_size
        text = (out / "index.mjs").read_text()
        assert "@flux/functions" not in text.replace("// ", "")  # the SDK is inlined, not imported
        assert 'Symbol.for("flux.function")' in text
    assert not list((project / ".flux" / "artifacts").glob(".tmp-*"))  # no temp dirs left behind


def test_node_bundle_inlines_npm_dependency_and_runs(project: Path) -> None:
    out = ArtifactStore(project).ensure(spec_of(project, "slugify_title", "node"))
    # the real bundle runs in node and its default export carries the defineFunction mark
    script = (
        f"const m = await import({json.dumps(str(out / 'index.mjs'))});"
        "const logs = [];"
        "const r = await m.default.handler({input: {title: 'Héllo Wörld!'}, ctx: {log: (...a) => logs.push(a)}});"
        "console.log(JSON.stringify({mark: m.default[Symbol.for('flux.function')], r, logs}));"
    )
    proc = subprocess.run(["node", "--input-type=module", "-e", script], capture_output=True, text=True,
                          check=True, cwd=out)
    doc = json.loads(proc.stdout)
    assert doc["mark"] is True
    assert doc["r"]["slug"] == "hello-world"
    assert doc["logs"] == [["slugified", {"slug": "hello-world"}]]
    assert "node_modules" not in {p.name for p in project.rglob("*")}  # deps live in the user cache


def test_ensure_reuses_existing_bundle(project: Path) -> None:
    store = ArtifactStore(project)
    spec = spec_of(project, "greet")
    first = store.ensure(spec)
    mtime = (first / "index.mjs").stat().st_mtime_ns
    assert store.ensure(spec) == first
    assert (first / "index.mjs").stat().st_mtime_ns == mtime


def test_syntax_error_names_file_line_and_column(project: Path) -> None:
    src = project / "functions" / "greet" / "index.ts"
    lines = src.read_text().splitlines()
    lines[5] = "    return { message: `Hello, ${input.name}!` ;"
    src.write_text("\n".join(lines) + "\n")
    with pytest.raises(FluxError) as exc:
        ArtifactStore(project).ensure(spec_of(project, "greet"))
    msg = exc.value.render()
    assert msg.startswith("functions/greet/index.ts:6:")
    assert "Expected" in msg and "greet" in msg
    assert not (project / ".flux" / "artifacts" / spec_of(project, "greet").source_digest).exists()


def test_unresolved_import_hints_package_json(project: Path) -> None:
    src = project / "functions" / "greet" / "index.ts"
    src.write_text('import left from "left-pad-not-installed";\nconsole.log(left);\n' + src.read_text())
    with pytest.raises(FluxError) as exc:
        ArtifactStore(project).ensure(spec_of(project, "greet"))
    assert exc.value.message.startswith("functions/greet/index.ts:1:")
    assert "Could not resolve" in exc.value.message
    assert exc.value.hint and "functions/greet/package.json" in exc.value.hint
