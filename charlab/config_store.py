"""Registers the structured-config schemas with Hydra's ConfigStore (group `schemas`).

Each YAML of a typed group pulls its schema in with `defaults: [/schemas@_here_: <name>, _self_]`, so unknown
keys and wrong types fail at start. Stage schemas come from the stage registry (`stage_<name>`).
"""

from __future__ import annotations

from hydra.core.config_store import ConfigStore

from charlab.registry import all_stages
from charlab.schemas import LocalBackendConfig, LoraConfig, ModelConfig, StageConfig, TinkerBackendConfig

_done = False


def register_schemas() -> None:
    """Store every schema once (idempotent)."""
    global _done
    if _done:
        return
    cs = ConfigStore.instance()
    cs.store(group="schemas", name="model", node=ModelConfig)
    cs.store(group="schemas", name="lora", node=LoraConfig)
    cs.store(group="schemas", name="local_backend", node=LocalBackendConfig)
    cs.store(group="schemas", name="tinker_backend", node=TinkerBackendConfig)
    from charlab.stages.pipeline import PipelineConfig

    cs.store(group="schemas", name="pipeline", node=PipelineConfig)
    for spec in all_stages():
        cs.store(group="schemas", name=f"stage_{spec.name}", node=spec.schema or StageConfig)
    _done = True
