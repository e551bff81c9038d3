"""SFT, like for like: charlab's default vs TRL's default vs TRL's best configuration, and what each charlab
technique is worth.

    python benchmarks/bench_sft.py                                   # SmolLM2-135M, 32 conversations, every row
    python benchmarks/bench_sft.py --rows charlab,trl-best --conversations 48
    python benchmarks/bench_sft.py --device cuda --conversations 512 # a GPU: bf16, torch.cuda peak memory

Every row trains the same model on the same conversations with the same optimisation: charlab's shipped
`stage=sft` defaults (configs/stage/sft.yaml: batch 16, lr 1e-4, linear schedule with 5% warmup, clipping at
1.0, AdamW 0.9/0.999/1e-8), LoRA r=256 (alpha 512) on all seven linear projections, one epoch, max length 512.
The conversations are introspection-like (3 in 4 a short prompt and a long reflection, 1 in 4 a five-turn
self-talk), tokenized once by charlab's chat format (no system prompt, loss on every assistant turn); TRL
gets the same token ids and assistant masks, so both train on exactly the same tokens.

Rows:
- charlab: the default (`grad_accum` 4: 4 conversations per forward, packed into rows of max length; the
  output head on trained positions only; length-grouped batches);
- charlab -<technique>: the default with that one technique switched off (the ablation);
- trl-default: `SFTTrainer` with its own defaults (gradient checkpointing on, 16 padded conversations per
  forward);
- trl-best: checkpointing off, charlab's micro-batch (4 x 4 accumulation), padding-free (the micro-batch
  flattened into one row, positions restarting per conversation), length-grouped sampling;
- trl-packing (with --rows): checkpointing off, TRL's dataset packing (best-fit decreasing into rows of max
  length, padding-free) at 4 rows x 4 accumulation; it changes what a step is (rows, not conversations), so
  it trains fewer, fuller steps and is not like for like; shown for completeness.

Time: the training steps (SFT has no reference pass). Memory: the training phase's peak above its start
(`trainbench.PhaseMeter`). Loss: the mean training loss.
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
)

ABLATIONS = {
    "charlab -packing": "packing",
    "charlab -trained-only logits": "trained_only",
    "charlab -length grouping": "group_by_length",
    "charlab -fused kernels": "fused",
}
ROWS = ("charlab", *ABLATIONS, "trl-default", "trl-best", "trl-packing")
DEFAULT_ROWS = ROWS[:-1]


def conversations(n: int, seed: int = 0) -> list[list[dict[str, str]]]:
    """Introspection-like chats: 3 in 4 a short prompt and a long reflection, 1 in 4 a five-turn self-talk."""
    from charlab.tiny_model import CORPUS

    words = CORPUS.split()
    rng = random.Random(seed)

    def text(n_words: int) -> str:
        return " ".join(rng.choice(words) for _ in range(n_words))

    chats = []
    for i in range(n):
        if i % 4 == 3:
            turns = [text(rng.randint(6, 15))] + [text(rng.randint(30, 90)) for _ in range(4)]
            chats.append([{"role": ("user", "assistant")[k % 2], "content": t} for k, t in enumerate(turns)])
        else:
            chats.append([{"role": "user", "content": text(rng.randint(10, 40))},
                          {"role": "assistant", "content": text(rng.randint(100, 350))}])  # fmt: skip
    return chats


# ------------------------------------------------------------------------------------------------ workers


def worker_charlab(args: argparse.Namespace, d: dict[str, Any], off: str) -> dict[str, Any]:
    from charlab.schemas import LoraConfig, ModelConfig
    from charlab.training import kernels
    from charlab.training.backend import TokenSequence
    from charlab.training.local import LocalBackend
    from charlab.training.loop import LoopConfig, Trainer
    from charlab.training.sft import SftAlgorithm, SftItem

    data = json.loads(Path(args.data_file).read_text())
    model = ModelConfig(name=args.model, name_or_path=args.model_dir)
    lora = LoraConfig(rank=256, alpha=512, dropout=0.0, target_modules=list(ALL_LINEAR))
    backend = LocalBackend.create(model, lora, Path(args.work), device=args.device, dtype=args.dtype, seed=0)
    backend.trained_only = off != "trained_only"
    if off == "fused":
        kernels.unfuse_lora(backend.model)
        backend.fused_head = False
    items = [SftItem(i, TokenSequence(tuple(x["input_ids"]), tuple(x["assistant_masks"]))) for i, x in enumerate(data)]
    pack = args.max_length if d["packing"] and off != "packing" else None
    algorithm = SftAlgorithm(pack_length=pack, eval_batch_size=d["eval_batch_size"])
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
    trainer.train()
    phase = meter.stop()
    return {"total_s": phase["phase_s"], "steps_s": phase["phase_s"], "ref_pass_s": None, "peak_mb": phase["peak_mb"],
            "loss": sum(losses) / len(losses), "steps": trainer.total_steps,
            "other_load": phase["other_load"]}  # fmt: skip


def worker_trl(args: argparse.Namespace, d: dict[str, Any], row: str) -> dict[str, Any]:
    import torch
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import SFTConfig, SFTTrainer

    from charlab.models import resolve_dtype

    dtype = resolve_dtype(args.dtype, args.device)
    tokenizer = AutoTokenizer.from_pretrained(args.model_dir)
    tokenizer.pad_token = tokenizer.pad_token or tokenizer.eos_token
    model = AutoModelForCausalLM.from_pretrained(args.model_dir, dtype=dtype).to(args.device)
    data = json.loads(Path(args.data_file).read_text())
    micro = d["batch_size"] if row == "trl-default" else d["batch_size"] // d["grad_accum"]
    tuned: dict[str, Any] = {}
    if row == "trl-best":  # the inputs are already cut to max_length (padding-free TRL refuses to truncate)
        tuned = dict(gradient_checkpointing=False, padding_free=True, max_length=None,
                     train_sampling_strategy="group_by_length")  # fmt: skip
    elif row == "trl-packing":
        tuned = dict(gradient_checkpointing=False, packing=True, max_length=args.max_length)
    config = SFTConfig(
        output_dir=str(Path(args.work) / "trl"), per_device_train_batch_size=micro,
        gradient_accumulation_steps=d["batch_size"] // micro, learning_rate=d["lr"], lr_scheduler_type=d["schedule"],
        warmup_steps=d["warmup_ratio"], max_grad_norm=d["max_grad_norm"], weight_decay=d["weight_decay"],
        adam_beta1=d["adam_beta1"], adam_beta2=d["adam_beta2"], adam_epsilon=d["adam_eps"], num_train_epochs=1,
        **{"max_length": args.max_length, **tuned}, bf16=dtype == torch.bfloat16, use_cpu=args.device == "cpu",
        save_strategy="no", report_to=[], logging_steps=1, disable_tqdm=True, seed=0,
    )  # fmt: skip
    peft = LoraConfig(r=256, lora_alpha=512, lora_dropout=0.0, target_modules=list(ALL_LINEAR), task_type="CAUSAL_LM")
    meter = PhaseMeter(args.device).start()
    trainer = SFTTrainer(model=model, args=config, train_dataset=Dataset.from_list(data), processing_class=tokenizer,
                         peft_config=peft)  # fmt: skip
    result = trainer.train()
    phase = meter.stop()
    return {"total_s": phase["phase_s"], "steps_s": phase["phase_s"], "ref_pass_s": None, "peak_mb": phase["peak_mb"],
            "loss": result.training_loss, "steps": trainer.state.global_step,
            "other_load": phase["other_load"]}  # fmt: skip


# ------------------------------------------------------------------------------------------------ driver


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", choices=["smollm2-135m", "tiny"], default="smollm2-135m")
    parser.add_argument("--conversations", type=int, default=32)
    parser.add_argument("--max-length", type=int, default=512)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="auto", help="auto: fp32 on CPU, bf16 on CUDA")
    parser.add_argument("--rows", default=",".join(DEFAULT_ROWS), help=f"which rows, of {','.join(ROWS)}")
    parser.add_argument("--results", type=Path, help="a JSON file that keeps rows across runs (one row per run)")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--model-dir", help=argparse.SUPPRESS)
    parser.add_argument("--data-file", help=argparse.SUPPRESS)
    parser.add_argument("--work", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    args = parser.parse_args()
    defaults = stage_defaults("sft")
    if defaults.get("min_lr_ratio"):  # TRL's linear schedule decays to 0: no longer like for like
        sys.exit("configs/stage/sft.yaml: min_lr_ratio must be 0 for this comparison")

    if args.worker:
        Path(args.work).mkdir(parents=True, exist_ok=True)
        if args.worker.startswith("trl"):
            result = worker_trl(args, defaults, args.worker)
        else:
            result = worker_charlab(args, defaults, ABLATIONS.get(args.worker, ""))
        Path(args.out).write_text(json.dumps(result))
        return

    from charlab.chat_format import ChatFormat
    from charlab.models import default_cache_dir, load_tokenizer
    from charlab.schemas import ModelConfig

    rows = [r for r in args.rows.split(",") if r]
    unknown = set(rows) - set(ROWS)
    if unknown:
        sys.exit(f"--rows: unknown {', '.join(sorted(unknown))}; allowed: {', '.join(ROWS)}")
    folder = model_folder(args.model)
    chat = ChatFormat(load_tokenizer(ModelConfig(name=args.model, name_or_path=str(folder)), default_cache_dir()))
    data = []
    for messages in conversations(args.conversations):
        encoded = chat.encode_with_mask(messages, train_on="all")
        data.append({"input_ids": encoded.input_ids[: args.max_length],
                     "assistant_masks": encoded.loss_mask[: args.max_length]})  # fmt: skip
    tokens = sum(len(x["input_ids"]) for x in data)
    setup = {k: getattr(args, k) for k in ("model", "conversations", "max_length", "device", "dtype")}
    results = stored_rows(args.results, setup)
    with tempfile.TemporaryDirectory(prefix="bench-sft-") as tmp:
        work = Path(tmp)
        data_file = work / "data.json"
        data_file.write_text(json.dumps(data))
        common = ["--model", args.model, "--model-dir", str(folder), "--data-file", str(data_file), "--device",
                  args.device, "--dtype", args.dtype, "--max-length", str(args.max_length)]  # fmt: skip
        for row in rows:
            r = run_worker(__file__, row, [*common, "--work", str(work / row)], work / f"{row}.json")
            r["rate"] = tokens / r["total_s"]
            results[row] = r
            store_rows(args.results, setup, results)
            print(f"  {row}: {r['total_s']:.1f} s, {r['peak_mb']:.0f} MB", flush=True)
    d = defaults
    print(f"\nSFT, {args.model}, {len(data)} conversations ({tokens} tokens), batch {d['batch_size']}, LoRA r=256 all "
          f"linear, max length {args.max_length}, {args.device} {args.dtype}, {os.cpu_count()} cores; lr {d['lr']} "
          f"{d['schedule']} (warmup {d['warmup_ratio']}), clip {d['max_grad_norm']}")  # fmt: skip
    ordered = {row: results[row] for row in ROWS if row in results}
    notes = {row: f"{r['steps']} steps" for row, r in ordered.items()}
    print_table(ordered, "tokens", reference="trl-best" if "trl-best" in results else "", notes=notes,
                reference_pass=False)


if __name__ == "__main__":
    main()
