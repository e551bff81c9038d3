"""vLLM vs `hf` sampling throughput on SmolLM2-135M on this CPU: same prompts, same max tokens, a ratio.

    bash scripts/setup_vllm.sh                                              # once: the vLLM environment
    flock /tmp/charlab-heavy.lock python benchmarks/bench_vllm_sampling.py  # 48 prompts x 96 new tokens
    python benchmarks/bench_vllm_sampling.py --prompts 64 --hf-batch-sizes 16,64 --vllm-env VLLM_CPU_KVCACHE_SPACE=4
    python benchmarks/bench_vllm_sampling.py --adapter <dpo run>/adapter    # + vLLM with and without the adapter
    python benchmarks/bench_vllm_sampling.py --model tiny --prompts 8 --max-new-tokens 16 --hf-batch-sizes 8

With `--adapter` vLLM answers the same prompts twice on one server with LoRA capacity for the adapter: as the
base model and through the adapter (a LoRA module), so the two rows show what serving the adapter costs.

Both engines get the same 48 bundled generic prompts (chat template applied by each), temperature 0.7, top_p
0.95, seed 0, and the same `--max-new-tokens`. `hf` is charlab's batched `HFSampler` at each of
`--hf-batch-sizes` (its best is the peer's number); vLLM is charlab's own `provider=vllm` path: a managed
`vllm serve` (the YAML's settings, plus any `--vllm-env`) driven by the openai client with every request in
flight. Tokens/s counts the tokens each engine generated (a reply that ends at EOS counts what it produced) over
the wall time of the sampling call; vLLM's server start-up is reported apart. Prints a table and the ratio.

Measured here (2 cores, under the heavy lock, December 2026): hf batch 16 90.6, hf batch 48 103.3, vLLM-CPU
94.6 tokens/s (start-up 36 s): vLLM / best hf = 0.92x. Variants: vLLM on both cores
(VLLM_CPU_NUM_OF_RESERVED_CPU=0, competing with its own API server) 72.4; a server started with LoRA capacity
320 serving base-model requests ~13 (hence LoRA only as needed). A 135M model on 2 cores leaves vLLM nothing to
win; its batching, paged KV cache and prefix caching pay off on GPUs (scripts/gpu_check.sh runs this there).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "disabled")

from charlab.generation.base import SamplingParams  # noqa: E402


def conversations(n: int) -> list[list[dict[str, str]]]:
    from charlab.data.prompts import load_generic

    return [[{"role": "user", "content": text}] for text in load_generic("bundled")[:n]]


def timed(sampler, prompts, params: SamplingParams) -> tuple[float, int]:
    sampler.sample(prompts[:2], params)  # warm-up (first-call allocations, server connection)
    start = time.perf_counter()
    completions = sampler.sample(prompts, params)
    seconds = time.perf_counter() - start
    return seconds, sum(c.completion_tokens for c in completions)


def provider_setup(kind: str, model_name: str) -> tuple[dict, object, Path]:
    """(the `student` provider as composed for `provider@student=<kind>`, the run's model, the model cache)."""
    from charlab.app import setup
    from charlab.compose import composed
    from charlab.stages._common import cache_dir, model_config, to_plain

    setup()
    overrides = [f"provider@student={kind}", f"model={model_name}", "logger=none"]
    with composed(overrides, Path(tempfile.mkdtemp()), log=False) as cfg:
        return to_plain(cfg.student), model_config(cfg.model), cache_dir(cfg)


def bench_hf(prompts, params: SamplingParams, batch_size: int, model_name: str) -> tuple[float, int]:
    from charlab.generation.factory import make_sampler

    provider, model, cache = provider_setup("hf", model_name)
    sampler = make_sampler({**provider, "batch_size": batch_size}, model, cache)
    try:
        return timed(sampler, prompts, params)
    finally:
        sampler.close()


def bench_vllm(prompts, params: SamplingParams, env: dict[str, str], model_name: str,
               adapter: str | None = None) -> list[tuple[str, float, int, float | None]]:  # fmt: skip
    """vLLM rows: (label, seconds, tokens, start-up s); with `adapter`, the base and the adapter on one server."""
    from charlab.generation import vllm
    from charlab.generation.factory import make_sampler

    provider, model, cache = provider_setup("vllm", model_name)
    provider["server"]["env"] = {**provider["server"]["env"], **env}
    provider["max_concurrency"] = len(prompts)
    label = "vllm" + "".join(f" {k}={v}" for k, v in env.items())
    rows = []
    pool = vllm.ServerPool()
    with tempfile.TemporaryDirectory() as run_dir, pool.scope(Path(run_dir)):
        start = time.perf_counter()
        base = make_sampler(provider, model, cache, serve_also=[adapter] if adapter else (), pool=pool)
        startup = time.perf_counter() - start
        rows.append((label + (" base (LoRA capacity on)" if adapter else ""), *timed(base, prompts, params), startup))
        if adapter:
            tuned = make_sampler(provider, model, cache, adapter=adapter, pool=pool)
            rows.append((label + " + adapter", *timed(tuned, prompts, params), None))
        memory = pool.memory()
    if memory:
        print("vllm server memory (GB): " + ", ".join(f"{k} {v:.2f}" for k, v in memory.items()))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompts", type=int, default=48)
    parser.add_argument("--max-new-tokens", type=int, default=96)
    parser.add_argument("--hf-batch-sizes", default="16,48", help="comma-separated, best counts; empty: vLLM only")
    parser.add_argument("--vllm-env", action="append", default=[], help="KEY=VALUE for the server (repeatable)")
    parser.add_argument("--model", default="smollm2-135m", help="a configs/model/ name (tiny: seconds)")
    parser.add_argument("--adapter", help="a PEFT folder: vLLM rows with and without it (one server)")
    parser.add_argument("--no-vllm", action="store_true", help="hf rows only")
    args = parser.parse_args()

    prompts = conversations(args.prompts)
    params = SamplingParams(temperature=0.7, top_p=0.95, max_new_tokens=args.max_new_tokens, seed=0)
    rows = []
    for batch_size in [int(b) for b in args.hf_batch_sizes.split(",") if b.strip()]:
        seconds, tokens = bench_hf(prompts, params, batch_size, args.model)
        rows.append((f"hf batch {batch_size}", seconds, tokens, None))
        print(f"hf batch {batch_size}: {tokens} tokens, {seconds:.1f} s, {tokens / seconds:.1f} tokens/s", flush=True)
    env = dict(item.split("=", 1) for item in args.vllm_env)
    for label, seconds, tokens, startup in [] if args.no_vllm else bench_vllm(prompts, params, env, args.model,
                                                                             args.adapter):  # fmt: skip
        rows.append((label, seconds, tokens, startup))
        print(f"{label}: {tokens} tokens in {seconds:.1f} s = {tokens / seconds:.1f} tokens/s", flush=True)

    best_hf = max((r for r in rows if r[0].startswith("hf")), key=lambda r: r[2] / r[1], default=None)
    print(f"\n{args.prompts} prompts, max {args.max_new_tokens} new tokens, {args.model}, {os.cpu_count()} CPUs")
    print("| engine | tokens | seconds | tokens/s | start-up s |\n| --- | --- | --- | --- | --- |")
    for name, seconds, tokens, start in rows:
        startup = "" if start is None else f"{start:.0f}"
        print(f"| {name} | {tokens} | {seconds:.1f} | {tokens / seconds:.1f} | {startup} |")
    first_vllm = next((r for r in rows if r[0].startswith("vllm")), None)
    if best_hf is not None and first_vllm is not None:
        ratio = (first_vllm[2] / first_vllm[1]) / (best_hf[2] / best_hf[1])
        print(f"\nvLLM / best hf ({best_hf[0]}) tokens/s: {ratio:.2f}x")


if __name__ == "__main__":
    main()
