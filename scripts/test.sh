#!/usr/bin/env bash
# Installs (if needed) and runs the test suite: real server, real SmolLM2 model, over HTTP.
# Extra arguments go to pytest (e.g. -k stream).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install.sh
VENV=${VENV:-.venv}
exec "$VENV/bin/python" -m pytest "$@"
