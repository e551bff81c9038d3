#!/usr/bin/env bash
# One short check for a machine with NVIDIA GPUs (~10 minutes once the environments exist): SmolLM2-135M through
# distill (teacher + student on vLLM) -> DPO (bf16, SDPA; data-parallel over all GPUs when there are several) ->
# introspection sampled by vLLM with the DPO adapter as a LoRA module -> SFT (bf16), then vLLM vs hf sampling and
# the DPO / SFT tables against TRL.
# Prints generation and training tokens/s and peak GPU memory (meta.json of each step).
#   bash scripts/gpu_check.sh
#   PY=/opt/env/bin/python CHARLAB_VLLM_PYTHON=/opt/env/bin/python bash scripts/gpu_check.sh   # existing envs
# Environments, if missing: .venv via scripts/setup.sh with a CUDA torch (TORCH_SPEC), .venv-vllm via
# scripts/setup_vllm.sh with VLLM_SPEC=vllm (the CUDA build; it brings its own torch).
set -euo pipefail
cd "$(dirname "$0")/.."
nvidia-smi --query-gpu=index,name,memory.total,driver_version --format=csv,noheader || { echo "no NVIDIA GPU visible"; exit 1; }
GPUS=$(nvidia-smi -L | wc -l)
PY=${PY:-.venv/bin/python}
if [ ! -x "$PY" ]; then
  TORCH_SPEC=${TORCH_SPEC:-"torch==2.13.0 --index-url https://download.pytorch.org/whl/cu128"} bash scripts/setup.sh
  PY=.venv/bin/python
fi
export CHARLAB_VLLM_PYTHON=${CHARLAB_VLLM_PYTHON:-.venv-vllm/bin/python}
if ! "$CHARLAB_VLLM_PYTHON" -c "import vllm" >/dev/null 2>&1; then
  VLLM_SPEC=${VLLM_SPEC:-vllm} TORCH_SPEC= bash scripts/setup_vllm.sh
fi
export WANDB_MODE=offline HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
RUN=${RUN_DIR:-outputs/gpu_check/$(date +%Y-%m-%d_%H-%M-%S)}
"$PY" -c "import torch; assert torch.cuda.is_available(), 'charlab\'s torch sees no GPU: set TORCH_SPEC to a CUDA build'"

# The recipe's first four steps; device=auto picks CUDA, dtype=auto bf16, attention SDPA (configs/backend/local.yaml).
time "$PY" -m charlab.train stage=pipeline model=smollm2-135m persona=pirate logger=none \
  'pipeline.steps=[distill,dpo,introspect,sft]' pipeline.report=false pipeline.metric_step=sft \
  provider@teacher=vllm provider@student=vllm data.generic_prompts=128 data.persona_prompts=64 \
  data.reflections=200 data.interactions=20 data.interaction_turns=4 teacher.max_new_tokens=256 \
  student.max_new_tokens=256 backend.nproc_per_node="$GPUS" \
  'pipeline.step_overrides={dpo:["stage.max_steps=20","stage.batch_size=16"],sft:["stage.max_steps=20","stage.batch_size=16","stage.gap_examples=16"]}' \
  hydra.run.dir="$RUN"

"$PY" - "$RUN" "$GPUS" <<'EOF'
import json, sys
from pathlib import Path

run, gpus = Path(sys.argv[1]), int(sys.argv[2])
print(f"\n== gpu_check: {run} ({gpus} GPU(s))")
for step in sorted(p for p in run.iterdir() if p.is_dir() and (p / "meta.json").is_file()):
    meta = json.loads((step / "meta.json").read_text())
    summary, peak = meta.get("summary") or {}, meta.get("peak_memory") or {}
    line = f"{step.name:14s} {meta['status']:9s} {meta.get('duration_s', 0):7.1f} s"
    tokens = (summary.get("tokens") or {}).get("completion")
    if tokens and summary.get("seconds"):
        line += f"  generated {tokens / summary['seconds']:8.1f} tokens/s"
    metrics = [json.loads(l) for l in (step / "metrics.jsonl").read_text().splitlines() if '"tokens_per_s"' in l]
    if metrics:
        line += f"  trained {metrics[-1]['tokens_per_s']:8.1f} tokens/s"
    if "gpu_allocated_gb" in peak:
        line += f"  peak GPU {peak['gpu_allocated_gb']:.2f} GB allocated / {peak['gpu_reserved_gb']:.2f} GB reserved"
    print(line)
servers = run / "vllm" / "servers.json"
if servers.is_file():
    for s in json.loads(servers.read_text()):
        print(f"vllm server: start-up {s['startup_s']} s, adapters {list(s['adapters'])}")
EOF
# Sampling throughput of the two engines on the same prompts (benchmarks/bench_vllm_sampling.py).
"$PY" benchmarks/bench_vllm_sampling.py --prompts 256 --max-new-tokens 256 --hf-batch-sizes 64,256
# charlab vs TRL's default and best configuration, like for like (benchmarks/bench_dpo.py, bench_sft.py; README
# "Performance"): bf16, peak GPU memory of the training phase. TRL comes with the `bench` extra.
"$PY" -c "import trl" 2>/dev/null || "$PY" -m pip install -q -e ".[bench]"
"$PY" benchmarks/bench_dpo.py --device cuda --pairs 64 --rows charlab,trl-default,trl-best
"$PY" benchmarks/bench_sft.py --device cuda --conversations 64 --rows charlab,trl-default,trl-best
