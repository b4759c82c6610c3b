"""Bundling a function into the content-addressed artifact store `.flux/artifacts/<source_digest>/`.

Same digest <=> same bundle (see digest.py), so a bundle is built once and reused by every plan, apply
and provider. A bundle dir holds `index.mjs` (ESM, default export = the defineFunction result, the SDK
and npm dependencies inlined) and its source map `index.mjs.map`, nothing else: every file is a new inode,
and on a filesystem without a journal (ext4 here) each costs a scan of recently deleted inodes, so a third
file per function (a meta.json) was ~1 CPU-s of a 1000-function apply. It is built in a temp dir and renamed
into place (under a per-digest file lock when one is there), so concurrent applies never see a half-written
bundle: a bundle dir under its final name is complete.

`prepare(specs)` bundles many functions in the background with one esbuild process per batch (esbuild
takes many entry points and uses every core): an apply starts it before its first operation, and
`ensure` waits for the batch that holds its digest. A batch that fails builds nothing; its functions
are then bundled one by one, so each error still names its own file.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from flux_plan.digest import source_digest
from flux_plan.errors import FluxError
from flux_plan.filelocks import file_lock
from flux_plan.paths import REPO_DIR, SDK_DIR, artifacts_dir, user_cache_dir

if TYPE_CHECKING:  # `flux validate` finds esbuild here without importing pydantic, filelock or concurrent.futures
    from concurrent.futures import Future, ThreadPoolExecutor

    from flux_plan.model import FunctionSpec

ESBUILD_VERSION = "0.28.2"
BUNDLE_FILE = "index.mjs"
MAP_FILE = "index.mjs.map"  # written by the same esbuild run: a dir holding both is a finished build
_ENTRY_NAMES = ("index.ts", "index.tsx", "index.js", "index.mjs")
_SDK_ENTRY = SDK_DIR / "functions" / "index.ts"
# CommonJS dependencies bundled into ESM still call require() for node built-ins: give them one.
_NODE_BANNER = 'import { createRequire as __fluxCreateRequire } from "node:module"; ' \
               "const require = __fluxCreateRequire(import.meta.url);"
# esbuild diagnostics: "✘ [ERROR] message\n\n    file:line:col:"
_INPUTS_FILE = ".esbuild-inputs.json"  # esbuild's metafile: read by check_bundle_inputs, then removed
BATCH_SIZE = 200  # entry points per esbuild process: bounds argv and lets a long apply start early
_ESBUILD_ERR = re.compile(r"\[ERROR\]\s+(?P<msg>.+?)\n(?:\s*\n)?\s+(?P<file>[^\s:][^:\n]*):(?P<line>\d+):(?P<col>\d+):")


def check_bundle_inputs(root: Path, spec: FunctionSpec, metafile: Path, deps: Path | None) -> None:
    """The bundling sandbox (DESIGN §8): a function may bundle files of its own folder, the project's shared code
    (functions/_shared/), its npm dependencies and @flux/functions, nothing else: never `.flux/` (state, secrets,
    other bundles), `.env*`, or anything outside the project. Raises naming the importing file:line."""
    doc = json.loads(metafile.read_text(encoding="utf-8"))
    metafile.unlink()
    _check_inputs(root, spec, doc.get("inputs", {}), deps, _Resolver(root))


class _Resolver:
    """Resolved paths of esbuild's input names, memoized: a batch of 200 functions shares its SDK inputs."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self._seen: dict[str, Path | None] = {}
        self.shared = [(root / "functions" / "_shared").resolve(), (root / "node_modules").resolve(), SDK_DIR.resolve()]

    def __call__(self, rel: str) -> Path | None:
        """The real path of input `rel`, None for esbuild's virtual modules."""
        if rel not in self._seen:
            path = (self.root / rel).resolve()
            self._seen[rel] = None if rel.startswith("(disabled)") or not path.exists() else path
        return self._seen[rel]


def _check_inputs(root: Path, spec: FunctionSpec, inputs: dict[str, Any], deps: Path | None, resolve: _Resolver) -> None:
    allowed = [(root / spec.dir).resolve(), *resolve.shared] + ([deps.resolve()] if deps is not None else [])
    for rel in inputs:
        path = resolve(rel)
        if path is None:
            continue
        inside = next((a for a in allowed if path.is_relative_to(a)), None)
        hidden = any(part == ".flux" or part.startswith(".env") for part in path.relative_to(inside).parts) \
            if inside is not None else False
        if inside is not None and not hidden:
            continue
        where, spec_text = _importer_of(root, inputs, rel)
        shown = path.relative_to(root.resolve()).as_posix() if path.is_relative_to(root.resolve()) else str(path)
        raise FluxError(f"{where}: function {spec.name} imports {spec_text!r} ({shown}), which is outside what a "
                        "function may bundle",
                        hint=f"import only from {spec.dir}/, functions/_shared/, npm dependencies and "
                             "@flux/functions (never .flux/, .env or files outside the project)")


def _importer_of(root: Path, inputs: dict[str, Any], target: str) -> tuple[str, str]:
    """`file:line` of the first import of `target` in the bundle's inputs, and the specifier as written."""
    for rel, info in inputs.items():
        for imp in info.get("imports", []):
            if imp.get("path") != target:
                continue
            original = str(imp.get("original") or target)
            try:
                text = (root / rel).read_text(encoding="utf-8")
            except OSError:
                return rel, original
            idx = text.find(original)
            line = text.count("\n", 0, idx) + 1 if idx >= 0 else 1
            return f"{rel}:{line}", original
    return target, target


def cache_dir() -> Path:
    """Flux's per-user cache (tools, npm dependency installs); honours XDG_CACHE_HOME."""
    return user_cache_dir()


def esbuild_bin() -> Path:
    """esbuild, in this order: $FLUX_ESBUILD (a pipeline's own copy), the source checkout's node_modules,
    `esbuild` on PATH, else esbuild@ESBUILD_VERSION installed once into the user cache with npm (what an
    installed wheel does on first use)."""
    pinned = os.environ.get("FLUX_ESBUILD")
    if pinned:
        if not Path(pinned).is_file():
            raise FluxError(f"$FLUX_ESBUILD={pinned}: no such file", hint="point it at an esbuild executable")
        return Path(pinned)
    local = REPO_DIR / "node_modules" / ".bin" / "esbuild"
    if local.exists():
        return local
    on_path = shutil.which("esbuild")
    if on_path:
        return Path(on_path)
    tools = cache_dir() / "tools"
    exe = tools / "node_modules" / ".bin" / "esbuild"
    if exe.exists():
        return exe
    tools.mkdir(parents=True, exist_ok=True)
    with file_lock(str(tools / ".install.lock")):
        if not exe.exists():
            _npm(["install", "--no-audit", "--no-fund", "--loglevel=error", "--prefix", str(tools),
                  f"esbuild@{ESBUILD_VERSION}"], cwd=tools, what=f"installing esbuild@{ESBUILD_VERSION}")
    if not exe.exists():
        raise FluxError(f"esbuild was not found after installing it into {tools}",
                        hint="run ./scripts/setup.sh, or install esbuild with npm")
    return exe


def _npm(args: list[str], *, cwd: Path, what: str, source: str | None = None) -> None:
    npm = shutil.which("npm")
    if npm is None:
        raise FluxError(f"{source or 'flux'}: npm is required for {what} but is not on PATH",
                        hint="install Node.js 20+ (it ships npm)")
    proc = subprocess.run([npm, *args], cwd=cwd, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        tail = "\n".join((proc.stderr or proc.stdout).strip().splitlines()[-8:])
        raise FluxError(f"{source or 'flux'}: npm failed while {what}:\n{tail}",
                        hint="check the dependency names/versions and that the package registry is reachable")


class ArtifactStore:
    """`.flux/artifacts/<digest>/{index.mjs, index.mjs.map}` of one project."""

    def __init__(self, project_root: Path, *, pinned: bool = False) -> None:
        self.root = Path(project_root).resolve()
        self.dir = artifacts_dir(self.root)
        # A saved plan's apply: hand out the bundles the plan pinned, never build from the working tree.
        self.pinned = pinned
        self._pending: dict[str, Future[None]] = {}
        self._pending_lock = threading.Lock()
        self._pool: ThreadPoolExecutor | None = None

    @staticmethod
    def bundle_sha256(bundle_dir: Path) -> str:
        """sha256 of a bundle's code file: what a saved plan pins."""
        h = hashlib.sha256()
        with open(Path(bundle_dir) / BUNDLE_FILE, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                h.update(chunk)
        return h.hexdigest()

    def path(self, digest: str) -> Path:
        return self.dir / digest

    def has(self, digest: str) -> bool:
        d = self.path(digest)
        return (d / BUNDLE_FILE).is_file() and (d / MAP_FILE).is_file()

    def _digest(self, spec: FunctionSpec) -> str:
        return spec.source_digest or source_digest(self.root, spec.dir, spec.runtime)

    def _await_batch(self, digest: str) -> None:
        """Wait for the batch building `digest`, if one is; it never raises (see _build_batch_quietly): a failed
        batch leaves the bundle missing, to a single build."""
        with self._pending_lock:
            batch = self._pending.get(digest)
        if batch is not None:
            batch.result()

    def built(self, spec: FunctionSpec) -> bool:
        """Whether `spec`'s bundle exists, once the batch building it (if any) is done; never builds."""
        digest = self._digest(spec)
        self._await_batch(digest)
        return self.has(digest)

    def ensure(self, spec: FunctionSpec) -> Path:
        """The bundle dir of `spec` (built now when missing). Raises FluxError naming the source file."""
        digest = self._digest(spec)
        if self.has(digest):
            return self.path(digest)
        if self.pinned:
            raise FluxError(f"{spec.dir}: the bundle {digest[:12]}… pinned by the saved plan is missing from "
                            f"{self.dir}", hint="run `flux plan -o FILE` again where you apply it")
        self._await_batch(digest)
        if self.has(digest):
            return self.path(digest)
        self.dir.mkdir(parents=True, exist_ok=True)
        with file_lock(str(self.dir / f".{digest}.lock")):
            if self.has(digest):
                return self.path(digest)
            tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{digest[:12]}-", dir=self.dir))
            try:
                self._build(spec, digest, tmp)
                self._replace_into(digest, tmp)  # another apply's batch may have installed it meanwhile
            finally:
                if tmp.exists():
                    shutil.rmtree(tmp, ignore_errors=True)
        return self.path(digest)

    def prepare(self, specs: Iterable[FunctionSpec]) -> None:
        """Start bundling, in the background and in batches, every function of `specs` without a bundle."""
        if self.pinned:  # a saved plan's apply deploys its pinned bundles and never builds
            return
        todo: dict[str, FunctionSpec] = {}
        for spec in specs:
            digest = self._digest(spec)
            # functions with their own package.json build alone (NODE_PATH is per process)
            if digest not in todo and not self.has(digest) and not (self.root / spec.dir / "package.json").is_file():
                todo[digest] = spec
        with self._pending_lock:
            todo = {d: s for d, s in todo.items() if d not in self._pending}
            if not todo:
                return
            if self._pool is None:
                from concurrent.futures import ThreadPoolExecutor

                self._pool = ThreadPoolExecutor(max_workers=2, thread_name_prefix="flux-bundle")
            by_runtime: dict[str, list[tuple[str, FunctionSpec]]] = {}
            for digest, spec in todo.items():
                by_runtime.setdefault(spec.runtime, []).append((digest, spec))
            for items in by_runtime.values():
                for i in range(0, len(items), BATCH_SIZE):
                    chunk = items[i:i + BATCH_SIZE]
                    fut = self._pool.submit(self._build_batch_quietly, chunk)
                    for digest, _ in chunk:
                        self._pending[digest] = fut

    def ensure_many(self, specs: Iterable[FunctionSpec]) -> dict[str, Path]:
        """Bundle dirs by function name, built in batches; raises the first function's FluxError."""
        specs = list(specs)
        self.prepare(specs)
        return {spec.name: self.ensure(spec) for spec in specs}

    # -- building ---------------------------------------------------------------------------------------
    def _esbuild_args(self, runtime: str) -> list[str]:
        """The bundling recipe of a runtime (the same for a batch and a single build)."""
        args = [
            str(esbuild_bin()), "--bundle", "--format=esm", "--log-level=error", "--color=false",
            "--legal-comments=none", f"--alias:@flux/functions={_SDK_ENTRY}", "--charset=utf8",
            "--out-extension:.js=.mjs",
            # stacks in the logs point at functions/<fn>/index.ts:line, not at the bundle (no source text inside)
            "--sourcemap=linked", "--sources-content=false",
        ]
        if runtime == "node":
            args += ["--platform=node", "--target=node20", f"--banner:js={_NODE_BANNER}"]
        else:
            # Deno: web platform + node: built-ins; no node resolution conditions, no npm:/jsr: fetching.
            args += ["--platform=neutral", "--target=es2022", "--main-fields=module,main",
                     "--conditions=deno,worker,browser", "--external:node:*"]
        return args

    def _build_batch_quietly(self, items: list[tuple[str, FunctionSpec]]) -> None:
        try:
            self._build_batch(items)
        except Exception:  # whatever went wrong, `ensure` builds each one alone and says why
            pass
        finally:
            with self._pending_lock:
                for digest, _ in items:
                    self._pending.pop(digest, None)

    def _build_batch(self, items: list[tuple[str, FunctionSpec]]) -> None:
        """One esbuild process for many functions of one runtime. Each output lands in its own temp dir
        beside the final one (source maps hold paths relative to it), passes the bundling sandbox check
        and is renamed into place."""
        self.dir.mkdir(parents=True, exist_ok=True)
        token = f"{os.getpid()}-{threading.get_ident()}-{time.monotonic_ns()}"
        metafile = self.dir / f".tmp-b{token}.json"

        def out_dir(digest: str) -> Path:
            return self.dir / f".tmp-b{token}-{digest}"

        try:
            for _attempt in range(2):
                entries = [f"{out_dir(d).name}/{Path(BUNDLE_FILE).stem}="
                           f"{self._entry(spec).relative_to(self.root).as_posix()}" for d, spec in items]
                args = [*self._esbuild_args(items[0][1].runtime), f"--outdir={self.dir}", f"--metafile={metafile}",
                        *entries]
                proc = subprocess.run(args, cwd=self.root, capture_output=True, text=True, check=False)
                if proc.returncode == 0:
                    break
                # esbuild wrote nothing: drop the functions its errors name and build the rest once more
                bad = {m.group("file").split("/")[1] for m in _ESBUILD_ERR.finditer(proc.stderr or "")
                       if m.group("file").startswith("functions/")}
                kept = [(d, spec) for d, spec in items if spec.dir.split("/", 1)[1] not in bad]
                if not bad or not kept or len(kept) == len(items):
                    return
                items = kept
            else:
                return
            doc = json.loads(metafile.read_text(encoding="utf-8"))
            outputs: dict[str, Any] = doc.get("outputs", {})
            resolve = _Resolver(self.root)
            for digest, spec in items:
                out = out_dir(digest)
                key = (out / BUNDLE_FILE).relative_to(self.root).as_posix()
                own = {k: doc["inputs"][k] for k in outputs.get(key, {}).get("inputs", {}) if k in doc["inputs"]}
                try:
                    _check_inputs(self.root, spec, own, None, resolve)
                except FluxError:
                    continue  # not installed: `ensure` builds it alone and reports the import
                self._install(digest, out)
        finally:
            metafile.unlink(missing_ok=True)
            for digest, _ in items:
                shutil.rmtree(out_dir(digest), ignore_errors=True)

    def _install(self, digest: str, out: Path) -> None:
        """Rename a built bundle dir into place. A rename onto a missing name is atomic, so the common case takes
        no lock (a per-digest file lock cost ~1 ms a function, the largest Python cost of bundling a batch); a dir
        already there is either another apply's complete bundle of the same digest (kept) or the remains of a
        crashed one, replaced under the digest's lock as a single build does."""
        final = self.path(digest)
        try:
            os.rename(out, final)
            return
        except OSError:
            if self.has(digest):
                return
        with file_lock(str(self.dir / f".{digest}.lock")):
            self._replace_into(digest, out)

    def _replace_into(self, digest: str, out: Path) -> None:
        """Under the digest's lock: keep a complete bundle already there (batches install without the lock), else
        replace what is there (the remains of an older flux's build: a crash mid-way before the rename leaves only a
        temp dir)."""
        if self.has(digest):
            return
        final = self.path(digest)
        if final.exists():
            shutil.rmtree(final)
        os.replace(out, final)

    def _entry(self, spec: FunctionSpec) -> Path:
        fn_dir = self.root / spec.dir
        for name in _ENTRY_NAMES:
            if (fn_dir / name).is_file():
                return fn_dir / name
        raise FluxError(f"{spec.dir}/index.ts: file not found",
                        hint="every function directory needs an index.ts exporting defineFunction(...)")

    def _deps_dir(self, spec: FunctionSpec) -> Path | None:
        """node_modules of the function's package.json, installed once per package.json(+lock) digest."""
        fn_dir = self.root / spec.dir
        pkg = fn_dir / "package.json"
        if not pkg.is_file():
            return None
        files = [pkg] + [fn_dir / n for n in ("package-lock.json", "npm-shrinkwrap.json") if (fn_dir / n).is_file()]
        h = hashlib.sha256()
        for f in files:
            h.update(f.name.encode() + b"\0" + f.read_bytes() + b"\0")
        key = h.hexdigest()[:32]
        target = cache_dir() / "npm" / key
        done = target / ".flux-installed"
        if done.exists():
            return target / "node_modules"
        target.parent.mkdir(parents=True, exist_ok=True)
        with file_lock(str(target.parent / f".{key}.lock")):
            if not done.exists():
                if target.exists():
                    shutil.rmtree(target)
                target.mkdir()
                for f in files:
                    shutil.copyfile(f, target / f.name)
                _npm(["install", "--no-audit", "--no-fund", "--loglevel=error", "--omit=dev"], cwd=target,
                     what="installing its dependencies", source=f"{spec.dir}/package.json")
                done.write_text(json.dumps({"package": pkg.relative_to(self.root).as_posix()}))
        return target / "node_modules"

    def _build(self, spec: FunctionSpec, digest: str, out: Path) -> None:
        entry = self._entry(spec)
        deps = self._deps_dir(spec)
        # the batch recipe with one entry named like the bundle file: same bytes either way
        args = [*self._esbuild_args(spec.runtime), f"--outdir={out}", f"--metafile={out / _INPUTS_FILE}",
                f"{Path(BUNDLE_FILE).stem}={entry.relative_to(self.root).as_posix()}"]
        env = dict(os.environ)
        if deps is not None:
            env["NODE_PATH"] = str(deps)
        proc = subprocess.run(args, cwd=self.root, capture_output=True, text=True, env=env, check=False)
        if proc.returncode != 0:
            raise self._bundle_error(spec, entry, proc.stderr or proc.stdout)
        check_bundle_inputs(self.root, spec, out / _INPUTS_FILE, deps)

    def _bundle_error(self, spec: FunctionSpec, entry: Path, output: str) -> FluxError:
        m = _ESBUILD_ERR.search(output)
        if not m:
            first = output.strip().splitlines()[:6]
            return FluxError(f"{entry.relative_to(self.root).as_posix()}: bundling failed: " + "\n".join(first),
                             hint="fix the code of the function and run the command again")
        msg = m.group("msg").strip()
        hint = "fix the code of the function and run the command again"
        if msg.startswith("Could not resolve"):
            hint = (f"add the package to {spec.dir}/package.json \"dependencies\" "
                    "(or fix the import path)")
        loc = f"{m.group('file')}:{m.group('line')}:{m.group('col')}"
        return FluxError(f"{loc}: {msg} (while bundling function {spec.name})", hint=hint)
