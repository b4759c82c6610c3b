"""The CLI's fast paths (flux_plan/cli/fast.py) print exactly what the typer app prints, and a replayed
`flux validate` is never stale: every form is compared with FLUX_NO_FAST_PATH=1 (the app itself)."""

from __future__ import annotations

import json
import os
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

FLUX_BIN = Path(__file__).resolve().parents[2] / ".venv" / "bin" / "flux"
FluxRunner = Callable[..., tuple[int, str, str]]
SLOW = {"FLUX_NO_FAST_PATH": "1"}
PROBE = """
import atexit, json, sys
atexit.register(lambda: sys.stderr.write("MODULES " + json.dumps(sorted({m.split('.')[0] for m in sys.modules})) + "\\n"))
sys.argv = ["flux", *json.loads(sys.argv[1])]
from flux_plan.cli import main
main()
"""


def _age(root: Path, seconds: float = 60) -> None:
    """Date the tree back, as a checkout's files are (caches never trust files written a moment ago)."""
    old = time.time() - seconds
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            os.utime(os.path.join(dirpath, name), (old, old), follow_symlinks=False)
        os.utime(dirpath, (old, old))


def _heavy(args: list[str], cwd: Path, env: dict[str, str]) -> tuple[int, set[str]]:
    proc = subprocess.run([str(FLUX_BIN.parent / "python"), "-c", PROBE, json.dumps(args)], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=120, check=False)
    line = next(x for x in proc.stderr.splitlines() if x.startswith("MODULES "))
    return proc.returncode, set(json.loads(line[len("MODULES "):])) & {"typer", "pydantic", "jsonschema", "rich"}


@pytest.mark.parametrize("args", [[], ["--help"], ["-h"], ["plan", "--help"], ["state", "list", "--help"],
                                  ["secrets", "-h"], ["nosuch", "--help"]])
def test_help_from_cache_is_the_apps_help(args: list[str], tmp_path: Path, flux: FluxRunner) -> None:
    slow = flux(*args, cwd=tmp_path, env=SLOW)
    first = flux(*args, cwd=tmp_path)  # renders through the app and fills the cache
    again = flux(*args, cwd=tmp_path)  # from the cache
    assert first == slow and again == slow
    assert "Usage: flux" in slow[1] + slow[2]
    if args == ["nosuch", "--help"]:
        assert slow[0] == 2 and "No such command 'nosuch'" in slow[2]


def test_help_follows_the_terminal_width_and_skips_typer(tmp_path: Path, flux: FluxRunner,
                                                         flux_env: dict[str, str]) -> None:
    wide = flux("plan", "--help", cwd=tmp_path, env={"COLUMNS": "200"})
    narrow = flux("plan", "--help", cwd=tmp_path, env={"COLUMNS": "60"})
    assert wide != narrow
    assert narrow == flux("plan", "--help", cwd=tmp_path, env={"COLUMNS": "60", **SLOW})
    assert wide == flux("plan", "--help", cwd=tmp_path, env={"COLUMNS": "200", **SLOW})
    _heavy(["--help"], tmp_path, flux_env)
    rc, heavy = _heavy(["--help"], tmp_path, flux_env)
    assert rc == 0 and heavy == set()


FORMS = [["validate"], ["validate", "--json"], ["validate", "--strict"], ["validate", "--json", "--strict"]]


def _same_as_app(flux: FluxRunner, root: Path) -> list[tuple[int, str, str]]:
    """Every validate form through the fast path (twice: miss, then hit or miss) equals the app's."""
    outs = []
    for form in FORMS:
        slow = flux(*form, cwd=root, env=SLOW)
        assert flux(*form, cwd=root) == slow, form
        assert flux(*form, cwd=root) == slow, form
        outs.append(slow)
    return outs


def test_validate_fast_path_prints_what_the_app_prints(tmp_path: Path, flux: FluxRunner,
                                                       make_project: Callable[..., Path]) -> None:
    clean = make_project(tmp_path, functions={"a": None, "b": None}, name="clean")
    _age(clean)
    outs = _same_as_app(flux, clean)
    assert outs[0] == (0, "Valid: 2 function(s), 0 migration(s), 0 warning(s).\n", "")

    warn_code = ('import { defineFunction } from "@flux/functions";\n'
                 'export default defineFunction({ name: "w", handler: async ({ ctx }) => ({ k: ctx.env.API_URL }) });\n')
    warned = make_project(tmp_path, functions={"w": {"code": warn_code}},
                          migrations={"001_init.sql": "CREATE TABLE t (id int);\n"}, name="warned")
    _age(warned)
    outs = _same_as_app(flux, warned)
    assert outs[0][0] == 0 and "reads 'API_URL' but .env.example does not list it" in outs[0][1]
    assert "1 migration(s), 1 warning(s)" in outs[0][1]
    assert outs[2][0] == 1  # --strict: the warning is an error

    broken = make_project(tmp_path, functions={"ok": None, "bad": {"code": "export default defineFunction({ name: \"bad\", handler: async () => { return 1 }\n"},
                                               "cfg": {"flux": {"name": "cfg", "method": "get"}}}, name="broken")
    _age(broken)
    outs = _same_as_app(flux, broken)
    assert outs[0][0] == 1
    assert "functions/bad/index.ts:" in outs[0][1] and "syntax error" in outs[0][1]
    assert "functions/cfg/flux.json" in outs[0][1] and 'use "GET"' in outs[0][1]


def test_replayed_validate_is_never_stale(tmp_path: Path, flux: FluxRunner, flux_env: dict[str, str],
                                          make_project: Callable[..., Path], write_function: Callable[..., Path]
                                          ) -> None:
    root = make_project(tmp_path, functions={"a": None, "b": None})
    _age(root)
    assert flux("validate", cwd=root)[0] == 0
    _heavy(["validate"], root, flux_env)  # (another interpreter path: its own key)
    rc, heavy = _heavy(["validate"], root, flux_env)  # replayed: no scan, no app
    assert rc == 0 and not heavy & {"typer", "pydantic", "jsonschema"}

    # a syntax error in a file of an unchanged size and an older date is still seen
    index = root / "functions" / "a" / "index.ts"
    text = index.read_text()
    index.write_text(text.replace("return {", "return (", 1))
    _age(root / "functions" / "a", 120)
    rc, out, _ = flux("validate", cwd=root)
    assert (rc, out) == flux("validate", cwd=root, env=SLOW)[:2]
    assert rc == 1 and "functions/a/index.ts:" in out and "syntax error" in out
    write_function(root, "a")  # fixed again
    _age(root / "functions" / "a", 90)
    assert flux("validate", cwd=root)[:2] == (0, "Valid: 2 function(s), 0 migration(s), 0 warning(s).\n")

    # a new function, a new .env.example, a new migration, a new stage provider: each is seen at once
    write_function(root, "c")
    _age(root / "functions", 80)
    assert "Valid: 3 function(s)" in flux("validate", cwd=root)[1]
    (root / ".env.example").write_text("# nothing\nnot a line\n")
    _age(root, 70)
    out = flux("validate", cwd=root)[1]
    assert "not a KEY=VALUE line" in out and "1 warning(s)" in out
    (root / "schema").mkdir()
    (root / "schema" / "001_init.sql").write_text("CREATE TABLE t (id int);\n")
    _age(root, 65)
    assert "1 migration(s)" in flux("validate", cwd=root)[1]
    (root / "schema" / "002_more.sql").write_text("CREATE TABLE (;\n")
    _age(root, 62)
    rc, out, _ = flux("validate", cwd=root)
    assert rc == 1 and "schema/002_more.sql" in out and "SQL does not parse" in out
    (root / "schema" / "002_more.sql").unlink()
    (root / "flux.project.json").write_text(json.dumps({"name": "proj", "stages": {"dev": {"provider": "nope"}}}))
    _age(root, 61)
    rc, out, _ = flux("validate", cwd=root)
    assert rc == 1 and "unknown provider 'nope'" in out
    assert (rc, out) == flux("validate", cwd=root, env=SLOW)[:2]


def test_validate_checks_syntax_of_changed_functions_only(tmp_path: Path, flux: FluxRunner,
                                                          make_project: Callable[..., Path]) -> None:
    """esbuild (the real one, behind a wrapper that logs its arguments) sees only what changed."""
    from flux_plan.artifacts import esbuild_bin

    log = tmp_path / "esbuild.log"
    wrapper = tmp_path / "esbuild"
    wrapper.write_text(f'#!/bin/sh\necho "$@" >> {log}\nexec {esbuild_bin()} "$@"\n')
    wrapper.chmod(0o755)
    env = {"FLUX_ESBUILD": str(wrapper)}
    root = make_project(tmp_path, functions={"a": None, "b": None, "c": None})
    _age(root)
    assert flux("validate", cwd=root, env=env)[0] == 0
    assert all(f"functions/{n}/index.ts" in log.read_text() for n in "abc")
    log.unlink()
    assert flux("validate", cwd=root, env=env)[0] == 0  # replayed
    assert not log.exists()
    (root / "functions" / "b" / "index.ts").write_text((root / "functions" / "b" / "index.ts").read_text() + "\n")
    _age(root / "functions" / "b", 30)
    assert flux("validate", cwd=root, env=env)[0] == 0
    checked = log.read_text()
    assert "functions/b/index.ts" in checked and "functions/a/" not in checked and "functions/c/" not in checked


def _edit(root: Path, fn: str, n: int) -> None:
    """What a user does between two validates: save a function again (a comment more)."""
    index = root / "functions" / fn / "index.ts"
    index.write_text(index.read_text() + f"// edit {n}\n")


def test_validate_after_an_edit_skips_pydantic_and_rich(tmp_path: Path, flux: FluxRunner, flux_env: dict[str, str],
                                                       make_project: Callable[..., Path]) -> None:
    """The miss after an edit scans without pydantic, and prints rich's earlier output for the same result."""
    root = make_project(tmp_path, functions={"a": None, "b": None, "c": None})
    _age(root)
    for _ in range(2):  # fills the caches of this interpreter path (its sys.path[0], the project, changes once)
        _heavy(["validate"], root, flux_env)
    for n, age in enumerate((30, 0)):  # an edit settled a while ago (cached after), and one made just now
        _edit(root, "b", n)
        if age:
            _age(root / "functions" / "b", age)
        rc, heavy = _heavy(["validate"], root, flux_env)
        assert rc == 0 and heavy == set(), n
        _edit(root, "b", n + 10)
        assert flux("validate", cwd=root) == flux("validate", cwd=root, env=SLOW)


COLOR = {"NO_COLOR": "", "TERM": "xterm-256color", "FORCE_COLOR": "1", "COLORTERM": "truecolor"}


def test_validate_misses_with_errors_print_what_the_app_prints(tmp_path: Path, flux: FluxRunner,
                                                               make_project: Callable[..., Path]) -> None:
    """Every kind of problem, on misses after edits, plain and in color: byte for byte the app's output."""
    functions: dict[str, dict[str, Any] | None] = {
        "ok": None,
        "twin": {"flux": {"name": "pa"}},  # duplicate name
        "clash": {"flux": {"name": "clash", "route": "/ok"}},  # same route as ok
        "pa": {"flux": {"name": "pa", "route": "/n/{id}", "method": "GET"}},
        "pb": {"flux": {"name": "pb", "route": "/n/{x}", "method": "GET"}},  # ambiguous with pa
        "badjson": {"flux": '{"name": "badjson",}'},
        "keys": {"flux": {"name": "keys", "rout": "/k", "[bold]x:smile:": 1}},  # misspelt key, markup, emoji code
        "syntax": {"code": 'import { defineFunction } from "@flux/functions";\n'
                           'export default defineFunction({ name: "syntax", handler: async () => { return [1 }\n'},
        "envs": {"code": 'import { defineFunction } from "@flux/functions";\n'
                         'export default defineFunction({ name: "envs", handler: async ({ ctx }) => '
                         '({ k: ctx.env.API_URL, s: await ctx.secrets.get("TOKEN") }) });\n'},
        "nofn": {"code": "export const x = 1;\n"},
    }
    root = make_project(tmp_path, functions=functions, migrations={"001_a.sql": "CREATE TABLE a (id int);\n",
                                                                   "002_b.sql": "CREATE TABL b (;\n",
                                                                   "x.sql": "SELECT 1;\n"},
                        project={"name": "errs", "stages": {"dev": {"provider": "record"},
                                                            "prod": {"provider": "nosuch"}}})
    (root / "functions" / "_shared").mkdir()
    (root / "functions" / "empty").mkdir()
    _age(root)
    for n in range(3):
        for form in FORMS:
            _edit(root, ("ok", "syntax", "envs")[n], n)
            if n == 1:
                _age(root / "functions", 20)
            slow = flux(*form, cwd=root, env=SLOW)
            assert slow[0] == 1 and flux(*form, cwd=root) == slow, (n, form)
        color_slow = flux("validate", cwd=root, env={**COLOR, **SLOW})
        assert flux("validate", cwd=root, env=COLOR) == color_slow
        assert "\x1b[" in color_slow[1] and "\x1b[" not in slow[1]
    out = flux("validate", cwd=root)[1]
    for expected in ("duplicate function name 'pa'", "is also served by 'clash'", "is the same route as GET /n/{id}", "invalid JSON",
                     "did you mean 'route'?", "syntax error", "reads 'API_URL'", "SQL does not parse",
                     "is not NNN_name.sql", "unknown provider 'nosuch'", "no `export default defineFunction(`",
                     "no flux.json and no index.ts"):
        assert expected in out, expected


def test_a_stage_naming_itself_is_a_problem_not_a_traceback(tmp_path: Path, flux: FluxRunner,
                                                                 make_project: Callable[..., Path]) -> None:
    root = make_project(tmp_path, project={"name": "p", "stages": {"dev": {"provider": "record", "name": "x"}}})
    _age(root)
    slow = flux("validate", cwd=root, env=SLOW)
    fast = flux("validate", cwd=root)
    assert fast == slow and fast[0] == 1 and "Traceback" not in fast[1] + fast[2]
    assert fast[1].startswith("flux.project.json:") and ("($.stages.dev.name): error: stage 'dev' has a \"name\" key: a stage's name is its "
            'key in "stages"') in fast[1]
    plan = flux("plan", cwd=root)  # every command refuses it the same way, before any work
    assert plan[0] == 1 and "stage 'dev' has a \"name\" key" in plan[1] + plan[2] and "Traceback" not in plan[2]


# `flux plan|apply|destroy` with switches only run their command bodies without the typer app: the same
# sequence in two copies of one project, one through the app (FLUX_NO_FAST_PATH=1), must print the same
# and leave the same state.
RUNS = [["plan"], ["plan", "--detailed-exitcode"], ["apply"], ["apply", "--auto-approve", "-p", "3"],
        ["plan", "--detailed-exitcode"], ["plan", "--json"], ["plan", "--refresh-only"],
        ["plan", "-p", "3"], ["apply", "--auto-approve", "--parallelism", "0"], ["plan", "--purge"],
        ["plan", "--destroy", "--detailed-exitcode"], ["destroy", "--json"],
        ["destroy", "--auto-approve", "--json"], ["plan", "--detailed-exitcode", "--markdown"]]


def _normal(text: str, root: Path) -> str:
    """Without what differs between two runs of one command: the root, elapsed times, timestamps, and the
    order in which parallel operations finished (lines sorted)."""
    import re

    text = text.replace(str(root), "ROOT")
    text = re.sub(r"\d+\.\d+s\b", "Ts", text)
    text = re.sub(r'"(created_at|elapsed|lineage|started_at|finished_at|id|serial)": [^,\n}]+', r'"\1": X', text)
    text = re.sub(r"\b[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}\b", "UUID", text)
    return "\n".join(sorted(text.splitlines()))


def test_plan_and_apply_without_typer_match_the_app(tmp_path: Path, flux: FluxRunner, flux_env: dict[str, str],
                                                     make_project: Callable[..., Path]) -> None:
    code = ('import { defineFunction } from "@flux/functions";\n'
            'export default defineFunction({ name: "w", handler: async ({ ctx }) => ({ k: ctx.env.API_URL }) });\n')
    roots = [make_project(tmp_path / side, functions={"a": None, "b": None, "w": {"code": code}})
             for side in ("fast", "slow")]
    seen = []
    for args in RUNS:
        fast = flux(*args, cwd=roots[0])
        slow = flux(*args, cwd=roots[1], env=SLOW)
        assert [fast[0], *(_normal(s, roots[0]) for s in fast[1:])] == \
            [slow[0], *(_normal(s, roots[1]) for s in slow[1:])], args
        states = [_normal((r / ".flux" / "dev" / "state.json").read_text() if (r / ".flux" / "dev" / "state.json")
                          .exists() else "", r) for r in roots]
        assert states[0] == states[1], args
        seen.append(fast)
    # what each step did, so the comparisons above compared something
    codes = [rc for rc, _, _ in seen]
    assert codes == [0, 2, 1, 0, 0, 0, 0, 2, 2, 1, 2, 1, 0, 2]
    assert "refusing to apply without confirmation" in seen[2][2]
    assert "Apply complete!" in seen[3][1] and "7 added" in seen[3][1]
    assert "No such option: -p" in seen[7][2] and "greater than or equal to 1" in seen[8][2]
    assert "--purge goes with --destroy" in seen[9][2]
    assert json.loads(seen[12][1].splitlines()[-1])["destroyed"] == 7
    rc, heavy = _heavy(["plan", "--detailed-exitcode"], roots[0], flux_env)
    assert rc == 2 and "typer" not in heavy and "rich" not in heavy
    rc, heavy = _heavy(["plan", "--purge"], roots[0], flux_env)  # refused by the command itself
    assert rc == 1 and "typer" not in heavy
