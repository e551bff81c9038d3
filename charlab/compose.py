"""Compose the exact config `python -m charlab.train <overrides>` would get, from Python.

The pipeline (one step at a time), the Python API (`generate_dpo_pairs`, `run_dpo_training`, ...) and the
Studio use this instead of the `@hydra.main` entry point (which parses `sys.argv`). Works inside a running
Hydra app too: Hydra's global state and `HydraConfig` are restored afterwards. Call `charlab.app.setup()` once
before (it registers the resolvers and schemas the config tree uses).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Optional

from hydra import compose, initialize_config_dir
from hydra.core.hydra_config import HydraConfig
from hydra.initialize import get_gh_backup, restore_gh_from_backup
from omegaconf import DictConfig, OmegaConf, open_dict

from charlab.settings import configs_dir

LOG_FORMAT = "[%(asctime)s][%(name)s][%(levelname)s] - %(message)s"


@contextlib.contextmanager
def composed(
    overrides: list[str], output_dir: Optional[Path] = None, job_num: int = 0, log: bool = True
) -> Iterator[DictConfig]:
    """The composed config; while inside, `HydraConfig` points at `output_dir` (default: Hydra's `run.dir`)
    and, with `log`, the directory exists and the stage log goes to `<output_dir>/train.log`."""
    if not OmegaConf.has_resolver("charlab_root"):
        raise RuntimeError("composing a charlab config needs charlab.app.setup() first")
    backup = get_gh_backup()
    previous = HydraConfig.instance().cfg  # type: ignore[attr-defined]
    handler: Optional[logging.Handler] = None
    try:
        from hydra.core.global_hydra import GlobalHydra

        GlobalHydra.instance().clear()
        with initialize_config_dir(config_dir=str(configs_dir()), version_base="1.3"):
            cfg = compose(config_name="train", overrides=list(overrides), return_hydra_config=True)
        out = Path(output_dir) if output_dir is not None else Path(str(OmegaConf.select(cfg, "hydra.run.dir")))
        out = out.expanduser().resolve()
        with open_dict(cfg):
            cfg.hydra.runtime.output_dir = str(out)
            cfg.hydra.job.num = job_num
        HydraConfig.instance().set_config(cfg)
        if log:
            out.mkdir(parents=True, exist_ok=True)
            handler = logging.FileHandler(out / "train.log", encoding="utf-8")
            handler.setFormatter(logging.Formatter(LOG_FORMAT))
            logging.getLogger().addHandler(handler)
            logging.getLogger("charlab").setLevel(logging.INFO)
        yield cfg
    finally:
        if handler is not None:
            logging.getLogger().removeHandler(handler)
            handler.close()
        restore_gh_from_backup(backup)
        HydraConfig.instance().cfg = previous  # type: ignore[attr-defined]
