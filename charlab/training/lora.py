"""LoRA target modules resolved per architecture, so no model silently trains fewer layers than asked.

Configs name the Llama-style projections (`q_proj, k_proj, v_proj, o_proj, gate_proj, up_proj, down_proj`).
Most chat models use exactly these names; others call the same layers differently (`c_attn`, `qkv_proj`,
`query_key_value`, `fc1`, `w1`, ...). Each requested name becomes the model's own name for it: the name itself
when the model has it, else the first known alias it has. An alias may be a dotted suffix where one leaf name
means two layers (GPT-2's `attn.c_proj` is the attention output, `mlp.c_proj` the MLP's down projection); PEFT
matches target modules by suffix, so the suffix is the target. `gate_proj` on a model without a gated MLP (GPT-2)
is skipped with a log line; any other name that matches no linear layer is a one-line `ConfigError` listing the
model's linear layers.
"""

from __future__ import annotations

import logging
from typing import Any, Optional

from charlab.errors import ConfigError

log = logging.getLogger("charlab")

# Aliases in preference order. Fused projections (qkv, gate+up) serve several canonical names.
ALIASES: dict[str, tuple[str, ...]] = {
    "q_proj": ("q_proj", "query", "wq", "qkv_proj", "c_attn", "query_key_value", "Wqkv", "W_pack"),
    "k_proj": ("k_proj", "key", "wk", "qkv_proj", "c_attn", "query_key_value", "Wqkv", "W_pack"),
    "v_proj": ("v_proj", "value", "wv", "qkv_proj", "c_attn", "query_key_value", "Wqkv", "W_pack"),
    "o_proj": ("o_proj", "out_proj", "wo", "dense", "attn_out", "attn.c_proj"),
    "gate_proj": ("gate_proj", "w1", "gate_up_proj", "ff_proj"),
    "up_proj": ("up_proj", "w3", "gate_up_proj", "fc1", "c_fc", "dense_h_to_4h", "fc_in"),
    "down_proj": ("down_proj", "w2", "fc2", "dense_4h_to_h", "fc_out", "ff_out", "mlp.c_proj"),
}
# A canonical name an architecture may simply not have, and the layer that shows the model has that block:
# an MLP with an up projection but no gate is not gated, so there is no gate to adapt.
ABSENT_WHEN_UNGATED = {"gate_proj": "up_proj"}
# Layers that are never LoRA targets here (the output head, embeddings, classifier heads).
EXCLUDED = ("lm_head", "embed", "wte", "wpe", "score", "classifier", "output_layer")


def linear_layer_names(model: Any) -> list[str]:
    """Full names of the model's linear layers (nn.Linear or GPT-2's Conv1D), heads and embeddings left out."""
    import torch

    return [
        name
        for name, module in model.named_modules()
        if name
        and not any(part in name for part in EXCLUDED)
        and (isinstance(module, torch.nn.Linear) or type(module).__name__ == "Conv1D")
    ]


def linear_leaf_names(model: Any) -> dict[str, int]:
    """Leaf names of the model's linear layers and how many layers have each."""
    counts: dict[str, int] = {}
    for name in linear_layer_names(model):
        leaf = name.rsplit(".", 1)[-1]
        counts[leaf] = counts.get(leaf, 0) + 1
    return counts


def _first_alias(name: str, layers: list[str]) -> Optional[str]:
    """The first alias of `name` that some layer is called (as PEFT matches: the whole name or a dotted suffix)."""
    return next(
        (a for a in ALIASES.get(name, (name,)) if any(n == a or n.endswith("." + a) for n in layers)),
        None,
    )


def resolve_target_modules(model: Any, requested: list[str], model_name: str = "model") -> list[str]:
    """The model's own names for `requested` (deduplicated, in order); a name matching nothing is an error."""
    if not requested:
        raise ConfigError("lora.target_modules is empty; list the layers to adapt, e.g. [q_proj, v_proj]")
    layers = linear_layer_names(model)
    resolved: list[str] = []
    for name in requested:
        match = _first_alias(name, layers)
        if match is None and name in ABSENT_WHEN_UNGATED and _first_alias(ABSENT_WHEN_UNGATED[name], layers):
            log.info("LoRA target %s: %s has no gated MLP; skipped", name, model_name)
            continue
        if match is None:
            raise ConfigError(
                f"lora.target_modules: '{name}' matches no linear layer of model '{model_name}'; "
                f"its linear layers are: {', '.join(sorted(linear_leaf_names(model)))}"
            )
        if match != name:
            log.info("LoRA target %s -> %s on %s", name, match, model_name)
        if match not in resolved:
            resolved.append(match)
    missed = sorted(
        {".".join(n.split(".")[-2:]) for n in layers if not any(n == t or n.endswith("." + t) for t in resolved)}
    )
    if missed:
        log.info("LoRA leaves these linear layers of %s untrained: %s", model_name, ", ".join(missed))
    return resolved
