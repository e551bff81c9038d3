"""Making a `TrainingBackend` from the `backend`, `model` and `lora` config dataclasses (DPO and SFT share it).

    backend = create_backend(LocalBackendConfig(...), model_cfg, lora_cfg, cache_dir, seed=0)
    backend = create_backend(TinkerBackendConfig(...), model_cfg, lora_cfg, cache_dir, seed=0)

Each backend kind is one `BACKENDS` entry (its schema, how it is made, what decides its weights, what SFT starts
from after DPO); nothing else branches on `backend.kind`. `init_adapter` starts from earlier weights: a PEFT folder
merged into the base (local), or a `tinker://` state path (Tinker). `gpu_users`: what holds GPU memory the local
backend needs (the run's vLLM server pool, `run.pool`), released before it takes a CUDA device.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Union

from charlab.errors import ConfigError
from charlab.run import read_meta
from charlab.schemas import LocalBackendConfig, LoraConfig, ModelConfig, TinkerBackendConfig
from charlab.training.backend import ReleasesGpu, TrainingBackend

BackendConfig = Union[LocalBackendConfig, TinkerBackendConfig]


@dataclass(frozen=True)
class NewBackend:
    """What a backend is made from besides its own config (the arguments of `create_backend`)."""

    model: ModelConfig
    lora: LoraConfig
    cache_dir: Path
    seed: int
    init_adapter: Optional[str]  # earlier weights to start from (see the module docstring)
    gpu_users: Sequence[ReleasesGpu]


@dataclass(frozen=True)
class Backend:
    """One backend kind (`configs/backend/<kind>.yaml`)."""

    schema: type  # its config dataclass
    create: Callable[[Any, NewBackend], TrainingBackend]  # (its config, what else it is made from) -> ready
    identity: Callable[[Any, ModelConfig], list[str]]  # what besides the model decides its reference log-probs
    start_weights: Callable[[str], Optional[str]]  # what SFT starts from, given the DPO adapter it follows
    local: bool  # trains on this machine: no bill, and `nproc_per_node` > 1 runs it data-parallel


def backend_entry(kind: Any) -> Backend:
    """The `BACKENDS` entry of `backend.kind`, or a one-line error naming the allowed kinds."""
    entry = BACKENDS.get(str(kind))
    if entry is None:
        raise ConfigError(f"backend.kind={kind!r} is not allowed; use {' or '.join(BACKENDS)}")
    return entry


def backend_config(data: dict[str, Any]) -> BackendConfig:
    """A plain `backend` config dict as its dataclass (by `kind`)."""
    return backend_entry(data.get("kind")).schema(**data)


def model_identity(backend: BackendConfig, model: ModelConfig, init_adapter: Optional[str] = None) -> str:
    """What decides reference log-probs besides the data: backend, weights and numeric type."""
    parts = [backend.kind, model.name, model.name_or_path, model.revision or "", init_adapter or ""]
    return "|".join(parts + backend_entry(backend.kind).identity(backend, model))


def start_weights(backend: BackendConfig, dpo_adapter: Optional[str]) -> Optional[str]:
    """What SFT starts from after the DPO adapter `dpo_adapter` (None: the base model), in the backend's form."""
    return backend_entry(backend.kind).start_weights(dpo_adapter) if dpo_adapter else None


def create_backend(
    backend: BackendConfig,
    model: ModelConfig,
    lora: LoraConfig,
    cache_dir: Path,
    seed: int = 0,
    init_adapter: Optional[str] = None,
    gpu_users: Sequence[ReleasesGpu] = (),
) -> TrainingBackend:
    """A ready backend of `backend.kind` with a fresh LoRA adapter of `lora`'s shape."""
    from charlab.config_checks import check_lora

    check_lora(lora)
    new = NewBackend(model, lora, cache_dir, seed, init_adapter, gpu_users)
    return backend_entry(backend.kind).create(backend, new)


def _create_local(backend: LocalBackendConfig, new: NewBackend) -> TrainingBackend:
    from charlab import distributed
    from charlab.models import resolve_device
    from charlab.training.local import LocalBackend

    device = distributed.rank_device(resolve_device(backend.device))
    if device.startswith("cuda"):
        for user in new.gpu_users:
            user.release_gpu()  # a vLLM server of this run holds most of the GPU's memory
    distributed.init(device, backend.distributed_timeout_s)
    return LocalBackend.create(
        new.model,
        new.lora,
        new.cache_dir,
        device=backend.device,
        dtype=backend.dtype,
        seed=new.seed,
        init_adapter=new.init_adapter,
        gradient_checkpointing=backend.gradient_checkpointing,
        num_threads=backend.num_threads,
        attn_implementation=backend.attn_implementation,
    )


def _create_tinker(backend: TinkerBackendConfig, new: NewBackend) -> TrainingBackend:
    from charlab.models import load_tokenizer
    from charlab.training.tinker_backend import TinkerBackend, api_key_from_env, tinker_lora_flags

    model, lora = new.model, new.lora
    layer_groups = tinker_lora_flags(lora.target_modules, lora.alpha, lora.dropout, backend.lora_alpha)
    base_model = backend.base_model or model.tinker_name
    if not base_model:
        raise ConfigError(
            f"backend=tinker: model '{model.name}' has no tinker_name; set backend.base_model or model.tinker_name"
        )
    api_key = api_key_from_env(backend.api_key_env)
    tokenizer = load_tokenizer(model, new.cache_dir)
    return TinkerBackend.create(
        base_model,
        int(lora.rank),
        tokenizer,
        model.name,
        seed=new.seed,
        base_url=backend.base_url,
        api_key=api_key,
        max_concurrency=backend.max_concurrency,
        init_state=new.init_adapter,
        layer_groups=layer_groups,
    )


def _local_identity(backend: LocalBackendConfig, model: ModelConfig) -> list[str]:
    from charlab.models import resolve_device, resolve_dtype

    device = resolve_device(backend.device)
    dtype = backend.dtype if backend.dtype != "auto" else model.dtype
    return [device.split(":")[0], str(resolve_dtype(dtype, device))]


def _tinker_identity(backend: TinkerBackendConfig, model: ModelConfig) -> list[str]:
    return [backend.base_model or model.tinker_name or ""]


def _tinker_start_weights(dpo_adapter: str) -> Optional[str]:
    """The DPO's `tinker://` training state: given directly, or named by a Tinker-trained DPO folder's meta.json."""
    if dpo_adapter.startswith("tinker://"):
        return dpo_adapter
    state = read_meta(Path(dpo_adapter)).get("adapter_tinker_state")
    return str(state) if state else None


BACKENDS: dict[str, Backend] = {
    # local: the DPO folder itself (merged into the base)
    "local": Backend(LocalBackendConfig, _create_local, _local_identity, lambda dpo: dpo, local=True),
    "tinker": Backend(TinkerBackendConfig, _create_tinker, _tinker_identity, _tinker_start_weights, local=False),
}
