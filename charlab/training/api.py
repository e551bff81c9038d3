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


def run_dpo_training(config: TrainingConfig) -> Path:
    """Train a DPO adapter as `stage=dpo` would; returns the adapter folder."""
    from omegaconf import OmegaConf

    from charlab.compose import composed, run_overrides

    overrides = config.to_overrides()
    output_dir = None
    if config.save_name and safe_path_part(config.save_name) != config.save_name:
        raise ConfigError(f"save_name '{config.save_name}' must be a plain folder name (letters, digits, _ . -)")
    if config.save_name:
        with composed(overrides, log=False) as cfg:  # only to learn where the run would go
            root = Path(OmegaConf.select(cfg, "paths.output_root"))
            output_dir = root / str(cfg.persona.name) / "dpo" / config.save_name
        if (output_dir / "adapter").exists() and not config.resume:
            raise ConfigError(f"save_name '{config.save_name}' has an adapter already ({output_dir}); use resume=True")
    elif config.resume:
        raise ConfigError("resume=True needs the save_name of the run to continue")
    _, run_dir = run_overrides(overrides, output_dir)
    return run_dir / "adapter"
