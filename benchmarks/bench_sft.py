"""SFT, like for like: charlab against TRL's best configuration (and TRL's packing), and what each charlab
technique is worth.

    python benchmarks/bench_sft.py --lock /tmp/charlab-heavy.lock     # the README's table (SmolLM2-135M, CPU fp32)
    python benchmarks/bench_sft.py --rows charlab,trl-best --repeats 3
    python benchmarks/bench_sft.py --device cuda --steps 8            # a GPU: bf16, torch.cuda peak memory

The protocol (interleaved rounds, a warm-up step, timed steps, medians, load checks) is `trainbench`'s; see its
docstring. Every row trains the same model on the same conversations with the same optimisation: charlab's
shipped `stage=sft` defaults (configs/stage/sft.yaml: batch 16, lr 1e-4, linear schedule with 5% warmup,
clipping at 1.0, AdamW 0.9/0.999/1e-8), LoRA r=256 (alpha 512) on all seven linear projections, one epoch of
batch x (1 + steps) conversations, max length 512. The conversations are introspection-like (3 in 4 a short
prompt and a long reflection, 1 in 4 a five-turn self-talk), tokenized once by charlab's chat format (no
system prompt, loss on every assistant turn); TRL gets the same token ids and assistant masks, so both train on
exactly the same tokens.

Rows:
- charlab: the default (`grad_accum` 4: 4 conversations per forward, right-padded; the output head on trained
  positions only; length-grouped batches; fused LoRA kernels). `stage.packing` is off by default: at this shape
  no two conversations of a micro-batch fit one 512-token row, so packing changed nothing (its ablation row was
  the same computation as `charlab`, 1.89x vs 1.75x: the noise of two runs);
- charlab -<technique>: the default with that one technique switched off (the ablation);
- trl-best: checkpointing off, charlab's micro-batch (4 x 4 accumulation), padding-free (the micro-batch
  flattened into one row, positions restarting per conversation), length-grouped sampling;
- trl-packing: checkpointing off, TRL's dataset packing (best-fit decreasing into rows of max length,
  padding-free) at 4 rows x 4 accumulation. A step is 16 packed rows, not 16 conversations, so it takes fewer,
  fuller steps; the speed (tokens/s of the timed steps) compares all the same;
- trl-default (with --rows): `SFTTrainer` with its own defaults (gradient checkpointing on, 16 padded
  conversations per forward).

Columns as in bench_dpo.py (SFT has no reference pass). The step-1 loss of trl-packing covers other
conversations (its first step is 16 packed rows), so only the other rows' step-1 losses must agree.
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
    watch_charlab,
    watch_trl,
    worker_main,
)

ABLATIONS = {
    "charlab -trained-only logits": "trained_only",
    "charlab -length grouping": "group_by_length",
    "charlab -fused kernels": "fused",
}
ROWS = ("charlab", *ABLATIONS, "trl-best", "trl-packing", "trl-default")
DEFAULT_ROWS = ROWS[:-1]
REFERENCE = "trl-best"


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


def worker(args: argparse.Namespace, row: str) -> dict[str, Any]:
    d = stage_settings("sft", args)
    if row.startswith("trl"):
        return worker_trl(args, d, row)
    return worker_charlab(args, d, ABLATIONS.get(row, ""))


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
    pack = args.max_length if d["packing"] else None  # the shipped default (off)
    algorithm = SftAlgorithm(pack_length=pack, eval_batch_size=d["eval_batch_size"])
    config = LoopConfig(epochs=1, batch_size=d["batch_size"], learning_rate=d["lr"], schedule=d["schedule"],
                        warmup_ratio=d["warmup_ratio"], grad_accum=d["grad_accum"], max_grad_norm=d["max_grad_norm"],
                        weight_decay=d["weight_decay"], adam_beta1=d["adam_beta1"], adam_beta2=d["adam_beta2"],
                        adam_eps=d["adam_eps"], group_by_length=off != "group_by_length")  # fmt: skip
    watch = StepWatch()
    trainer = Trainer(backend, algorithm, items, [], config, Path(args.work) / "checkpoints",
                      on_metrics=watch_charlab(backend, watch), progress=False)  # fmt: skip
    trainer._checkpoint = lambda step, summary: None  # the final checkpoint write is not training
    meter = PhaseMeter(args.device).start()
    trainer.train()
    return row_result(meter.stop(), watch, None)


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
    watch = StepWatch()
    meter = PhaseMeter(args.device).start()
    trainer = SFTTrainer(model=model, args=config, train_dataset=Dataset.from_list(data), processing_class=tokenizer,
                         peft_config=peft)  # fmt: skip
    watch_trl(trainer, watch)
    trainer.train()
    return row_result(meter.stop(), watch, None)


# ------------------------------------------------------------------------------------------------ driver


def encoded_conversations(args: argparse.Namespace, count: int) -> list[dict[str, list[int]]]:
    """`count` conversations as token ids and assistant masks (charlab's chat format), cut to max length."""
    from charlab.chat_format import ChatFormat
    from charlab.models import default_cache_dir, load_tokenizer
    from charlab.schemas import ModelConfig

    model = ModelConfig(name=args.model, name_or_path=str(model_folder(args.model)))
    chat = ChatFormat(load_tokenizer(model, default_cache_dir()))
    data = []
    for messages in conversations(count):
        encoded = chat.encode_with_mask(messages, train_on="all")
        data.append({"input_ids": encoded.input_ids[: args.max_length],
                     "assistant_masks": encoded.loss_mask[: args.max_length]})  # fmt: skip
    return data


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_protocol_args(parser, ROWS, DEFAULT_ROWS)
    args = parser.parse_args()
    d = stage_settings("sft", args)
    if d.get("min_lr_ratio"):  # TRL's linear schedule decays to 0: no longer like for like
        fail("configs/stage/sft.yaml: min_lr_ratio must be 0 for this comparison")
    if worker_main(args, worker):
        return
    rows = chosen_rows(args, ROWS, REFERENCE)
    data = encoded_conversations(args, d["batch_size"] * (1 + args.steps))
    summary = compare(__file__, args, rows, REFERENCE, data, worker)
    print()
    print_setting()
    print(f"SFT, {args.model}, {len(data)} conversations ({sum(len(x['input_ids']) for x in data)} tokens): batch "
          f"{d['batch_size']} ({d['grad_accum']} micro-batches), 1 warm-up + {args.steps} timed steps, "
          f"{args.repeats} rounds; LoRA r=256 all linear, max length {args.max_length}, {args.device} {args.dtype}; "
          f"lr {d['lr']} {d['schedule']} (warmup {d['warmup_ratio']}), clip {d['max_grad_norm']}")  # fmt: skip
    print_table(summary, REFERENCE, reference_pass=False)


if __name__ == "__main__":
    main()
