"""The seed project's Python API for the stages that run through Hydra: `generate_dpo_pairs` and `run_dpo_training`.

Each call composes exactly the config `python -m charlab.train <overrides>` would (fields left at None keep the YAML
defaults; `overrides` passes any other `key=value`) and runs it through `charlab.runner` (after
`charlab.app.setup()`), so the CLI, the Studio and
this API make the same run directory:

    from charlab import GenerationConfig, generate_dpo_pairs, TrainingConfig, run_dpo_training
    pairs = generate_dpo_pairs(GenerationConfig(persona="pirate", pair_count=30, temperature=0.7))
    adapter = run_dpo_training(TrainingConfig(dataset_path=pairs, persona="pirate", lora_rank=32, epochs=1,
                                              batch_size=16, learning_rate=1e-4, beta=0.1, save_name="pirate-dpo"))

`GenerationConfig(persona="pirate", pair_count=30, temperature=0.7)` equals `python -m charlab.train stage=distill
persona=pirate data.generic_prompts=20 data.persona_prompts=10 teacher.temperature=0.7 student.temperature=0.7`.
This module sits above the libraries (it composes configs and runs stages); they never import it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from charlab.app import setup
from charlab.errors import ConfigError
from charlab.settings import configs_dir, safe_path_part

_PLAIN = re.compile(r"^[A-Za-z0-9_./:+@-]+$")


def _value(value: Any) -> str:
    """An override value, quoted when Hydra's grammar would misread it (spaces, '=', brackets, ...)."""
    text = str(value)
    if _PLAIN.match(text):
        return text
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"


@dataclass
class GenerationConfig:
    """What to generate; a field left None keeps the config default."""

    persona: str = "pirate"
    pair_count: Optional[int] = None  # prompts in all, split 2:1 generic:persona like the paper (1,000 + 500)
    temperature: Optional[float] = None  # teacher and student
    max_new_tokens: Optional[int] = None  # teacher and student
    teacher_model: Optional[str] = None  # a model config name (smollm2-135m), hub id or folder, or a served name
    student_model: Optional[str] = None  # a model config name sets the run's model; anything else student.model
    model: Optional[str] = None  # the run's model config (the student DPO will train)
    teacher_provider: Optional[str] = None  # hf | openai | tinker
    student_provider: Optional[str] = None
    data: Optional[str] = None  # demo | paper
    samples_per_prompt: Optional[int] = None
    seed: Optional[int] = None
    resume_from: Optional[str] = None  # an earlier distill run directory (or its pairs.jsonl) to continue
    output_dir: Optional[str] = None  # the run directory; default: outputs/<persona>/distill/<time>_<id>
    logger: Optional[str] = None  # wandb | wandb_online | none
    overrides: list[str] = field(default_factory=list)  # any further Hydra overrides, applied last


def overrides_for(config: GenerationConfig) -> list[str]:
    """The command-line overrides equal to `config`."""
    out = ["stage=distill", f"persona={config.persona}"]
    for group, value in (("data", config.data), ("logger", config.logger), ("model", config.model)):
        if value is not None:
            out.append(f"{group}={value}")
    for role, provider in (("teacher", config.teacher_provider), ("student", config.student_provider)):
        if provider is not None:
            out.append(f"provider@{role}={provider}")
    if config.student_model is not None:
        named = (configs_dir() / "model" / f"{config.student_model}.yaml").is_file()
        out.append(f"model={config.student_model}" if named else f"student.model={config.student_model}")
    if config.teacher_model is not None:
        out.append(f"teacher.model={config.teacher_model}")
    if config.pair_count is not None:
        generic = round(config.pair_count * 2 / 3)
        out += [f"data.generic_prompts={generic}", f"data.persona_prompts={config.pair_count - generic}"]
    for key, value in (("temperature", config.temperature), ("max_new_tokens", config.max_new_tokens)):
        if value is not None:
            out += [f"teacher.{key}={value}", f"student.{key}={value}"]
    if config.samples_per_prompt is not None:
        out.append(f"stage.samples_per_prompt={config.samples_per_prompt}")
    if config.seed is not None:
        out.append(f"seed={config.seed}")
    if config.resume_from is not None:
        out += ["stage.resume=true", f"stage.resume_from={config.resume_from}"]
    return out + list(config.overrides)


def generate_dpo_pairs(config: GenerationConfig) -> Path:
    """Run `stage=distill` as the CLI would and return the path of its `pairs.jsonl`."""
    from charlab.runner import run_overrides

    services = setup()
    output_dir = Path(config.output_dir).expanduser() if config.output_dir else None
    _, run_dir = run_overrides(overrides_for(config), services, output_dir)
    return run_dir / "pairs.jsonl"


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

    from charlab.compose import composed
    from charlab.runner import run_overrides

    services = setup()
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
    _, run_dir = run_overrides(overrides, services, output_dir)
    return run_dir / "adapter"
