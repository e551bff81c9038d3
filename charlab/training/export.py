"""Export a persona: the DPO and SFT adapters combined exactly, optionally merged into a full model.

Exact combination concatenates ranks (PEFT `add_weighted_adapter(..., combination_type="cat")`): for every
adapted layer the combined adapter's delta is `w1 * s1 * B1 A1 + w2 * s2 * B2 A2` (s = alpha / r of each
adapter), with rank r1 + r2 and scaling 1. PEFT's "linear" type mixes the A and B matrices separately, which
is not the weighted sum of the deltas, so it is never used here. Each combination is checked numerically
against the weighted sum of the source deltas on random probes before anything is written.

Local SFT trains on the base with the DPO adapter merged in, so base + DPO delta + SFT delta is the trained
model (weights 1.0 / 1.0); the paper's released mix is 1.0 / 0.25. On Tinker, where SFT trains from the base,
the same combination is the closest correct route (see `configs/stage/sft.yaml`).

    model = export_adapters(base, [("dpo", dpo_dir, 1.0), ("sft", sft_dir, 0.25)], out_dir / "adapter")
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional

from charlab.errors import ConfigError, ModelNotFoundError

if TYPE_CHECKING:  # pragma: no cover
    import torch

log = logging.getLogger("charlab")
COMBINED = "default"  # PEFT saves the adapter named "default" at the folder's root (vLLM loads it from there)
VLLM_LORA_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)  # vllm.config.lora.MaxLoRARanks
EXACT_TOLERANCE = 1e-4  # relative error of the combined delta; float32 rounding is ~1e-7


@dataclass(frozen=True)
class AdapterSource:
    """One adapter to combine: a short name, its PEFT folder and its weight."""

    name: str
    path: Path
    weight: float


@dataclass
class ExportResult:
    """What an export wrote and how exact the combination is."""

    adapter_dir: Path
    rank: int
    target_modules: list[str]
    max_relative_error: float
    merged_dir: Optional[Path] = None
    sources: list[AdapterSource] = field(default_factory=list)


def read_adapter_config(path: Path) -> dict[str, Any]:
    """`adapter_config.json` of a PEFT folder, or a one-line error naming the folder."""
    config_path = Path(path) / "adapter_config.json"
    if not config_path.is_file():
        raise ModelNotFoundError(f"adapter '{path}': no adapter_config.json there; pass a PEFT adapter folder")
    try:
        return json.loads(config_path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise ModelNotFoundError(f"{config_path}: invalid JSON ({err.msg})") from None


def vllm_max_lora_rank(rank: int) -> Optional[int]:
    """The smallest `--max-lora-rank` vLLM accepts for `rank`, or None when vLLM cannot serve it."""
    return next((r for r in VLLM_LORA_RANKS if r >= rank), None)


def _check_sources(sources: list[AdapterSource]) -> None:
    if not sources:
        raise ConfigError("nothing to export: set stage.dpo_adapter and/or stage.sft_adapter")
    names = [s.name for s in sources]
    if len(set(names)) != len(names) or COMBINED in names:
        raise ConfigError(f"adapter names must be distinct and not '{COMBINED}': {names}")
    for source in sources:
        config = read_adapter_config(source.path)
        if config.get("peft_type", "LORA") != "LORA":
            raise ConfigError(f"adapter '{source.path}': peft_type {config.get('peft_type')} is not LORA")
        if config.get("use_dora"):
            raise ConfigError(f"adapter '{source.path}': DoRA cannot be combined by rank concatenation")


def combine_adapters(base_model: Any, sources: list[AdapterSource]) -> tuple[Any, float]:
    """A PeftModel whose only adapter (`default`) is the exact weighted sum of `sources`; and its checked error.

    `base_model` (a transformers model) is wrapped and modified in place.
    """
    from peft import PeftModel

    _check_sources(sources)
    first, *rest = sources
    model = PeftModel.from_pretrained(base_model, str(first.path), adapter_name=first.name)
    for source in rest:
        model.load_adapter(str(source.path), adapter_name=source.name)
    if len(sources) == 1:
        # PEFT's single-adapter path takes sqrt(weight), undefined for negative weights: scale A directly.
        _copy_scaled(model, first)
    else:
        model.add_weighted_adapter(
            adapters=[s.name for s in sources],
            weights=[float(s.weight) for s in sources],
            adapter_name=COMBINED,
            combination_type="cat",
        )
    _force_unit_scaling(model)
    error = combination_error(model, sources)
    if error > EXACT_TOLERANCE:
        raise RuntimeError(f"combined adapter deviates from the weighted sum of its sources (rel. error {error:.2e})")
    model.set_adapter(COMBINED)
    for source in sources:
        model.delete_adapter(source.name)
    return model, error


def _copy_scaled(model: Any, source: AdapterSource) -> None:
    """One adapter times a weight, as adapter `default` with scaling 1 (A absorbs weight x alpha/r).

    Scaling 1 means alpha = rank in every layer: a layer with its own rank (`rank_pattern`) gets that rank as
    its alpha too, or the saved config would reload it scaled by r / its rank.
    """
    from dataclasses import replace

    config = model.peft_config[source.name]
    alphas = dict(config.rank_pattern or {})
    model.peft_config[COMBINED] = replace(config, lora_alpha=config.r, use_rslora=False, alpha_pattern=alphas)
    model.base_model.inject_adapter(model.base_model.model, COMBINED)
    for layer in _lora_layers(model):
        if source.name in layer.lora_A:
            layer.lora_A[COMBINED].weight.data = layer.lora_A[source.name].weight.data * (
                source.weight * layer.scaling[source.name]
            )
            layer.lora_B[COMBINED].weight.data = layer.lora_B[source.name].weight.data.clone()


def _force_unit_scaling(model: Any) -> None:
    """The combined adapter has alpha = r, so scaling 1; with rsLoRA it would be sqrt(r): switch that off."""
    config = model.peft_config[COMBINED]
    if getattr(config, "use_rslora", False):
        config.use_rslora = False
    for layer in _lora_layers(model):
        if COMBINED in layer.scaling:
            layer.scaling[COMBINED] = 1.0


def _lora_layers(model: Any) -> list[Any]:
    from peft.tuners.lora import LoraLayer

    return [m for m in model.modules() if isinstance(m, LoraLayer)]


def combination_error(model: Any, sources: list[AdapterSource], probes: int = 4, seed: int = 0) -> float:
    """Largest relative difference, over adapted layers, between the combined delta and sum(w * delta_i).

    Deltas are applied to random probe vectors (never materialised as full matrices), so this is cheap for
    large models too.
    """
    import torch

    generator = torch.Generator().manual_seed(seed)
    worst = 0.0
    for layer in _lora_layers(model):
        if COMBINED not in layer.lora_A:
            continue
        a = layer.lora_A[COMBINED].weight.float()
        x = torch.randn(probes, a.shape[1], generator=generator).to(a.device)
        combined = _apply(layer, COMBINED, x)
        expected = torch.zeros_like(combined)
        for source in sources:
            if source.name in layer.lora_A:
                expected += source.weight * _apply(layer, source.name, x)
        scale = float(expected.abs().max()) or 1.0
        worst = max(worst, float((combined - expected).abs().max()) / scale)
    return worst


def _apply(layer: Any, name: str, x: torch.Tensor) -> torch.Tensor:
    a = layer.lora_A[name].weight.float()
    b = layer.lora_B[name].weight.float()
    return (x @ a.T) @ b.T * float(layer.scaling[name])


def save_adapter(model: Any, folder: Path, base_name_or_path: str = "") -> tuple[int, list[str]]:
    """Write the combined adapter as a standard PEFT folder; returns its rank and target modules."""
    folder = Path(folder)
    model.save_pretrained(str(folder), selected_adapters=[COMBINED])
    config_path = folder / "adapter_config.json"
    config = json.loads(config_path.read_text(encoding="utf-8"))
    if base_name_or_path:  # the hub id, not this machine's cache folder
        config["base_model_name_or_path"] = base_name_or_path
    config_path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    targets = config.get("target_modules") or []
    return int(config["r"]), sorted(targets) if isinstance(targets, list) else [str(targets)]


def save_merged(model: Any, tokenizer: Any, folder: Path) -> Path:
    """Merge the combined adapter into the base weights and save a full model (safetensors) with its tokenizer.

    This unloads the adapter from `model`: call it last.
    """
    folder = Path(folder)
    merged = model.merge_and_unload()
    merged.save_pretrained(str(folder), safe_serialization=True)
    tokenizer.save_pretrained(str(folder))
    return folder


def export_adapters(
    base_model: Any,
    sources: list[AdapterSource],
    adapter_dir: Path,
    base_name_or_path: str = "",
    tokenizer: Any = None,
    merged_dir: Optional[Path] = None,
) -> ExportResult:
    """Combine `sources` into `adapter_dir` (and a merged full model into `merged_dir` when given)."""
    model, error = combine_adapters(base_model, sources)
    rank, targets = save_adapter(model, adapter_dir, base_name_or_path)
    log.info("combined %s into rank %d (relative error %.1e)", [s.name for s in sources], rank, error)
    result = ExportResult(Path(adapter_dir), rank, targets, error, sources=list(sources))
    if merged_dir is not None:
        if tokenizer is None:
            raise ValueError("a merged model needs the tokenizer to be saved beside it")
        result.merged_dir = save_merged(model, tokenizer, merged_dir)
    return result


# ------------------------------------------------------------------------------------------------ model card


def model_card(
    result: ExportResult,
    persona: str,
    base_model: str,
    served_name: str,
    provenance: Optional[dict[str, Any]] = None,
    system_prompt_note: str = "",
) -> str:
    """A `README.md` for the exported adapter: what it is, where it came from, and commands that load it."""
    adapter = result.adapter_dir.resolve()
    max_rank = vllm_max_lora_rank(result.rank)
    formula = " + ".join(f"{s.weight:g} x {s.name}" for s in result.sources)
    lines = [
        "---",
        f"base_model: {base_model}",
        "library_name: peft",
        "tags: [charlab, character-training, lora]",
        "---",
        "",
        f"# {served_name}: the `{persona}` persona for {base_model}",
        "",
        "A LoRA adapter trained with charlab's character-training recipe (constitution -> DPO distillation -> "
        "introspective SFT). The persona lives in the weights: no system prompt is needed."
        + (f" {system_prompt_note}" if system_prompt_note else ""),
        "",
        "## How it was made",
        "",
        f"- persona: `{persona}`; base model: `{base_model}`",
        f"- combination: delta W = {formula} (ranks concatenated, exact; checked relative error "
        f"{result.max_relative_error:.1e}); rank {result.rank}, scaling 1",
        f"- adapted modules: {', '.join(result.target_modules)}",
    ]
    for source in result.sources:
        lines.append(f"- {source.name} adapter: `{source.path}` (weight {source.weight:g})")
    for key, value in (provenance or {}).items():
        lines.append(f"- {key}: {value}")
    lines += ["", "## Serve with vLLM (OpenAI-compatible)", ""]
    if max_rank is None:
        lines.append(f"Rank {result.rank} exceeds vLLM's largest `--max-lora-rank` (512): serve the merged model.")
    else:
        lines += [
            "```bash",
            f"vllm serve {base_model} --enable-lora --lora-modules {served_name}={adapter} --max-lora-rank {max_rank}",
            "```",
            "",
            f'then ask for `model="{served_name}"`, e.g. with charlab: '
            f"`python -m charlab.train stage=<stage> provider@student=openai student.model={served_name} "
            "student.base_url=http://127.0.0.1:8000/v1`.",
        ]
    lines += [
        "",
        "## Load with transformers + PEFT",
        "",
        "```python",
        "from peft import PeftModel",
        "from transformers import AutoModelForCausalLM, AutoTokenizer",
        "",
        f'tokenizer = AutoTokenizer.from_pretrained("{base_model}")',
        f'model = AutoModelForCausalLM.from_pretrained("{base_model}")',
        f'model = PeftModel.from_pretrained(model, "{adapter}")',
        'messages = [{"role": "user", "content": "Tell me about yourself."}]',
        'inputs = tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt")',
        "out = model.generate(**inputs, max_new_tokens=200)",
        'print(tokenizer.decode(out[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True))',
        "```",
    ]
    if result.merged_dir is not None:
        merged = result.merged_dir.resolve()
        lines += [
            "",
            "## The merged full model",
            "",
            f"`{merged}` holds base + adapter merged (safetensors, with the tokenizer): "
            f'`AutoModelForCausalLM.from_pretrained("{merged}")`, or `vllm serve {merged}`.',
        ]
    return "\n".join(lines) + "\n"
