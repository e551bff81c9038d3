"""The seed project's Python API for stage 1: `generate_dpo_pairs(GenerationConfig(...)) -> Path`.

It composes the same Hydra config the CLI would (`stage=distill` plus overrides built from the fields that
are set; everything else comes from the YAML defaults) and runs it through `charlab.train.execute`:

    from charlab import GenerationConfig, generate_dpo_pairs
    pairs = generate_dpo_pairs(GenerationConfig(persona="pirate", pair_count=30, temperature=0.7))

equals `python -m charlab.train stage=distill persona=pirate data.generic_prompts=20 data.persona_prompts=10
teacher.temperature=0.7 student.temperature=0.7`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional


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
    from charlab.settings import configs_dir

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
    from charlab.compose import run_overrides

    output_dir = Path(config.output_dir).expanduser() if config.output_dir else None
    _, run_dir = run_overrides(overrides_for(config), output_dir)
    return run_dir / "pairs.jsonl"
