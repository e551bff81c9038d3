"""Helpers the stages share: turning config nodes into the plain objects the library layers take."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from charlab.constitution import Constitution, load_constitution, validate_persona_name
from charlab.schemas import LoraConfig, ModelConfig


def to_plain(node: Any) -> Any:
    """A config node as plain Python data (resolved)."""
    return OmegaConf.to_container(node, resolve=True) if isinstance(node, DictConfig) else node


def load_persona(cfg: DictConfig) -> Constitution:
    """The run's constitution, validated (errors name the file and field)."""
    name = validate_persona_name(cfg.persona.name)
    return load_constitution(Path(cfg.persona.file), name=name)


def model_config(node: DictConfig) -> ModelConfig:
    """A `model` node as the `ModelConfig` dataclass."""
    return ModelConfig(**to_plain(node))


def lora_config(node: DictConfig) -> LoraConfig:
    """A `lora` node as the `LoraConfig` dataclass."""
    return LoraConfig(**to_plain(node))


def cache_dir(cfg: DictConfig) -> Path:
    """Where converted/built offline models and caches live."""
    return Path(cfg.paths.cache_dir).expanduser()
