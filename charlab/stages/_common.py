"""Helpers the stages share: turning config nodes into the plain objects the library layers take."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from omegaconf import DictConfig, OmegaConf

from charlab.constitution import Constitution, load_constitution, paper_assistant_name, validate_persona_name
from charlab.errors import ConfigError
from charlab.schemas import LoraConfig, ModelConfig

if TYPE_CHECKING:
    from charlab.generation.base import Sampler
    from charlab.generation.vllm import ServerPool


def to_plain(node: Any) -> Any:
    """A config node as plain Python data (resolved)."""
    return OmegaConf.to_container(node, resolve=True) if isinstance(node, DictConfig) else node


def load_persona(cfg: DictConfig) -> Constitution:
    """The run's constitution, validated (errors name the file and field)."""
    name = validate_persona_name(cfg.persona.name)
    return load_constitution(Path(cfg.persona.file), name=name)


def persona_prompt(
    cfg: DictConfig, variant: str = "teacher", persona: Constitution | None = None, role: str = "student"
) -> str:
    """The run's persona as a system prompt for one use (`variant`), in the run's `persona.prompt` style, for the
    model of provider `role` (the distillation teacher: `teacher`; the trained model: `student`)."""
    persona = persona or load_persona(cfg)
    name = assistant_name(cfg, persona, role)
    return persona.render_system_prompt(variant, assistant_name=name, style=str(cfg.persona.prompt))  # type: ignore[arg-type]


def assistant_name(cfg: DictConfig, persona: Constitution, role: str = "student") -> str | None:
    """The name `persona` goes by: `persona.assistant_name` (for the run's own persona), else the constitution's own;
    in the paper's style, else the family of `role`'s model, as the paper names it (`paper_assistant_name`)."""
    own = persona.name == cfg.persona.get("name")
    name = (cfg.persona.get("assistant_name") if own else None) or persona.assistant_name
    if name or str(cfg.persona.prompt) != "paper":
        return name
    return paper_assistant_name(str((cfg.get(role) or {}).get("model") or cfg.model.name))


def adapter_location(value: Any) -> str | None:
    """A configured adapter: a local folder (user-expanded), a remote `tinker://` path or a served LoRA name (both
    kept as they are); None when unset."""
    if not value:
        return None
    text = str(value)
    return text if "://" in text or "/" not in text and not text.startswith("~") else str(Path(text).expanduser())


def model_config(node: DictConfig) -> ModelConfig:
    """A `model` node as the `ModelConfig` dataclass."""
    return ModelConfig(**to_plain(node))


def lora_config(node: DictConfig) -> LoraConfig:
    """A `lora` node as the `LoraConfig` dataclass."""
    return LoraConfig(**to_plain(node))


def cache_dir(cfg: DictConfig) -> Path:
    """Where converted/built offline models and caches live."""
    return Path(cfg.paths.cache_dir).expanduser()


def sampler_for_role(
    cfg: DictConfig,
    role: str,
    adapter: str | None = None,
    serve_also: list[str] | None = None,
    *,
    pool: ServerPool | None,
) -> Sampler:
    """The `Sampler` of a provider role (`teacher`, `student`, `judge`): `cfg[role]` over the run's model;
    `serve_also`: other adapters the stage will sample through the same provider (see `make_sampler`); `pool`: the
    run's vLLM server pool (`run.pool`; a `vllm` provider needs it).

    For local (hf, vllm) and tinker providers, `<role>.model` may name a model config (`teacher.model=smollm2-135m`),
    so offline models work as teacher or judge beside another run model; any other value is a hub id/path.
    """
    from charlab.generation.factory import make_sampler

    provider, model = role_provider(cfg, role)
    return make_sampler(provider, model, cache_dir(cfg), adapter, serve_also or (), pool)


def role_provider(cfg: DictConfig, role: str) -> tuple[dict[str, Any], ModelConfig]:
    """A provider role's config (plain) and the model it runs: `<role>.model` naming a model config
    (`teacher.model=smollm2-135m`) becomes that `ModelConfig` (for hf, tinker, vllm), else the run's model."""
    if role not in cfg:
        raise ConfigError(f"no provider config '{role}'; use teacher, student or judge")
    from charlab.generation.factory import PROVIDERS

    provider = to_plain(cfg[role])
    model = model_config(cfg.model)
    entry = PROVIDERS.get(str(provider.get("kind")))
    named = _named_model(cfg, provider.get("model")) if entry is not None and entry.named_models else None
    if named is not None:
        model, provider = named, {**provider, "model": None}
    return provider, model


def _named_model(cfg: DictConfig, name: Any) -> ModelConfig | None:
    """The `configs/model/<name>.yaml` model config, resolved against this run's paths; None if no such file."""
    from charlab.settings import configs_dir

    if not isinstance(name, str) or not name or "/" in name or name.startswith("."):
        return None
    path = configs_dir() / "model" / f"{name}.yaml"
    if not path.is_file():
        return None
    node = OmegaConf.load(path)
    node.pop("defaults", None)
    paths = OmegaConf.to_container(cfg.paths, resolve=False)  # only what the model file refers to gets resolved
    root = OmegaConf.create({"paths": paths, "model": OmegaConf.merge(OmegaConf.structured(ModelConfig), node)})
    return ModelConfig(**OmegaConf.to_container(root.model, resolve=True))
