"""The stages: one module per stage, each registering its `run` with `@register_stage` when it is imported.

Importing this package loads nothing; `load_stages()` (called by `charlab.app.setup()`) imports the modules named in
`STAGE_MODULES`. A new stage is one module here and one name in that tuple.
"""

from __future__ import annotations

import importlib

from charlab.registry import StageSpec, all_stages

STAGE_MODULES = (
    "charlab.stages.show",
    "charlab.stages.distill",
    "charlab.stages.dpo",
    "charlab.stages.introspect",
    "charlab.stages.sft",
    "charlab.stages.export",
    "charlab.stages.classifier",
    "charlab.stages.coherence",
    "charlab.stages.capability",
    "charlab.stages.revealed",
    "charlab.stages.elo",
    "charlab.stages.draft_constitution",
    "charlab.stages.pipeline",
)


def load_stages() -> list[StageSpec]:
    """Import every stage module (each registers itself) and return the registered stages."""
    for module in STAGE_MODULES:
        importlib.import_module(module)
    return all_stages()
