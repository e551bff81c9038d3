"""`stage=export`: the DPO and SFT adapters combined exactly into one PEFT adapter, plus a model card.

    python -m charlab.train stage=export stage.dpo_adapter=outputs/pirate/dpo/<run>/adapter \
        stage.sft_adapter=outputs/pirate/sft/<run>/adapter
    python -m charlab.train stage=export ... stage.sft_weight=1.0 stage.merge_full=true

Writes `adapter/` (rank r_dpo + r_sft, delta W = w_dpo * dW_dpo + w_sft * dW_sft exactly), `adapter/README.md`
(provenance and the `vllm serve ... --lora-modules` / transformers commands that load it), a `meta.json` beside
the adapter and, with `stage.merge_full=true`, `merged/` (base + adapter as a full safetensors model).

The SFT stage measured the prompt-distillation gap on base + DPO + 1.0 x SFT; the exported combination (the
paper's 1.0 / 0.25 mix by default) is the model every evaluation sees, so its gap is measured here too, on the
same held-out replies (the SFT run's `gap_conversations.jsonl`, or `stage.gap_data`): `gap/exported`.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from omegaconf import MISSING, DictConfig

from charlab.registry import StageResult, register_stage
from charlab.run import Run, read_meta, write_meta
from charlab.schemas import StageConfig
from charlab.stages._common import cache_dir, load_persona, model_config, persona_prompt, to_plain


@dataclass
class ExportStageConfig(StageConfig):
    """`stage=export`: which adapters, their weights, and what to write."""

    name: str = "export"
    dpo_adapter: Optional[str] = MISSING  # the dpo run's adapter/ folder (null: leave it out)
    sft_adapter: Optional[str] = MISSING  # the sft run's adapter/ folder (null: leave it out)
    dpo_weight: float = MISSING
    sft_weight: float = MISSING
    merge_full: bool = MISSING  # also write merged/ (a full model in safetensors)
    served_name: str = MISSING  # the LoRA module name in the vLLM command
    gap_data: Optional[str] = None  # conversations for the gap; None: the SFT run's gap_conversations.jsonl
    device: str = MISSING
    dtype: str = MISSING


def _source_provenance(path: Path) -> dict[str, Any]:
    """created_at / git SHA / persona of the run that wrote an adapter (its meta.json, if there)."""
    meta = read_meta(path) or read_meta(path.parent)
    return {k: meta[k] for k in ("created_at", "started_at", "git_sha", "stage") if k in meta}


def exported_gap(cfg: DictConfig, run: Run, adapter_dir: Path, sources: list[Any]) -> Optional[Any]:
    """The prompt-distillation gap of base + the exported adapter on the SFT run's held-out replies (None: none)."""
    from peft import PeftModel

    from charlab.chat_format import ChatFormat
    from charlab.data.jsonl import iter_jsonl
    from charlab.eval.distillation_gap import distillation_gap, hf_scorer
    from charlab.models import load_causal_lm, load_tokenizer
    from charlab.stages._training import GAP_FILE

    sft = next((s for s in sources if s.name == "sft"), None)
    path = (
        Path(cfg.stage.gap_data).expanduser() if cfg.stage.gap_data else (sft.path.parent / GAP_FILE if sft else None)
    )
    if path is None or not path.is_file():
        return None
    run.add_parent("gap_data", path)
    conversations = [row["messages"] for row in iter_jsonl(path)]
    model_cfg = model_config(cfg.model)
    chat = ChatFormat(load_tokenizer(model_cfg, cache_dir(cfg)))
    base = load_causal_lm(model_cfg, cache_dir(cfg), device=cfg.stage.device, dtype=cfg.stage.dtype)
    model = PeftModel.from_pretrained(base, str(adapter_dir)).merge_and_unload()
    persona = load_persona(cfg)
    system_prompt = persona_prompt(cfg, persona=persona)
    gap = distillation_gap(
        hf_scorer(model, pad_id=chat.tokenizer.pad_token_id or 0), chat, conversations, system_prompt
    )
    return gap if gap.examples else None


@register_stage("export", schema=ExportStageConfig, description="combine DPO + SFT adapters exactly; model card")
def run(cfg: DictConfig, run: Run) -> StageResult:
    """Combine the adapters, verify the combination, write the adapter, model card and (optionally) merged model."""
    from charlab.models import load_causal_lm, load_tokenizer
    from charlab.training.export import AdapterSource, export_adapters, model_card

    stage = cfg.stage
    sources = [
        AdapterSource(name, Path(str(path)).expanduser(), float(weight))
        for name, path, weight in (
            ("dpo", stage.dpo_adapter, stage.dpo_weight),
            ("sft", stage.sft_adapter, stage.sft_weight),
        )
        if path
    ]
    for source in sources:
        run.add_parent(f"{source.name}_adapter", source.path)
    model_cfg = model_config(cfg.model)
    base = load_causal_lm(model_cfg, cache_dir(cfg), device=stage.device, dtype=stage.dtype)
    tokenizer = load_tokenizer(model_cfg, cache_dir(cfg)) if stage.merge_full else None
    adapter_dir, merged_dir = run.dir / "adapter", (run.dir / "merged" if stage.merge_full else None)
    for folder in (adapter_dir, merged_dir):  # a rerun replaces what an interrupted one left
        if folder is not None and folder.exists():
            shutil.rmtree(folder)
    result = export_adapters(
        base, sources, adapter_dir, model_cfg.name_or_path, tokenizer=tokenizer, merged_dir=merged_dir
    )
    provenance = {"charlab run": str(run.dir)}
    for source in sources:
        info = _source_provenance(source.path)
        if info:
            provenance[f"{source.name} run"] = ", ".join(f"{k} {v}" for k, v in info.items())
    card = model_card(result, cfg.persona.name, model_cfg.name_or_path, stage.served_name, provenance)
    for folder in (adapter_dir, merged_dir):
        if folder is not None:
            (folder / "README.md").write_text(card, encoding="utf-8")
    summary = {
        "rank": result.rank,
        "max_relative_error": result.max_relative_error,
        "weights": {s.name: s.weight for s in sources},
        "merged": merged_dir is not None,
    }
    del base
    gap = exported_gap(cfg, run, adapter_dir, sources)
    if gap is not None:
        summary.update({"gap/exported": gap.gap, "gap_examples": gap.examples})
        run.log_metrics(gap.as_metrics("gap/exported"), step=0)
        print(f"[charlab] prompt-distillation gap of the exported adapter: {gap.gap:.4f} ({gap.examples} replies)")
    write_meta(adapter_dir / "meta.json", to_plain(run.config), dict(run.parents), summary=summary)
    run.log_metrics({"rank": result.rank, "max_relative_error": result.max_relative_error}, step=0)
    # the name the model card serves it under: what a later step sampling through vLLM asks for (see handoff.py)
    artifacts = {
        "adapter": adapter_dir,
        "model_card": adapter_dir / "README.md",
        "adapter_served_name": stage.served_name,
    }
    if merged_dir is not None:
        artifacts["merged"] = merged_dir
    print(f"[charlab] exported rank-{result.rank} adapter to {adapter_dir}\n{card.split('## Serve', 1)[-1][:600]}")
    return StageResult(
        metric=result.max_relative_error, metric_name="max_relative_error", artifacts=artifacts, summary=summary
    )
