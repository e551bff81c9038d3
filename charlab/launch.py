"""Data-parallel training stages from the one entry point: `backend.nproc_per_node=N` runs them under torchrun.

    python -m charlab.train stage=dpo stage.pairs=<pairs.jsonl> backend.nproc_per_node=8
    python -m charlab.train experiment=demo backend.nproc_per_node=2      # the pipeline's dpo and sft steps
    # two machines, the same command on each (node_rank 0 and 1; rank 0's machine writes the run directory):
    python -m charlab.train stage=dpo ... backend.nproc_per_node=8 backend.nnodes=2 backend.node_rank=0 \
        backend.master_addr=10.0.0.1 backend.master_port=29500

The process that was asked to run the stage starts `python -m torch.distributed.run --nproc_per_node=N -m
charlab.train <the same overrides> hydra.run.dir=<its run directory>` and waits: rank 0 of that group makes the
run directory exactly as a one-process run would, so the caller (the CLI, a pipeline step, the Python API) finds
the same `meta.json` and artifacts there. Every rank's output also goes to `<run dir>/torchrun/`; when the group
fails, the error names the rank that failed first and its own error line (`charlab.torchrun_logs`). On one
machine a start that fails before rank 0 made the run directory (torchrun's rendezvous on a busy machine) is
retried once on another port. `backend.torchrun_args` passes further torchrun flags (e.g. a c10d rendezvous).
Launched by hand (`torchrun ... -m charlab.train ...`), the processes are already a group and nothing is
relaunched. `charlab.distributed` has the rest.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import tempfile
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Optional

from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from charlab import distributed, torchrun_logs
from charlab.errors import CharlabError, ConfigError
from charlab.registry import all_stages, get_stage
from charlab.run import read_meta
from charlab.settings import PACKAGE_DIR

if TYPE_CHECKING:
    from charlab.generation.vllm import ServerPool

log = logging.getLogger("charlab")
MULTI_NODE_PORT = 29500  # torchrun's own default: every node must name the same port
TAIL_LINES = 400  # torchrun's stderr kept to find its failure summary


class LaunchError(CharlabError):
    """The data-parallel group failed; the message carries rank 0's error."""


@dataclass(frozen=True)
class Group:
    """The torchrun group a config asks for: processes on this machine, machines, and where rank 0 listens."""

    nproc: int = 1  # processes on this machine (backend.nproc_per_node)
    nnodes: int = 1
    node_rank: int = 0
    master_addr: str = "127.0.0.1"
    master_port: Optional[int] = None  # None: a free port on this machine (one node only)
    torchrun_args: tuple[str, ...] = ()

    @property
    def world_size(self) -> int:
        return self.nproc * self.nnodes


def group(cfg: DictConfig) -> Group:
    """`backend.{nproc_per_node,nnodes,node_rank,master_addr,master_port,torchrun_args}` checked (one line each);
    one process of one node unless a backend that trains here (`local`) asks for more."""
    from charlab.training.factory import BACKENDS

    backend = cfg.get("backend") or {}
    kind = BACKENDS.get(str(backend.get("kind")))
    if kind is None or not kind.local:
        return Group()
    nproc, nnodes, node_rank = (int(d if backend.get(k) is None else backend.get(k)) for k, d in
                                (("nproc_per_node", 1), ("nnodes", 1), ("node_rank", 0)))  # fmt: skip
    addr, port = backend.get("master_addr"), backend.get("master_port")
    checks = [
        (nproc >= 1, f"backend.nproc_per_node={nproc}", "a positive integer"),
        (nnodes >= 1, f"backend.nnodes={nnodes}", "a positive integer"),
        (0 <= node_rank < nnodes, f"backend.node_rank={node_rank}", f"0 to backend.nnodes - 1 ({nnodes - 1})"),
        (nnodes == 1 or addr, "backend.master_addr=null", "the address of node 0 when backend.nnodes > 1"),
        (port is None or 0 < int(port) < 65536, f"backend.master_port={port}", "null or a TCP port"),
    ]
    for ok, setting, allowed in checks:
        if not ok:
            raise ConfigError(f"{setting} is not allowed; use {allowed}")
    port = int(port) if port is not None else (MULTI_NODE_PORT if nnodes > 1 else None)
    extra = tuple(str(a) for a in backend.get("torchrun_args") or ())
    return Group(nproc, nnodes, node_rank, str(addr or "127.0.0.1"), port, extra)


def check_world(cfg: DictConfig) -> None:
    """Under torchrun only the training stages (`data_parallel` in the registry) run: every rank would repeat any
    other stage."""
    if distributed.world().size > 1 and not get_stage(cfg.stage.name).data_parallel:
        trains = " or ".join(spec.name for spec in all_stages() if spec.data_parallel)
        raise ConfigError(
            f"stage={cfg.stage.name} does not run data-parallel; start only {trains} "
            "with torchrun (a pipeline runs its training steps that way when backend.nproc_per_node > 1)"
        )


def wants_launch(cfg: DictConfig) -> bool:
    """Whether this process should start a torchrun group for the stage instead of running it."""
    if group(cfg).world_size == 1 or distributed.world().size > 1:
        return False
    return get_stage(cfg.stage.name).data_parallel


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


def torchrun_command(g: Group, port: int, overrides: list[str], output_dir: Path, log_dir: Path) -> list[str]:
    """torchrun over `charlab.train` with the caller's overrides; every rank's output also goes to `log_dir`."""
    own = [o for o in overrides if not o.startswith(("hydra.run.dir=", "hydra.output_subdir="))]
    return [
        sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={g.nproc}", f"--nnodes={g.nnodes}",
        f"--node_rank={g.node_rank}", f"--master_addr={g.master_addr}", f"--master_port={port}",
        f"--log-dir={log_dir}", "--tee=3", *g.torchrun_args,
        "-m", "charlab.train", *own, f"hydra.run.dir={output_dir}",
    ]  # fmt: skip


def run_group(command: list[str], env: dict[str, str]) -> tuple[int, str]:
    """Run torchrun, its stderr passed through to ours; (exit status, the last lines of that stderr)."""
    tail: deque[str] = deque(maxlen=TAIL_LINES)
    with subprocess.Popen(command, env=env, stderr=subprocess.PIPE, text=True, errors="replace") as proc:
        assert proc.stderr is not None
        for line in proc.stderr:
            sys.stderr.write(line)
            tail.append(line)
    return proc.returncode, "".join(tail)


def launch(cfg: DictConfig, output_dir: Path, pool: ServerPool) -> Optional[float]:
    """Run the stage in `output_dir` under torchrun with the config's group; its metric. On a GPU the vLLM servers
    of `pool` (this process's) are stopped first: they would hold the GPUs' memory.

    A failure names the rank that failed first and its error (from `<output_dir>/torchrun/`, every rank's log).
    """
    from charlab.generation.vllm_server import free_port
    from charlab.models import resolve_device

    g = group(cfg)
    if resolve_device(str(cfg.backend.device)).startswith("cuda"):
        pool.release_gpu()  # a vLLM server of this pipeline would hold the GPUs' memory
    overrides = list(HydraConfig.get().overrides.task)
    here = str(PACKAGE_DIR.parent)  # the ranks import this very charlab
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (here, os.environ.get("PYTHONPATH")) if p)}
    previous = read_meta(output_dir).get("started_at")  # a resumed step's folder holds an older run's meta.json
    where = f"node {g.node_rank} of {g.nnodes}, " if g.nnodes > 1 else ""
    for attempt in (1, 2):
        log_dir = output_dir / "torchrun" / f"launch-{time.strftime('%Y%m%d-%H%M%S')}-{attempt}"
        command = torchrun_command(g, g.master_port or free_port(), overrides, output_dir, log_dir)
        print(f"[charlab] {cfg.stage.name}: {g.nproc} data-parallel processes ({where}torchrun) -> {output_dir}")
        log.info("launch: %s", " ".join(command))
        code, stderr_tail = run_group(command, env)
        meta = read_meta(output_dir)
        started = bool(meta) and meta.get("started_at") != previous
        if code == 0 and (g.node_rank > 0 or started and meta.get("status") == "completed"):
            return meta.get("metric") if g.node_rank == 0 else None
        report = torchrun_logs.describe_failure(stderr_tail, log_dir, g.nproc)
        # rank 0 started the stage (its failure is real), the port is fixed (other nodes use it) or the retry failed
        if started or g.master_port is not None or attempt == 2:
            error = (
                report
                or meta.get("error")
                or f"torchrun exited with status {code}" + ("" if started else " before rank 0 started")
            )
            raise LaunchError(f"{cfg.stage.name} with {g.world_size} processes failed: {error}")
        log.warning("launch: the process group did not start (status %d; %s); retrying once on another port",
                    code, report or "no rank logged an error")  # fmt: skip
    raise AssertionError("unreachable")


