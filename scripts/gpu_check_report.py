"""The table `scripts/gpu_check.sh` prints for its pipeline run: per step its time, tokens/s and peak memory.

    python scripts/gpu_check_report.py outputs/gpu_check/<run> [GPUS]

Per step (its `meta.json`, `metrics.jsonl` and `*_summary.json`): status, wall time, generated tokens/s (the
completion tokens of every reply over the generation's seconds: teacher and student in distill), trained
tokens/s (the loop's running mean), the step's own peak memory (CPU resident; CUDA allocated / reserved), and the
vLLM servers' memory while the step ran; then each vLLM server: start-up, adapters, context, memory.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any


def generated_tokens_per_s(summary: dict[str, Any]) -> float | None:
    """Completion tokens over seconds; distill counts `teacher_completion` + `student_completion`, introspect
    `completion`."""
    tokens = sum(int(v) for k, v in (summary.get("tokens") or {}).items() if k.endswith("completion"))
    seconds = float(summary.get("seconds") or 0)
    return tokens / seconds if tokens and seconds else None


def trained_tokens_per_s(step: Path) -> float | None:
    path = step / "metrics.jsonl"
    lines = path.read_text().splitlines() if path.is_file() else []
    rows = [json.loads(line) for line in lines if '"tokens_per_s"' in line]
    return float(rows[-1]["tokens_per_s"]) if rows else None


def memory_text(peak: dict[str, float]) -> str:
    parts = [f"CPU {peak['cpu_rss_gb']:.2f} GB"] if "cpu_rss_gb" in peak else []
    if "gpu_allocated_gb" in peak:
        parts.append(f"GPU {peak['gpu_allocated_gb']:.2f} alloc / {peak['gpu_reserved_gb']:.2f} reserved GB")
    vllm = [f"{k[5:]} {v:.2f}" for k, v in peak.items() if k.startswith("vllm_")]
    if vllm:
        parts.append("vLLM " + ", ".join(vllm) + " GB")
    return "; ".join(parts)


def step_line(step: Path) -> str:
    meta = json.loads((step / "meta.json").read_text())
    line = f"{step.name:14s} {meta.get('status', '?'):9s} {meta.get('duration_s', 0):7.1f} s"
    generated = generated_tokens_per_s(meta.get("summary") or {})
    if generated:
        line += f"  generated {generated:8.1f} tokens/s"
    trained = trained_tokens_per_s(step)
    if trained:
        line += f"  trained {trained:8.1f} tokens/s"
    return line + f"  peak: {memory_text(meta.get('peak_memory') or {})}"


def main() -> None:
    run = Path(sys.argv[1])
    gpus = sys.argv[2] if len(sys.argv) > 2 else "?"
    print(f"\n== gpu_check: {run} ({gpus} GPU(s))")
    for step in sorted(p for p in run.iterdir() if p.is_dir() and (p / "meta.json").is_file()):
        print(step_line(step))
    servers = run / "vllm" / "servers.json"
    for server in json.loads(servers.read_text()) if servers.is_file() else []:
        memory = ", ".join(f"{k} {v:.2f}" for k, v in (server.get("memory_gb") or {}).items()) or "not measured"
        print(f"vllm server: start-up {server['startup_s']} s, context {server.get('max_model_len')}, adapters "
              f"{list(server['adapters'])}, memory (GB) {memory}")  # fmt: skip
    if not servers.is_file():
        print("vllm server: none in this run (hf sampling)")


if __name__ == "__main__":
    main()
