"""Data-parallel training under torchrun: which process this is, the process group, the collectives charlab uses.

    torchrun --nproc_per_node=2 -m charlab.train stage=dpo stage.pairs=<pairs.jsonl>
    python -m charlab.train stage=dpo stage.pairs=<pairs.jsonl> backend.nproc_per_node=2   # charlab runs torchrun

Every process runs the same stage on its share of each global batch (`shard`); the LoRA gradients are averaged
by `DistributedDataParallel`. Rank 0 alone writes the run directory, checkpoints and W&B: the other ranks work
in a private temporary folder that is deleted at the end. Outside torchrun (WORLD_SIZE unset or 1) every helper
here is a no-op, so single-process code paths stay exactly as they were.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, TypeVar

T = TypeVar("T")


@dataclass(frozen=True)
class World:
    """This process's place among the training processes (from torchrun's environment)."""

    rank: int = 0
    local_rank: int = 0
    size: int = 1


def world() -> World:
    """RANK / LOCAL_RANK / WORLD_SIZE as torchrun sets them; one process of one otherwise."""
    return World(
        rank=int(os.environ.get("RANK", 0)),
        local_rank=int(os.environ.get("LOCAL_RANK", 0)),
        size=int(os.environ.get("WORLD_SIZE", 1)),
    )


def is_main() -> bool:
    """Whether this process writes (rank 0, or the only process)."""
    return world().rank == 0


def active() -> bool:
    """Whether a process group of more than one process is up."""
    import torch.distributed as dist

    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank_device(device: str) -> str:
    """`cuda` becomes this process's own GPU (`cuda:<LOCAL_RANK>`) under torchrun; other devices are unchanged."""
    w = world()
    return f"cuda:{w.local_rank}" if device == "cuda" and w.size > 1 else device


def init(device: str, timeout_s: float) -> None:
    """Join the process group (once): gloo for CPU tensors, NCCL for CUDA ones. A no-op for one process."""
    import torch
    import torch.distributed as dist

    if world().size <= 1 or dist.is_initialized():
        return
    backend = "gloo"
    if device.startswith("cuda"):
        torch.cuda.set_device(torch.device(device))
        backend = "cpu:gloo,cuda:nccl"
    dist.init_process_group(backend=backend, timeout=timedelta(seconds=timeout_s))


def shutdown() -> None:
    """Leave the process group (after a barrier, so no rank leaves while another still needs it)."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        if dist.get_world_size() > 1:
            dist.barrier()
        dist.destroy_process_group()


def shard(items: Sequence[T]) -> list[T]:
    """This rank's share of a global batch: every `size`-th item, starting at its rank."""
    w = world() if active() else World()
    return list(items[w.rank :: w.size])


def broadcast_object(value: Any, src: int = 0) -> Any:
    """`value` as rank `src` has it, on every rank (any picklable object)."""
    if not active():
        return value
    import torch.distributed as dist

    box = [value]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def gather_objects(value: Any) -> list[Any]:
    """Every rank's `value`, in rank order, on every rank."""
    if not active():
        return [value]
    import torch.distributed as dist

    out: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(out, value)
    return out


def sum_metrics(metrics: dict[str, float]) -> dict[str, float]:
    """Each key summed over ranks (every rank passes the same keys)."""
    if not active():
        return metrics
    import torch
    import torch.distributed as dist

    keys = sorted(metrics)
    values = torch.tensor([float(metrics[k]) for k in keys], dtype=torch.float64)
    dist.all_reduce(values, op=dist.ReduceOp.SUM)
    return dict(zip(keys, values.tolist()))


def max_value(value: float) -> float:
    """The largest `value` over ranks."""
    if not active():
        return value
    import torch
    import torch.distributed as dist

    box = torch.tensor([float(value)], dtype=torch.float64)
    dist.all_reduce(box, op=dist.ReduceOp.MAX)
    return float(box.item())


def broadcast_tensors(tensors: Sequence[Any], src: int = 0) -> None:
    """Overwrite `tensors` in place with rank `src`'s values."""
    if not active():
        return
    import torch.distributed as dist

    for tensor in tensors:
        dist.broadcast(tensor.data, src=src)
