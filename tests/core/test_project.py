"""Scanning + validation: every problem class, located by file and line/JSON path, reported at once."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path

import pytest

from flux_plan.errors import ValidationFailed
from flux_plan.project import load_project, scan

FluxRunner = Callable[..., tuple[int, str, str]]


def _by_file(problems: list[dict]) -> dict[str, list[dict]]:
    out: dict[str, list[dict]] = {}
    for p in problems:
        out.setdefault(p["file"], []).append(p)
    return out


def test_example_project_is_valid(flux: FluxRunner, example_todo: Path) -> None:
    rc, out, err = flux("validate", "--json", cwd=example_todo)
    assert rc == 0, err
    doc = json.loads(out)
    assert doc["valid"] is True
    assert (doc["functions"], doc["migrations"], doc["errors"]) == (6, 2, 0)


def test_every_problem_is_reported_at_once(tmp_path: Path, flux: FluxRunner, make_project: Callable[..., Path], write_function: Callable[..., Path]) -> None:
    outside = write_function(tmp_path / "outside", "elsewhere")  # a valid function, but not in the project
    root = make_project(
        tmp_path,
        functions={
            "badjson": {"flux": '{\n  "name": "badjson",\n  "method": "GET",\n}\n'},
            "noname": {"flux": {"runtime": "deno"}},
            "Bad Name": {"dir": "badname", "flux": {"name": "Bad Name"}},
            "fields": {"flux": {
                "name": "fields", "runtime": "bun", "route": "fields", "method": "get", "async": "yes",
                "timeout": 901, "memory": 64, "concurrency": 0, "secrets": ["not-a-key"],
            }},
            "typo": {"flux": '{\n  "name": "typo",\n  "rout": "/typo"\n}\n'},
            "dup_a": {"flux": {"name": "same"}},
            "dup_b": {"flux": {"name": "same"}},
            "route_a": {"flux": {"name": "route_a", "route": "/shared", "method": "PUT"}},
            "route_b": {"flux": {"name": "route_b", "route": "/shared", "method": "PUT"}},
            "noindex": {"code": None},
            "noconfig": {"flux": None},
            "nodefine": {"code": "export const handler = () => 1;\n"},
            "mismatch": {"code": 'import { defineFunction } from "@flux/functions";\n\n'
                                 'export default defineFunction({\n  name: "other",\n'
                                 '  handler: async ({ ctx }) => ctx.env.UNDOCUMENTED,\n});\n'},
        },
        migrations={
            "001_init.sql": "CREATE TABLE t (id int);\n",
            "001_again.sql": "CREATE TABLE u (id int);\n",
            "002_broken.sql": "CREATE TABLE v (id int);\n\nSELEC 1;\n",
            "add_users.sql": "CREATE TABLE users (id int);\n",
        },
        project={"name": "proj", "stages": {"dev": {"provider": "record", "port": 99999}, "prod": {"region": "x"}}},
    )
    os.symlink(outside, root / "functions" / "linked_out")

    rc, out, err = flux("validate", "--json", cwd=root)
    assert rc == 1, err
    doc = json.loads(out)
    assert doc["valid"] is False
    probs = _by_file(doc["problems"])

    def find(file: str, needle: str, severity: str = "error") -> dict:
        for p in probs.get(file, []):
            if needle in (p["message"] + " " + (p["json_path"] or "") + " " + (p["hint"] or "")) \
                    and p["severity"] == severity:
                return p
        raise AssertionError(f"no {severity} {needle!r} for {file}: {probs.get(file)}")

    # flux.json syntax: line and column of the error.
    p = find("functions/badjson/flux.json", "invalid JSON")
    assert p["line"] == 4 and "column" in p["message"]
    # Schema: precise JSON path, the line of the key, a hint.
    assert find("functions/noname/flux.json", "'name' is a required property")["json_path"] == "$"
    assert find("functions/badname/flux.json", "$.name")["hint"].startswith("names are lowercase")
    fields = "functions/fields/flux.json"
    assert find(fields, "$.runtime")["line"] == 3
    assert find(fields, "$.route")["hint"].startswith('a route is a URL path starting with "/"')
    assert find(fields, "$.method")["hint"] == 'HTTP methods are upper case: use "GET"'
    assert find(fields, "$.async")["hint"] == "expected boolean"
    assert "1 to 900" in find(fields, "$.timeout")["hint"]
    assert "128 to 10240" in find(fields, "$.memory")["hint"]
    assert "1 to 1000" in find(fields, "$.concurrency")["hint"]
    assert find(fields, "$.secrets[0]")["line"] == 10  # the line of its key
    typo = find("functions/typo/flux.json", "unknown key 'rout'")
    assert (typo["line"], typo["json_path"], typo["hint"]) == (3, "$.rout", "did you mean 'route'?")
    # Conflicts name both files.
    dup = find("functions/dup_b/flux.json", "duplicate function name 'same'")
    assert "functions/dup_a/flux.json" in dup["message"]
    route = find("functions/route_b/flux.json", "route PUT /shared")
    assert "functions/route_a/flux.json" in route["message"]
    # Files and code.
    find("functions/noindex/index.ts", "missing index.ts")
    find("functions/noconfig/flux.json", "missing flux.json")
    find("functions/nodefine/index.ts", "export default defineFunction(")
    assert find("functions/mismatch/index.ts", "differs from flux.json name", "warning")["line"] == 4
    assert find("functions/mismatch/index.ts", "UNDOCUMENTED", "warning")["line"] == 5
    find("functions/linked_out", "outside the project")
    # Migrations.
    find("schema/add_users.sql", "NNN_name.sql")
    dup_v = find("schema/001_init.sql", "duplicate migration version 1")
    assert "schema/001_again.sql" in dup_v["message"]
    assert find("schema/002_broken.sql", "SQL does not parse")["line"] == 3
    # flux.project.json.
    assert find("flux.project.json", "$.stages.dev.port")["line"] == 6
    assert find("flux.project.json", "'provider' is a required property")["json_path"] == "$.stages.prod"
    assert doc["errors"] == 23  # every error above, none lost behind another

    # The human output carries the same locations, and no traceback.
    rc, out, err = flux("validate", cwd=root)
    assert rc == 1
    assert "functions/typo/flux.json:3 ($.rout): error: unknown key 'rout'" in out
    assert "hint: did you mean 'route'?" in out
    assert "schema/002_broken.sql:3: error: SQL does not parse" in out
    assert "Traceback" not in out + err


def test_warnings_pass_unless_strict(tmp_path: Path, flux: FluxRunner, make_project: Callable[..., Path], write_function: Callable[..., Path]) -> None:
    code = ('import { defineFunction } from "@flux/functions";\n'
            "export default defineFunction({\n  name: \"reader\",\n  handler: async ({ ctx }) => {\n"
            '    const key = await ctx.secrets.get("API_KEY");\n    return { key: key.length };\n  },\n});\n')
    root = make_project(tmp_path, functions={"reader": {"code": code}})
    rc, out, _ = flux("validate", cwd=root)
    assert rc == 0
    assert "functions/reader/index.ts:5: warning: reads 'API_KEY' but .env.example does not list it" in out
    rc, out, _ = flux("validate", "--strict", cwd=root)
    assert rc == 1 and "error: reads 'API_KEY'" in out
    (root / ".env.example").write_text("API_KEY=\n")
    rc, out, _ = flux("validate", "--strict", cwd=root)
    assert rc == 0, out


def test_scan_builds_specs_with_defaults_and_keys(tmp_path: Path, make_project: Callable[..., Path], write_function: Callable[..., Path]) -> None:
    code = ('import { defineFunction } from "@flux/functions";\nimport { helper } from "./lib.ts";\n'
            "export default defineFunction({\n  name: \"keys\",\n  handler: async ({ input, ctx }) => {\n"
            "    const a = ctx.env.API_URL;\n    const r = ctx.env[\"REGION\"] ?? \"us-east-1\";\n"
            "    const { TOKEN_A, TOKEN_B: renamed } = ctx.env;\n"
            "    const s = await ctx.secrets.get('OPENAI_API_KEY');\n    return helper(a, r, s);\n  },\n});\n")
    lib = "export function helper(ctx: any) { return ctx.env.FROM_LIB; }\n"
    root = make_project(
        tmp_path,
        functions={"keys": {"code": code, "files": {"lib.ts": lib},
                            "flux": {"name": "keys", "secrets": ["EXTRA"], "async": True}}},
        migrations={"002_b.sql": "SELECT 1;", "001_a.sql": "SELECT 2;", "010_c.sql": "SELECT 3;"},
        project=None,
        env_example="# comment\nAPI_URL=http://x\nexport REGION=eu\n",
    )
    project, problems = scan(root)
    assert project.name == "proj"
    assert list(project.stages) == ["dev"] and project.stages["dev"].provider == "local"
    assert project.env_example_keys == ["API_URL", "REGION"]
    [fn] = project.functions
    assert (fn.runtime, fn.route, fn.method, fn.async_, fn.timeout, fn.memory, fn.concurrency) == (
        "deno", "/keys", "POST", True, 30, 256, 10)
    assert fn.secrets == ("EXTRA", "OPENAI_API_KEY")
    assert fn.env_keys == ("API_URL", "FROM_LIB", "REGION", "TOKEN_A", "TOKEN_B")
    assert len(fn.source_digest) == 64
    assert [m.version for m in project.migrations] == [1, 2, 10]
    undocumented = sorted(p.message.split("'")[1] for p in problems if "does not list" in p.message)
    assert undocumented == ["FROM_LIB", "OPENAI_API_KEY", "TOKEN_A", "TOKEN_B"]


def test_load_project_raises_every_error(tmp_path: Path, make_project: Callable[..., Path], write_function: Callable[..., Path]) -> None:
    root = make_project(tmp_path, functions={"a": {"flux": {"name": "a", "method": "FETCH"}},
                                             "b": {"flux": {"name": "b", "timeout": 0}}})
    with pytest.raises(ValidationFailed) as exc:
        load_project(root)
    text = exc.value.render()
    assert "functions/a/flux.json:3 ($.method)" in text
    assert "functions/b/flux.json:3 ($.timeout)" in text


def test_plan_refuses_invalid_project_without_traceback(tmp_path: Path, flux: FluxRunner, make_project: Callable[..., Path], write_function: Callable[..., Path]) -> None:
    root = make_project(tmp_path, functions={"a": {"flux": '{"name": "a",}'}})
    rc, _, err = flux("plan", cwd=root)
    assert rc == 1
    assert "functions/a/flux.json:1: error: invalid JSON" in err
    assert "Traceback" not in err


def test_scan_of_many_functions_is_complete(tmp_path: Path, make_project: Callable[..., Path], write_function: Callable[..., Path]) -> None:
    """1000 functions scan without a problem (speed is measured by bench/plan_scale.py, not asserted here)."""
    root = make_project(tmp_path, functions={}, env_example="")
    for i in range(1000):
        write_function(root, f"fn{i:04d}")
    project, problems = scan(root)
    assert len(project.functions) == 1000 and not [p for p in problems if p.severity == "error"]
    assert sorted(f.name for f in project.functions) == [f"fn{i:04d}" for i in range(1000)]
