"""The Python API of the seed project: `run_dpo_training(TrainingConfig(...)) -> Path`.

    from charlab.training.api import TrainingConfig, run_dpo_training

    adapter = run_dpo_training(TrainingConfig(dataset_path="pairs.jsonl", persona="pirate", lora_rank=32,
                                              epochs=1, batch_size=16, learning_rate=1e-4, beta=0.1,
                                              save_name="pirate-dpo"))

It composes exactly the Hydra config that `python -m charlab.train stage=dpo ...` would (fields left at None
keep the YAML defaults; `overrides` passes any other `key=value`) and runs the same `charlab.train.execute`,
so the CLI, the Studio and this API produce the same run directory.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from charlab.errors import ConfigError
from charlab.settings import safe_path_part

_PLAIN = re.compile(r"^[A-Za-z0-9_./:+@-]+$")


def _value(value: Any) -> str:
    """An override value, quoted when Hydra's grammar would misread it (spaces, '=', brackets, ...)."""
    text = str(value)
    if _PLAIN.match(text):
        return text
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"


@dataclass
class TrainingConfig:
    """DPO training settings in the seed project's names; None keeps the config tree's default."""

    dataset_path: str | Path  # the pairs.jsonl
    persona: Optional[str] = None
    model: Optional[str] = None  # a configs/model option, e.g. smollm2-135m
    backend: Optional[str] = None  # local | tinker
    lora_rank: Optional[int] = None
    epochs: Optional[int] = None
    batch_size: Optional[int] = None
    learning_rate: Optional[float] = None
    beta: Optional[float] = None
    save_name: Optional[str] = None  # the run directory's name: <output_root>/<persona>/dpo/<save_name>
    output_root: Optional[str | Path] = None  # default: paths.output_root
    resume: bool = False  # continue the run `save_name` from its newest checkpoint
    overrides: list[str] = field(default_factory=list)  # any other `key=value`, e.g. "stage.nll_coef=0"

    def to_overrides(self) -> list[str]:
        """The command-line overrides this config stands for."""
        out = ["stage=dpo", f"stage.pairs={_value(Path(self.dataset_path).expanduser().resolve())}"]
        groups = {"persona": self.persona, "model": self.model, "backend": self.backend}
        out += [f"{k}={_value(v)}" for k, v in groups.items() if v is not None]
        values = {
            "lora.rank": self.lora_rank,
            "stage.epochs": self.epochs,
            "stage.batch_size": self.batch_size,
            "stage.lr": self.learning_rate,
            "stage.beta": self.beta,
            "paths.output_root": Path(self.output_root).expanduser().resolve() if self.output_root else None,
        }
        out += [f"{k}={_value(v)}" for k, v in values.items() if v is not None]
        if self.resume:
            out.append("stage.resume=true")
        return out + list(self.overrides)


def compose(overrides: list[str], output_dir: Optional[Path] = None) -> tuple[Any, Path]:
    """The config `python -m charlab.train <overrides>` would get, and its run directory (Hydra's, or given)."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import OmegaConf, open_dict

    import charlab.train  # noqa: F401  (resolvers, schemas, stages)
    from charlab.settings import configs_dir

    if GlobalHydra.instance().is_initialized():  # e.g. called from inside another Hydra app
        GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(configs_dir()), version_base="1.3"):
        cfg = hydra_compose(config_name="train", overrides=overrides, return_hydra_config=True)
    if output_dir is None:
        output_dir = Path(OmegaConf.select(cfg, "hydra.run.dir"))
    with open_dict(cfg):
        cfg.hydra.runtime.output_dir = str(output_dir)
        cfg.hydra.job.num = 0
    HydraConfig.instance().set_config(cfg)
    return cfg, Path(output_dir)


def run_dpo_training(config: TrainingConfig) -> Path:
    """Train a DPO adapter as `stage=dpo` would; returns the adapter folder."""
    from omegaconf import OmegaConf

    from charlab.train import execute

    overrides = config.to_overrides()
    output_dir = None
    if config.save_name and safe_path_part(config.save_name) != config.save_name:
        raise ConfigError(f"save_name '{config.save_name}' must be a plain folder name (letters, digits, _ . -)")
    if config.save_name:
        cfg, _ = compose(overrides)
        root = Path(OmegaConf.select(cfg, "paths.output_root"))
        output_dir = root / str(cfg.persona.name) / "dpo" / config.save_name
        if (output_dir / "adapter").exists() and not config.resume:
            raise ConfigError(f"save_name '{config.save_name}' has an adapter already ({output_dir}); use resume=True")
    elif config.resume:
        raise ConfigError("resume=True needs the save_name of the run to continue")
    cfg, output_dir = compose(overrides, output_dir)
    execute(cfg, output_dir)
    return output_dir / "adapter"
