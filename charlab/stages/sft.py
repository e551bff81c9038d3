"""`stage=sft`: introspective SFT (prompt distillation) on top of the DPO model, and its distillation gap.

    python -m charlab.train stage=sft stage.data=outputs/pirate/introspect/<run>/introspection.jsonl \
        stage.dpo_adapter=outputs/pirate/dpo/<run>/adapter model=smollm2-135m
    python -m charlab.train stage=sft stage.data=<jsonl> stage.dpo_adapter=<adapter> stage.resume=true \
        stage.resume_from=<sft run dir>

Local backend: the DPO adapter is merged into the base weights and a fresh r=256 LoRA (`lora=sft`) trains on
top. Tinker cannot train on merged weights, so there SFT continues the DPO adapter's own LoRA from its
`tinker://` training state (`stage.dpo_adapter=tinker://.../weights/...`, or a DPO adapter folder trained on
Tinker, whose `meta.json` names that state; `lora.rank` must then equal the DPO rank): the result is the
whole tuned model (DPO + SFT), which Tinker can sample. Given a locally trained DPO folder, Tinker trains SFT
from the base and `stage=export` combines the two adapters exactly.

Writes `adapter/` (+ `meta.json`), `checkpoints/`, `report.md` and metrics; returns the held-out loss. At the
end it measures the prompt-distillation gap on held-out in-character replies for the base model, the DPO
model and the SFT'd model.
"""

from __future__ import annotations

import gc
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from omegaconf import MISSING, DictConfig

from charlab import distributed
from charlab.data.jsonl import read_jsonl
from charlab.data.records import IntrospectionExample
from charlab.errors import ConfigError, DataError
from charlab.registry import StageResult, register_stage
from charlab.run import Run, write_meta
from charlab.stages._common import (
    adapter_location,
    cache_dir,
    load_persona,
    model_config,
    persona_prompt,
)
from charlab.stages._training import (
    GAP_FILE,
    TrainingStageConfig,
    loop_config,
    other_rank,
    read_pairs,
    resume_root_of,
    start_trainer,
    train_and_save,
    training_setup,
)
from charlab.training.backend import closing
from charlab.training.factory import BackendConfig, create_backend, model_identity, start_weights
from charlab.training.loop import validate_loop_config

log = logging.getLogger("charlab")


@dataclass
class SftStageConfig(TrainingStageConfig):
    """`stage=sft`: the introspection data, the DPO adapter to start from, and how to train."""

    name: str = "sft"
    data: str = MISSING  # introspection.jsonl (or an introspect run directory holding one)
    dpo_adapter: Optional[str] = MISSING  # the dpo adapter/ folder or (Tinker) its tinker:// state; null: base
    train_on: str = MISSING  # all | last: which assistant turns carry the loss
    packing: bool = MISSING
    gap_examples: int = MISSING
    gap_pairs: Optional[str] = None
    resume_from: Optional[str] = None
    interaction_system_prompt: Optional[str] = None  # put before each self-interaction transcript; None: none


def validate(stage: DictConfig) -> None:
    """One-line errors for SFT settings that cannot train."""
    validate_loop_config(loop_config(stage), prefix="stage.")
    checks = [
        (stage.train_on in ("all", "last"), "train_on", "all or last"),
        (stage.max_length >= 8, "max_length", "at least 8 tokens (e.g. 1024)"),
        (0 <= stage.eval_fraction < 1, "eval_fraction", "a value in [0, 1)"),
        (stage.eval_batch_size >= 1, "eval_batch_size", "a positive integer"),
        (stage.keep_checkpoints >= 0, "keep_checkpoints", "0 (keep all) or a positive integer"),
        (stage.gap_examples >= 0, "gap_examples", "0 (skip the gap) or a positive integer"),
    ]
    for ok, key, allowed in checks:
        if not ok:
            raise ConfigError(f"stage.{key}={stage[key]} is not allowed; use {allowed}")


def read_examples(path: Path) -> list[IntrospectionExample]:
    """The records of an introspection.jsonl (or a run directory holding one); one-line errors."""
    if path.is_dir():
        path = path / "introspection.jsonl"
    try:
        return read_jsonl(path, IntrospectionExample)
    except DataError as err:
        raise DataError(f"stage.data: {err}") from None


def gap_conversations(stage: DictConfig, held_out: list[IntrospectionExample]) -> list[list[dict[str, str]]]:
    """Held-out in-character replies: teacher `chosen` replies of `stage.gap_pairs`, else held-out introspection."""
    from charlab.data.introspection import training_messages

    n = int(stage.gap_examples)
    if stage.gap_pairs:
        _, pairs = read_pairs(Path(stage.gap_pairs).expanduser())
        return [[{"role": "user", "content": p.prompt}, {"role": "assistant", "content": p.chosen}] for p in pairs[:n]]
    conversations = []
    for example in held_out[:n]:  # the last reply and the user turn it answers (bounded length, same for all models)
        messages = training_messages(example)
        last = max(i for i, m in enumerate(messages) if m["role"] == "assistant")
        conversations.append(messages[max(0, last - 1) : last + 1])
    return conversations


def save_gap_conversations(path: Path, conversations: list[list[dict[str, str]]]) -> Path:
    """The held-out conversations the gap is measured on (one `{"messages": [...]}` per line)."""
    from charlab.data.jsonl import JsonlWriter

    path.unlink(missing_ok=True)
    with JsonlWriter(path, flush_every=256) as writer:
        writer.write_many({"messages": messages} for messages in conversations)
    return path


def backend_scorer(backend: Any, reference: bool = False) -> Any:
    """A distillation-gap scorer over a training backend (`reference`: its weights before training)."""
    from charlab.training.backend import TokenSequence

    return lambda encoded: backend.logprobs([TokenSequence.from_encoded(e) for e in encoded], reference=reference)


def base_gap(cfg: DictConfig, chat: Any, conversations: list, system_prompt: str) -> Any:
    """The gap of the plain base model, loaded on its own and freed before training starts."""
    from charlab.eval.distillation_gap import distillation_gap, hf_scorer
    from charlab.models import load_causal_lm

    model = load_causal_lm(model_config(cfg.model), cache_dir(cfg), device=cfg.backend.device, dtype=cfg.backend.dtype)
    try:
        scorer = hf_scorer(model, pad_id=chat.tokenizer.pad_token_id or 0)
        return distillation_gap(scorer, chat, conversations, system_prompt)
    finally:
        del model
        gc.collect()


def write_report(path: Path, summary: dict[str, Any], gaps: dict[str, Any], notes: list[str]) -> None:
    """`report.md`: data, held-out loss and the prompt-distillation gap table."""
    from charlab.eval.distillation_gap import gap_table

    lines = ["# SFT (prompt distillation)", ""]
    lines += [f"- {key}: {value}" for key, value in summary.items()]
    lines += ["", "## Prompt-distillation gap", ""]
    if gaps:
        lines += [
            "Mean per-token log-likelihood of held-out in-character replies with the constitution as system prompt "
            "and without it. SFT moves the persona into the weights, so the gap should shrink.",
            "",
            gap_table(gaps),
        ]
    else:
        lines.append("not measured (no held-out replies: set stage.gap_pairs or eval_fraction > 0)")
    lines += ["", *notes]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


MERGED_NOTE = (
    "The adapter applies on top of base + DPO merged: `stage=export stage.sft_weight=1.0` gives one adapter "
    "for the trained model; the paper's released mix is sft_weight=0.25. The gaps above describe base + "
    "DPO + 1.0 x SFT; `stage=export` measures the gap of the combination it exports on the same replies."
)


def _start_weights(stage: DictConfig, run: Run, backend: BackendConfig) -> tuple[Optional[str], list[str]]:
    """What SFT starts from (the DPO adapter merged, its Tinker state, or the base) and a note when the DPO adapter
    cannot be used (Tinker cannot upload a merged model)."""
    dpo_adapter = adapter_location(stage.dpo_adapter)
    if dpo_adapter:
        run.add_parent("dpo_adapter", dpo_adapter)
    init_adapter = start_weights(backend, dpo_adapter)
    notes = []
    if dpo_adapter and not init_adapter:
        notes.append(
            "Tinker trains SFT from the base (a merged DPO model cannot be uploaded): combine the adapters with "
            f"`stage=export stage.dpo_adapter={dpo_adapter} stage.sft_adapter=<this run>/adapter`."
        )
        log.warning(notes[-1])
    return init_adapter, notes


def _encode(
    chat: Any, examples: list[IntrospectionExample], stage: DictConfig, system_prompt: str, data_path: Path
) -> tuple[list, Any]:
    """The examples as token sequences within `stage.max_length`; those quoting the constitution's system prompt are
    dropped (they would teach it back in context) and counted."""
    from charlab.training.sft import SftItem, encode_examples, with_system_prompt

    systems = {"interaction": str(stage.interaction_system_prompt)} if stage.interaction_system_prompt else {}
    items, stats = encode_examples(
        chat, examples, int(stage.max_length), train_on=str(stage.train_on), systems=systems
    )
    if not items:
        raise DataError(f"stage.data: {data_path}: no example has assistant tokens within stage.max_length")
    leaked = set(with_system_prompt(chat, items, system_prompt))
    if leaked:  # a reply quoting the constitution would teach it back in context: drop, count, say so
        log.warning("sft: dropping %d examples that contain the constitution system prompt", len(leaked))
        items = [SftItem(i, item.seq, item.id) for i, item in enumerate(it for it in items if it.id not in leaked)]
        stats.dropped += sorted(leaked)
        stats.kept = len(items)
        stats.tokens, stats.trained_tokens = sum(len(i) for i in items), sum(i.seq.num_trained for i in items)
    return items, stats


CONTINUED = "the DPO adapter's LoRA, continued on Tinker (the adapter holds DPO + SFT)"


def _gap_conversations(stage: DictConfig, run: Run, examples: list[IntrospectionExample], eval_items: list) -> list:
    """The held-out replies the distillation gap is measured on (rank 0 only), saved for `stage=export`."""
    by_id = {example.id or str(row): example for row, example in enumerate(examples, 1)}
    measure_gap = stage.gap_examples and distributed.is_main()  # under torchrun rank 0 measures
    conversations = gap_conversations(stage, [by_id[item.id] for item in eval_items]) if measure_gap else []
    if conversations:  # stage=export measures the gap of the exported combination on exactly these replies
        save_gap_conversations(run.path(GAP_FILE), conversations)
    return conversations


def _trainer(
    backend: Any, stage: DictConfig, run: Run, identity: str, pack_length: Optional[int], split: tuple, stats: Any
) -> Any:
    """The training loop over the (packed) examples, fingerprinted for resume; the run's meta learns its sizes."""
    from charlab.training.sft import SftAlgorithm

    items, train_items, eval_items = split
    algorithm = SftAlgorithm(pack_length=pack_length, eval_batch_size=int(stage.eval_batch_size))
    fingerprint = f"{identity}|{stage.train_on}|{[len(i) for i in items]}|{[i.index for i in eval_items]}"
    return start_trainer(
        backend, algorithm, (train_items, eval_items), stage, run,
        fingerprint=fingerprint, data=stats.as_dict(), unit="examples",
    )  # fmt: skip


def _summary(
    summary: Any, stage: DictConfig, trained_on: str, pack_length: Optional[int], stats: Any, split: tuple, gaps: dict
) -> dict[str, Any]:
    """The stage's summary (meta.json, the report): steps, what it trained on, data counts, losses, gaps."""
    train_items, eval_items = split
    return {
        "steps": summary.steps,
        "resumed_at_step": summary.start_step,
        "trained_on": trained_on,
        "train_on": str(stage.train_on),
        "packing": pack_length is not None,
        **{f"data_{k}": v for k, v in stats.as_dict().items()},
        "train_examples": len(train_items),
        "eval_examples": len(eval_items),
        "eval/loss": summary.eval.get("eval/loss"),
        "train/loss": summary.train.get("loss"),
        **{f"gap/{name}": gap.gap for name, gap in gaps.items()},
    }


@register_stage(
    "sft",
    schema=SftStageConfig,
    description="introspective SFT (no system prompt) + distillation gap",
    data_parallel=True,
)
def run(cfg: DictConfig, run: Run) -> StageResult:
    """Train the SFT adapter, report held-out loss and the prompt-distillation gap."""
    from charlab.chat_format import ChatFormat
    from charlab.eval.distillation_gap import distillation_gap
    from charlab.models import load_tokenizer
    from charlab.training.dpo import split_eval

    stage, model, lora, backend_cfg = training_setup(cfg, validate)
    persona = load_persona(cfg)
    system_prompt = persona_prompt(cfg, persona=persona)
    data_path = Path(stage.data).expanduser()
    examples = read_examples(data_path)
    run.add_parent("data", data_path)
    init_adapter, notes = _start_weights(stage, run, backend_cfg)
    continued = init_adapter is not None and init_adapter.startswith("tinker://")
    resume_root = resume_root_of(stage, run, "an sft run directory")

    chat = ChatFormat(load_tokenizer(model, cache_dir(cfg)))
    max_length = int(stage.max_length)
    items, stats = _encode(chat, examples, stage, system_prompt, data_path)
    train_items, eval_items = split_eval(items, float(stage.eval_fraction), int(stage.seed))
    conversations = _gap_conversations(stage, run, examples, eval_items)
    gaps: dict[str, Any] = {}
    if conversations and init_adapter and not continued:  # otherwise the backend's reference weights are the base
        gaps["base"] = base_gap(cfg, chat, conversations, system_prompt)
    backend = create_backend(
        backend_cfg, model, lora, cache_dir(cfg), int(stage.seed), init_adapter, gpu_users=[run.pool]
    )
    with closing(backend):  # Tinker's session learns whether the stage succeeded
        if conversations:
            before = distillation_gap(backend_scorer(backend, True), chat, conversations, system_prompt)
            gaps["dpo" if init_adapter else "base"] = before
        packing = bool(stage.packing) and backend.supports_packing  # Tinker: no position resets
        pack_length = max_length if packing else None
        identity = model_identity(backend_cfg, model, init_adapter)
        trainer = _trainer(backend, stage, run, identity, pack_length, (items, train_items, eval_items), stats)
        trained = train_and_save(trainer, backend, stage, run, resume_root)
        if trained is None:  # under torchrun rank 0 saves, measures the gap and reports
            return other_rank()
        if conversations:
            gaps["sft"] = distillation_gap(backend_scorer(backend), chat, conversations, system_prompt)
    summary, adapter, remote = trained.summary, trained.adapter, trained.remote

    trained_on = CONTINUED if continued else ("base + DPO adapter merged" if init_adapter else "base")
    gaps = {name: gap for name, gap in gaps.items() if gap.examples}
    for name, gap in gaps.items():
        run.log_metrics(gap.as_metrics(f"gap/{name}"), step=summary.steps)
    held_out = summary.eval.get("eval/loss")
    result = _summary(summary, stage, trained_on, pack_length, stats, (train_items, eval_items), gaps)
    write_meta(
        adapter / "meta.json",
        run.config,
        dict(run.parents),
        artifact="sft adapter",
        base_model=model.name_or_path,
        trained_on=trained_on,
        summary=result,
        **remote,
    )
    if init_adapter and not continued:
        notes.append(MERGED_NOTE)
    write_report(run.path("report.md"), result, gaps, notes)
    print(f"[charlab] sft adapter: {adapter}")
    metric, name = (held_out, "eval/loss") if held_out is not None else (summary.train.get("loss"), "train/loss")
    return StageResult(
        metric=metric,
        metric_name=name,
        artifacts={
            "adapter": adapter,
            "checkpoints": run.dir / "checkpoints",
            "report": run.dir / "report.md",
            **remote,
            **({"gap_conversations": run.path(GAP_FILE)} if conversations else {}),
        },
        summary=result,
    )
