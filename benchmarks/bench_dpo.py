"""DPO, like for like: charlab's default vs TRL's default vs TRL's best configuration, and what each charlab
technique is worth.

    python benchmarks/bench_dpo.py                                   # SmolLM2-135M, 32 pairs, every row, CPU fp32
    python benchmarks/bench_dpo.py --rows charlab,trl-best --pairs 48
    python benchmarks/bench_dpo.py --device cuda --pairs 256         # a GPU: bf16, torch.cuda peak memory

Every row trains the same model on the same pairs with the same optimisation: charlab's shipped `stage=dpo`
defaults (configs/stage/dpo.yaml: batch 16, lr 1e-4, linear schedule with 5% warmup, clipping at 1.0, AdamW
0.9/0.999/1e-8, beta 0.1, NLL 0.1 on chosen replies), LoRA r=32 (alpha 64) on all seven linear projections,
one epoch, max length 512. The pairs are synthetic (prompts of 20-150 tokens, replies of 50-350).

Rows:
- charlab: the default (`grad_accum` 4: 4 pairs per forward; shared prompt rows, the output head on trained
  positions only, a cached reference pass, length-grouped batches);
- charlab -<technique>: the default with that one technique switched off (the ablation; the maths is the
  same, tests/test_training_local.py checks it);
- trl-default: `DPOTrainer` with its own defaults (gradient checkpointing on, all 16 pairs in one forward,
  the reference forward in every step);
- trl-best: the fastest TRL configuration found on this machine: checkpointing off, charlab's micro-batch
  (4 pairs x 4 accumulation), `precompute_ref_log_probs` (batch 16), length-grouped sampling. TRL 1.16's DPO
  has no padding-free mode (`padding_free=True` warns and falls back to padding).

Time: the reference pass on its own (charlab's cached pass, TRL's precompute), the training steps on their
own, and their sum, which the speed ratio compares. Memory: the training phase's peak above its start
(`trainbench.PhaseMeter`). Loss: the mean training loss (TRL's warmup starts at lr 0, charlab's at lr/warmup,
and TRL's NLL is a token mean over the batch, charlab's a mean of per-pair token means, so losses differ a
little).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import tempfile
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from trainbench import (  # noqa: E402
    ALL_LINEAR,
    PhaseMeter,
    model_folder,
    print_table,
    run_worker,
    stage_defaults,
    store_rows,
    stored_rows,
    timed_method,
)

ABLATIONS = {
    "charlab -shared prompt rows": "share_prefixes",
    "charlab -trained-only logits": "trained_only",
    "charlab -cached reference": "cached_reference",
    "charlab -length grouping": "group_by_length",
    "charlab -fused kernels": "fused",
    "charlab -branched attention": "branched_attention",
}
ROWS = ("charlab", *ABLATIONS, "trl-default", "trl-best")


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

    return [{"prompt": text(rng.randint(20, 150)), "chosen": text(rng.randint(50, 350)),
             "rejected": text(rng.randint(50, 350))} for _ in range(n)]  # fmt: skip


# ------------------------------------------------------------------------------------------------ workers


def worker_charlab(args: argparse.Namespace, d: dict[str, Any], off: str) -> dict[str, Any]:
    from charlab.chat_format import ChatFormat
    from charlab.data.records import DpoExample
    from charlab.schemas import LoraConfig, ModelConfig
    from charlab.training import kernels
    from charlab.training.dpo import DpoAlgorithm, encode_pairs
    from charlab.training.local import LocalBackend
    from charlab.training.loop import LoopConfig, Trainer

    model = ModelConfig(name=args.model, name_or_path=args.model_dir)
    lora = LoraConfig(rank=32, alpha=64, dropout=0.0, target_modules=list(ALL_LINEAR))
    backend = LocalBackend.create(model, lora, Path(args.work), device=args.device, dtype=args.dtype, seed=0)
    backend.share_prefixes = backend.share_prefixes and off != "share_prefixes"
    backend.trained_only = off != "trained_only"
    backend.branched_attention = backend.branched_attention and off != "branched_attention"
    if off == "fused":
        kernels.unfuse_lora(backend.model)
        backend.fused_head = False
    pairs = [DpoExample(**p) for p in json.loads(Path(args.pairs_file).read_text())]
    items, _ = encode_pairs(ChatFormat(backend.tokenizer), pairs, args.max_length)
    algorithm = DpoAlgorithm(beta=d["beta"], nll_coef=d["nll_coef"], eval_batch_size=d["eval_batch_size"],
                             cached_reference=off != "cached_reference")  # fmt: skip
    config = LoopConfig(epochs=1, batch_size=d["batch_size"], learning_rate=d["lr"], schedule=d["schedule"],
                        warmup_ratio=d["warmup_ratio"], grad_accum=d["grad_accum"], max_grad_norm=d["max_grad_norm"],
                        weight_decay=d["weight_decay"], adam_beta1=d["adam_beta1"], adam_beta2=d["adam_beta2"],
                        adam_eps=d["adam_eps"], group_by_length=off != "group_by_length")  # fmt: skip
    losses: list[float] = []
    trainer = Trainer(backend, algorithm, items, [], config, Path(args.work) / "checkpoints",
                      on_metrics=lambda m, _: losses.extend([m["loss"]] if "loss" in m else []),
                      progress=False)  # fmt: skip
    trainer._checkpoint = lambda step, summary: None  # the final checkpoint write is not training
    meter = PhaseMeter(args.device).start()
    summary = trainer.train()
    phase = meter.stop()
    ref = summary.prepare_s if algorithm.cached_reference else None
    loss = sum(losses) / len(losses)
    return {"total_s": phase["phase_s"], "peak_mb": phase["peak_mb"], "ref_pass_s": ref, "pairs": len(items),
            "steps_s": phase["phase_s"] - (ref or 0.0), "loss": loss, "other_load": phase["other_load"]}  # fmt: skip


def worker_trl(args: argparse.Namespace, d: dict[str, Any], best: bool) -> dict[str, Any]:
    import torch
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import DPOConfig, DPOTrainer

    from charlab.models import resolve_dtype

    dtype = resolve_dtype(args.dtype, args.device)
    tokenizer = AutoTokenizer.from_pretrained(args.model_dir)
    tokenizer.pad_token = tokenizer.pad_token or tokenizer.eos_token
    model = AutoModelForCausalLM.from_pretrained(args.model_dir, dtype=dtype).to(args.device)
    pairs = json.loads(Path(args.pairs_file).read_text())
    def tokens(text: str) -> int:
        return len(tokenizer(text, add_special_tokens=False)["input_ids"])

    # `length`: what TRL's length-grouped sampler sorts by (prompt + the longer reply)
    data = Dataset.from_list([{"prompt": [{"role": "user", "content": p["prompt"]}],
                               "chosen": [{"role": "assistant", "content": p["chosen"]}],
                               "rejected": [{"role": "assistant", "content": p["rejected"]}],
                               "length": tokens(p["prompt"]) + max(tokens(p["chosen"]), tokens(p["rejected"]))}
                              for p in pairs])  # fmt: skip
    micro = d["batch_size"] // d["grad_accum"] if best else d["batch_size"]
    tuned = dict(gradient_checkpointing=False, precompute_ref_log_probs=True, precompute_ref_batch_size=16,
                 train_sampling_strategy="group_by_length", remove_unused_columns=False) if best else {}  # fmt: skip
    config = DPOConfig(
        output_dir=str(Path(args.work) / "trl"), per_device_train_batch_size=micro,
        gradient_accumulation_steps=d["batch_size"] // micro, learning_rate=d["lr"], lr_scheduler_type=d["schedule"],
        warmup_steps=d["warmup_ratio"], max_grad_norm=d["max_grad_norm"], weight_decay=d["weight_decay"],
        adam_beta1=d["adam_beta1"], adam_beta2=d["adam_beta2"], adam_epsilon=d["adam_eps"], num_train_epochs=1,
        beta=d["beta"], loss_type=["sigmoid", "sft"], loss_weights=[1.0, d["nll_coef"]], max_length=args.max_length,
        bf16=dtype == torch.bfloat16, use_cpu=args.device == "cpu", save_strategy="no", report_to=[],
        logging_steps=1, disable_tqdm=True, seed=0, dataset_num_proc=None, **tuned,
    )  # fmt: skip
    peft = LoraConfig(r=32, lora_alpha=64, lora_dropout=0.0, target_modules=list(ALL_LINEAR), task_type="CAUSAL_LM")
    timing: dict[str, float] = {}
    timed_method(DPOTrainer, "_precompute_ref_logps", timing)
    meter = PhaseMeter(args.device).start()
    trainer = DPOTrainer(model=model, args=config, train_dataset=data, processing_class=tokenizer, peft_config=peft)
    result = trainer.train()
    phase = meter.stop()
    ref = timing.get("_precompute_ref_logps")
    return {"total_s": phase["phase_s"], "peak_mb": phase["peak_mb"], "ref_pass_s": ref,
            "pairs": len(trainer.train_dataset), "steps_s": phase["phase_s"] - (ref or 0.0),
            "loss": result.training_loss, "other_load": phase["other_load"]}  # fmt: skip


# ------------------------------------------------------------------------------------------------ driver


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", choices=["smollm2-135m", "tiny"], default="smollm2-135m")
    parser.add_argument("--pairs", type=int, default=32)
    parser.add_argument("--max-length", type=int, default=512)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="auto", help="auto: fp32 on CPU, bf16 on CUDA")
    parser.add_argument("--rows", default=",".join(ROWS), help=f"which rows, of {','.join(ROWS)}")
    parser.add_argument("--results", type=Path, help="a JSON file that keeps rows across runs (one row per run)")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--model-dir", help=argparse.SUPPRESS)
    parser.add_argument("--pairs-file", help=argparse.SUPPRESS)
    parser.add_argument("--work", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    args = parser.parse_args()
    defaults = stage_defaults("dpo")
    if defaults.get("kl_coef") or defaults.get("min_lr_ratio"):  # TRL's DPO has neither: no longer like for like
        sys.exit("configs/stage/dpo.yaml: kl_coef and min_lr_ratio must be 0 for this comparison")

    if args.worker:
        Path(args.work).mkdir(parents=True, exist_ok=True)
        if args.worker.startswith("trl"):
            result = worker_trl(args, defaults, best=args.worker == "trl-best")
        else:
            result = worker_charlab(args, defaults, ABLATIONS.get(args.worker, ""))
        Path(args.out).write_text(json.dumps(result))
        return

    from transformers import AutoTokenizer

    rows = [r for r in args.rows.split(",") if r]
    unknown = set(rows) - set(ROWS)
    if unknown:
        sys.exit(f"--rows: unknown {', '.join(sorted(unknown))}; allowed: {', '.join(ROWS)}")
    folder = model_folder(args.model)
    setup = {k: getattr(args, k) for k in ("model", "pairs", "max_length", "device", "dtype")}
    results = stored_rows(args.results, setup)
    with tempfile.TemporaryDirectory(prefix="bench-dpo-") as tmp:
        work = Path(tmp)
        pairs_file = work / "pairs.json"
        pairs_file.write_text(json.dumps(make_pairs(AutoTokenizer.from_pretrained(folder), args.pairs)))
        common = ["--model", args.model, "--model-dir", str(folder), "--pairs-file", str(pairs_file), "--device",
                  args.device, "--dtype", args.dtype, "--max-length", str(args.max_length)]  # fmt: skip
        for row in rows:
            r = run_worker(__file__, row, [*common, "--work", str(work / row)], work / f"{row}.json")
            r["rate"] = r["pairs"] / r["total_s"]  # pairs trained (both sides drop pairs with no reply left)
            results[row] = r
            store_rows(args.results, setup, results)
            print(f"  {row}: {r['total_s']:.1f} s, {r['peak_mb']:.0f} MB", flush=True)
    d = defaults
    print(f"\nDPO, {args.model}, {args.pairs} pairs, batch {d['batch_size']}, LoRA r=32 all linear, max length "
          f"{args.max_length}, {args.device} {args.dtype}, {os.cpu_count()} cores; lr {d['lr']} {d['schedule']} "
          f"(warmup {d['warmup_ratio']}), clip {d['max_grad_norm']}, beta {d['beta']}, "
          f"NLL {d['nll_coef']}")  # fmt: skip
    ordered = {row: results[row] for row in ROWS if row in results}
    print_table(ordered, "pairs", reference="trl-best" if "trl-best" in results else "")


if __name__ == "__main__":
    main()
