"""Registers the structured-config schemas with Hydra's ConfigStore (group `schemas`).

Each YAML of a typed group pulls its schema in with `defaults: [/schemas@_here_: <name>, _self_]`, so unknown
keys and wrong types fail at start. Stage schemas come from the stage registry (`stage_<name>`), handed in by
`charlab.app.setup()`.
"""

from __future__ import annotations

from collections.abc import Iterable

from hydra.core.config_store import ConfigStore

from charlab.registry import StageSpec
from charlab.schemas import LocalBackendConfig, LoraConfig, ModelConfig, StageConfig, TinkerBackendConfig


def register_schemas(stages: Iterable[StageSpec]) -> None:
    """Store the group schemas and every stage's (`stage_<name>`, plus its further `schemas`); storing again is
    harmless (the ConfigStore replaces an entry by name)."""
    cs = ConfigStore.instance()
    cs.store(group="schemas", name="model", node=ModelConfig)
    cs.store(group="schemas", name="lora", node=LoraConfig)
    cs.store(group="schemas", name="local_backend", node=LocalBackendConfig)
    cs.store(group="schemas", name="tinker_backend", node=TinkerBackendConfig)
    for spec in stages:
        cs.store(group="schemas", name=f"stage_{spec.name}", node=spec.schema or StageConfig)
        for key, node in spec.schemas.items():
            cs.store(group="schemas", name=key, node=node)
