"""charlab: open character training (constitution -> DPO distillation -> introspective SFT -> evaluation).

The Python API mirrors the seed project's calls; each runs the same Hydra-composed stage the CLI would:

    from charlab import generate_dpo_pairs, GenerationConfig, run_dpo_training, TrainingConfig
    pairs = generate_dpo_pairs(GenerationConfig(persona="pirate", pair_count=16))
    adapter = run_dpo_training(TrainingConfig(dataset_path=pairs, persona="pirate"))

Names are imported lazily, so `import charlab` stays cheap (no torch).
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_API = {
    "Constitution": "charlab.constitution",
    "load_constitution": "charlab.constitution",
    "save_constitution": "charlab.constitution",
    "generate_constitution": "charlab.drafting",
    "format_constitution": "charlab.drafting",
    "GenerationConfig": "charlab.api",
    "generate_dpo_pairs": "charlab.api",
    "TrainingConfig": "charlab.api",
    "run_dpo_training": "charlab.api",
    "ClassifierConfig": "charlab.eval.persona_classifier",
    "train_classifier": "charlab.eval.persona_classifier",
    "compute_elo": "charlab.eval.elo",
    "load_matches": "charlab.eval.elo",
    "DpoExample": "charlab.data.records",
    "IntrospectionExample": "charlab.data.records",
    "Match": "charlab.data.records",
}
__all__ = sorted(_API)


def __getattr__(name: str) -> Any:
    module = _API.get(name)
    if module is None:
        raise AttributeError(f"module 'charlab' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)


def __dir__() -> list[str]:
    return sorted(list(globals()) + __all__)
