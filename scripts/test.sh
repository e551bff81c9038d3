#!/usr/bin/env bash
# Set up (with test tools) and run the whole offline test suite: lint, then every test that can run here.
#   bash scripts/test.sh            # extra pytest arguments pass through, e.g. bash scripts/test.sh -m unit
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh --dev
export WANDB_MODE=offline HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false TINKER_TELEMETRY=0
.venv/bin/ruff check .
.venv/bin/python -m pytest "$@"
