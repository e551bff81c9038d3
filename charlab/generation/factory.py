"""Build a `Sampler` from a resolved provider config (`configs/provider/{hf,openai,tinker,vllm}.yaml`).

A provider dict says which kind of sampler (`kind`), which model (`model`; null means the run's model) and
how to sample; `make_sampler` turns it into a sampler and `sampling_params` into `SamplingParams`. Every
default lives in the provider YAML; a hand-built dict must carry the same keys.

    provider = {"kind": "hf", "model": None, "adapter": None, "batch_size": 8, "device": "auto", "dtype": "auto"}
    sampler = make_sampler(provider, model_cfg, cache_dir)
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional

from charlab.errors import ConfigError, ModelNotFoundError, ProviderError
from charlab.generation.base import Sampler, SamplingParams
from charlab.schemas import ModelConfig
from charlab.settings import safe_path_part

if TYPE_CHECKING:
    from charlab.generation.vllm import ServerPool


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
    entry = PROVIDERS.get(str(kind))
    if params.temperature < 0 or not 0 < params.top_p <= 1 or params.max_new_tokens < 1:
        raise ConfigError(
            f"provider '{kind}': temperature={params.temperature}, top_p={params.top_p}, "
            f"max_new_tokens={params.max_new_tokens} not allowed; use >= 0, in (0, 1] and >= 1"
        )
    fixed = entry is not None and not entry.repetition_penalty
    if params.repetition_penalty <= 0 or fixed and params.repetition_penalty != 1.0:
        allowed = f"1.0 ({kind}'s sampler has no repetition penalty)" if fixed else "a number > 0 (1.0: off)"
        value = params.repetition_penalty
        raise ConfigError(f"provider '{kind}': repetition_penalty={value} is not allowed; use {allowed}")
    return params


SAMPLING_KEYS = ("temperature", "top_p", "max_new_tokens", "repetition_penalty", "stop", "seed")


def sampler_key(provider: dict[str, Any], model: ModelConfig, adapter: Optional[str] = None) -> Optional[tuple]:
    """What decides the sampler a provider builds; two roles with equal keys can share one sampler.

    `hf`: the loaded weights (model, adapter, device, dtype). `openai`/`tinker`: the endpoint, model and
    connection settings, so one `max_concurrency` bounds both roles. Sampling settings are not part of it:
    they travel with each request. None for a kind whose samplers are not shared (`vllm`: the pool shares its
    servers) or an unknown kind.
    """
    entry = PROVIDERS.get(str(provider.get("kind")))
    return entry.share_key(provider, model, adapter) if entry is not None else None


def make_sampler(
    provider: dict[str, Any],
    model: ModelConfig,
    cache_dir: Path,
    adapter: Optional[str] = None,
    serve_also: Sequence[str] = (),
    pool: Optional[ServerPool] = None,
) -> Sampler:
    """The sampler a provider config asks for, with `adapter` in the form the provider takes (overriding its own):
    a PEFT folder (`hf`; `vllm`, which serves it as a LoRA module on its managed server), a `tinker://` path
    (`tinker`), or the name a server serves the LoRA under (`openai`). `serve_also`: further adapters the stage
    will sample on the same model (`vllm` starts its server with LoRA room for them; others ignore it). `pool`: the
    run's vLLM server pool (`run.pool`), which only `vllm` uses (and needs)."""
    return provider_entry(provider).build(provider, model, cache_dir, adapter, serve_also, pool)


def _hf_sampler(
    provider: dict[str, Any], model: ModelConfig, cache_dir: Path, adapter: Optional[str], *_: Any
) -> Sampler:
    from charlab.generation.hf import HFSampler

    return HFSampler.load(
        provider_model(provider, model),
        cache_dir,
        adapter=adapter or provider.get("adapter"),
        batch_size=int(_need(provider, "batch_size")),
        device=str(_need(provider, "device")),
        dtype=str(_need(provider, "dtype")),
    )


def _openai_sampler(
    provider: dict[str, Any], model: ModelConfig, cache_dir: Path, adapter: Optional[str], *_: Any
) -> Sampler:
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


def _vllm_sampler(
    provider: dict[str, Any],
    model: ModelConfig,
    cache_dir: Path,
    adapter: Optional[str],
    serve_also: Sequence[str],
    pool: Optional[ServerPool],
) -> Sampler:
    from charlab.generation.vllm import vllm_sampler

    for key in ("max_concurrency", "timeout_s", "max_retries", "server"):
        _need(provider, key)
    if pool is None:
        raise ConfigError("provider 'vllm' needs the run's vLLM server pool: build its sampler with pool=run.pool")
    model = provider_model(provider, model)
    return vllm_sampler(provider, model, cache_dir, adapter or provider.get("adapter"), serve_also, pool)


def _tinker_sampler(
    provider: dict[str, Any], model: ModelConfig, cache_dir: Path, adapter: Optional[str], *_: Any
) -> Sampler:
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


def _weights_key(provider: dict[str, Any], model: ModelConfig, adapter: Optional[str]) -> Optional[tuple]:
    resolved = provider_model(provider, model)
    return ("hf", resolved.name_or_path, adapter or provider.get("adapter"), provider.get("device"),
            provider.get("dtype"))  # fmt: skip


def _endpoint_key(provider: dict[str, Any], model: ModelConfig, adapter: Optional[str]) -> Optional[tuple]:
    rest = sorted((k, str(v)) for k, v in provider.items() if k not in SAMPLING_KEYS)
    return (provider.get("kind"), adapter, *rest)


def _unshared(provider: dict[str, Any], model: ModelConfig, adapter: Optional[str]) -> Optional[tuple]:
    return None


@dataclass(frozen=True)
class Provider:
    """One provider kind (`configs/provider/<kind>.yaml`): how it builds a sampler and what it can do."""

    build: Callable[..., Sampler]  # (provider, model, cache_dir, adapter, serve_also, pool) -> Sampler
    share_key: Callable[[dict[str, Any], ModelConfig, Optional[str]], Optional[tuple]]  # see `sampler_key`
    local: bool  # runs on this machine: no per-token bill (the pipeline's cost estimate skips it)
    named_models: bool  # `<role>.model` may name a `configs/model/<name>.yaml` (a model it loads or maps)
    scores_text: bool  # scores any text by log-probability (the `likelihood` judge format needs that)
    repetition_penalty: bool  # honours `repetition_penalty` (Tinker's sampler has none: only 1.0 is allowed)


PROVIDERS: dict[str, Provider] = {
    "hf": Provider(_hf_sampler, _weights_key, local=True, named_models=True, scores_text=True,
                   repetition_penalty=True),
    "openai": Provider(_openai_sampler, _endpoint_key, local=False, named_models=False, scores_text=False,
                       repetition_penalty=True),
    "tinker": Provider(_tinker_sampler, _endpoint_key, local=False, named_models=True, scores_text=False,
                       repetition_penalty=False),
    "vllm": Provider(_vllm_sampler, _unshared, local=True, named_models=True, scores_text=False,
                     repetition_penalty=True),
}  # fmt: skip


def scores_text(kind: Any) -> bool:
    """Whether providers of `kind` score any text by log-probability (a local `hf` model does)."""
    entry = PROVIDERS.get(str(kind))
    return entry is not None and entry.scores_text


def provider_entry(provider: dict[str, Any]) -> Provider:
    """The `PROVIDERS` entry of a provider config's `kind`, or a one-line error naming the allowed kinds."""
    kind = provider.get("kind")
    entry = PROVIDERS.get(str(kind))
    if entry is None:
        raise ConfigError(f"provider kind '{kind}' is not supported; allowed: {', '.join(PROVIDERS)}")
    return entry


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
