"""Build a `Sampler` from a resolved provider config (`configs/provider/{hf,openai,tinker,vllm}.yaml`).

A provider dict says which kind of sampler (`kind`), which model (`model`; null means the run's model) and
how to sample; `make_sampler` turns it into a sampler and `sampling_params` into `SamplingParams`. Every
default lives in the provider YAML; a hand-built dict must carry the same keys.

    provider = {"kind": "hf", "model": None, "adapter": None, "batch_size": 8, "device": "auto", "dtype": "auto"}
    sampler = make_sampler(provider, model_cfg, cache_dir)
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any, Optional

from charlab.errors import ConfigError, ModelNotFoundError, ProviderError
from charlab.generation.base import Sampler, SamplingParams
from charlab.schemas import ModelConfig
from charlab.settings import safe_path_part

KINDS = ("hf", "openai", "tinker", "vllm")


def _need(provider: dict[str, Any], key: str) -> Any:
    if key not in provider:
        raise ConfigError(f"provider '{provider.get('kind', '?')}': missing key '{key}' (see configs/provider/)")
    return provider[key]


def _optional(provider: dict[str, Any], *keys: str) -> dict[str, Any]:
    return {k: provider[k] for k in keys if provider.get(k) is not None}


def provider_model(provider: dict[str, Any], model: ModelConfig) -> ModelConfig:
    """The model an `hf` provider loads: the run's model unless `provider.model` names another one."""
    name = provider.get("model")
    if not name or name in (model.name, model.name_or_path):
        return model
    return ModelConfig(name=safe_path_part(Path(str(name)).name) or "model", name_or_path=str(name))


def sampling_params(provider: dict[str, Any]) -> SamplingParams:
    """How a provider samples (temperature, top_p, max_new_tokens, repetition_penalty, stop strings, seed)."""
    params = SamplingParams(
        temperature=float(_need(provider, "temperature")),
        top_p=float(_need(provider, "top_p")),
        max_new_tokens=int(_need(provider, "max_new_tokens")),
        repetition_penalty=float(_need(provider, "repetition_penalty")),
        stop=[str(s) for s in provider.get("stop") or []],
        seed=provider.get("seed"),
    )
    kind = provider.get("kind")
    if params.temperature < 0 or not 0 < params.top_p <= 1 or params.max_new_tokens < 1:
        raise ConfigError(
            f"provider '{kind}': temperature={params.temperature}, top_p={params.top_p}, "
            f"max_new_tokens={params.max_new_tokens} not allowed; use >= 0, in (0, 1] and >= 1"
        )
    if params.repetition_penalty <= 0 or kind == "tinker" and params.repetition_penalty != 1.0:
        allowed = "1.0 (Tinker's sampler has no repetition penalty)" if kind == "tinker" else "a number > 0 (1.0: off)"
        value = params.repetition_penalty
        raise ConfigError(f"provider '{kind}': repetition_penalty={value} is not allowed; use {allowed}")
    return params


SAMPLING_KEYS = ("temperature", "top_p", "max_new_tokens", "repetition_penalty", "stop", "seed")


def sampler_key(provider: dict[str, Any], model: ModelConfig, adapter: Optional[str] = None) -> Optional[tuple]:
    """What decides the sampler a provider builds; two roles with equal keys can share one sampler.

    `hf`: the loaded weights (model, adapter, device, dtype). `openai`/`tinker`: the endpoint, model and
    connection settings, so one `max_concurrency` bounds both roles. Sampling settings are not part of it:
    they travel with each request. None for an unknown kind.
    """
    kind = provider.get("kind")
    if kind == "hf":
        resolved = provider_model(provider, model)
        return (kind, resolved.name_or_path, adapter or provider.get("adapter"), provider.get("device"),
                provider.get("dtype"))  # fmt: skip
    if kind in ("openai", "tinker"):
        rest = sorted((k, str(v)) for k, v in provider.items() if k not in SAMPLING_KEYS)
        return (kind, adapter, *rest)
    return None


def make_sampler(
    provider: dict[str, Any],
    model: ModelConfig,
    cache_dir: Path,
    adapter: Optional[str] = None,
    serve_also: Sequence[str] = (),
) -> Sampler:
    """The sampler a provider config asks for, with `adapter` in the form the provider takes (overriding its own):
    a PEFT folder (`hf`; `vllm`, which serves it as a LoRA module on its managed server), a `tinker://` path
    (`tinker`), or the name a server serves the LoRA under (`openai`). `serve_also`: further adapters the stage
    will sample on the same model (`vllm` starts its server with LoRA room for them; others ignore it)."""
    kind = provider.get("kind")
    if kind == "hf":
        from charlab.generation.hf import HFSampler

        return HFSampler.load(
            provider_model(provider, model),
            cache_dir,
            adapter=adapter or provider.get("adapter"),
            batch_size=int(_need(provider, "batch_size")),
            device=str(_need(provider, "device")),
            dtype=str(_need(provider, "dtype")),
        )
    if kind == "openai":
        from charlab.generation.openai_compat import OpenAISampler

        if adapter and ("/" in str(adapter) or Path(str(adapter)).exists()):
            raise ProviderError(
                f"openai provider: cannot apply adapter folder '{adapter}' remotely; serve it under a name (vLLM "
                "--lora-modules <name>=<folder>) and give that name as the adapter"
            )
        return OpenAISampler(
            str(adapter or provider.get("model") or model.name_or_path),
            base_url=provider.get("base_url"),
            api_key_env=str(_need(provider, "api_key_env")),
            max_concurrency=int(_need(provider, "max_concurrency")),
            timeout_s=float(_need(provider, "timeout_s")),
            max_retries=int(_need(provider, "max_retries")),
            **_optional(provider, "retry_backoff_s", "retry_backoff_max_s", "over_length"),
        )
    if kind == "vllm":
        from charlab.generation.vllm import vllm_sampler

        for key in ("max_concurrency", "timeout_s", "max_retries", "server"):
            _need(provider, key)
        model = provider_model(provider, model)
        return vllm_sampler(provider, model, cache_dir, adapter or provider.get("adapter"), serve_also)
    if kind == "tinker":
        from charlab.generation.tinker_sampler import TinkerSampler

        base_model = provider.get("model") or model.tinker_name
        tokenizer = _hf_tokenizer(base_model, model, cache_dir)
        return TinkerSampler.create(
            base_model=base_model,
            checkpoint=adapter or provider.get("checkpoint"),
            tokenizer=tokenizer,
            base_url=provider.get("base_url"),
            api_key_env=str(_need(provider, "api_key_env")),
            max_concurrency=int(_need(provider, "max_concurrency")),
        )
    raise ConfigError(f"provider kind '{kind}' is not supported; allowed: {', '.join(KINDS)}")


def _hf_tokenizer(base_model: Optional[str], model: ModelConfig, cache_dir: Path) -> Any:
    """The Hugging Face tokenizer of a Tinker base model when it can be loaded here; else None (the SDK's)."""
    from charlab.models import load_tokenizer

    cfg = (
        model
        if base_model in (None, model.tinker_name, model.name_or_path)
        else provider_model({"model": base_model}, model)
    )
    try:
        return load_tokenizer(cfg, cache_dir)
    except ModelNotFoundError:
        return None
