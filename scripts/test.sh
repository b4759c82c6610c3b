#!/usr/bin/env bash
# Sets up (idempotent) and runs the whole test suite. Exit code 5 from pytest ("no tests") fails.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/system-deps.sh
./scripts/setup.sh
.venv/bin/ruff check .
./scripts/typecheck.sh
set +e
.venv/bin/python -m pytest -n "${FLUX_TEST_WORKERS:-2}" --dist loadgroup "$@"
rc=$?
set -e
if [ "$rc" -eq 5 ]; then
  echo "test: pytest collected no tests — failing" >&2
  exit 1
fi
exit "$rc"
