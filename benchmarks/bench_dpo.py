"""DPO, like for like: charlab against TRL's best configuration, and what each charlab technique is worth.

    python benchmarks/bench_dpo.py --lock /tmp/charlab-heavy.lock     # the README's table (SmolLM2-135M, CPU fp32)
    python benchmarks/bench_dpo.py --rows charlab,trl-best --repeats 3
    python benchmarks/bench_dpo.py --device cuda --steps 8            # a GPU: bf16, torch.cuda peak memory

The protocol (interleaved rounds, a warm-up step, timed steps, medians, load checks) is `trainbench`'s; see its
docstring. Every row trains the same model on the same pairs with the same optimisation: charlab's shipped
`stage=dpo` defaults (configs/stage/dpo.yaml: batch 16, lr 1e-4, linear schedule with 5% warmup, clipping at
1.0, AdamW 0.9/0.999/1e-8, beta 0.1, NLL 0.1 on chosen replies), LoRA r=32 (alpha 64) on all seven linear
projections, one epoch of batch x (1 + steps) synthetic pairs (prompts of 20-150 tokens, replies of 50-350),
max length 512.

Rows:
- charlab: the default (`grad_accum` 4: 4 pairs per forward; shared prompt rows, the output head on trained
  positions only, a cached reference pass, length-grouped batches, fused LoRA kernels, branched attention);
- charlab -<technique>: the default with that one technique switched off (the ablation; the maths is the
  same, tests/test_training_local.py checks it);
- trl-best: the fastest TRL configuration found on this machine: checkpointing off, charlab's micro-batch
  (4 pairs x 4 accumulation), `precompute_ref_log_probs` (batch 16), length-grouped sampling. TRL 1.16's DPO
  has no padding-free mode (`padding_free=True` warns and falls back to padding);
- trl-default (with --rows): `DPOTrainer` with its own defaults (gradient checkpointing on, all 16 pairs in
  one forward, the reference forward in every step).

Columns: the reference pass on its own (charlab's cached pass, TRL's precompute; "in steps" where the reference
runs inside every step), the median timed step, tokens/s over the timed steps (a pair's prompt counts twice, as
a plain forward sees it), the estimated run (reference pass + every token at that speed), the phase's peak memory
above its start (`trainbench.PhaseMeter`), the step-1 loss (every row starts from the same weights, so it checks
that rows train the same thing: TRL's NLL is a token mean over the micro-batch, charlab's a mean of per-pair
means, so the two differ in the third decimal), the tokens trained, the other processes' load.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from trainbench import (  # noqa: E402
    ALL_LINEAR,
    PhaseMeter,
    StepWatch,
    add_protocol_args,
    chosen_rows,
    compare,
    fail,
    model_folder,
    print_setting,
    print_table,
    row_result,
    stage_settings,
    timed_method,
    watch_charlab,
    watch_trl,
    worker_main,
)

ABLATIONS = {
    "charlab -shared prompt rows": "share_prefixes",
    "charlab -trained-only logits": "trained_only",
    "charlab -cached reference": "cached_reference",
    "charlab -length grouping": "group_by_length",
    "charlab -fused kernels": "fused",
    "charlab -branched attention": "branched_attention",
}
ROWS = ("charlab", *ABLATIONS, "trl-best", "trl-default")
DEFAULT_ROWS = ROWS[:-1]
REFERENCE = "trl-best"


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


def worker(args: argparse.Namespace, row: str) -> dict[str, Any]:
    d = stage_settings("dpo", args)
    if row.startswith("trl"):
        return worker_trl(args, d, best=row == "trl-best")
    return worker_charlab(args, d, ABLATIONS.get(row, ""))


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
    pairs = [DpoExample(**p) for p in json.loads(Path(args.data_file).read_text())]
    items, _ = encode_pairs(ChatFormat(backend.tokenizer), pairs, args.max_length)
    algorithm = DpoAlgorithm(beta=d["beta"], nll_coef=d["nll_coef"], eval_batch_size=d["eval_batch_size"],
                             cached_reference=off != "cached_reference")  # fmt: skip
    config = LoopConfig(epochs=1, batch_size=d["batch_size"], learning_rate=d["lr"], schedule=d["schedule"],
                        warmup_ratio=d["warmup_ratio"], grad_accum=d["grad_accum"], max_grad_norm=d["max_grad_norm"],
                        weight_decay=d["weight_decay"], adam_beta1=d["adam_beta1"], adam_beta2=d["adam_beta2"],
                        adam_eps=d["adam_eps"], group_by_length=off != "group_by_length")  # fmt: skip
    watch = StepWatch()
    trainer = Trainer(backend, algorithm, items, [], config, Path(args.work) / "checkpoints",
                      on_metrics=watch_charlab(backend, watch), progress=False)  # fmt: skip
    trainer._checkpoint = lambda step, summary: None  # the final checkpoint write is not training
    meter = PhaseMeter(args.device).start()
    summary = trainer.train()
    return row_result(meter.stop(), watch, summary.prepare_s if algorithm.cached_reference else None)


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
    pairs = json.loads(Path(args.data_file).read_text())

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
    watch = StepWatch()
    meter = PhaseMeter(args.device).start()
    trainer = DPOTrainer(model=model, args=config, train_dataset=data, processing_class=tokenizer, peft_config=peft)
    watch_trl(trainer, watch)
    trainer.train()
    return row_result(meter.stop(), watch, timing.get("_precompute_ref_logps"))


# ------------------------------------------------------------------------------------------------ driver


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_protocol_args(parser, ROWS, DEFAULT_ROWS)
    args = parser.parse_args()
    d = stage_settings("dpo", args)
    if d.get("kl_coef") or d.get("min_lr_ratio"):  # TRL's DPO has neither: no longer like for like
        fail("configs/stage/dpo.yaml: kl_coef and min_lr_ratio must be 0 for this comparison")
    if worker_main(args, worker):
        return
    from transformers import AutoTokenizer

    rows = chosen_rows(args, ROWS, REFERENCE)
    pairs = make_pairs(AutoTokenizer.from_pretrained(model_folder(args.model)), d["batch_size"] * (1 + args.steps))
    summary = compare(__file__, args, rows, REFERENCE, pairs, worker)
    print()
    print_setting()
    print(f"DPO, {args.model}, {len(pairs)} pairs: batch {d['batch_size']} ({d['grad_accum']} micro-batches), "
          f"1 warm-up + {args.steps} timed steps, {args.repeats} rounds; LoRA r=32 all linear, max length "
          f"{args.max_length}, {args.device} {args.dtype}; lr {d['lr']} {d['schedule']} (warmup "
          f"{d['warmup_ratio']}), clip {d['max_grad_norm']}, beta {d['beta']}, NLL {d['nll_coef']}")  # fmt: skip
    print_table(summary, REFERENCE)


if __name__ == "__main__":
    main()
