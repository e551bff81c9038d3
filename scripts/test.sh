#!/usr/bin/env bash
# Set up (with test tools) and run the whole offline test suite: lint, then every test that can run here.
#   bash scripts/test.sh            # everything; extra pytest arguments pass through:
#   bash scripts/test.sh -m unit    # only the quick part (pure logic, under a minute)
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh --dev
export WANDB_MODE=offline HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false TINKER_TELEMETRY=0
.venv/bin/ruff check .
.venv/bin/python -m pytest --durations=15 "$@"  # the 15 slowest tests close the log: the time budget in view
