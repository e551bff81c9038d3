"""`stage=pipeline`: the whole recipe in one run directory, one subfolder per step.

    python -m charlab.train experiment=demo                                   # the offline demo
    python -m charlab.train stage=pipeline persona=sarcasm 'pipeline.steps=[distill,dpo]'
    python -m charlab.train stage=pipeline stage.resume=true stage.resume_from=outputs/pirate/pipeline/<run>

Each step is exactly the run the CLI would make: its config is composed from this run's own overrides plus
`stage=<step>`, the wiring of earlier steps' artifacts (`pipeline.wiring`, e.g. `stage.pairs` of `dpo`
<- `pairs` of `distill`) and `pipeline.step_overrides`. A trained adapter reaches a later step in the form
that step's provider or backend can use (a PEFT folder, a `tinker://` path, a served LoRA name): see
`charlab.stages.handoff`. A finished step (its `meta.json` says completed) is
never rerun; with `stage.resume=true` an unfinished one continues from what it already wrote.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from hydra.core.hydra_config import HydraConfig
from omegaconf import MISSING, DictConfig, OmegaConf

from charlab.compose import composed
from charlab.errors import CharlabError, ConfigError
from charlab.registry import StageResult, register_stage
from charlab.run import Run, read_meta, write_json
from charlab.runner import run_overrides
from charlab.schemas import StageConfig
from charlab.stages.handoff import PROVIDER_ROLES, handoff_overrides

# overrides of the pipeline itself, which must not reach its steps
_OWN_PREFIXES = ("stage=", "stage.", "+stage.", "++stage.", "pipeline.", "+pipeline.", "++pipeline.", "hydra.")


@dataclass
class PipelineStageConfig(StageConfig):
    """`stage=pipeline`: where to resume from (the step list and wiring live under `pipeline`)."""

    name: str = "pipeline"
    resume_from: Optional[str] = None  # an earlier pipeline run directory to continue in


@dataclass
class PipelineConfig:
    """`pipeline.*`: which steps run, how artifacts flow between them, and extra overrides per step."""

    steps: list[str] = MISSING
    # values are `<step>.<artifact>[@consumer]` strings; typed Any because OmegaConf cannot re-merge a
    # dict[str, str] nested in a dict (an experiment that rewires one step would fail to compose)
    wiring: dict[str, dict[str, Any]] = field(default_factory=dict)
    step_overrides: dict[str, list[str]] = field(default_factory=dict)
    # step -> a finished run directory of that stage whose artifacts stand in for the step when it is not in `steps`
    inputs: dict[str, Optional[str]] = field(default_factory=dict)
    report: bool = True
    metric_step: str = MISSING  # whose headline metric the pipeline returns (what sweeps optimise)


class PipelineStepError(CharlabError):
    """A step failed; the message says which and how to continue."""


def step_dir_name(index: int, step: str) -> str:
    return f"{index + 1:02d}_{step}"


def _given_inputs(cfg: DictConfig, steps: list[str]) -> dict[str, dict[str, str]]:
    """The artifacts of finished runs named in `pipeline.inputs` (e.g. one distillation shared by a sweep)."""
    artifacts: dict[str, dict[str, str]] = {}
    for step, folder in (cfg.pipeline.inputs or {}).items():
        if folder is None:
            continue
        meta = read_meta(Path(str(folder)).expanduser())
        if step in steps:
            raise ConfigError(f"pipeline.inputs.{step}: '{step}' is also in pipeline.steps; give one or the other")
        if meta.get("status") != "completed" or meta.get("stage") not in (None, step):
            raise ConfigError(f"pipeline.inputs.{step}={folder}: not a finished '{step}' run directory")
        artifacts[str(step)] = dict(meta.get("artifacts") or {})
    return artifacts


def task_overrides() -> list[str]:
    """This run's own command-line overrides, minus those that configure the pipeline itself."""
    task = list(HydraConfig.get().overrides.task)
    return [o for o in task if not o.lstrip("~").startswith(_OWN_PREFIXES)]


def consumer_kinds(overrides: list[str]) -> Callable[[str], str]:
    """`kind_of(consumer)`: the kind of a provider role or of the backend in the step composed from `overrides`
    (composed once, on first use: only steps that receive an adapter pay for it)."""
    kinds: dict[str, str] = {}

    def kind_of(consumer: str) -> str:
        if not kinds:
            with composed(overrides, log=False) as cfg:
                kinds.update({role: str(cfg[role].kind) for role in PROVIDER_ROLES if role in cfg})
                kinds["backend"] = str(cfg.backend.kind)
        return kinds[consumer]

    return kind_of


def _print_estimate(cfg: DictConfig) -> None:
    """Before a run that costs money (remote generation or training), say how much it will generate and train."""
    from charlab.generation.factory import PROVIDERS
    from charlab.training.factory import BACKENDS

    kinds = [(PROVIDERS, cfg[role].kind) for role in ("teacher", "student", "judge")] + [(BACKENDS, cfg.backend.kind)]
    if all(kind in table and table[kind].local for table, kind in kinds):  # nothing runs remotely
        return
    from charlab.estimate import estimate_tokens

    data = cfg.data
    persona_prompts = data.persona_prompts
    if persona_prompts is None:  # questions_per_trait per trait
        from charlab.stages._common import load_persona

        persona_prompts = int(data.questions_per_trait) * len(load_persona(cfg).traits)
    estimate = estimate_tokens(
        prompts=(data.generic_prompts + persona_prompts) * int(data.samples_per_prompt),
        teacher_max_new_tokens=cfg.teacher.max_new_tokens,
        student_max_new_tokens=cfg.student.max_new_tokens,
        reflections=data.reflections,
        interactions=data.interactions,
        interaction_turns=data.interaction_turns,
        max_length=data.max_length,
        sft_max_length=data.sft_max_length,
    )
    print(f"[charlab] estimate for persona {cfg.persona.name}: {estimate.describe()}")


@register_stage(
    "pipeline",
    schema=PipelineStageConfig,
    description="distill -> dpo -> introspect -> sft -> export -> eval",
    schemas={"pipeline": PipelineConfig},
)
def run(cfg: DictConfig, run: Run) -> StageResult:
    """Run the configured steps in order inside one run directory."""
    steps = list(cfg.pipeline.steps)
    if not steps:
        raise ConfigError("pipeline.steps is empty; e.g. pipeline.steps=[distill,dpo]")
    root = Path(cfg.stage.resume_from).expanduser() if cfg.stage.resume_from else run.dir
    if cfg.stage.resume_from and not root.is_dir():
        raise ConfigError(f"stage.resume_from={root} is not a directory")
    if root != run.dir:
        run.add_parent("resumed_pipeline", root)
    _print_estimate(cfg)
    wiring = OmegaConf.to_container(cfg.pipeline.wiring, resolve=True)
    step_overrides = OmegaConf.to_container(cfg.pipeline.step_overrides, resolve=True)
    base = task_overrides() + [f"++logger.group={cfg.persona.name}-pipeline-{root.name}"]
    artifacts = _given_inputs(cfg, steps)
    given = {step: folder for step, folder in cfg.pipeline.inputs.items() if folder}
    state: dict[str, Any] = {"root": str(root), "steps": {}, "inputs": given}
    for index, step in enumerate(steps):
        step_dir = root / step_dir_name(index, step)
        meta = read_meta(step_dir)
        if meta.get("status") == "completed":
            print(f"[charlab] pipeline: step {step} already finished in {step_dir}; skipping")
        else:
            head = base + [f"stage={step}", f"++logger.job_type={step}"]
            tail = list(step_overrides.get(step) or []) + (["stage.resume=true"] if meta else [])  # resume: it started
            print(f"[charlab] pipeline: step {index + 1}/{len(steps)} {step} -> {step_dir}")
            try:
                kind_of = consumer_kinds(head + tail)
                wired = handoff_overrides(step, wiring.get(step) or {}, artifacts, kind_of, persona=cfg.persona.name)
                run_overrides(head + wired + tail, run.services, step_dir)
            except (CharlabError, Exception) as err:
                state["steps"][step_dir.name] = {"step": step, "status": "failed", "error": str(err)}
                write_json(root / "pipeline.json", state)
                first_line = (str(err).strip().splitlines() or [type(err).__name__])[0]
                raise PipelineStepError(
                    f"pipeline step '{step}' failed: {first_line} -- fix it, then rerun with stage.resume=true "
                    f"stage.resume_from={root}"
                ) from err
            meta = read_meta(step_dir)
        artifacts[step] = dict(meta.get("artifacts") or {})
        state["steps"][step_dir.name] = {"step": step, "status": "completed", "artifacts": artifacts[step]}
        write_json(root / "pipeline.json", state)
        run.add_parent(step_dir.name, step_dir)
    summary: dict[str, Any] = {"steps": steps, "root": str(root)}
    result_artifacts: dict[str, Path] = {"pipeline": root / "pipeline.json"}
    if cfg.pipeline.report:
        from charlab.report import write_pipeline_report

        report = write_pipeline_report(root, steps, persona=cfg.persona.name, min_usable=int(cfg.eval.min_usable))
        result_artifacts["report"] = report.path
        summary.update(report.headline)
        print("[charlab] " + report.headline["verdict"].partition("\n\n")[0])  # the verdict line
        print(f"[charlab] report: {report.path}")
    for name in ("adapter",):
        final = next((artifacts[s][name] for s in reversed(steps) if name in artifacts.get(s, {})), None)
        if final:
            result_artifacts[name] = Path(final)
            print(f"[charlab] final adapter: {final}")
    metric_meta = (
        read_meta(root / step_dir_name(steps.index(cfg.pipeline.metric_step), cfg.pipeline.metric_step))
        if (cfg.pipeline.metric_step in steps)
        else {}
    )
    return StageResult(
        metric=metric_meta.get("metric"),
        metric_name=f"{cfg.pipeline.metric_step}/{metric_meta.get('metric_name')}" if metric_meta else None,
        artifacts=result_artifacts,
        summary=summary,
    )
