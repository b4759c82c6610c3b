"""`flux version` and `flux init`."""

from __future__ import annotations

import json
import re
from pathlib import Path

import typer

from flux_plan.errors import FluxError
from flux_plan.paths import SDK_DIR

SDK_ENTRY = SDK_DIR / "functions" / "index.ts"
SDK_COPY = "types/flux-functions.ts"  # the project's copy of the SDK, referenced by deno.json / tsconfig.json

HELLO_TS = """\
import { defineFunction } from "@flux/functions";

export default defineFunction({
  name: "hello",
  handler: async ({ input, ctx }) => {
    ctx.log("invoked with", input);
    const greeting = ctx.env.GREETING ?? "Hello";
    return { message: `${greeting}, ${input.name ?? "world"}!` };
  },
});
"""

INIT_SQL = """\
-- First migration: applied once, in file-name order. Put later changes in new files
-- (flux migrations new NAME); never edit a migration that was applied.
CREATE TABLE greetings (
  id bigserial PRIMARY KEY,
  name text NOT NULL,
  created_at timestamptz NOT NULL DEFAULT now()
);
"""

# GREETING is plain configuration, so it lives in flux.json `env` (a fresh project plans without warnings); this
# file lists the secrets a project expects, none yet.
ENV_EXAMPLE = """\
# Secrets this project expects, one KEY= per line. Set values with: flux secrets set KEY=VALUE
# (plain, non-secret values go in a function's flux.json "env")
"""

GITIGNORE = """\
.flux/
node_modules/
.env
"""


def project_name_for(directory: Path) -> str:
    """A valid project name (`[a-z][a-z0-9_-]{0,63}`) derived from the directory name."""
    name = re.sub(r"[^a-z0-9_-]+", "-", directory.name.lower()).strip("-_")
    if not name or not name[0].isalpha():
        name = "app-" + name if name else "app"
    return name[:64]


def starter_files(directory: Path) -> dict[str, str]:
    """Relative path -> content of the starter project."""
    # Editor support with RELATIVE paths, so the config works in every teammate's checkout: a copy of the SDK
    # (types + defineFunction) goes into the project; bundling always uses the SDK shipped with flux.
    sdk = "./" + SDK_COPY
    header = "// @flux/functions for editors and type checks (written by `flux init`; flux bundles its own copy).\n"
    return {
        SDK_COPY: header + SDK_ENTRY.read_text(encoding="utf-8"),
        "functions/hello/index.ts": HELLO_TS,
        "functions/hello/flux.json": json.dumps(
            {"name": "hello", "runtime": "deno", "route": "/hello", "method": "POST", "env": {"GREETING": "Hello"}},
            indent=2) + "\n",
        "schema/001_init.sql": INIT_SQL,
        ".env.example": ENV_EXAMPLE,
        "flux.project.json": json.dumps(
            {"name": project_name_for(directory), "stages": {"dev": {"provider": "local", "port": 8787}}},
            indent=2) + "\n",
        ".gitignore": GITIGNORE,
        # Editor support: both Deno's LSP and tsc resolve "@flux/functions" to the SDK shipped with flux.
        "deno.json": json.dumps({"imports": {"@flux/functions": sdk}}, indent=2) + "\n",
        "tsconfig.json": json.dumps(
            {"compilerOptions": {"target": "ES2022", "module": "ESNext", "moduleResolution": "Bundler",
                                 "strict": True, "noEmit": True, "allowImportingTsExtensions": True,
                                 "paths": {"@flux/functions": [sdk]}},
             "include": ["functions/**/*.ts"]},
            indent=2) + "\n",
    }


def init_project(directory: Path) -> list[str]:
    """Write the starter project into `directory`; refuses (writing nothing) if any file exists."""
    directory = directory.resolve()
    if directory.exists() and not directory.is_dir():
        raise FluxError(f"{directory}: exists and is not a directory", hint="pick another directory")
    files = starter_files(directory)
    existing = [rel for rel in files if (directory / rel).exists()]
    if existing:
        raise FluxError(f"{directory}: refusing to overwrite existing file(s): {', '.join(existing)}",
                        hint="run `flux init` in an empty directory, or move those files away")
    for rel, content in files.items():
        path = directory / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(content, encoding="utf-8")
    return list(files)


def register(app: typer.Typer) -> None:
    @app.command()
    def version() -> None:
        """Print the Flux version and the installed providers."""
        from flux_plan.cli import version_lines

        for line in version_lines():
            typer.echo(line)

    @app.command()
    def init(directory: Path = typer.Argument(Path("."), help="Where to create the project.")) -> None:
        """Write a working starter project (one function, one migration, editor config)."""
        from flux_plan.cli.output import console, escape

        written = init_project(directory)
        out = console()
        out.print(f"Created a Flux project in {escape(str(directory.resolve()))}:")
        for rel in written:
            out.print(f"  {escape(rel)}")
        out.print("\nNext: flux validate && flux deploy && flux invoke hello --payload '{\"name\":\"Ada\"}'")
