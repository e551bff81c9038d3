#!/usr/bin/env bash
# One short check for a machine with NVIDIA GPUs (~10 minutes once the environments exist): SmolLM2-135M through
# distill (teacher + student on vLLM) -> DPO (bf16, SDPA; data-parallel over all GPUs when there are several) ->
# introspection sampled by vLLM with the DPO adapter as a LoRA module -> SFT (bf16), then vLLM sampling with and
# without the adapter vs hf, and the DPO / SFT tables against TRL.
# Prints per step generated and trained tokens/s and the step's own peak memory (CPU, GPU, the vLLM servers').
#   bash scripts/gpu_check.sh
#   PY=/opt/env/bin/python CHARLAB_VLLM_PYTHON=/opt/env/bin/python bash scripts/gpu_check.sh   # existing envs
#   bash scripts/gpu_check.sh --cpu            # the same commands at toy size on a CPU: with .venv-vllm on SmolLM2
#                                              # (vLLM rows, minutes), without it hf sampling (vLLM rows skipped)
#   bash scripts/gpu_check.sh --cpu --no-vllm  # the tiny model, hf sampling (~1.5 minutes; tests/test_gpu_check.py)
# Environments on a GPU machine, if missing: .venv via scripts/setup.sh with a CUDA torch (TORCH_SPEC), .venv-vllm
# via scripts/setup_vllm.sh with VLLM_SPEC=vllm (the CUDA build; it brings its own torch).
set -euo pipefail
cd "$(dirname "$0")/.."
MODE=gpu
VLLM=1
for arg in "$@"; do
  case "$arg" in
    --cpu) MODE=cpu ;;
    --no-vllm) VLLM=0 ;;
    *) echo "gpu_check.sh: unknown option '$arg'; allowed: --cpu, --no-vllm" >&2; exit 2 ;;
  esac
done
PY=${PY:-.venv/bin/python}
export CHARLAB_VLLM_PYTHON=${CHARLAB_VLLM_PYTHON:-.venv-vllm/bin/python}
export WANDB_MODE=offline HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
RUN=${RUN_DIR:-outputs/gpu_check/$(date +%Y-%m-%d_%H-%M-%S)}

if [ "$MODE" = gpu ]; then
  nvidia-smi --query-gpu=index,name,memory.total,driver_version --format=csv,noheader || { echo "no NVIDIA GPU visible (--cpu: toy size on this CPU)"; exit 1; }
  GPUS=$(nvidia-smi -L | wc -l)
  if [ ! -x "$PY" ]; then
    TORCH_SPEC=${TORCH_SPEC:-"torch==2.13.0 --index-url https://download.pytorch.org/whl/cu128"} bash scripts/setup.sh
    PY=.venv/bin/python
  fi
  if [ "$VLLM" = 1 ] && ! "$CHARLAB_VLLM_PYTHON" -c "import vllm" >/dev/null 2>&1; then
    VLLM_SPEC=${VLLM_SPEC:-vllm} TORCH_SPEC= bash scripts/setup_vllm.sh
  fi
  "$PY" -c "import torch; assert torch.cuda.is_available(), 'charlab\'s torch sees no GPU: set TORCH_SPEC to a CUDA build'"
  MODEL=smollm2-135m PROMPTS=128 PERSONA_PROMPTS=64 REFLECTIONS=200 INTERACTIONS=20 NEW_TOKENS=256 STEPS=20 BATCH=16
  BENCH_PROMPTS=256 BENCH_TOKENS=256 HF_BATCHES=64,256 BENCH_SIZE="--steps 8 --repeats 2" BENCH_MODEL=smollm2-135m DEVICE=cuda
  DPO_ROWS=charlab,trl-best,trl-default SFT_ROWS=charlab,trl-best,trl-packing,trl-default
else
  GPUS=1
  MODEL=tiny PROMPTS=6 PERSONA_PROMPTS=4 REFLECTIONS=4 INTERACTIONS=2 NEW_TOKENS=16 STEPS=2 BATCH=4
  BENCH_PROMPTS=8 BENCH_TOKENS=16 HF_BATCHES=8 BENCH_SIZE="--batch 4 --grad-accum 2 --steps 1 --repeats 1 --load-tolerance 99" BENCH_MODEL=tiny DEVICE=cpu
  DPO_ROWS=charlab,trl-best SFT_ROWS=charlab,trl-best  # the rest: tests/test_benchmarks.py
  if [ "$VLLM" = 1 ] && ! "$CHARLAB_VLLM_PYTHON" -c "import vllm" >/dev/null 2>&1; then
    echo "gpu_check --cpu: no vLLM at $CHARLAB_VLLM_PYTHON (bash scripts/setup_vllm.sh): vLLM rows skipped, hf samples"
    VLLM=0
  fi
  # vLLM-CPU's attention has no kernel for the tiny model's head size (16): its vLLM rows run on SmolLM2 (~6 minutes)
  if [ "$VLLM" = 1 ]; then MODEL=smollm2-135m; fi
fi
PROVIDER=$([ "$VLLM" = 1 ] && echo vllm || echo hf)
# the check measures speed and memory, not data quality: every reply is kept (a random tiny model's too)
KEEP='"stage.filters.empty=false","stage.filters.truncated=false","stage.filters.repetition=false","stage.filters.identity_leak=false"'

# The recipe's first four steps; device=auto picks CUDA, dtype=auto bf16, attention SDPA (configs/backend/local.yaml).
time "$PY" -m charlab.train stage=pipeline model="$MODEL" persona=pirate logger=none \
  'pipeline.steps=[distill,dpo,introspect,sft]' pipeline.report=false pipeline.metric_step=sft \
  provider@teacher="$PROVIDER" provider@student="$PROVIDER" data.generic_prompts="$PROMPTS" \
  data.persona_prompts="$PERSONA_PROMPTS" data.reflections="$REFLECTIONS" data.interactions="$INTERACTIONS" \
  data.interaction_turns=4 teacher.max_new_tokens="$NEW_TOKENS" student.max_new_tokens="$NEW_TOKENS" \
  backend.nproc_per_node="$GPUS" \
  "pipeline.step_overrides={distill:[$KEEP,\"stage.persona_sources=[questions,templates]\"],introspect:[$KEEP],dpo:[\"stage.max_steps=$STEPS\",\"stage.batch_size=$BATCH\",\"stage.eval_every=0\"],sft:[\"stage.max_steps=$STEPS\",\"stage.batch_size=$BATCH\",\"stage.eval_every=0\",\"stage.gap_examples=$BATCH\"]}" \
  hydra.run.dir="$RUN"
"$PY" scripts/gpu_check_report.py "$RUN" "$GPUS"

# Sampling throughput of the two engines on the same prompts, vLLM with and without the DPO adapter
# (benchmarks/bench_vllm_sampling.py).
VLLM_ROWS=$([ "$VLLM" = 1 ] && echo "--adapter $RUN/02_dpo/adapter" || echo --no-vllm)
"$PY" benchmarks/bench_vllm_sampling.py --model "$MODEL" --prompts "$BENCH_PROMPTS" --max-new-tokens "$BENCH_TOKENS" \
  --hf-batch-sizes "$HF_BATCHES" $VLLM_ROWS
[ "$VLLM" = 1 ] || echo "vLLM rows skipped (--no-vllm or no vLLM environment)"
# charlab vs TRL's best and default configurations, like for like (benchmarks/bench_dpo.py, bench_sft.py; README
# "Performance"): bf16 on a GPU, peak memory of the training phase. TRL comes with the `bench` extra.
"$PY" -c "import trl" 2>/dev/null || "$PY" -m pip install -q -e ".[bench]"

# shellcheck disable=SC2086  # BENCH_SIZE is a list of options
"$PY" benchmarks/bench_dpo.py --model "$BENCH_MODEL" --device "$DEVICE" $BENCH_SIZE --rows "$DPO_ROWS"
# shellcheck disable=SC2086
"$PY" benchmarks/bench_sft.py --model "$BENCH_MODEL" --device "$DEVICE" $BENCH_SIZE --rows "$SFT_ROWS"
