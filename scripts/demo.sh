#!/usr/bin/env bash
# The main job, end to end: set up Flux, deploy examples/todo to the embedded local provider
# (Deno/Node workers, gateway on 127.0.0.1, embedded PostgreSQL) and call its functions over HTTP.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh
export PATH="$PWD/.venv/bin:$PATH"
cd examples/todo

step() { printf '\n\033[1m$ %s\033[0m\n' "$*"; "$@"; }

step flux validate
# Secrets are encrypted into .flux/dev/secrets.enc; the key lives outside the project (~/.config/flux/keys/).
step flux secrets set REMINDER_WEBHOOK_TOKEN=demo-token APP_NAME=todo-app
step flux plan
step flux deploy

port=$(python3 -c 'import json;print(json.load(open("flux.project.json"))["stages"]["dev"].get("port", 8787))')
base="http://127.0.0.1:$port"
call() { printf '\n\033[1m$ curl %s\033[0m\n' "$*"; curl -sS --fail-with-body "$@"; echo; }

call -X POST "$base/greet" -H 'content-type: application/json' -d '{"name":"Ada"}'
call -X POST "$base/create_todo" -H 'content-type: application/json' -d '{"title":"write the docs","due_date":"2026-12-01"}'
call "$base/todos?done=false"
call -X POST "$base/slugify" -H 'content-type: application/json' -d '{"title":"Hello Flux World!"}'
call -X POST "$base/send_reminder" -H 'content-type: application/json' -d '{"email":"ada@example.com"}'
step flux invoke greet --payload '{"name":"Grace"}'
sleep 1
step flux logs --since 5m
step flux plan --detailed-exitcode

printf '\nThe stage keeps running at %s. Stop it with: (cd examples/todo && ../../.venv/bin/flux destroy --auto-approve)\n' "$base"
