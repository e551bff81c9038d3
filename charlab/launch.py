"""Data-parallel training stages from the one entry point: `backend.nproc_per_node=N` runs them under torchrun.

    python -m charlab.train stage=dpo stage.pairs=<pairs.jsonl> backend.nproc_per_node=8
    python -m charlab.train experiment=demo backend.nproc_per_node=2      # the pipeline's dpo and sft steps

The process that was asked to run the stage starts `python -m torch.distributed.run --nproc_per_node=N -m
charlab.train <the same overrides> hydra.run.dir=<its run directory>` and waits: rank 0 of that group makes the
run directory exactly as a one-process run would, so the caller (the CLI, a pipeline step, the Python API) finds
the same `meta.json` and artifacts there. A start that fails before rank 0 made the run directory (torchrun's
rendezvous on a busy machine) is retried once on another port. Launched by hand (`torchrun ... -m charlab.train
...`), the processes are already a group and nothing is relaunched. `charlab.distributed` has the rest.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Optional

from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from charlab import distributed
from charlab.errors import CharlabError, ConfigError

log = logging.getLogger("charlab")
DATA_PARALLEL_STAGES = ("dpo", "sft")


class LaunchError(CharlabError):
    """The data-parallel group failed; the message carries rank 0's error."""


def nproc(cfg: DictConfig) -> int:
    """How many training processes the config asks for (1 unless a local backend sets nproc_per_node)."""
    backend = cfg.get("backend") or {}
    return int(backend.get("nproc_per_node") or 1) if backend.get("kind") == "local" else 1


def check_world(cfg: DictConfig) -> None:
    """Under torchrun only the training stages run (every rank would repeat any other stage)."""
    if distributed.world().size > 1 and cfg.stage.name not in DATA_PARALLEL_STAGES:
        raise ConfigError(
            f"stage={cfg.stage.name} does not run data-parallel; start only {' or '.join(DATA_PARALLEL_STAGES)} "
            "with torchrun (a pipeline runs its training steps that way when backend.nproc_per_node > 1)"
        )


def wants_launch(cfg: DictConfig) -> bool:
    """Whether this process should start a torchrun group for the stage instead of running it."""
    n = nproc(cfg)
    if n < 1:
        raise ConfigError(f"backend.nproc_per_node={n} is not allowed; use a positive integer")
    return n > 1 and cfg.stage.name in DATA_PARALLEL_STAGES and distributed.world().size == 1


def worker_overrides() -> list[str]:
    """Extra overrides for ranks > 0: a private run directory and no Hydra files or logs (rank 0 writes those)."""
    if distributed.world().rank == 0:
        return []
    private = tempfile.mkdtemp(prefix=f"charlab-rank{distributed.world().rank}-")
    return [
        f"hydra.run.dir={private}",
        "hydra.output_subdir=null",
        "hydra/job_logging=disabled",
        "hydra/hydra_logging=disabled",
    ]


def torchrun_command(n: int, port: int, overrides: list[str], output_dir: Path) -> list[str]:
    own = [o for o in overrides if not o.startswith(("hydra.run.dir=", "hydra.output_subdir="))]
    return [
        sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={n}", "--nnodes=1",
        "--master_addr=127.0.0.1", f"--master_port={port}",
        "-m", "charlab.train", *own, f"hydra.run.dir={output_dir}",
    ]  # fmt: skip


def launch(cfg: DictConfig, output_dir: Path) -> Optional[float]:
    """Run the stage in `output_dir` under torchrun with `backend.nproc_per_node` processes; its metric."""
    from charlab.generation.vllm import POOL
    from charlab.generation.vllm_server import free_port
    from charlab.models import resolve_device

    n = nproc(cfg)
    if resolve_device(str(cfg.backend.device)).startswith("cuda"):
        POOL.release_gpu()  # a vLLM server of this pipeline would hold the GPUs' memory
    overrides = list(HydraConfig.get().overrides.task)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (str(_root()), os.environ.get("PYTHONPATH")) if p)}
    previous = _read_meta(output_dir).get("started_at")  # a resumed step's folder holds an older run's meta.json
    for attempt in (1, 2):
        command = torchrun_command(n, free_port(), overrides, output_dir)
        print(f"[charlab] {cfg.stage.name}: {n} data-parallel processes (torchrun) -> {output_dir}")
        log.info("launch: %s", " ".join(command))
        code = subprocess.run(command, env=env).returncode
        meta = _read_meta(output_dir)
        started = bool(meta) and meta.get("started_at") != previous
        if code == 0 and started and meta.get("status") == "completed":
            return meta.get("metric")
        if started or attempt == 2:  # rank 0 started the stage (its failure is real) or the retry failed too
            error = meta.get("error") or f"torchrun exited with status {code} before rank 0 started"
            raise LaunchError(f"{cfg.stage.name} with {n} processes failed: {error}")
        log.warning("launch: the process group did not start (status %d); retrying once on another port", code)
    raise AssertionError("unreachable")


def _read_meta(run_dir: Path) -> dict:
    path = Path(run_dir) / "meta.json"
    try:
        return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
    except ValueError:
        return {}


def _root() -> Path:
    from charlab.settings import project_root

    return project_root()
