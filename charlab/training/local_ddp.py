"""The local backend under torchrun: its scorer as a DDP module over the LoRA weights, and CPU copies of state
broadcast between ranks."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from charlab import distributed

if TYPE_CHECKING:  # pragma: no cover
    from charlab.training.local import LocalBackend


def to_cpu(value: Any) -> Any:
    """`value` with every tensor in it moved to the CPU (nested dicts and lists)."""
    if hasattr(value, "detach"):
        return value.detach().cpu()
    if isinstance(value, dict):
        return {k: to_cpu(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(to_cpu(v) for v in value)
    return value


def _scorer_module(backend: LocalBackend) -> Any:
    """`backend.score` as an `nn.Module` that owns the PEFT model, so that DDP finds (and hooks) its LoRA weights."""
    import torch

    class Scorer(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.peft = backend.model

        def forward(self, *args: Any) -> Any:
            return backend.score(*args)

    return Scorer()


def wrap_ddp(backend: LocalBackend) -> Any:
    """`DistributedDataParallel` over the LoRA parameters, all ranks starting from rank 0's adapter."""
    import inspect

    import torch
    from torch.nn.parallel import DistributedDataParallel

    distributed.broadcast_tensors(backend.trainable)
    device = torch.device(backend.device)
    accepted = inspect.signature(DistributedDataParallel).parameters
    # the frozen base weights and buffers are the same files on every rank: only the adapter is synced (above)
    options = {"init_sync": False} if "init_sync" in accepted else {}
    options["forward_sync_buffers" if "forward_sync_buffers" in accepted else "broadcast_buffers"] = False
    return DistributedDataParallel(
        _scorer_module(backend), device_ids=[device.index or 0] if device.type == "cuda" else None, **options
    )
