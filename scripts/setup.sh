#!/usr/bin/env bash
# Installs everything Flux needs into this checkout: a virtualenv (.venv) with flux and its providers,
# and the JavaScript toolchain (esbuild) under node_modules/. Idempotent and quick when nothing changed.
set -euo pipefail
cd "$(dirname "$0")/.."

PY=${PYTHON:-}
if [ -z "$PY" ]; then
  for cand in python3.11 python3.12 python3.13 python3; do
    if command -v "$cand" >/dev/null 2>&1 && "$cand" -c 'import sys; sys.exit(sys.version_info < (3, 11))'; then
      PY=$cand; break
    fi
  done
fi
[ -n "$PY" ] || { echo "setup: Python 3.11+ is required" >&2; exit 1; }
command -v node >/dev/null || { echo "setup: Node.js 20+ is required (node not on PATH)" >&2; exit 1; }
command -v npm >/dev/null || { echo "setup: npm is required" >&2; exit 1; }

stamp_src=$( { cat pyproject.toml providers/*/pyproject.toml tests/fixtures/*/pyproject.toml package.json; cat package-lock.json 2>/dev/null || true; } | sha256sum | cut -c1-16)
stamp=.venv/.flux-setup-$stamp_src
if [ -f "$stamp" ] && [ -x node_modules/.bin/esbuild ]; then
  exit 0
fi

[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/python -m pip install -q --disable-pip-version-check --upgrade pip
.venv/bin/python -m pip install -q --disable-pip-version-check \
  -e ".[test]" -e providers/flux_local -e providers/flux_aws -e providers/flux_docker -e tests/fixtures/flux_record

if [ -f package-lock.json ]; then
  npm ci --no-audit --no-fund --loglevel=error
else
  npm install --no-audit --no-fund --loglevel=error
fi

rm -f .venv/.flux-setup-*
touch "$stamp"
echo "setup: done (.venv + node_modules). Activate with: source .venv/bin/activate"
