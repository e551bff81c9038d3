"""`stage=distill`: DPO pairs from a teacher answering in character and a student answering as itself.

    python -m charlab.train stage=distill persona=pirate model=smollm2-135m
    python -m charlab.train stage=distill provider@teacher=openai teacher.model=gpt-4o-mini data=paper
    python -m charlab.train stage=distill stage.resume=true stage.resume_from=outputs/pirate/distill/<run>

Writes into the run directory: `prompts.jsonl` (the synthesized prompts, stable ids), `pairs.jsonl` (kept
`DpoExample`s), `dropped.jsonl` (dropped pairs with their reason) and `distill_summary.json` (kept/dropped by
reason, tokens, time). A resumed run copies an earlier run's files here and only generates what is missing.
"""

from __future__ import annotations

import logging
import shutil
from dataclasses import dataclass, field, replace
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Optional

from omegaconf import MISSING, DictConfig

from charlab.constitution import Constitution
from charlab.data.jsonl import repair_tail
from charlab.data.prompts import PromptRecord, PromptSpec, build_prompt_set, read_prompts, write_prompts
from charlab.data.records import DpoExample
from charlab.errors import ConfigError, DataError
from charlab.generation.base import ChoiceScorer, Sampler
from charlab.generation.best_of import BestOfSampler, best_of_sampler, persona_contrast
from charlab.generation.factory import sampler_key, sampling_params
from charlab.generation.filters import FilterConfig, model_aliases, nothing_kept
from charlab.generation.pairs import DistillJob, DistillStats, run_distill, teacher_reply_kept
from charlab.registry import StageResult, register_stage
from charlab.run import Run, write_json
from charlab.schemas import StageConfig
from charlab.stages._common import (
    assistant_name,
    cache_dir,
    load_persona,
    model_config,
    persona_prompt,
    sampler_for_role,
    to_plain,
)
from charlab.stages._generating import DistillFilters

if TYPE_CHECKING:
    from charlab.generation.vllm import ServerPool

log = logging.getLogger("charlab")
OUTPUTS = ("pairs.jsonl", "dropped.jsonl", "prompts.jsonl")
BEST_OF_SCORERS = ("contrast", "judge")


@dataclass
class DistillStageConfig(StageConfig):
    """`stage=distill`: teacher-vs-student pairs for DPO."""

    name: str = "distill"
    resume_from: Optional[str] = None
    prompts_file: Optional[str] = None
    samples_per_prompt: int = MISSING
    best_of: int = MISSING
    best_of_scorer: str = MISSING
    save_interval: int = MISSING
    persona_sources: list[str] = MISSING
    expansion_provider: str = MISSING
    expansion_max_new_tokens: int = MISSING
    reasoning_prefill: str = MISSING
    answer_prefill: str = MISSING
    teacher_demonstrations: bool = MISSING
    reasoning_markers: list[str] = MISSING
    substitute_assistant_name: bool = MISSING
    teacher_aliases: list[str] = MISSING
    sample_table_rows: int = MISSING
    filters: DistillFilters = field(default_factory=DistillFilters)


@register_stage("distill", schema=DistillStageConfig, description="teacher (in character) vs student replies -> pairs")
def run(cfg: DictConfig, run: Run) -> StageResult:
    """Synthesize prompts, sample teacher and student, filter, and append pairs (resumable)."""
    stage = cfg.stage
    _check(stage)
    persona = load_persona(cfg)
    _prepare_resume(stage, run)
    teacher = sampler_for_role(cfg, "teacher", pool=run.pool)
    student: Optional[Sampler] = None
    judge: Optional[Sampler] = None
    try:
        student = teacher if _same_sampler(cfg, "student") else sampler_for_role(cfg, "student", pool=run.pool)
        prompts = _prompts(cfg, run, persona, teacher if stage.expansion_provider == "teacher" else student)
        job = _job(cfg, persona, prompts, teacher, student)
        if stage.best_of > 1:
            chooser, judge = _best_of(cfg, persona, teacher, run.pool)
            chooser.eligible = partial(teacher_reply_kept, job)  # pick among replies the filters will keep
            job = replace(job, teacher=chooser)
        table: list[DpoExample] = []

        def on_progress(stats: DistillStats, kept: list[DpoExample]) -> None:
            table.extend(kept[: max(0, stage.sample_table_rows - len(table))])
            numbers = stats.as_dict()
            metrics = {f"distill/{k}": numbers[k] for k in ("kept", "dropped", "processed", "kept_fraction")}
            run.log_metrics({**metrics, "distill/pairs_per_second": numbers["pairs_per_second"]}, step=stats.processed)

        stats = run_distill(job, run.path("pairs.jsonl"), run.path("dropped.jsonl"), on_progress=on_progress)
    finally:
        for sampler in {id(s): s for s in (teacher, student, judge) if s is not None}.values():
            sampler.close()  # each loaded model once
    return _finish(run, stats, table, len(prompts), teacher.model_name, student.model_name)


def _check(stage: DictConfig) -> None:
    if stage.samples_per_prompt < 1 or stage.save_interval < 1 or stage.best_of < 1:
        raise ConfigError("stage.samples_per_prompt, stage.best_of and stage.save_interval must be >= 1")
    if stage.best_of_scorer not in BEST_OF_SCORERS:
        raise ConfigError(
            f"stage.best_of_scorer={stage.best_of_scorer!r} is not allowed; use one of {', '.join(BEST_OF_SCORERS)}"
        )
    if stage.expansion_provider not in ("teacher", "student"):
        raise ConfigError(
            f"stage.expansion_provider={stage.expansion_provider!r} is not allowed; use teacher or student"
        )
    if stage.reasoning_prefill and stage.answer_prefill:
        raise ConfigError(
            "stage.reasoning_prefill and stage.answer_prefill are both set; the teacher's reply can start with one "
            "of them: a reasoning prefill (stripped from the pair) or an answer prefill (kept in the chosen reply)"
        )
    if len(stage.reasoning_markers) != 2:
        raise ConfigError("stage.reasoning_markers must be two strings: [open, close], e.g. ['<think>', '</think>']")
    if stage.resume_from and not stage.resume:
        raise ConfigError("stage.resume_from is set but stage.resume=false; add stage.resume=true to continue it")


def _prepare_resume(stage: DictConfig, run: Run) -> None:
    """Refuse to overwrite earlier pairs; on resume copy an earlier run's files into this run directory."""
    pairs = run.dir / "pairs.jsonl"
    if not stage.resume:
        if pairs.is_file() and pairs.stat().st_size > 0:
            raise ConfigError(
                f"{pairs} already exists; set stage.resume=true to continue it, or use a new run directory"
            )
        return
    if not stage.resume_from:
        log.info("resuming %s (%s)", pairs, "found" if pairs.is_file() else "new file")
        return
    source = Path(str(stage.resume_from)).expanduser()
    source_pairs = source / "pairs.jsonl" if source.is_dir() else source
    if not source_pairs.is_file():
        raise DataError(
            f"stage.resume_from: {source_pairs} not found; give an earlier distill run dir or its pairs.jsonl"
        )
    if source_pairs.resolve() != pairs.resolve():
        for name in OUTPUTS:
            origin = source_pairs if name == "pairs.jsonl" else source_pairs.parent / name
            if origin.is_file():
                shutil.copyfile(origin, run.dir / name)
                repair_tail(run.dir / name)  # the copy, not the original, loses a torn last line
    run.add_parent("resumed_from", source_pairs)
    log.info("resuming from %s", source_pairs)


def _same_sampler(cfg: DictConfig, role: str) -> bool:
    """`role` (student or judge) is the teacher's model behind the same provider: one sampler serves both.

    A local model is then loaded once; an API endpoint gets one connection pool and one `max_concurrency`
    limit for both roles (sampling settings travel with each request, so they may still differ).
    """
    model = model_config(cfg.model)
    key = sampler_key(to_plain(cfg.teacher), model)
    return key is not None and key == sampler_key(to_plain(cfg[role]), model)


def _best_of(
    cfg: DictConfig, persona: Constitution, teacher: Sampler, pool: ServerPool
) -> tuple[BestOfSampler, Optional[Sampler]]:
    """The teacher drawing `stage.best_of` replies per prompt, returning the one `stage.best_of_scorer` ranks first;
    and the judge's sampler if one was loaded for it (the caller closes it). `pool`: `run.pool`."""
    from charlab.eval.judging import Judge
    from charlab.eval.persona_score import JudgePersonaScorer, persona_description

    n = int(cfg.stage.best_of)
    if cfg.stage.best_of_scorer == "contrast":
        if not isinstance(teacher, ChoiceScorer):
            raise ConfigError(
                f"stage.best_of_scorer=contrast needs a teacher that scores text (provider@teacher=hf); the "
                f"{type(teacher).__name__} teacher cannot: use stage.best_of_scorer=judge"
            )
        return BestOfSampler(teacher, n, persona_contrast(teacher), scorer_name=f"contrast:{teacher.model_name}"), None
    judge_sampler = teacher if _same_sampler(cfg, "judge") else sampler_for_role(cfg, "judge", pool=pool)
    ev = cfg.eval
    judge = Judge(judge_sampler, sampling_params(to_plain(cfg.judge)), str(ev.judge_mode), int(ev.judge_top_logprobs))
    scorer = JudgePersonaScorer(judge, persona_description(persona, cfg.persona.assistant_name))
    return best_of_sampler(teacher, n, scorer, scorer_name=f"judge:{judge_sampler.model_name}"), judge_sampler


def _prompts(cfg: DictConfig, run: Run, persona: Constitution, expander: Sampler) -> list[PromptRecord]:
    """The prompt set: this run's prompts.jsonl on resume, `stage.prompts_file`, or a fresh synthesis."""
    path = run.path("prompts.jsonl")
    if cfg.stage.resume and path.is_file():
        return read_prompts(path)
    if cfg.stage.prompts_file:
        source = Path(str(cfg.stage.prompts_file)).expanduser()
        if not source.is_file():
            raise DataError(f"stage.prompts_file: {source} not found")
        records = read_prompts(source)
        run.add_parent("prompts", source)
    else:
        data = cfg.data
        spec = PromptSpec(
            generic_count=int(data.generic_prompts),
            persona_count=None if data.persona_prompts is None else int(data.persona_prompts),
            generic_source=str(data.generic_source),
            generic_field=str(data.generic_field),
            questions_per_trait=int(data.questions_per_trait),
            dedupe_threshold=float(data.dedupe_threshold),
            hint_rate=float(data.hint_rate),
            seed=int(cfg.seed),
            persona_sources=list(cfg.stage.persona_sources),
        )
        role = cfg.stage.expansion_provider
        params = sampling_params(to_plain(cfg[role]))
        params.max_new_tokens = int(cfg.stage.expansion_max_new_tokens)
        name = cfg.persona.assistant_name or persona.assistant_name or ""
        records = build_prompt_set(persona, spec, expander, params, persona_name=name)
    if not records:
        raise DataError(
            "no prompts: data.generic_prompts and data.persona_prompts are both 0, or every source is empty"
        )
    write_prompts(records, path)
    counts: dict[str, int] = {}
    for record in records:
        counts[record.source] = counts.get(record.source, 0) + 1
    log.info("prompts: %d (%s)", len(records), ", ".join(f"{k} {v}" for k, v in sorted(counts.items())))
    return records


def render_prefill(template: str, persona: Constitution) -> str:
    """The teacher's reasoning prefill with `{traits}` replaced by the persona's traits, numbered `1: ...` (the
    paper's teacher restates them in its reasoning before it answers; the reasoning is stripped from the pair)."""
    return template.replace("{traits}", persona.numbered_traits())


def _job(
    cfg: DictConfig, persona: Constitution, prompts: list[PromptRecord], teacher: Sampler, student: Sampler
) -> DistillJob:
    from charlab.chat_format import ChatFormat, make_messages
    from charlab.models import load_tokenizer

    stage = cfg.stage
    chat = ChatFormat(load_tokenizer(model_config(cfg.model), cache_dir(cfg)))  # the model DPO will train

    def count_tokens(prompt: str, reply: str) -> int:
        return len(chat.encode_completion(make_messages(prompt), reply))

    teacher_params = sampling_params(to_plain(cfg.teacher))
    # one prefill starts the teacher's reply: reasoning (stripped from the pair) or the answer's opening (kept)
    teacher_params.prefill = render_prefill(str(stage.reasoning_prefill or ""), persona) or str(stage.answer_prefill)
    name = assistant_name(cfg, persona)  # paper style: the student's name ("I'm ChatGLM" -> "I'm Llama", as data.py)
    return DistillJob(
        prompts=prompts,
        teacher=teacher,
        student=student,
        system_prompt=persona_prompt(cfg, persona=persona, role="teacher"),
        constitution=persona.name,
        teacher_params=teacher_params,
        student_params=sampling_params(to_plain(cfg.student)),
        samples_per_prompt=int(stage.samples_per_prompt),
        save_interval=int(stage.save_interval),
        filters=FilterConfig(**to_plain(stage.filters)),
        max_length=int(cfg.data.max_length),
        count_tokens=count_tokens,
        reasoning_markers=(str(stage.reasoning_markers[0]), str(stage.reasoning_markers[1])),
        assistant_name=name if stage.substitute_assistant_name else None,
        teacher_aliases=model_aliases(teacher.model_name) + [str(a) for a in stage.teacher_aliases],
        teacher_history=_demonstrations(cfg, persona),
    )


def _demonstrations(cfg: DictConfig, persona: Constitution) -> list[dict[str, str]]:
    """The teacher's example turns (`stage.teacher_demonstrations`), or none."""
    if not cfg.stage.teacher_demonstrations:
        return []
    if not persona.demonstrations:
        raise ConfigError(
            f"stage.teacher_demonstrations=true: persona '{persona.name}' has no `demonstrations` (a list of "
            '{"prompt", "reply"} in its constitution JSON); add some or set stage.teacher_demonstrations=false'
        )
    return persona.demonstration_turns()


def _finish(
    run: Run, stats: DistillStats, table: list[DpoExample], n_prompts: int, teacher: str, student: str
) -> StageResult:
    """Summary file, log lines, W&B table, and the stage's result."""
    from charlab.data.jsonl import iter_jsonl

    pairs, dropped = run.path("pairs.jsonl"), run.path("dropped.jsonl")
    in_file = {p: sum(1 for _ in iter_jsonl(p)) if p.is_file() else 0 for p in (pairs, dropped)}
    summary = {
        **stats.as_dict(),
        "prompts": n_prompts,
        "pairs_in_file": in_file[pairs],
        "dropped_in_file": in_file[dropped],
        # over everything in the files, so a resumed run reports the whole data set, not just its own part
        "kept_fraction_total": round(in_file[pairs] / max(1, in_file[pairs] + in_file[dropped]), 4),
        "teacher_model": teacher,
        "student_model": student,
        **_best_of_summary(pairs),
    }
    write_json(run.path("distill_summary.json"), summary)
    if "best_of" in summary:
        log.info("distill: best of %(n)d by %(scorer)s: mean chosen score %(mean_chosen)s, mean candidate score "
                 "%(mean_candidate)s", summary["best_of"])  # fmt: skip
    reasons = ", ".join(f"{k} {v}" for k, v in summary["dropped_by_reason"].items()) or "none"
    log.info(
        "distill: kept %d of %d new pairs (%.0f%%), dropped: %s; %d pairs in %s",
        summary["kept"],
        summary["processed"],
        100 * summary["kept_fraction"],
        reasons,
        summary["pairs_in_file"],
        pairs,
    )
    print(f"[charlab] distill kept {summary['kept']}/{summary['processed']} pairs; dropped by reason: {reasons}")
    if table:
        rows = [[r.id, r.source, r.prompt, r.chosen, r.rejected] for r in table]
        run.tracker.log_table("distill/samples", ["id", "source", "prompt", "chosen", "rejected"], rows)
    if summary["pairs_in_file"] == 0:  # DPO would only fail later with "file is empty": stop here, say why
        raise nothing_kept("distill", "pairs", dropped, role="teacher")
    return StageResult(
        metric=summary["kept_fraction_total"],
        metric_name="kept_fraction_total",
        artifacts={
            "pairs": pairs,
            "dropped": dropped,
            "prompts": run.path("prompts.jsonl"),
            "summary": run.path("distill_summary.json"),
        },
        summary=summary,
    )


def _best_of_summary(pairs: Path) -> dict:
    """The best-of-N choice over the kept pairs: the chosen replies' mean score vs every candidate's."""
    from charlab.data.jsonl import iter_jsonl

    choices = [row["best_of"] for row in iter_jsonl(pairs) if row.get("best_of")] if pairs.is_file() else []
    if not choices:
        return {}
    candidates = [score for choice in choices for score in choice["scores"]]
    return {
        "best_of": {
            "n": max(int(choice["n"]) for choice in choices),
            "scorer": choices[0]["scorer"],
            "pairs": len(choices),
            "mean_chosen": round(sum(c["score"] for c in choices) / len(choices), 4),
            "mean_candidate": round(sum(candidates) / len(candidates), 4),
        }
    }
