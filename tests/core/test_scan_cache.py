"""The scan cache (.flux/scan-cache.json) and the fast schema check: a cached scan finds exactly what a
fresh one finds, and any edit, rename, added file or mode change is seen at once."""

from __future__ import annotations

import itertools
import json
import os
import random
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from flux_plan import project as project_mod
from flux_plan.paths import schema_path
from flux_plan.project import fast_accept, scan, validator

SHARED_CODE = """\
import {{ defineFunction }} from "@flux/functions";
import {{ greet }} from "../_shared/util";

export default defineFunction({{
  name: "{name}",
  handler: async ({{ input, ctx }}) => ({{ msg: greet(ctx.env.GREETING), key: ctx.secrets.get("API_KEY") }}),
}});
"""


def _age(root: Path) -> None:
    """Date every file of the project a minute back: the cache skips files written seconds ago."""
    old = time.time() - 60
    for dirpath, dirnames, filenames in os.walk(root):
        for name in [*filenames, *dirnames]:
            os.utime(os.path.join(dirpath, name), (old, old), follow_symlinks=False)
        os.utime(dirpath, (old, old))


@pytest.fixture
def scanned(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[str]]:
    """Names of the function directories the scanner really read (cache misses), per scan."""
    calls: list[str] = []
    real = project_mod._scan_function_files

    def spy(root: Path, d: Path, problems: list[Any]) -> Any:
        calls.append(d.name)
        return real(root, d, problems)

    monkeypatch.setattr(project_mod, "_scan_function_files", spy)
    yield calls


def _rescan(root: Path, calls: list[str]) -> tuple[Any, list[Any], list[str]]:
    calls.clear()
    proj, problems = scan(root)
    return proj, problems, sorted(calls)


def _shared_project(make_project: Callable[..., Path]) -> Callable[[Path], Path]:
    def build(tmp_path: Path) -> Path:
        root = make_project(tmp_path, functions={
            "alpha": {"code": SHARED_CODE.format(name="alpha")},
            "beta": {"code": SHARED_CODE.format(name="beta-other")},  # name mismatch: a warning
            "gamma": None,
        }, env_example="GREETING=hi\n")
        (root / "functions" / "_shared").mkdir()
        (root / "functions" / "_shared" / "util.ts").write_text(
            "export const greet = (g?: string) => `${g ?? 'hello'}!`;\n", encoding="utf-8")
        _age(root)
        return root

    return build


def test_cached_scan_equals_fresh_scan(tmp_path: Path, make_project: Callable[..., Path],
                                       scanned: list[str]) -> None:
    root = _shared_project(make_project)(tmp_path)
    first, first_problems, misses = _rescan(root, scanned)
    assert misses == ["alpha", "beta", "gamma"]
    assert (root / ".flux" / "scan-cache.json").is_file()
    second, second_problems, misses = _rescan(root, scanned)
    assert misses == []  # nothing re-read, re-validated or re-digested
    assert second.functions == first.functions
    assert [p.render() for p in second_problems] == [p.render() for p in first_problems]
    rendered = "\n".join(p.render() for p in second_problems)
    assert "functions/beta/index.ts:5: warning: defineFunction name 'beta-other' differs" in rendered
    assert "reads 'API_KEY' but .env.example does not list it" in rendered  # cross-function checks still run
    assert dict(zip([f.name for f in second.functions], [f.secrets for f in second.functions],
                    strict=True))["alpha"] == ("API_KEY",)
    # the cache changes nothing about what the scan finds: without it, the same project results
    (root / ".flux" / "scan-cache.json").unlink()
    third, _, misses = _rescan(root, scanned)
    assert misses == ["alpha", "beta", "gamma"] and third.functions == first.functions


@pytest.mark.parametrize("change", ["edit_same_size", "rename", "add_file", "chmod", "edit_shared",
                                    "shadow_import", "delete_config"])
def test_any_change_is_seen(tmp_path: Path, make_project: Callable[..., Path], scanned: list[str],
                            change: str) -> None:
    root = _shared_project(make_project)(tmp_path)
    before, _, _ = _rescan(root, scanned)
    digests = {f.name: f.source_digest for f in before.functions}
    fn = root / "functions" / "alpha"
    if change == "edit_same_size":  # same size, one second later: only mtime and content differ
        text = (fn / "index.ts").read_text()
        (fn / "index.ts").write_text(text.replace("msg:", "mzg:"))
        os.utime(fn / "index.ts", (time.time() - 30, time.time() - 30))
    elif change == "rename":
        (fn / "notes.ts").write_text("export const x = 1;\n")
        _age(root)
        _rescan(root, scanned)
        (fn / "notes.ts").rename(fn / "notes2.ts")
    elif change == "add_file":
        (fn / "extra.ts").write_text("export const y = 2;\n")
    elif change == "chmod":
        (fn / "index.ts").chmod(0o755)
    elif change == "edit_shared":  # a file outside the function directory that it imports
        (root / "functions" / "_shared" / "util.ts").write_text("export const greet = () => 'hey';\n")
    elif change == "shadow_import":  # a new file that "../_shared/util" now resolves to first
        (root / "functions" / "_shared" / "util").write_text("export const greet = () => 'shadow';\n")
    elif change == "delete_config":
        (fn / "flux.json").unlink()
    after, problems, misses = _rescan(root, scanned)
    assert "alpha" in misses
    if change == "delete_config":
        assert "alpha" not in {f.name for f in after.functions}
        assert any(p.file == "functions/alpha/flux.json" and "missing flux.json" in p.message for p in problems)
        return
    new = {f.name: f.source_digest for f in after.functions}
    if change == "chmod":
        assert new == digests  # read again, same content
    else:
        assert new["alpha"] != digests["alpha"]
        # beta imports the shared file too: it must follow; gamma does not
        assert (new["beta"] != digests["beta"]) == (change in ("edit_shared", "shadow_import"))
        assert new["gamma"] == digests["gamma"]


def test_errors_are_never_cached(tmp_path: Path, make_project: Callable[..., Path], scanned: list[str]) -> None:
    root = make_project(tmp_path, functions={"bad": {"flux": {"name": "bad", "timeout": 0}}, "good": None})
    _age(root)
    for _ in range(2):
        _, problems, misses = _rescan(root, scanned)
        assert "bad" in misses
        assert [p.json_path for p in problems if p.file == "functions/bad/flux.json"] == ["$.timeout"]
    (root / "functions" / "bad" / "flux.json").write_text(json.dumps({"name": "bad", "timeout": 5}))
    proj, problems, _ = _rescan(root, scanned)
    assert {f.name: f.timeout for f in proj.functions} == {"bad": 5, "good": 30}
    assert not [p for p in problems if p.severity == "error"]


def test_files_written_just_now_are_not_trusted(tmp_path: Path, make_project: Callable[..., Path],
                                                scanned: list[str]) -> None:
    root = make_project(tmp_path, functions={"fresh": None})  # mtimes: now
    _rescan(root, scanned)
    _, _, misses = _rescan(root, scanned)
    assert misses == ["fresh"]  # read again: a same-size edit within the clock's tick could hide


def test_damaged_cache_file_is_ignored_and_rewritten(tmp_path: Path, make_project: Callable[..., Path],
                                                     scanned: list[str]) -> None:
    root = make_project(tmp_path, functions={"one": None, "two": None})
    _age(root)
    first, _, _ = _rescan(root, scanned)
    cache = root / ".flux" / "scan-cache.json"
    for garbage in ("{not json", json.dumps({"salt": "other", "functions": {}}),
                    json.dumps({"salt": json.loads(cache.read_text())["salt"],
                                "functions": {"one": {"fp": "x", "deps": [], "value": {"spec": 1}}}})):
        cache.write_text(garbage)
        again, problems, _ = _rescan(root, scanned)
        assert again.functions == first.functions and not problems
    _, _, misses = _rescan(root, scanned)
    assert misses == []


def test_validate_and_plan_with_cache_match_a_cold_run(tmp_path: Path, flux: Callable[..., tuple[int, str, str]],
                                                       make_project: Callable[..., Path]) -> None:
    root = _shared_project(make_project)(tmp_path)
    runs = []
    for _ in range(2):
        rc, out, err = flux("plan", "--json", cwd=root)
        assert rc == 0, err
        doc = json.loads(out)
        runs.append(({c["address"]: c["resource"]["attributes"] for c in doc["changes"]}, doc["warnings"]))
    assert runs[0] == runs[1]
    (root / "functions" / "alpha" / "flux.json").write_text(json.dumps({"name": "alpha", "method": "get"}))
    rc, out, err = flux("validate", cwd=root)
    assert rc == 1
    assert "functions/alpha/flux.json" in out and 'use "GET"' in out


# -- the fast schema check agrees with jsonschema ------------------------------------------------------

_VALUES: list[Any] = [None, True, False, 0, 1, 1.0, 1.5, -3, 30, 128, 900, 901, 65535, 10240, 10241, "", "a",
                      "A", "x" * 70, "/todos", "/todos/{id}", "todos", "/a b", "GET", "get", "deno", "node",
                      "local", "s3", "http://x", "ftp://x", [], ["API_KEY"], ["A", "A"], ["1bad"], {}, {"a": 1}]


def _documents(name: str, seed: int) -> Iterator[Any]:
    rng = random.Random(seed)
    schema = json.loads(schema_path(name).read_text())
    keys = [*schema["properties"], "extra"]
    if name == "project":
        stage_keys = ["provider", "port", "region", "endpoint_url", "database_url_env", "state", "custom"]
        state_values = [{"backend": "local"}, {"backend": "s3"}, {"backend": "s3", "bucket": "b", "key": "k"},
                        {"backend": "gcs"}, {"bucket": "b"}, {"backend": "s3", "bucket": "", "key": "k"}]
    for _ in range(3000):
        doc: dict[str, Any] = {}
        for k in rng.sample(keys, rng.randint(0, len(keys))):
            doc[k] = rng.choice(_VALUES)
        if name == "flux" and rng.random() < 0.7:
            doc["name"] = rng.choice(["hello", "a-b_1", "Hello", "1x", "ok"])
        if name == "project" and rng.random() < 0.8:
            stages: dict[str, Any] = {}
            for sname in rng.sample(["dev", "prod", "Bad", "x" * 40], rng.randint(0, 3)):
                st: dict[str, Any] = {}
                for k in rng.sample(stage_keys, rng.randint(0, len(stage_keys))):
                    st[k] = rng.choice(state_values) if k == "state" else rng.choice(_VALUES)
                if rng.random() < 0.6:
                    st["provider"] = rng.choice(["local", "aws", "Bad"])
                stages[sname] = st if rng.random() < 0.95 else rng.choice(_VALUES)
            doc["stages"] = stages
        yield doc if rng.random() < 0.97 else rng.choice(_VALUES)


@pytest.mark.parametrize(("name", "seed"), list(itertools.product(["flux", "project"], [1, 2])))
def test_fast_schema_check_agrees_with_jsonschema(name: str, seed: int) -> None:
    quick = fast_accept(name)
    assert quick is not None  # Flux's own schemas must be covered, or every scan imports jsonschema
    full = validator(name)
    seen = {True: 0, False: 0}
    for doc in _documents(name, seed):
        expected = full.is_valid(doc)
        assert quick(doc) == expected, doc
        seen[expected] += 1
    assert seen[True] > 50 and seen[False] > 50  # both kinds were exercised
