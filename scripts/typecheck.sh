#!/usr/bin/env bash
# Static checks beyond ruff: mypy over the core (flux_plan) and the providers, `deno check` + `deno lint` over the TypeScript
# and JavaScript runtime (the SDK, the local host and workers, the shared runtime). Run by scripts/test.sh.
set -euo pipefail
cd "$(dirname "$0")/.."

.venv/bin/mypy  # [tool.mypy] in pyproject.toml: files = flux_plan and the three providers

# The repository's package.json is for the bundler toolchain, not for these files: deno must not read it.
export DENO_NO_PACKAGE_JSON=1 NO_COLOR=1 DENO_DIR="${DENO_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/flux/deno}"
dirs=()
for d in flux_plan/sdk flux_plan/runtime providers/flux_local/flux_local/runtime; do
  [ -d "$d" ] && dirs+=("$d")
done
mapfile -t ts < <(find "${dirs[@]}" -name '*.ts' -not -path '*/node_modules/*' | sort)
for f in "${ts[@]}"; do
  .venv/bin/deno check --quiet --no-config --unstable-worker-options "$f"
done
# no-explicit-any: the SDK's `Record<string, any>` input default is reported to its owner (see README).
.venv/bin/deno lint --quiet --no-config --rules-exclude=no-explicit-any "${dirs[@]}"
echo "typecheck: mypy, deno check (${#ts[@]} files) and deno lint passed"
