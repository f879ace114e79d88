#!/usr/bin/env bash
# One command for a new user: install (if needed), put the bundled small model in MODEL_DIR, start the server.
# Extra arguments go to `local-llm-api serve` (e.g. --port 9000).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install.sh
VENV=${VENV:-.venv}
MODEL_PATH=$("$VENV/bin/local-llm-api" bundled-model)
export DEFAULT_MODEL=${DEFAULT_MODEL:-$(basename "$MODEL_PATH")}
export PRELOAD_MODEL=${PRELOAD_MODEL:-true}
# The server itself prints the address it binds (flags, environment and .env all settled).
exec "$VENV/bin/local-llm-api" serve "$@"
