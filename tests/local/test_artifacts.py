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
    shutil.copytree(EXAMPLE, root, ignore=shutil.ignore_patterns(".flux", "node_modules"))  # as every fixture: a
    # deployed example (README command 1 leaves .flux/artifacts there) must not seed the store under test
    return root


def test_bundles_every_example_function(project: Path) -> None:
    store = ArtifactStore(project)
    runtimes = {"slugify_title": "node"}
    for fn_dir in sorted((project / "functions").iterdir()):
        spec = spec_of(project, fn_dir.name, runtimes.get(fn_dir.name, "deno"))
        out = store.ensure(spec)
        assert out == project / ".flux" / "artifacts" / spec.source_digest
        assert store.has(spec.source_digest)
        # the code and its source map, nothing else (each extra file is an inode per function and apply)
        assert sorted(p.name for p in out.iterdir()) == ["index.mjs", "index.mjs.map"]
        assert json.loads((out / "index.mjs.map").read_text())["sources"]
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


def _specs(root: Path) -> list[FunctionSpec]:
    runtimes = {"slugify_title": "node"}
    return [spec_of(root, d.name, runtimes.get(d.name, "deno")) for d in sorted((root / "functions").iterdir())]


def test_batch_bundles_equal_single_bundles(project: Path, tmp_path: Path) -> None:
    twin = tmp_path / "twin"
    shutil.copytree(project, twin)
    for i in range(7):  # more deno functions, so a batch holds several entry points of each runtime
        d = twin / "functions" / f"extra{i}"
        d.mkdir()
        (d / "index.ts").write_text((twin / "functions" / "greet" / "index.ts").read_text()
                                    .replace('"greet"', f'"extra{i}"'))
        (d / "flux.json").write_text(json.dumps({"name": f"extra{i}"}))
        shutil.copytree(d, project / "functions" / d.name)
    single = {s.name: ArtifactStore(project).ensure(s) for s in _specs(project)}
    batch = ArtifactStore(twin).ensure_many(_specs(twin))
    assert sorted(batch) == sorted(single) and len(batch) == 13
    for name, out in batch.items():
        assert out.name == single[name].name  # the same digest (the source trees are identical)
        assert (out / "index.mjs").read_bytes() == (single[name] / "index.mjs").read_bytes(), name
        assert (out / "index.mjs.map").read_bytes() == (single[name] / "index.mjs.map").read_bytes(), name
        assert sorted(p.name for p in out.iterdir()) == ["index.mjs", "index.mjs.map"]
    assert not list((twin / ".flux" / "artifacts").glob(".tmp-*"))


def test_error_in_a_batch_names_its_file_and_the_rest_is_built(project: Path) -> None:
    src = project / "functions" / "list_todos" / "index.ts"
    src.write_text(src.read_text() + "\nconst broken = ;\n")
    store = ArtifactStore(project)
    specs = _specs(project)
    store.prepare(specs)
    built, failed = {}, {}
    for spec in specs:
        try:
            built[spec.name] = store.ensure(spec)
        except FluxError as exc:
            failed[spec.name] = exc.render()
    assert list(failed) == ["list_todos"]
    assert failed["list_todos"].startswith("functions/list_todos/index.ts:")
    assert "while bundling function list_todos" in failed["list_todos"]
    assert sorted(built) == sorted(s.name for s in specs if s.name != "list_todos")
    assert all(store.has(p.name) for p in built.values())
    assert not store.has(spec_of(project, "list_todos").source_digest)
    # the error is reported again, not cached, and fixing the file builds it
    with pytest.raises(FluxError):
        store.ensure_many([spec_of(project, "list_todos")])
    src.write_text(src.read_text().replace("\nconst broken = ;\n", "\n"))
    assert store.ensure_many([spec_of(project, "list_todos")])["list_todos"].is_dir()


def test_a_batch_keeps_a_bundle_another_apply_installed_and_replaces_a_crashed_leftover(project: Path) -> None:
    """A batch renames its bundles into place without a lock: a complete bundle of the same digest that another
    apply installed meanwhile is kept as it is (it is the same code), the remains of an unfinished build (code
    without its source map) are replaced, and nothing of the batch's temp dirs is left."""
    specs = _specs(project)
    store = ArtifactStore(project)
    keep, broken = specs[0], specs[1]
    theirs = store.path(keep.source_digest)
    theirs.mkdir(parents=True)
    (theirs / "index.mjs").write_text("// built by another apply\n")
    (theirs / "index.mjs.map").write_text("{}\n")
    leftover = store.path(broken.source_digest)
    leftover.mkdir()
    (leftover / "index.mjs").write_text("// half of a crashed build\n")
    out = store.ensure_many(specs)
    assert (out[keep.name] / "index.mjs").read_text() == "// built by another apply\n"
    assert "half of a crashed build" not in (out[broken.name] / "index.mjs").read_text()
    assert (out[broken.name] / "index.mjs.map").is_file()
    assert all(store.has(s.source_digest) for s in specs)
    assert not list(store.dir.glob(".tmp-*"))
