"""Run one stage from a composed config: check it, make the run directory, dispatch `stage=` through the registry.

`charlab.train` (the CLI), the pipeline (one step at a time), the Python API (`charlab.api`) and the tests all run a
stage through `execute`; `run_overrides` composes a config first, exactly as `python -m charlab.train <overrides>`
would. Both need `charlab.app.setup()` to have run in the process (stages loaded, resolvers and schemas registered).
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional

from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from charlab import distributed, launch
from charlab.compose import composed
from charlab.config_checks import check_config
from charlab.errors import CharlabError, ConfigError
from charlab.memory import memory_window
from charlab.redact import redact_text
from charlab.registry import get_stage
from charlab.run import Run, peak_memory
from charlab.tracking import make_tracker

if TYPE_CHECKING:
    from charlab.services import Services

log = logging.getLogger("charlab")


def resolve_config(cfg: DictConfig) -> dict[str, Any]:
    """The fully resolved config as plain data; a missing or unresolvable value becomes a one-line error."""
    if "hydra" in cfg:  # composed with return_hydra_config (tests, the pipeline): Hydra's node is not the job's
        cfg = OmegaConf.masked_copy(cfg, [key for key in cfg if key != "hydra"])
    try:
        return OmegaConf.to_container(cfg, resolve=True, throw_on_missing=True)  # type: ignore[return-value]
    except OmegaConfBaseException as err:
        key = getattr(err, "full_key", None) or "?"
        first = str(err).strip().splitlines()[0]
        raise ConfigError(f"config value '{key}' cannot be resolved: {first}") from None


def run_name(cfg: DictConfig, run_dir: Path) -> str:
    """A readable W&B run name: persona, stage and the run directory's unique name."""
    return f"{cfg.persona.name}-{cfg.stage.name}-{run_dir.name}"


def execute(cfg: DictConfig, services: Services, output_dir: Optional[Path] = None) -> Optional[float]:
    """Run the stage `cfg.stage.name` in `output_dir` (default: Hydra's job directory) with the process's `services`
    (`charlab.app.setup()`'s; the stage finds them as `run.services`); return its metric."""
    spec = get_stage(cfg.stage.name)
    resolved = resolve_config(cfg)
    check_config(resolved)  # every group's values, whatever the stage
    output_dir = Path(output_dir or HydraConfig.get().runtime.output_dir)
    launch.check_world(cfg)
    if launch.wants_launch(cfg):  # backend.nproc_per_node > 1: rank 0 of a torchrun group makes this run
        return launch.launch(cfg, output_dir, services.vllm)
    run = Run.create(output_dir, resolved, stage=spec.name)
    run.services = services
    # trackers record the command line (W&B's metadata reads sys.argv): never with a secret in it
    sys.argv[:] = [redact_text(arg, run.secrets) for arg in sys.argv]
    try:
        if distributed.is_main():  # under torchrun the other ranks log nothing
            run.tracker = make_tracker(resolved.get("logger", {}), run.dir, run.config, run_name(cfg, run.dir))
        # servers a stage starts are stopped when it ends (a pipeline's at its end); peaks are this stage's own
        with services.vllm.scope(run.dir), memory_window() as peak:
            result = spec.run(cfg, run)
            measured = {**peak_memory(peak()), **services.vllm.memory()}  # + vLLM servers still up (servers.json: all)
        if result.summary:
            run.tracker.summary(result.summary)
        run.update_meta(
            summary=result.summary,
            artifacts={k: str(v) for k, v in result.artifacts.items()},
            metric_name=result.metric_name,
            peak_memory=measured,
        )
    except BaseException as err:
        if not isinstance(err, CharlabError):
            log.exception("stage %s failed", spec.name)
        run.finish("stopped" if isinstance(err, KeyboardInterrupt) else "failed", error=err)
        raise
    run.finish("completed", metric=result.metric)
    if distributed.is_main():
        print(f"[charlab] {spec.name} finished; run directory: {run.dir}")
    return result.metric


def run_overrides(
    overrides: list[str], services: Services, output_dir: Optional[Path] = None
) -> tuple[Optional[float], Path]:
    """Run one stage exactly as the CLI would, with `services`; returns (its headline metric, its run directory)."""
    with composed(overrides, output_dir) as cfg:
        run_dir = Path(cfg.hydra.runtime.output_dir)
        return execute(cfg, services, run_dir), run_dir
