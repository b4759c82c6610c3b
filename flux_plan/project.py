"""Scanning and validating a project tree into a `Project`.

Every problem is collected (never stop at the first) and located by file + line or JSON path, so a
user fixes a broken project in one round. Cost is linear in the number of functions: one compiled
JSON-schema validator, no subprocess, each source file read once here.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import os
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

from flux_plan.defaults import DEFAULT_PROVIDER, DEFAULT_STAGE
from flux_plan.digest import source_digest_deps
from flux_plan.errors import Problem, ValidationFailed
from flux_plan.paths import schema_path
from flux_plan.routes import route_problems
from flux_plan.scan_cache import ScanCache
from flux_plan.schema_check import Check, compile_accept

if TYPE_CHECKING:  # jsonschema is imported only when a document is not plainly valid (see schema_check)
    from jsonschema import Draft202012Validator
    from jsonschema.exceptions import ValidationError

    from flux_plan.model import Project

FUNCTIONS_DIR = "functions"
SCHEMA_DIR = "schema"
ENTRY_FILE = "index.ts"
CONFIG_FILE = "flux.json"
PROJECT_FILE = "flux.project.json"
ENV_EXAMPLE = ".env.example"

METHODS = ("GET", "POST", "PUT", "PATCH", "DELETE")
MIGRATION_RE = re.compile(r"^(\d+)_([A-Za-z0-9][A-Za-z0-9_-]*)\.sql$")
_DEFINE_RE = re.compile(r"export\s+default\s+defineFunction\s*\(")
_NAME_LITERAL_RE = re.compile(r"""\bname\s*:\s*(["'`])([^"'`\n]*)\1""")
_SECRET_GET_RE = re.compile(r"""ctx\s*\.\s*secrets\s*\.\s*get\s*\(\s*(["'`])([A-Za-z_][A-Za-z0-9_]*)\1\s*\)""")
_ENV_DOT_RE = re.compile(r"ctx\s*\.\s*env\s*\??\.\s*([A-Za-z_][A-Za-z0-9_]*)")
_ENV_INDEX_RE = re.compile(r"""ctx\s*\.\s*env\s*(?:\?\.)?\[\s*(["'`])([A-Za-z_][A-Za-z0-9_]*)\1\s*\]""")
_ENV_DESTRUCTURE_RE = re.compile(r"\{([^{}]*)\}\s*=\s*ctx\s*\.\s*env\b")
# a function that names ctx.db (also `ctx?.db`, `{ db } = ctx`), or a file of it that calls `x.db.query(` (a shared
# helper handed the context): only these functions are granted the database (DESIGN §6)
_DB_RE = re.compile(r"ctx\.db|ctx\s*\??\.\s*db\b|\.db\.query\(|\{[^{}]*\bdb\b[^{}]*\}\s*=\s*ctx\b")
_ENV_LINE_RE = re.compile(r"^\s*(?:export\s+)?([A-Za-z_][A-Za-z0-9_]*)\s*=")
ENV_EXAMPLE_WARNING = ".env.example does not list it"
_CODE_SUFFIXES = {".ts", ".tsx", ".js", ".mjs", ".jsx"}
_SKIP_DIRS = {"node_modules", ".flux", ".git"}


@dataclass
class CodeScan:
    """What the regex scan of a function's code found: keys it reads and where (for messages)."""

    defines: bool = False
    name_literal: str | None = None
    name_line: int | None = None
    secrets: dict[str, tuple[str, int]] = field(default_factory=dict)  # key -> (file, line)
    env_keys: dict[str, tuple[str, int]] = field(default_factory=dict)
    uses_db: bool = False


# FunctionSpec's fields as its JSON document holds them (model_dump(mode="json", by_alias=True)), with the
# JSON types a document of a valid flux.json has for each: what a scan-cache entry must hold to be reused.
_STR, _INT = frozenset({str}), frozenset({int, float})
_SPEC_TYPES: dict[str, frozenset[type]] = {
    "name": _STR, "dir": _STR, "runtime": _STR, "route": _STR, "method": _STR, "async": frozenset({bool}),
    "timeout": _INT, "memory": _INT, "concurrency": _INT, "secrets": frozenset({list}),
    "env_keys": frozenset({list}), "uses_db": frozenset({bool}), "env": frozenset({list}),
    "architecture": frozenset({str, type(None)}), "source_digest": _STR,
}
_SPEC_CHECKS = tuple(_SPEC_TYPES.items())


class FoundFunction:
    """A function as the scan found it: its FunctionSpec as a JSON document (what the scan cache stores and
    `FunctionSpec.model_validate` takes) and the fields the scan's own checks read. The scan builds no
    pydantic model itself, so `flux validate` can check a project without importing pydantic."""

    __slots__ = ("dir", "doc", "method", "name", "route")

    def __init__(self, doc: dict[str, Any]) -> None:
        self.doc = doc
        self.name: str = doc["name"]
        self.dir: str = doc["dir"]
        self.route: str = doc["route"]
        self.method: str = doc["method"]

    @staticmethod
    def from_cache(doc: Any) -> FoundFunction | None:
        """The function of a scan-cache entry, or None for an entry of another shape (scanned again)."""
        if type(doc) is not dict or doc.keys() != _SPEC_TYPES.keys():
            return None
        for key, types in _SPEC_CHECKS:  # a loop of set lookups: this runs for every function of a plan
            if type(doc[key]) not in types:
                return None
        return FoundFunction(doc)


@dataclass
class ScanResult:
    """Everything a scan found, as plain data (no pydantic model built): `project()` builds the Project."""

    root: Path
    name: str
    functions: list[FoundFunction]
    migrations: list[dict[str, Any]]  # Migration's fields
    env_example_keys: list[str]
    stages: dict[str, dict[str, Any]]  # stage name -> its flux.project.json settings (StageConfig(name=, **it))
    problems: list[Problem]

    def project(self) -> Project:
        from flux_plan.model import FunctionSpec, Migration, Project, StageConfig

        return Project(root=self.root, name=self.name,
                       functions=[FunctionSpec.model_validate(f.doc) for f in self.functions],
                       migrations=[Migration(**m) for m in self.migrations],
                       env_example_keys=self.env_example_keys,
                       stages={s: StageConfig(name=s, **cfg) for s, cfg in self.stages.items()})


# --------------------------------------------------------------------------------------------------
# JSON helpers: schema validators compiled once per process, JSON paths mapped back to lines.


@functools.cache
def validator(name: str) -> Draft202012Validator:
    """The compiled validator of schemas/<name>.schema.json (compiled once: scans call it N times)."""
    from jsonschema import Draft202012Validator

    schema = json.loads(schema_path(name).read_text(encoding="utf-8"))
    Draft202012Validator.check_schema(schema)
    return Draft202012Validator(schema)


@functools.cache
def fast_accept(name: str) -> Check | None:
    """The quick validity check of schemas/<name>.schema.json (None: always use `validator`)."""
    return compile_accept(json.loads(schema_path(name).read_text(encoding="utf-8")))


def json_path(parts: Iterable[Any]) -> str:
    out = "$"
    for p in parts:
        out += f"[{p}]" if isinstance(p, int) else f".{p}"
    return out


def line_of(text: str, pos: int) -> int:
    return text.count("\n", 0, pos) + 1


def locate(text: str, parts: Sequence[Any]) -> int:
    """Best-effort line of the JSON value at `parts`: follow each key's first occurrence after the
    previous one. Good enough for hand-written config files; falls back to the enclosing key."""
    pos = 0
    for p in parts:
        if isinstance(p, int):
            continue
        m = re.compile(r'"' + re.escape(str(p)) + r'"\s*:').search(text, pos)
        if not m:
            break
        pos = m.start()
    return line_of(text, pos) if pos else 1


def _did_you_mean(word: str, choices: Iterable[str]) -> str | None:
    import difflib  # only for a misspelt key or value

    match = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.6)
    return f"did you mean {match[0]!r}?" if match else None


def schema_problems(name: str, data: Any, text: str, file: str) -> list[Problem]:
    """Every schema violation of `data` as a Problem with JSON path, line and a hint."""
    quick = fast_accept(name)
    if quick is not None and quick(data):
        return []
    problems: list[Problem] = []
    errors = sorted(validator(name).iter_errors(data), key=lambda e: list(map(str, e.absolute_path)))
    for err in errors:
        problems.extend(_explain(err, text, file))
    return problems


def _explain(err: ValidationError, text: str, file: str) -> list[Problem]:
    path = list(err.absolute_path)
    schema: Any = err.schema  # a dict for Flux's schemas (typed as a union with bool in jsonschema)
    if err.validator == "additionalProperties" and isinstance(err.instance, dict):
        known = list(schema.get("properties", {}))
        out = []
        for key in err.instance:
            if key in known:
                continue
            tip = _did_you_mean(key, known) or f"allowed keys: {', '.join(k for k in known if k != '$schema')}"
            out.append(
                Problem(file, f"unknown key {key!r}", line=locate(text, [*path, key]),
                        json_path=json_path([*path, key]), hint=tip)
            )
        return out
    hint: str | None = None
    message = err.message
    if err.validator == "required":
        missing = err.message.split("'")[1] if "'" in err.message else ""
        hint = f'add "{missing}"' if missing else None
        if missing == "name":
            hint = 'add "name": "<function name>" (lowercase letters, digits, _ or -)'
    elif err.validator == "enum":
        allowed = list(cast(Any, err.validator_value))
        value = err.instance
        message = f"{value!r} is not one of {', '.join(map(str, allowed))}"
        if isinstance(value, str) and value.upper() in allowed:
            hint = f'HTTP methods are upper case: use "{value.upper()}"'
        elif isinstance(value, str):
            hint = _did_you_mean(value, allowed) or f"use one of: {', '.join(map(str, allowed))}"
    elif err.validator == "pattern" and path and path[-1] == "name":
        hint = "names are lowercase letters, digits, _ or -, start with a letter, at most 64 characters"
    elif err.validator == "pattern" and path and path[-1] == "route":
        value = str(err.instance)
        if "//" in value or re.search(r"(^|/)\.\.?(/|$)", value):
            message = f"route {value!r} has an empty ('//') or a '.'/'..' segment"
            hint = "write the path without them (gateways normalise such paths differently), e.g. \"/todos/{id}\""
        else:
            message = f"route {value!r} is not a URL path"
            hint = 'a route is a URL path starting with "/", e.g. "/todos"'
    elif err.validator == "maxLength" and path and path[-1] == "route":
        message = f"route is {len(str(err.instance))} characters long, over the limit of {err.validator_value}"
        hint = "use a shorter path"
    elif "cors" in path and err.validator in ("not", "pattern"):
        message, hint = _cors_explain(err, path)
    elif err.validator in ("minimum", "maximum"):
        lo = schema.get("minimum")
        hi = schema.get("maximum")
        hint = f"use a whole number from {lo} to {hi}"
    elif err.validator == "type":
        hint = f"expected {err.validator_value}"
    return [Problem(file, message, line=locate(text, path), json_path=json_path(path), hint=hint)]


def _cors_explain(err: ValidationError, path: list[Any]) -> tuple[str, str]:
    """Plain words for the stage's `cors` setting (its schema's patterns and the credentials rule)."""
    if err.validator == "not":
        return ('allow_origins "*" cannot be combined with allow_credentials: true (browsers refuse it)',
                'list the origins, e.g. ["https://app.example.com"]')
    if "allow_origins" in path:
        return (f"{err.instance!r} is not an origin",
                'an origin is scheme://host[:port] without a path, e.g. "http://localhost:5173", or "*"')
    return f"{err.instance!r} is not a header name", 'a header name has no spaces, e.g. "x-api-key", or "*"'


def read_json(path: Path, rel: str, problems: list[Problem]) -> tuple[Any, str] | None:
    """(data, text) or None after recording why the file could not be read or parsed."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        problems.append(Problem(rel, f"cannot read file: {exc}", hint="make it a readable UTF-8 file"))
        return None
    dupes: list[str] = []
    try:
        data = json.loads(text, object_pairs_hook=functools.partial(_no_duplicates, dupes))
    except json.JSONDecodeError as exc:
        problems.append(
            Problem(rel, f"invalid JSON: {exc.msg} (column {exc.colno})", line=exc.lineno,
                    hint="fix the JSON syntax (a trailing comma or a missing quote is the usual cause)")
        )
        return None
    except RecursionError:
        problems.append(Problem(rel, "JSON nested too deeply to read", hint="a Flux config needs a few levels at most"))
        return None
    for key in dupes:  # json.loads keeps the last value silently; a reader of the file may see the first
        problems.append(Problem(rel, f"duplicate key {key!r}", line=locate_last(text, key),
                                hint="keep one of them: JSON tools disagree about which one wins"))
    return None if dupes else (data, text)


def _no_duplicates(found: list[str], pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in pairs:
        if k in out:
            found.append(k)
        out[k] = v
    return out


def locate_last(text: str, key: str) -> int:
    """Line of the last `"key":` in `text` (the duplicate)."""
    hits = list(re.finditer(r'"' + re.escape(key) + r'"\s*:', text))
    return line_of(text, hits[-1].start()) if hits else 1


# --------------------------------------------------------------------------------------------------
# Code scan (regex only: no TypeScript runtime on the plan path).


def scan_code(files: list[tuple[str, str]], entry: str) -> CodeScan:
    """Find defineFunction, its `name:` literal and the secret/env keys the code reads."""
    found = CodeScan()
    for rel, text in files:
        if rel == entry:
            m = _DEFINE_RE.search(text)
            if m:
                found.defines = True
                nm = _NAME_LITERAL_RE.search(text, m.end())
                if nm:
                    found.name_literal = nm.group(2)
                    found.name_line = line_of(text, nm.start())
        if not found.uses_db and _DB_RE.search(text):
            found.uses_db = True
        if "ctx" not in text:
            continue
        for m in _SECRET_GET_RE.finditer(text):
            found.secrets.setdefault(m.group(2), (rel, line_of(text, m.start())))
        for m in _ENV_DOT_RE.finditer(text):
            found.env_keys.setdefault(m.group(1), (rel, line_of(text, m.start())))
        for m in _ENV_INDEX_RE.finditer(text):
            found.env_keys.setdefault(m.group(2), (rel, line_of(text, m.start())))
        for m in _ENV_DESTRUCTURE_RE.finditer(text):
            for part in m.group(1).split(","):
                key = part.split(":")[0].split("=")[0].strip()
                if re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", key):
                    found.env_keys.setdefault(key, (rel, line_of(text, m.start())))
    return found


def _code_files(root: Path, fn_dir: Path) -> list[tuple[str, str]]:
    """(project-relative path, text) of the function's own code files, node_modules excluded."""
    out: list[tuple[str, str]] = []
    prefix = fn_dir.relative_to(root).as_posix()
    stack = [(fn_dir, prefix)]
    while stack:
        d, rel = stack.pop()
        try:
            entries = sorted(os.scandir(d), key=lambda e: e.name)
        except OSError:
            continue
        for e in entries:
            if e.is_dir(follow_symlinks=False):
                if e.name not in _SKIP_DIRS:
                    stack.append((Path(e.path), f"{rel}/{e.name}"))
            elif os.path.splitext(e.name)[1] in _CODE_SUFFIXES and e.is_file():
                try:
                    with open(e.path, encoding="utf-8", errors="replace") as fh:
                        out.append((f"{rel}/{e.name}", fh.read()))
                except OSError:
                    continue
    return out


# --------------------------------------------------------------------------------------------------
# Parts of the scan.


def _scan_project_file(root: Path, problems: list[Problem]) -> tuple[str, dict[str, dict[str, Any]]]:
    name = root.name
    path = root / PROJECT_FILE
    if not path.exists():
        return name, {DEFAULT_STAGE: {"provider": DEFAULT_PROVIDER}}
    loaded = read_json(path, PROJECT_FILE, problems)
    if loaded is None:
        return name, {}
    data, text = loaded
    found = schema_problems("project", data, text, PROJECT_FILE)
    problems.extend(found)
    if found or not isinstance(data, dict):
        return name, {}
    stages_raw = data.get("stages") or {DEFAULT_STAGE: {"provider": DEFAULT_PROVIDER}}
    named = [s for s, cfg in stages_raw.items() if isinstance(cfg, dict) and "name" in cfg]
    for s in named:  # the schema lets provider keys through; this one would clash with the stage's own name
        where = ["stages", s, "name"]
        problems.append(Problem(PROJECT_FILE, f'stage {s!r} has a "name" key: a stage\'s name is its key in "stages"',
                                line=locate(text, where), json_path=json_path(where),
                                hint='remove "name" (or rename the stage key to the name you want)'))
    if named:
        return name, {}
    return data.get("name", name), dict(stages_raw)


def _read_env_example(root: Path, problems: list[Problem]) -> list[str]:
    path = root / ENV_EXAMPLE
    if not path.is_file():
        return []
    keys: list[str] = []
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        problems.append(Problem(ENV_EXAMPLE, f"cannot read file: {exc}", severity="warning"))
        return []
    for i, line in enumerate(lines, 1):
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        m = _ENV_LINE_RE.match(line)
        if not m:
            problems.append(
                Problem(ENV_EXAMPLE, f"not a KEY=VALUE line: {stripped[:60]!r}", line=i,
                        hint="write one KEY=VALUE per line (# starts a comment)", severity="warning")
            )
            continue
        if m.group(1) not in keys:
            keys.append(m.group(1))
    return keys


def _inside(path: Path, root: Path) -> bool:
    """Whether `path` stays inside `root`. Only links can leave it (names come from a listing), so
    only links pay for a resolve: 5000 functions must scan in seconds."""
    if not path.is_symlink():
        return True
    try:
        path.resolve().relative_to(root)
    except (ValueError, OSError):
        return False
    return True


def _scan_function(root: Path, d: Path | str, problems: list[Problem],
                   cache: ScanCache | None = None) -> tuple[FoundFunction, CodeScan] | None:
    """Scan one function directory, or reuse what the scan cache holds for it when nothing changed
    (`d` may be a plain path string: a hit builds no Path object)."""
    if cache is not None:
        hit = cache.get(d)
        if hit is not None:
            try:
                spec = FoundFunction.from_cache(hit["spec"])
                if spec is None:
                    raise ValueError("not a FunctionSpec document")
                code = CodeScan(**{**hit["code"],
                                   "secrets": {k: (f, n) for k, (f, n) in hit["code"]["secrets"].items()},
                                   "env_keys": {k: (f, n) for k, (f, n) in hit["code"]["env_keys"].items()}})
                found_problems = [Problem(**p) for p in hit["problems"]]
            except (KeyError, TypeError, ValueError):
                pass  # an entry of another shape: scan again
            else:
                problems.extend(found_problems)
                return spec, code
    d = Path(d)
    local: list[Problem] = []
    found = _scan_function_files(root, d, local)
    problems.extend(local)
    if found is None:
        if cache is not None:
            cache.forget(d.name)
        return None
    spec, code, deps = found
    if cache is not None:
        if code.defines and not errors_of(local):
            cache.put(d, deps, {
                "spec": spec.doc,
                "code": dataclasses.asdict(code),
                "problems": [dataclasses.asdict(p) for p in local],
            })
        else:
            cache.forget(d.name)
    return spec, code


def _scan_function_files(root: Path, d: Path,
                         problems: list[Problem]) -> tuple[FoundFunction, CodeScan, list[str]] | None:
    rel_dir = f"{FUNCTIONS_DIR}/{d.name}"
    cfg_rel, entry_rel = f"{rel_dir}/{CONFIG_FILE}", f"{rel_dir}/{ENTRY_FILE}"
    cfg_path, entry_path = d / CONFIG_FILE, d / ENTRY_FILE
    if not _inside(d, root):
        problems.append(
            Problem(rel_dir, f"function directory points outside the project ({d.resolve()})",
                    hint="functions must live inside the project: copy the directory instead of linking it")
        )
        return None
    has_cfg, has_entry = cfg_path.is_file(), entry_path.is_file()
    if not has_cfg and not has_entry:
        problems.append(
            Problem(rel_dir, "no flux.json and no index.ts: not a function, ignored", severity="warning",
                    hint="add flux.json + index.ts, or prefix shared code directories with '_'")
        )
        return None
    ok = True
    for path, rel in ((cfg_path, cfg_rel), (entry_path, entry_rel)):
        if path.exists() and not _inside(path, root):
            problems.append(Problem(rel, "file is a link to outside the project",
                                    hint="replace the link with a regular file"))
            ok = False
    if not has_cfg:
        problems.append(Problem(cfg_rel, "missing flux.json",
                                hint=f'create it with at least {{"name": "{d.name}"}}'))
        ok = False
    if not has_entry:
        problems.append(Problem(entry_rel, "missing index.ts (the function's handler)",
                                hint='export default defineFunction({ name, handler }) from "@flux/functions"'))
        ok = False
    data: Any = None
    if has_cfg and ok:
        loaded = read_json(cfg_path, cfg_rel, problems)
        if loaded is None:
            ok = False
        else:
            data, text = loaded
            found = schema_problems("flux", data, text, cfg_rel)
            problems.extend(found)
            ok = not found
    if not ok:
        return None
    files = _code_files(root, d)
    code = scan_code(files, entry_rel)
    if not code.defines:
        problems.append(
            Problem(entry_rel, "no `export default defineFunction(` found",
                    hint='export the handler: export default defineFunction({ name: "...", handler })')
        )
        # Keep going: the function still takes part in the name and route checks, so every problem is
        # reported at once (the error above already stops plan/apply).
    name = data["name"]
    if code.name_literal is not None and code.name_literal != name:
        problems.append(
            Problem(entry_rel, f"defineFunction name {code.name_literal!r} differs from flux.json name {name!r}",
                    line=code.name_line, severity="warning",
                    hint=f"flux.json's name is used; rename one so they match ({name!r})")
        )
    runtime = data.get("runtime", "deno")
    for key in sorted(set(data.get("env", {})) & set(data.get("secrets", []))):
        at = ["env", key]
        problems.append(
            Problem(cfg_rel, f"{key!r} is both a plain value in \"env\" and listed in \"secrets\"", line=locate(text, at),
                    json_path=json_path(at),
                    hint=f"keep it in one place: a plain, committed value in \"env\", or a secret "
                         f"(`flux secrets set {key}=...`) listed in \"secrets\"")
        )
    secrets = sorted(set(data.get("secrets", [])) | set(code.secrets))
    digest, deps = source_digest_deps(root, rel_dir, runtime)
    # a valid flux.json (the schema above) gives each field its model's type: FunctionSpec takes this as is
    spec = FoundFunction(
        {
            "name": name,
            "dir": rel_dir,
            "runtime": runtime,
            "route": data.get("route", f"/{name}"),
            "method": data.get("method", "POST"),
            "async": data.get("async", False),
            "timeout": data.get("timeout", 30),
            "memory": data.get("memory", 256),
            "concurrency": data.get("concurrency", 10),
            "secrets": list(secrets),
            "env_keys": sorted(code.env_keys),
            "uses_db": code.uses_db,
            "env": [list(kv) for kv in sorted(data.get("env", {}).items())],
            "architecture": data.get("architecture"),
            "source_digest": digest,
        }
    )
    return spec, code, deps


def _scan_migrations(root: Path, problems: list[Problem]) -> list[dict[str, Any]]:
    schema_dir = root / SCHEMA_DIR
    if not schema_dir.is_dir():
        return []
    import pglast  # ~100 ms of imports: only for projects that have migrations
    by_version: dict[int, dict[str, Any]] = {}
    for p in sorted(schema_dir.iterdir()):
        if p.name.startswith(".") or p.is_dir():
            continue
        rel = f"{SCHEMA_DIR}/{p.name}"
        m = MIGRATION_RE.match(p.name)
        if not m:
            if p.suffix == ".sql":
                problems.append(Problem(rel, "migration file name is not NNN_name.sql",
                                        hint="rename it like 003_add_users.sql (version number, _, name)"))
            else:
                problems.append(Problem(rel, "not a migration (only NNN_name.sql files are applied); ignored",
                                        severity="warning"))
            continue
        raw = p.read_bytes()
        try:
            sql = raw.decode("utf-8")
        except UnicodeDecodeError:
            problems.append(Problem(rel, "not UTF-8 text", hint="save the file as UTF-8"))
            continue
        try:
            pglast.parse_sql(sql)
        except pglast.parser.ParseError as exc:
            pos = exc.args[1] if len(exc.args) > 1 and isinstance(exc.args[1], int) else 0
            problems.append(Problem(rel, f"SQL does not parse: {exc.args[0]}", line=line_of(sql, pos),
                                    hint="fix the statement (PostgreSQL syntax)"))
        version = int(m.group(1))
        mig = {"file": p.name, "version": version, "name": m.group(2), "checksum": hashlib.sha256(raw).hexdigest(),
               "path": rel}
        if version in by_version:
            problems.append(
                Problem(rel, f"duplicate migration version {version}: also {by_version[version]['path']}",
                        hint="give each migration its own version number")
            )
            continue
        by_version[version] = mig
    return [by_version[v] for v in sorted(by_version)]


def scan(root: Path) -> tuple[Project, list[Problem]]:
    """Scan the project at `root`: the Project (built from everything valid) and every problem found."""
    found = scan_result(root)
    return found.project(), found.problems


def scan_result(root: Path) -> ScanResult:
    """`scan` without building the models: what `flux validate` needs (pydantic costs it ~120 ms)."""
    root = Path(root).resolve()
    problems: list[Problem] = []
    name, stages = _scan_project_file(root, problems)
    env_keys = _read_env_example(root, problems)
    functions: list[FoundFunction] = []
    fn_dir = root / FUNCTIONS_DIR
    if not fn_dir.is_dir():
        problems.append(Problem(f"{FUNCTIONS_DIR}/", "no functions/ directory",
                                hint="create functions/<name>/index.ts + flux.json, or run `flux init`",
                                severity="warning"))
    codes: dict[str, CodeScan] = {}
    by_name: dict[str, FoundFunction] = {}
    by_route: dict[tuple[str, str], FoundFunction] = {}
    cache = ScanCache.load(root)
    if fn_dir.is_dir():
        for entry in sorted(os.scandir(fn_dir), key=lambda e: e.name):  # no stat per entry
            if entry.name.startswith((".", "_")) or not entry.is_dir():
                continue
            found = _scan_function(root, entry.path, problems, cache)
            if found is None:
                continue
            spec, code = found
            cfg = f"{spec.dir}/{CONFIG_FILE}"
            if spec.name in by_name:
                other = by_name[spec.name]
                problems.append(Problem(cfg, f"duplicate function name {spec.name!r}: also {other.dir}/{CONFIG_FILE}",
                                        line=1, json_path="$.name", hint="function names must be unique"))
                continue
            key = (spec.method, spec.route)
            if key in by_route:
                other = by_route[key]
                problems.append(
                    Problem(cfg, f"route {spec.method} {spec.route} is also served by {other.name!r} "
                                 f"({other.dir}/{CONFIG_FILE})",
                            json_path="$.route", hint="give one of them another route or method")
                )
                continue
            by_name[spec.name] = spec
            by_route[key] = spec
            codes[spec.name] = code
            functions.append(spec)
    problems.extend(route_problems(functions))  # path-parameter syntax, clashing/ambiguous patterns
    documented = set(env_keys)
    for spec in functions:
        code = codes[spec.name]
        read = secret_reads(code.env_keys, code.secrets, (k for k, _ in spec.doc["env"]))
        for env_key, (file, line) in sorted({**code.env_keys, **code.secrets}.items()):
            if env_key not in documented and env_key in read:
                problems.append(
                    Problem(file, f"reads {env_key!r} but {ENV_EXAMPLE_WARNING}", line=line, severity="warning",
                            hint=f"add {env_key}= to .env.example and set it with `flux secrets set {env_key}=...`")
                )
    cache.save()
    migrations = _scan_migrations(root, problems)
    return ScanResult(root=root, name=name, functions=functions, migrations=migrations, env_example_keys=env_keys,
                      stages=stages, problems=problems)


def errors_of(problems: Iterable[Problem]) -> list[Problem]:
    return [p for p in problems if p.severity == "error"]


_WARNINGS: dict[Path, list[Problem]] = {}


def load_project(root: Path) -> Project:
    """The project, or ValidationFailed carrying every problem when any is an error.

    Warnings are kept (see `scan_warnings`) so plan can show them without scanning twice."""
    project, problems = scan(root)
    if errors_of(problems):
        raise ValidationFailed(problems=problems)
    _WARNINGS[project.root] = problems
    return project


def scan_warnings(project: Project) -> list[Problem]:
    """The warnings of the last `load_project` of this project's root (empty if never loaded)."""
    return list(_WARNINGS.get(project.root, []))


def secret_reads(env_keys: Iterable[str], secrets: Iterable[str], plain: Iterable[str]) -> set[str]:
    """The keys a function reads as secrets: those of ctx.secrets.get (and flux.json `secrets`), and those of ctx.env
    that its flux.json `env` does not give. The one rule behind validate's and plan's "not set" warnings."""
    given = set(plain)
    return {*secrets, *(k for k in env_keys if k not in given)}


def read_keys(project: Project) -> dict[str, list[str]]:
    """KEY -> functions that read it as a secret (secret_reads), for plan-time warnings."""
    out: dict[str, list[str]] = {}
    for spec in project.functions:
        for key in sorted(secret_reads(spec.env_keys, spec.secrets, (k for k, _ in spec.env))):
            out.setdefault(key, []).append(spec.name)
    return out
