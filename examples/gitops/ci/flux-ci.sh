#!/usr/bin/env bash
# The Flux steps of the GitOps workflow (.github/workflows/flux.yml), kept out of the YAML so that they
# run (and are tested) anywhere:
#
#   ci/flux-ci.sh plan  OUT   plan the stage into OUT/plan.json (sealed), OUT/plan.md (PR comment),
#                             OUT/bundles/ (the pinned builds the plan deploys); exit 0 with or without changes
#   ci/flux-ci.sh apply OUT   apply exactly OUT/plan.json (restoring OUT/bundles first); refuses a stale
#                             or edited plan (exit 1, nothing changed)
#   ci/flux-ci.sh drift OUT   refresh-only plan: OUT/drift.md when anything drifted; exit 0 either way
#
# Stage, lock timeout, parallelism come from FLUX_STAGE, FLUX_LOCK_TIMEOUT, FLUX_PARALLELISM; the seal and
# the secrets need FLUX_SECRETS_KEY (or FLUX_PLAN_KEY) from the CI's secret store. With GITHUB_OUTPUT set,
# the step outputs `changes` / `drifted` (true|false) are written there. FLUX names the flux binary.
set -euo pipefail

FLUX="${FLUX:-flux}"
cmd="${1:-}"
out="${2:-flux-out}"
stage="${FLUX_STAGE:-dev}"
marker="<!-- flux-plan:${stage} -->"

flux() { "$FLUX" --no-color --input=false "$@"; }

output() {  # name value: a step output for the workflow (and a line in the log)
  echo "$1=$2"
  if [ -n "${GITHUB_OUTPUT:-}" ]; then echo "$1=$2" >>"$GITHUB_OUTPUT"; fi
}

digests() {  # the bundle digests a plan file pins
  python3 -c 'import json,sys; print("\n".join(sorted(set(json.load(open(sys.argv[1]))["artifacts"].values()))))' "$1"
}

case "$cmd" in
  plan)
    mkdir -p "$out"
    rc=0
    flux plan -o "$out/plan.json" --detailed-exitcode || rc=$?
    if [ "$rc" -ne 0 ] && [ "$rc" -ne 2 ]; then exit "$rc"; fi
    rm -rf "$out/bundles" && mkdir -p "$out/bundles"
    for d in $(digests "$out/plan.json"); do cp -R ".flux/artifacts/$d" "$out/bundles/$d"; done
    { echo "$marker"; flux show "$out/plan.json" --markdown; } >"$out/plan.md"
    output changes "$([ "$rc" -eq 2 ] && echo true || echo false)"
    ;;
  apply)
    test -f "$out/plan.json" || { echo "flux-ci: $out/plan.json not found (download the PR's plan artifact)" >&2; exit 1; }
    mkdir -p .flux/artifacts
    if [ -d "$out/bundles" ]; then
      for d in "$out"/bundles/*/; do [ -d "$d" ] && cp -R "${d%/}" .flux/artifacts/; done
    fi
    flux apply "$out/plan.json"  # the seal, lineage/serial and bundles are checked before anything runs
    ;;
  drift)
    mkdir -p "$out"
    rc=0
    flux plan --refresh-only --detailed-exitcode -o "$out/drift.json" || rc=$?
    if [ "$rc" -ne 0 ] && [ "$rc" -ne 2 ]; then exit "$rc"; fi
    if [ "$rc" -eq 2 ]; then
      { echo "<!-- flux-drift:${stage} -->"; flux show "$out/drift.json" --markdown; } >"$out/drift.md"
    fi
    output drifted "$([ "$rc" -eq 2 ] && echo true || echo false)"
    ;;
  *)
    echo "usage: ci/flux-ci.sh plan|apply|drift [OUT]" >&2
    exit 64
    ;;
esac
