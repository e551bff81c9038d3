"""Making a `TrainingBackend` from the `backend`, `model` and `lora` config dataclasses (DPO and SFT share it).

    backend = create_backend(LocalBackendConfig(...), model_cfg, lora_cfg, cache_dir, seed=0)
    backend = create_backend(TinkerBackendConfig(...), model_cfg, lora_cfg, cache_dir, seed=0)

`init_adapter` starts from earlier weights: a PEFT folder merged into the base (local), or a `tinker://`
state path (Tinker).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional, Union

from charlab.errors import ConfigError
from charlab.schemas import LocalBackendConfig, LoraConfig, ModelConfig, TinkerBackendConfig

BackendConfig = Union[LocalBackendConfig, TinkerBackendConfig]


def backend_config(data: dict[str, Any]) -> BackendConfig:
    """A plain `backend` config dict as its dataclass (by `kind`)."""
    kind = data.get("kind")
    if kind == "local":
        return LocalBackendConfig(**data)
    if kind == "tinker":
        return TinkerBackendConfig(**data)
    raise ConfigError(f"backend.kind={kind!r} is not allowed; use local or tinker")


def model_identity(backend: BackendConfig, model: ModelConfig, init_adapter: Optional[str] = None) -> str:
    """What decides reference log-probs besides the data: backend, weights and numeric type."""
    parts = [backend.kind, model.name, model.name_or_path, model.revision or "", init_adapter or ""]
    if isinstance(backend, LocalBackendConfig):
        from charlab.models import resolve_device, resolve_dtype

        device = resolve_device(backend.device)
        dtype = backend.dtype if backend.dtype != "auto" else model.dtype
        parts += [device.split(":")[0], str(resolve_dtype(dtype, device))]
    else:
        parts.append(backend.base_model or model.tinker_name or "")
    return "|".join(parts)


def create_backend(
    backend: BackendConfig,
    model: ModelConfig,
    lora: LoraConfig,
    cache_dir: Path,
    seed: int = 0,
    init_adapter: Optional[str] = None,
) -> Any:
    """A ready `LocalBackend` or `TinkerBackend` with a fresh LoRA adapter of `lora`'s shape."""
    from charlab.config_checks import check_lora
    from charlab.training.local import LocalBackend

    check_lora(lora)
    if isinstance(backend, LocalBackendConfig):
        from charlab import distributed
        from charlab.generation.vllm import POOL
        from charlab.models import resolve_device

        device = distributed.rank_device(resolve_device(backend.device))
        if device.startswith("cuda"):
            POOL.release_gpu()  # a vLLM server of this run holds most of the GPU's memory
        distributed.init(device, backend.distributed_timeout_s)
        return LocalBackend.create(
            model,
            lora,
            cache_dir,
            device=backend.device,
            dtype=backend.dtype,
            seed=seed,
            init_adapter=init_adapter,
            gradient_checkpointing=backend.gradient_checkpointing,
            num_threads=backend.num_threads,
            attn_implementation=backend.attn_implementation,
        )
    from charlab.models import load_tokenizer
    from charlab.training.tinker_backend import TinkerBackend, api_key_from_env, tinker_lora_flags

    layer_groups = tinker_lora_flags(lora.target_modules, lora.alpha, lora.dropout, backend.lora_alpha)
    base_model = backend.base_model or model.tinker_name
    if not base_model:
        raise ConfigError(
            f"backend=tinker: model '{model.name}' has no tinker_name; set backend.base_model or model.tinker_name"
        )
    api_key = api_key_from_env(backend.api_key_env)
    tokenizer = load_tokenizer(model, cache_dir)
    return TinkerBackend.create(
        base_model,
        int(lora.rank),
        tokenizer,
        model.name,
        seed=seed,
        base_url=backend.base_url,
        api_key=api_key,
        max_concurrency=backend.max_concurrency,
        init_state=init_adapter,
        layer_groups=layer_groups,
    )
