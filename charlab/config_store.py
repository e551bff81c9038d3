"""Registers the structured-config schemas with Hydra's ConfigStore (group `schemas`).

Each YAML of a typed group pulls its schema in with `defaults: [/schemas@_here_: <name>, _self_]`, so unknown
keys and wrong types fail at start. Stage schemas come from the stage registry (`stage_<name>`), handed in by
`charlab.app.setup()`.
"""

from __future__ import annotations

from collections.abc import Iterable

from hydra.core.config_store import ConfigStore

from charlab.registry import StageSpec
from charlab.schemas import (
    DataConfig,
    EvalConfig,
    HfProviderConfig,
    LocalBackendConfig,
    LoraConfig,
    ModelConfig,
    NoLoggerConfig,
    OpenAIProviderConfig,
    PathsConfig,
    PersonaConfig,
    StageConfig,
    TinkerBackendConfig,
    TinkerProviderConfig,
    VllmProviderConfig,
    WandbLoggerConfig,
)

# schema name -> dataclass, for every group but `stage` (each stage brings its own)
GROUP_SCHEMAS: dict[str, type] = {
    "model": ModelConfig,
    "lora": LoraConfig,
    "local_backend": LocalBackendConfig,
    "tinker_backend": TinkerBackendConfig,
    "persona": PersonaConfig,
    "paths": PathsConfig,
    "data": DataConfig,
    "eval": EvalConfig,
    "none_logger": NoLoggerConfig,
    "wandb_logger": WandbLoggerConfig,
    "hf_provider": HfProviderConfig,
    "openai_provider": OpenAIProviderConfig,
    "tinker_provider": TinkerProviderConfig,
    "vllm_provider": VllmProviderConfig,
}


def register_schemas(stages: Iterable[StageSpec]) -> None:
    """Store the group schemas and every stage's (`stage_<name>`, plus its further `schemas`); storing again is
    harmless (the ConfigStore replaces an entry by name)."""
    cs = ConfigStore.instance()
    for name, node in GROUP_SCHEMAS.items():
        cs.store(group="schemas", name=name, node=node)
    for spec in stages:
        cs.store(group="schemas", name=f"stage_{spec.name}", node=spec.schema or StageConfig)
        for key, node in spec.schemas.items():
            cs.store(group="schemas", name=key, node=node)
