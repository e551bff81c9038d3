"""The one entry point: compose the config, make the run directory, dispatch `stage=` through the registry.

    python -m charlab.train experiment=demo
    python -m charlab.train stage=show persona=sarcasm model=smollm2-135m
    python -m charlab.train -m stage=show persona=pirate,humor lora=dpo,sft
    charlab-train stage=show --cfg job

It returns the stage's headline metric, so Hydra sweepers (Optuna) can optimise it, and always closes the
tracker, also when the stage fails. A `CharlabError` (bad input) prints one line and exits with status 2.
"""

from __future__ import annotations

import logging
import shutil
import sys
from pathlib import Path
from typing import Any, NoReturn, Optional

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from charlab.settings import configs_dir, load_env_file, register_resolvers

load_env_file()
register_resolvers()

from charlab import distributed, launch  # noqa: E402
from charlab.config_checks import check_config  # noqa: E402
from charlab.config_store import register_schemas  # noqa: E402  (after resolvers: stages may compose configs)
from charlab.errors import CharlabError, ConfigError  # noqa: E402
from charlab.generation import vllm  # noqa: E402
from charlab.memory import memory_window  # noqa: E402
from charlab.redact import redact_text  # noqa: E402
from charlab.registry import get_stage  # noqa: E402
from charlab.run import Run, peak_memory  # noqa: E402
from charlab.tracking import make_tracker  # noqa: E402

register_schemas()
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


def execute(cfg: DictConfig, output_dir: Optional[Path] = None) -> Optional[float]:
    """Run the stage `cfg.stage.name` in `output_dir` (default: Hydra's job directory); return its metric."""
    spec = get_stage(cfg.stage.name)
    resolved = resolve_config(cfg)
    check_config(resolved)  # every group's values, whatever the stage
    output_dir = Path(output_dir or HydraConfig.get().runtime.output_dir)
    launch.check_world(cfg)
    if launch.wants_launch(cfg):  # backend.nproc_per_node > 1: rank 0 of a torchrun group makes this run
        return launch.launch(cfg, output_dir)
    run = Run.create(output_dir, resolved, stage=spec.name)
    # trackers record the command line (W&B's metadata reads sys.argv): never with a secret in it
    sys.argv[:] = [redact_text(arg, run.secrets) for arg in sys.argv]
    try:
        if distributed.is_main():  # under torchrun the other ranks log nothing
            run.tracker = make_tracker(resolved.get("logger", {}), run.dir, run.config, run_name(cfg, run.dir))
        # servers a stage starts are stopped when it ends (a pipeline's at its end); peaks are this stage's own
        with vllm.POOL.scope(run.dir), memory_window() as peak:
            result = spec.run(cfg, run)
            measured = {**peak_memory(peak()), **vllm.POOL.memory()}  # + vLLM servers still up (servers.json: all)
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


def check_command_line(args: list[str]) -> None:
    """Persona names on the command line, checked before Hydra turns them into a run directory.

    A name that is not allowed (`../x`, 5,000 characters) then fails with one line and nothing written, instead of
    a folder made from it or an `OSError` from the file system.
    """
    from hydra.core.override_parser.overrides_parser import OverridesParser

    from charlab.constitution import validate_persona_name

    parser = OverridesParser.create()
    for arg in args:
        if arg.startswith("-") or "=" not in arg:
            continue
        try:
            override = parser.parse_override(arg)
        except Exception:  # Hydra reports its own parse errors
            continue
        if override.key_or_group != "persona.name" or override.is_delete():
            continue
        values = list(override.sweep_iterator()) if override.is_discrete_sweep() else [override.value()]
        for value in map(str, values):
            if "${" not in value:  # an interpolation is checked once resolved (charlab.stages._common)
                validate_persona_name(value)


def fail(err: CharlabError) -> NoReturn:
    """The one-line error every bad input gets, and exit status 2."""
    print(f"charlab: error: {err}", file=sys.stderr)
    raise SystemExit(2) from None


@hydra.main(version_base="1.3", config_path=str(configs_dir()), config_name="train")
def hydra_main(cfg: DictConfig) -> Optional[float]:
    """Hydra entry point: run the composed config's stage."""
    try:
        metric = execute(cfg)
    except CharlabError as err:
        fail(err)
    distributed.shutdown()
    return metric


def main() -> Optional[float]:
    """`python -m charlab.train` and the `charlab-train` console script (also each torchrun rank)."""
    try:
        check_command_line(sys.argv[1:])
    except CharlabError as err:
        fail(err)
    private = launch.worker_overrides()  # ranks > 0 write nothing into the run directory
    sys.argv.extend(private)
    try:
        return hydra_main()
    finally:
        for override in private[:1]:
            shutil.rmtree(override.split("=", 1)[1], ignore_errors=True)


if __name__ == "__main__":
    main()
