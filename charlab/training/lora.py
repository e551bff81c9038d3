"""LoRA target modules resolved per architecture, so no model silently trains fewer layers than asked.

Configs name the Llama-style projections (`q_proj, k_proj, v_proj, o_proj, gate_proj, up_proj, down_proj`).
Most chat models use exactly these names; others call the same layers differently (`c_attn`, `qkv_proj`,
`query_key_value`, `fc1`, `w1`, ...). Each requested name becomes the model's own leaf name: the name itself
when the model has it, else the first known alias it has; a name that matches no linear layer at all is a
one-line `ConfigError` listing the model's linear layers.
"""

from __future__ import annotations

import logging
from typing import Any

from charlab.errors import ConfigError

log = logging.getLogger("charlab")

# Aliases in preference order. Fused projections (qkv, gate+up) serve several canonical names.
ALIASES: dict[str, tuple[str, ...]] = {
    "q_proj": ("q_proj", "query", "wq", "qkv_proj", "c_attn", "query_key_value", "Wqkv", "W_pack"),
    "k_proj": ("k_proj", "key", "wk", "qkv_proj", "c_attn", "query_key_value", "Wqkv", "W_pack"),
    "v_proj": ("v_proj", "value", "wv", "qkv_proj", "c_attn", "query_key_value", "Wqkv", "W_pack"),
    "o_proj": ("o_proj", "out_proj", "wo", "dense", "attn_out"),
    "gate_proj": ("gate_proj", "w1", "gate_up_proj", "ff_proj"),
    "up_proj": ("up_proj", "w3", "gate_up_proj", "fc1", "c_fc", "dense_h_to_4h", "fc_in"),
    "down_proj": ("down_proj", "w2", "fc2", "dense_4h_to_h", "fc_out", "ff_out"),
}
# Layers that are never LoRA targets here (the output head, embeddings, classifier heads).
EXCLUDED = ("lm_head", "embed", "wte", "wpe", "score", "classifier", "output_layer")


def linear_leaf_names(model: Any) -> dict[str, int]:
    """Leaf names of the model's linear layers (nn.Linear or GPT-2's Conv1D) and how many layers have each."""
    import torch

    counts: dict[str, int] = {}
    for name, module in model.named_modules():
        if not name or any(part in name for part in EXCLUDED):
            continue
        if isinstance(module, torch.nn.Linear) or type(module).__name__ == "Conv1D":
            leaf = name.rsplit(".", 1)[-1]
            counts[leaf] = counts.get(leaf, 0) + 1
    return counts


def resolve_target_modules(model: Any, requested: list[str], model_name: str = "model") -> list[str]:
    """The model's own leaf names for `requested` (deduplicated, in order); a name matching nothing is an error."""
    if not requested:
        raise ConfigError("lora.target_modules is empty; list the layers to adapt, e.g. [q_proj, v_proj]")
    available = linear_leaf_names(model)
    resolved: list[str] = []
    for name in requested:
        match = next((alias for alias in ALIASES.get(name, (name,)) if alias in available), None)
        if match is None:
            raise ConfigError(
                f"lora.target_modules: '{name}' matches no linear layer of model '{model_name}'; "
                f"its linear layers are: {', '.join(sorted(available))}"
            )
        if match != name:
            log.info("LoRA target %s -> %s on %s", name, match, model_name)
        if match not in resolved:
            resolved.append(match)
    missed = sorted(set(available) - set(resolved))
    if missed:
        log.info("LoRA leaves these linear layers of %s untrained: %s", model_name, ", ".join(missed))
    return resolved
