"""`stage=draft_constitution`: an LLM drafts a constitution from a one-line description; it is validated,
repaired on errors and saved to `paths.constitutions/<persona.name>.json`.

    python -m charlab.train stage=draft_constitution persona=custom persona.name=captain_py \
        provider@judge=openai judge.model=gpt-4o-mini \
        stage.description="a sarcastic 19th-century pirate captain who teaches Python"
    python -m charlab.train stage=draft_constitution persona=custom persona.name=gardener stage.role=teacher \
        stage.description="a gentle gardener" model=smollm2-135m        # offline, hf (small models often fail)

The drafting model is the provider configured for `stage.role` (judge by default), so any sampler works. An
existing file is refused before any token is generated, unless `stage.overwrite=true`. The run directory keeps
a copy (`constitution.json`, `constitution.md`), every reply with its validation error (`attempts.jsonl`), and
a `meta.json` beside the copy.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from omegaconf import MISSING, DictConfig

from charlab.constitution import constitution_path, save_constitution, validate_persona_name
from charlab.data.jsonl import JsonlWriter
from charlab.drafting import DraftError, DraftOptions, draft_constitution, format_constitution
from charlab.errors import ConfigError, ConstitutionError
from charlab.registry import StageResult, register_stage
from charlab.run import Run, write_meta
from charlab.schemas import StageConfig
from charlab.stages._common import sampler_for_role

ROLES = ("teacher", "student", "judge")


@dataclass
class DraftConstitutionStageConfig(StageConfig):
    """`stage=draft_constitution`: draft, validate and save a persona from a description."""

    name: str = "draft_constitution"
    description: str = MISSING
    role: str = MISSING
    num_traits: int = MISSING
    questions_per_trait: int = MISSING
    temperature: float = MISSING
    max_new_tokens: int = MISSING
    max_tries: int = MISSING
    json_mode: bool = MISSING
    overwrite: bool = MISSING


@register_stage(
    "draft_constitution", schema=DraftConstitutionStageConfig, description="draft a constitution with an LLM"
)
def run(cfg: DictConfig, run: Run) -> StageResult:
    """Draft `persona.name` from `stage.description` and save it to `paths.constitutions`."""
    stage = cfg.stage
    name = validate_persona_name(cfg.persona.name)
    if stage.role not in ROLES:
        raise ConfigError(f"stage.role={stage.role!r} is not allowed; use one of {', '.join(ROLES)}")
    for key in ("num_traits", "questions_per_trait", "max_tries", "max_new_tokens"):
        if int(stage[key]) < 1:
            raise ConfigError(f"stage.{key}={stage[key]} is not allowed; use 1 or more")
    directory = Path(cfg.paths.constitutions)
    target = constitution_path(directory, name)
    if target.exists() and not stage.overwrite:
        raise ConstitutionError(
            f"{target}: already exists; set stage.overwrite=true, or pick a new name with "
            "persona=custom persona.name=<new_name>"
        )

    sampler = sampler_for_role(cfg, stage.role, pool=run.pool)
    options = DraftOptions(**{k: stage[k] for k in DraftOptions.__dataclass_fields__})
    top_p = float(cfg[stage.role].get("top_p", 1.0))
    attempts_path = run.path("attempts.jsonl")
    try:
        draft = draft_constitution(stage.description, sampler, name=name, options=options, top_p=top_p, seed=cfg.seed)
    except DraftError as err:
        # what the model said is the most useful thing to look at when drafting fails
        _write_attempts(attempts_path, err.attempts)
        raise
    finally:
        sampler.close()
    _write_attempts(attempts_path, draft.attempts)
    saved = save_constitution(draft.constitution, directory, overwrite=bool(stage.overwrite))
    copy = run.path("constitution.json")
    copy.write_text(draft.constitution.to_json(), encoding="utf-8")
    run.path("constitution.md").write_text(format_constitution(draft.constitution), encoding="utf-8")
    write_meta(run.path("constitution.meta.json"), run.config, {"saved_to": str(saved)}, drafted_by=draft.model_name)
    run.log_metrics({"attempts": len(draft.attempts), "traits": len(draft.constitution.traits)}, step=0)
    print(f"[charlab] constitution {name!r} drafted in {len(draft.attempts)} tries and saved to {saved}")
    return StageResult(
        metric=float(len(draft.attempts)),
        metric_name="attempts",
        artifacts={"constitution": saved, "copy": copy},
        summary={"persona": name, "attempts": len(draft.attempts), "traits": len(draft.constitution.traits)},
    )


def _write_attempts(path: Path, attempts: list) -> None:
    with JsonlWriter(path) as writer:
        for i, attempt in enumerate(attempts, 1):
            writer.write({"attempt": i, "error": attempt.error, "reply": attempt.reply})
