"""Fast paths of the commands people and scripts run most, answered without building the typer app.

Building the typer app costs more than the 150 ms `flux --help` may take (typer parses every option
through pydantic), and `flux validate` would pay pydantic, jsonschema and an esbuild process too. So:

- Help (`flux`, `flux --help`, `flux plan --help`, ...) is rendered once by the real typer app and kept
  in the user cache, keyed by the CLI's source files, typer's install, the terminal width and the
  environment: what is printed is always what typer printed for exactly these inputs.
- `flux validate [--json] [--strict]` of a project whose every input is unchanged since the last clean
  validate replays that validate's problems (warnings only: a project with errors is always checked
  afresh). The key covers every file the scan reads (stat rows as in the scan cache, plus each
  function's scan-cache fingerprint), Flux's own modules and schemas, installed packages and esbuild.
  A validate that misses runs the scan here (still without typer, and without pydantic: the scan's
  plain result is all it needs) and syntax-checks only the functions whose files changed since their
  last clean check.
- The text `flux validate` prints is rendered by rich once per distinct result and terminal (the same
  console the app uses) and kept in the user cache: a validate after an edit usually prints what the
  last one printed, and importing rich would cost it ~40 ms.

- `flux plan | apply | deploy | destroy` with switches only (and `--parallelism N`) run their command
  bodies (`plan_run`, `apply_run`: the same calls the typer commands make) without building the app.
  Nothing is replayed there: only the ~60 ms of typer's import and parsing are skipped.

Anything else (other options, `--dir`, FLUX_* option variables, an unexpected state) returns None and
the typer app handles the command as before. FLUX_NO_FAST_PATH=1 turns this module off (tests compare).
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import re
import shutil
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from flux_plan.paths import PACKAGE_DIR, SCHEMAS_DIR, flux_dir, user_cache_dir

if TYPE_CHECKING:
    from flux_plan.check import SyntaxCheck

_FORMAT = 1
_WORD = re.compile(r"^[a-z][a-z-]{0,30}$")
VALIDATE_CACHE = "validate-cache.json"
# environment that changes what the app prints or how it parses options (typer reads FLUX_* envvars)
_ENV_KEYS = ("COLUMNS", "LINES", "TERM", "NO_COLOR", "FORCE_COLOR", "TTY_COMPATIBLE", "TTY_INTERACTIVE")


def enabled() -> bool:
    return os.environ.get("FLUX_NO_FAST_PATH", "") in ("", "0")


def _stat(path: Path | str) -> list[Any]:
    try:
        st = os.stat(path)
    except OSError:
        return [str(path), None]
    return [str(path), st.st_size, st.st_mtime_ns, st.st_ino]


def _code_stamp() -> list[Any]:
    """Flux's own code and schemas, the interpreter and its installed packages (the provider discovery
    key covers every `sys.path` directory: an install or upgrade changes it)."""
    from flux_plan.providers import _discovery_cache

    rows: list[Any] = [_FORMAT, sys.executable, sys.version, _discovery_cache().name]
    for d in (PACKAGE_DIR, PACKAGE_DIR / "cli", SCHEMAS_DIR):
        try:
            names = sorted(os.listdir(d))
        except OSError:
            continue
        rows.extend(_stat(d / n) for n in names if n.endswith((".py", ".json")))
    return rows


def _env_stamp() -> list[Any]:
    return sorted((k, v) for k, v in os.environ.items() if k in _ENV_KEYS or k.startswith("FLUX_"))


def _digest(parts: Any) -> str:
    return hashlib.sha256(json.dumps(parts, default=str).encode()).hexdigest()


def _write_json(target: Path, doc: Any) -> None:
    """tmp + rename, best effort: a cache that cannot be written only costs the slow path next time."""
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(doc, separators=(",", ":")), encoding="utf-8")
        os.replace(tmp, target)
    except OSError:
        pass


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


# -- help -----------------------------------------------------------------------------------------

def is_help(args: list[str]) -> bool:
    """`flux`, or `flux [group [command]] --help|-h` with plain command words before the flag."""
    if not args:
        return True
    return args[-1] in ("--help", "-h") and len(args) <= 3 and all(_WORD.match(a) for a in args[:-1])


def _help_cache_path(args: list[str]) -> Path:
    return user_cache_dir() / "help" / f"{_digest([args, _code_stamp(), _env_stamp()])[:32]}.json"


def render_help(args: list[str]) -> tuple[int, str, str]:
    """(exit code, stdout, stderr) of the real typer app for `args`."""
    from flux_plan.cli import get_app

    out, err = io.StringIO(), io.StringIO()
    code: Any = 0
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            get_app()(args=args, prog_name="flux")
        except SystemExit as exc:
            code = exc.code
    if code is None:
        code = 0
    return (code if isinstance(code, int) else 1), out.getvalue(), err.getvalue()


def try_help(args: list[str]) -> int | None:
    """The exit code after printing the help from the cache (filled on a miss), or None: not help."""
    if not is_help(args):
        return None
    cols = shutil.get_terminal_size()
    path = _help_cache_path(args)
    # the typer install and the terminal size are checked inside the entry, not paid for in its name
    check = _digest([_typer_stamp(), [cols.columns, cols.lines]])
    doc = _read_json(path)
    if not (isinstance(doc, dict) and doc.get("check") == check and isinstance(doc.get("code"), int)):
        code, out, err = render_help(args)
        doc = {"check": check, "code": code, "out": out, "err": err}
        _write_json(path, doc)
    sys.stdout.write(str(doc["out"]))
    sys.stdout.flush()
    sys.stderr.write(str(doc["err"]))
    sys.stderr.flush()
    return int(doc["code"])


def _typer_stamp() -> list[Any]:
    """typer's installed version, found without importing typer (its dist-info directory)."""
    import importlib.util

    spec = importlib.util.find_spec("typer")
    origin = spec.origin if spec else None
    if not origin:
        return [None]
    site = Path(origin).parent.parent
    return [*sorted(p.name for p in site.glob("typer-*.dist-info")), _stat(Path(origin))]


# -- validate -------------------------------------------------------------------------------------

def _validate_flags(args: list[str]) -> tuple[bool, bool] | None:
    """(json, strict) for `validate [--json] [--strict]`, None for any other form."""
    if not args or args[0] != "validate":
        return None
    rest = args[1:]
    if len(set(rest)) != len(rest) or not set(rest) <= {"--json", "--strict"}:
        return None
    if any(k in os.environ for k in ("FLUX_DIR", "FLUX_NO_COLOR", "FLUX_INPUT")):
        return None
    return "--json" in rest, "--strict" in rest


def _find_root() -> Path | None:
    """As workspace.find_root (without importing pydantic through it); None: let the app say why."""
    here = Path.cwd().resolve()
    for d in (here, *here.parents):
        if (d / "flux.project.json").is_file() or (d / "functions").is_dir():
            return d
    return None


def _esbuild_stamp() -> list[Any]:
    pinned = os.environ.get("FLUX_ESBUILD")
    local = PACKAGE_DIR.parent / "node_modules" / ".bin" / "esbuild"
    exe = pinned or (str(local) if local.exists() else shutil.which("esbuild") or "")
    return [exe, _stat(os.path.realpath(exe)) if exe else None]


def _project_rows(root: Path, entries: dict[str, Any]) -> tuple[list[Any], int, list[str]] | None:
    """Stat rows of every input of a scan of `root`, the newest mtime among the project-level files,
    and the function directories without a valid scan-cache entry (they had errors, or changed since:
    while there is one, the rows are no key); None when the schema directory holds a link."""
    from flux_plan.scan_cache import ScanCache

    probe = ScanCache(root, "", entries)
    rows: list[Any] = [str(root)]
    newest = 0
    for name in ("flux.project.json", ".env.example"):
        row = _stat(root / name)
        rows.append(row)
        if row[1] is not None:
            newest = max(newest, row[2])
    schema = root / "schema"
    if schema.exists():
        found = probe._dir_rows(schema)
        if found is None:
            return None
        rows.append(found[0])
        newest = max(newest, found[1])
    fps: dict[str, str] = {}
    stale: list[str] = []
    fn_dir = root / "functions"
    rows.append(_stat(fn_dir))
    if fn_dir.is_dir():
        for entry in sorted(os.scandir(fn_dir), key=lambda e: e.name):
            rows.append([entry.name, entry.is_dir(), entry.is_symlink()])
            if entry.name.startswith((".", "_")) or not entry.is_dir():
                continue
            cached = entries.get(entry.name)
            fp = None
            if isinstance(cached, dict) and isinstance(cached.get("deps"), list):
                fp = probe._fingerprint(entry.path, cached["deps"])
            if fp is not None and isinstance(cached, dict) and fp[0] == cached.get("fp"):
                fps[entry.name] = fp[0]
            else:
                stale.append(entry.name)
    rows.append(sorted(fps.items()))
    return rows, newest, stale


def _scan_entries(root: Path) -> dict[str, Any]:
    from flux_plan.scan_cache import CACHE_FILE, _salt

    doc = _read_json(flux_dir(root) / CACHE_FILE)
    if isinstance(doc, dict) and doc.get("salt") == _salt() and isinstance(doc.get("functions"), dict):
        return doc["functions"]
    return {}


def _problem_doc(p: Any) -> dict[str, Any]:
    return {"file": p.file, "line": p.line, "column": p.column, "json_path": p.json_path, "severity": p.severity,
            "message": p.message, "hint": p.hint}


def validate_result(root: Path, code_stamp: list[Any]) -> tuple[list[Any], int, int]:
    """(problems, functions, migrations) of `flux validate` at `root`: replayed when nothing changed."""
    from flux_plan.errors import Problem

    stamp = [code_stamp, _esbuild_stamp(), _env_stamp()]
    cache_path = flux_dir(root) / VALIDATE_CACHE
    stored = _read_json(cache_path)
    stored = stored if isinstance(stored, dict) and stored.get("stamp") == _digest(stamp) else {}
    before = _project_rows(root, _scan_entries(root))
    if before is not None and not before[2] and stored.get("key") == _digest(before[0]):
        try:
            return ([Problem(**p) for p in stored["problems"]], int(stored["functions"]),
                    int(stored["migrations"]))
        except (KeyError, TypeError, ValueError):
            pass
    started = time.time()
    early = _early_check(root, before[2] if before is not None else [])
    try:
        return _validate_miss(root, stamp, stored, started, early)
    finally:
        if early is not None:
            early.cancel()  # (nothing to do once its result was read)


def _early_check(root: Path, stale: list[str]) -> SyntaxCheck | None:
    """esbuild started now on the code of the function directories seen changed (those with flux.json
    and index.ts), so it runs while the scan does; its result is used only if the scan then asks for
    exactly these files. None: nothing to start."""
    from flux_plan.check import _CHUNK, SyntaxCheck, code_files
    from flux_plan.errors import FluxError

    dirs = [f"functions/{name}" for name in stale
            if os.path.isfile(root / "functions" / name / "flux.json")
            and os.path.isfile(root / "functions" / name / "index.ts")]
    files = code_files(root, dirs)
    if not files or len(files) > _CHUNK:
        return None
    try:
        return SyntaxCheck(root, files)
    except (FluxError, OSError):  # no esbuild: the check after the scan fails as the app's does
        return None


def _validate_miss(root: Path, stamp: list[Any], stored: dict[str, Any], started: float,
                   early: SyntaxCheck | None) -> tuple[list[Any], int, int]:
    from flux_plan.check import code_files, stage_provider_problems, syntax_problems
    from flux_plan.defaults import DEFAULT_PROVIDER
    from flux_plan.project import scan_result

    cache_path = flux_dir(root) / VALIDATE_CACHE
    found = scan_result(root)
    problems = found.problems
    problems += stage_provider_problems(found.root, {name: cfg.get("provider", DEFAULT_PROVIDER)
                                                     for name, cfg in found.stages.items()})
    entries = _scan_entries(root)
    seen = stored.get("syntax_ok")
    checked: dict[str, Any] = seen if isinstance(seen, dict) else {}
    fresh = {spec.name: (entries.get(spec.dir.rsplit("/", 1)[-1]) or {}).get("fp") for spec in found.functions}
    todo = [spec for spec in found.functions if not fresh[spec.name] or checked.get(spec.name) != fresh[spec.name]]
    if early is not None and early.files == code_files(root, [spec.dir for spec in todo]):
        syntax = early.problems()  # the very check syntax_problems would run: one esbuild over these files
    else:
        syntax = syntax_problems(root, todo)
    problems += syntax
    # a function is recorded as checked only by a check that found nothing (esbuild's messages may
    # name a file of another function, or none)
    rechecked = {spec.name for spec in todo}
    ok = {name: fp for name, fp in fresh.items()
          if fp and (checked.get(name) == fp or (not syntax and name in rechecked))}
    after = _project_rows(root, entries)
    clean = not any(p.severity == "error" for p in problems)
    doc: dict[str, Any] = {"stamp": _digest(stamp), "syntax_ok": ok}
    # only a clean result whose inputs were all settled before this scan began may be replayed
    if clean and after is not None and not after[2] and after[1] / 1e9 < started - 2.0:
        doc.update(key=_digest(after[0]), problems=[_problem_doc(p) for p in problems],
                   functions=len(found.functions), migrations=len(found.migrations))
    if doc != stored:
        _write_json(cache_path, doc)
    return problems, len(found.functions), len(found.migrations)


def try_validate(args: list[str]) -> int | None:
    """The exit code of `flux validate [--json] [--strict]` run here, or None: the app handles it."""
    flags = _validate_flags(args)
    if flags is None:
        return None
    root = _find_root()
    if root is None:
        return None
    json_out, strict = flags
    code_stamp = _code_stamp()
    problems, n_functions, n_migrations = validate_result(root, code_stamp)
    return render_validate(problems, n_functions, n_migrations, json_out=json_out, strict=strict,
                           code_stamp=code_stamp)


RENDER_CACHE = "validate-render.json"
_RENDER_KEEP = 64  # distinct outputs kept (oldest dropped first)
# what rich's Console reads from the environment to decide colors, width and terminal-ness
_RICH_ENV = ("TERM", "COLORTERM", "NO_COLOR", "FORCE_COLOR", "TTY_COMPATIBLE", "TTY_INTERACTIVE", "COLUMNS",
             "LINES", "JUPYTER_COLUMNS", "JUPYTER_LINES", "DATABRICKS_RUNTIME_VERSION")


def _terminal_stamp() -> list[Any]:
    """Everything besides the text that decides what rich writes: whether stdout is a terminal, its
    encoding, the sizes of the standard streams' terminals and rich's environment variables."""
    sizes: list[Any] = []
    for fd in (0, 1, 2):
        try:
            sizes.append(list(os.get_terminal_size(fd)))
        except (OSError, ValueError):
            sizes.append(None)
    isatty = getattr(sys.stdout, "isatty", None)
    return [bool(isatty and isatty()), getattr(sys.stdout, "encoding", None), sizes,
            [(k, os.environ.get(k)) for k in _RICH_ENV]]


def _rich_text(lines: list[str]) -> str:
    """What the app's console writes for these markup lines (captured, not written)."""
    from flux_plan.cli.output import console

    out = console()
    with out.capture() as captured:
        for line in lines:
            out.print(line)
    return captured.get()


def render_validate(problems: list[Any], n_functions: int, n_migrations: int, *, json_out: bool,
                    strict: bool, code_stamp: list[Any] | None = None) -> int:
    """Exactly what the `validate` command prints (tests compare both with FLUX_NO_FAST_PATH=1); the
    exit code. The text is rich's, from the render cache when this result was printed before on this
    terminal (rich's code is in `code_stamp`: an upgrade changes the installed packages' key)."""
    from flux_plan.cli.output import print_json

    if strict:
        for p in problems:
            p.severity = "error"
    errors = [p for p in problems if p.severity == "error"]
    warnings = [p for p in problems if p.severity != "error"]
    if json_out:
        print_json({"valid": not errors, "errors": len(errors), "warnings": len(warnings),
                    "functions": n_functions, "migrations": n_migrations,
                    "problems": [_problem_doc(p) for p in problems]})
        return 1 if errors else 0
    rendered = [[p.render(), p.severity] for p in problems]
    key = _digest([rendered, len(errors), len(warnings), n_functions, n_migrations, code_stamp or _code_stamp(),
                   _terminal_stamp()])
    path = user_cache_dir() / RENDER_CACHE
    cache = _read_json(path)
    cache = cache if isinstance(cache, dict) else {}
    text = cache.get(key)
    if not isinstance(text, str):
        from flux_plan.cli.validate_text import validation_markup

        text = _rich_text(validation_markup(problems, n_functions, n_migrations))
        cache.pop(key, None)
        cache[key] = text
        _write_json(path, dict(list(cache.items())[-_RENDER_KEEP:]))
    sys.stdout.write(text)
    sys.stdout.flush()
    return 1 if errors else 0


# -- plan, apply, deploy, destroy ----------------------------------------------------------------

# The switches each command's fast path passes on; anything else (options taking values other than
# --parallelism, a saved plan file, global options, FLUX_* option variables) goes through the typer app.
_SWITCHES: dict[str, frozenset[str]] = {
    "plan": frozenset({"--json", "--markdown", "--detailed-exitcode", "--refresh-only", "--destroy", "--purge",
                       "--strict", "--allow-out-of-order"}),
    "apply": frozenset({"--auto-approve", "--json", "--refresh-only", "--allow-out-of-order"}),
    "deploy": frozenset({"--json", "--allow-out-of-order"}),
    "destroy": frozenset({"--auto-approve", "--json", "--purge"}),
}
_OPTION_ENV = ("FLUX_DIR", "FLUX_NO_COLOR", "FLUX_INPUT", "FLUX_STAGE", "FLUX_LOCK_TIMEOUT", "FLUX_PARALLELISM")
_PARALLELISM = re.compile(r"^[1-9][0-9]{0,2}$")


def _command_switches(args: list[str]) -> tuple[str, set[str], int] | None:
    """(command, switches, parallelism) for `plan|apply|deploy|destroy [switches] [--parallelism N]`, or None."""
    if not args or args[0] not in _SWITCHES or any(k in os.environ for k in _OPTION_ENV):
        return None
    command, rest, parallelism = args[0], list(args[1:]), 10
    for i, a in enumerate(rest):
        if command != "plan" and a in ("--parallelism", "-p") and i + 1 < len(rest):
            value = rest[i + 1]
            if not _PARALLELISM.match(value) or int(value) > 256:
                return None  # typer says why
            parallelism = int(value)
            del rest[i:i + 2]
            break
    if len(set(rest)) != len(rest) or not set(rest) <= _SWITCHES[command]:
        return None
    return command, set(rest), parallelism


def try_command(args: list[str]) -> int | None:
    """The exit code of `flux plan|apply|deploy|destroy` with only switches, or None: the typer app runs it.

    Nothing is replayed: these are the commands themselves (the bodies in `plan_run` and `apply_run`, the
    same calls the typer commands make) without building the typer app, which costs each ~60 ms."""
    parsed = _command_switches(args)
    if parsed is None:
        return None
    command, on, parallelism = parsed
    if command == "plan":
        from flux_plan.cli.plan_run import run_plan

        return run_plan(json_out="--json" in on, markdown="--markdown" in on,
                        detailed_exitcode="--detailed-exitcode" in on, refresh_only="--refresh-only" in on,
                        destroy="--destroy" in on, purge="--purge" in on, strict="--strict" in on,
                        allow_out_of_order="--allow-out-of-order" in on)
    from flux_plan.cli import apply_run

    if command == "apply":
        return apply_run.run_apply(auto_approve="--auto-approve" in on, refresh_only="--refresh-only" in on,
                                   allow_out_of_order="--allow-out-of-order" in on, parallelism=parallelism,
                                   json_out="--json" in on)
    if command == "deploy":
        return apply_run.run_deploy(allow_out_of_order="--allow-out-of-order" in on, parallelism=parallelism,
                                    json_out="--json" in on)
    return apply_run.run_destroy(auto_approve="--auto-approve" in on, purge="--purge" in on,
                                 parallelism=parallelism, json_out="--json" in on)
