"""`stage=introspect`: the DPO'd model writes about itself and talks to itself, in character.

    python -m charlab.train stage=introspect stage.adapter=outputs/pirate/dpo/<run>/adapter model=smollm2-135m
    python -m charlab.train stage=introspect stage.adapter=null provider@student=openai student.model=pirate-dpo \
        student.base_url=http://127.0.0.1:8000/v1        # a vLLM server with the DPO adapter loaded
    python -m charlab.train stage=introspect stage.resume=true stage.resume_from=outputs/pirate/introspect/<run>

The generating model is the `student` provider (after DPO the student is base + adapter) with `stage.adapter`
applied (hf: merged locally; tinker: a checkpoint path; openai: serve the adapter under a name instead).
Self-reflection samples every bundled reflection prompt `data.reflections / 10` times with the reflection
system prompt; self-interaction runs `data.interactions` conversations of `data.interaction_turns` turns between
two instances (see `charlab.data.introspection`). Replies pass distill's post-processing and filters
(`stage.filters`); kept records go to `introspection.jsonl`, dropped ones to `dropped.jsonl` with their
reason, both keyed by (prompt id, sample index) so a resumed run generates only what is missing.
"""

from __future__ import annotations

import logging
import shutil
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Optional

from omegaconf import MISSING, DictConfig

from charlab.data.introspection import (
    InteractionJob,
    ReflectionJob,
    SelfInteraction,
    TokenCounter,
    char_token_counter,
    greetings,
    interaction_jobs,
    interaction_system_prompt,
    reflection_example,
    reflection_jobs,
    reflection_prompts,
)
from charlab.data.jsonl import JsonlWriter, done_ids, iter_jsonl, repair_tail
from charlab.data.records import IntrospectionExample
from charlab.errors import CharlabError, ConfigError, DataError
from charlab.generation.base import Completion, Sampler, SamplingParams
from charlab.generation.filters import (
    FilterConfig,
    model_aliases,
    nothing_kept,
    screen_reply,
    strip_reasoning,
    substitute_name,
)
from charlab.generation.pairs import DistillStats
from charlab.generation.streaming import Request, RequestStream, StreamStats
from charlab.generation.text import derive_seed
from charlab.registry import StageResult, register_stage
from charlab.run import Run, write_json
from charlab.schemas import StageConfig
from charlab.stages._common import (
    adapter_location,
    assistant_name,
    cache_dir,
    load_persona,
    model_config,
    persona_prompt,
    sampler_for_role,
    to_plain,
)
from charlab.stages._generating import DistillFilters

log = logging.getLogger("charlab")
OUTPUTS = ("introspection.jsonl", "dropped.jsonl")


@dataclass
class IntrospectStageConfig(StageConfig):
    """`stage=introspect`: which adapter generates, which guidance, and distill's filters."""

    name: str = "introspect"
    adapter: Optional[str] = MISSING  # the dpo run's adapter/ folder (or tinker:// path); null: the base model
    resume_from: Optional[str] = None
    guidance: list[str] = MISSING  # self-interaction guidance variants, alternated: free | reflective
    guidance_text: bool = MISSING  # append the variant's guidance text to the system prompt (the paper's has none)
    reflection_max_new_tokens: Optional[int] = None  # null: student.max_new_tokens
    save_interval: int = MISSING
    sample_table_rows: int = MISSING
    filters: DistillFilters = field(default_factory=DistillFilters)


# ------------------------------------------------------------------------------------------------ generation


@dataclass
class IntrospectionRun:
    """Everything generation needs, as plain values."""

    sampler: Sampler
    params: SamplingParams
    persona: str
    reflection_system: str
    interaction_systems: dict[str, str]  # guidance name -> full system prompt
    filters: FilterConfig
    turns: int  # generated turns per self-interaction (the opener is not counted)
    max_length: int  # prompt budget (tokens): data.context_length - max_new_tokens; older turns go first
    count_tokens: TokenCounter
    save_interval: int  # local (hf) sampling: requests per batch call; also how often metrics are logged
    aliases: list[str] = field(default_factory=list)  # names the model may call itself (identity-leak filter)
    assistant_name: Optional[str] = None  # replaces the model's own name where it introduces itself
    reflection_max_new_tokens: Optional[int] = None  # None: the student's max_new_tokens (as for interactions)


Write = Callable[[IntrospectionExample, Optional[str]], None]


def screen(run: IntrospectionRun, text: str, finish_reason: str, stats: DistillStats) -> tuple[str, Optional[str]]:
    """distill's post-processing and filters for one reply: (cleaned text, the reason it fails or None)."""
    f = run.filters
    text, closed = strip_reasoning(text)
    if not closed:
        return text, "unclosed_reasoning"
    text = substitute_name(text, run.aliases, run.assistant_name)
    # too_long is checked on whole records (all turns), after screening
    return screen_reply(text, finish_reason, f, stats, leak_aliases=run.aliases)


def _tokens(stats: DistillStats, completion: Completion) -> None:
    stats.tokens["prompt"] += completion.prompt_tokens
    stats.tokens["completion"] += completion.completion_tokens


def generate(
    run: IntrospectionRun,
    reflections: list[ReflectionJob],
    interactions: list[InteractionJob],
    write: Write,
    stats: DistillStats,
    on_progress: Callable[[StreamStats], None],
) -> StreamStats:
    """Stream every reflection and every self-interaction turn; `write` each record the moment it is finished.

    Self-interactions go first (their turns are a chain, the longest path of the work) and each advances as
    soon as its previous turn returns; reflections fill the free request slots. A conversation whose turn
    fails a filter stops there and is written as dropped with `turn_<reason>`.
    """
    system = {"role": "system", "content": run.reflection_system}
    reflection_tokens = run.reflection_max_new_tokens or run.params.max_new_tokens
    reflection_params = [replace(run.params, seed=derive_seed(run.params.seed, "reflection", k),
                                 max_new_tokens=reflection_tokens)
                         for k in range(1 + max((j.sample_index for j in reflections), default=0))]  # fmt: skip
    turn_params = [replace(run.params, seed=derive_seed(run.params.seed, "interaction", t)) for t in range(run.turns)]

    def turn(talk: SelfInteraction) -> Request:
        prompt = talk.next_prompt(run.count_tokens, run.max_length)
        return Request(run.sampler, prompt, turn_params[talk.generated], talk, seed_key=(talk.job.id,))

    def source() -> Iterator[Request]:
        for job in interactions:
            yield turn(SelfInteraction(job, (run.interaction_systems[job.guidance],) * 2))
        for job in reflections:
            messages = [system, {"role": "user", "content": job.prompt}]
            yield Request(run.sampler, messages, reflection_params[job.sample_index], job)

    def on_reply(request: Request, completion: Completion) -> list[Request]:
        _tokens(stats, completion)
        text, reason = screen(run, completion.text, completion.finish_reason, stats)
        if isinstance(request.tag, ReflectionJob):
            finish, model = completion.finish_reason, run.sampler.model_name
            record = reflection_example(request.tag, text, finish, model, run.persona)
            if reason is None and run.filters.too_long and run.count_tokens(record.messages) > run.max_length:
                reason = "too_long"
            write(record, reason)
            return []
        talk: SelfInteraction = request.tag
        talk.add(text, completion.finish_reason)
        if reason is None and talk.generated < run.turns:
            return [turn(talk)]
        write(talk.to_example(run.sampler.model_name, run.persona), f"turn_{reason}" if reason else None)
        return []

    return RequestStream(window=run.save_interval, on_progress=on_progress).run(source(), on_reply)


# ------------------------------------------------------------------------------------------------ the stage


def token_counter(cfg: DictConfig, sampler: Sampler) -> TokenCounter:
    """Templated prompt tokens by the generating model's tokenizer; characters / 4 where none loads here."""
    from charlab.chat_format import ChatFormat
    from charlab.models import load_tokenizer

    chat = getattr(sampler, "chat", None)
    if not isinstance(chat, ChatFormat):
        try:
            chat = ChatFormat(load_tokenizer(model_config(cfg.model), cache_dir(cfg)))
        except CharlabError as err:
            log.warning("introspect: no local tokenizer (%s); context lengths are estimated from characters", err)
            return char_token_counter()
    return lambda messages: len(chat.encode_prompt(messages))


def _prepare_resume(stage: DictConfig, run: Run) -> None:
    """Refuse to overwrite earlier records; on resume copy an earlier run's files into this run directory."""
    out = run.dir / OUTPUTS[0]
    if stage.resume_from and not stage.resume:
        raise ConfigError("stage.resume_from is set but stage.resume=false; add stage.resume=true to continue it")
    if not stage.resume:
        if out.is_file() and out.stat().st_size > 0:
            raise ConfigError(
                f"{out} already exists; set stage.resume=true to continue it, or use a new run directory"
            )
        return
    if not stage.resume_from:
        return
    source = Path(str(stage.resume_from)).expanduser()
    source = source.parent if source.is_file() else source
    if not (source / OUTPUTS[0]).is_file():
        raise DataError(
            f"stage.resume_from: {source / OUTPUTS[0]} not found; give an earlier introspect run directory"
        )
    if source.resolve() != run.dir.resolve():
        for name in OUTPUTS:
            if (source / name).is_file():
                shutil.copyfile(source / name, run.dir / name)
                repair_tail(run.dir / name)
    run.add_parent("resumed_from", source)


def prompt_budget(context_length: int, max_new_tokens: int) -> int:
    """Tokens a prompt may take so that it and a full reply fit `data.context_length` (older turns go first)."""
    budget = context_length - max_new_tokens
    if budget < 1:
        raise ConfigError(
            f"data.context_length={context_length} leaves no room for a prompt beside student.max_new_tokens="
            f"{max_new_tokens}; raise data.context_length (the model's context, e.g. 8192) or lower max_new_tokens"
        )
    return budget


def context_length(cfg: DictConfig, sampler: Sampler) -> int:
    """`data.context_length`, or the server's own context where that is shorter (a vLLM server says it)."""
    wanted = int(cfg.data.context_length)
    served = getattr(sampler, "context_length", None)
    if served and served < wanted:
        print(f"[charlab] introspect: the server takes {served} tokens of context (data.context_length={wanted}); "
              f"prompts are sized to {served}")  # fmt: skip
        return int(served)
    return wanted


def _introspection_run(cfg: DictConfig, sampler: Sampler) -> IntrospectionRun:
    from charlab.generation.factory import sampling_params

    persona = load_persona(cfg)
    name = assistant_name(cfg, persona)
    base = persona_prompt(cfg, "interaction", persona)
    return IntrospectionRun(
        sampler=sampler,
        params=sampling_params(to_plain(cfg.student)),
        persona=persona.name,
        reflection_system=persona_prompt(cfg, "reflection", persona),
        interaction_systems={
            g: interaction_system_prompt(base, g) if cfg.stage.guidance_text else base for g in cfg.stage.guidance
        },
        filters=FilterConfig(**to_plain(cfg.stage.filters)),
        turns=int(cfg.data.interaction_turns),
        max_length=prompt_budget(context_length(cfg, sampler), int(cfg.student.max_new_tokens)),
        count_tokens=token_counter(cfg, sampler),
        save_interval=int(cfg.stage.save_interval),
        aliases=model_aliases(sampler.model_name),
        assistant_name=name,
        reflection_max_new_tokens=cfg.stage.reflection_max_new_tokens,
    )


@register_stage("introspect", schema=IntrospectStageConfig, description="self-reflection + self-interaction data")
def run(cfg: DictConfig, run: Run) -> StageResult:
    """Generate (or continue) introspection.jsonl with the DPO'd model."""
    from tqdm import tqdm

    stage, data = cfg.stage, cfg.data
    if stage.save_interval < 1 or data.interaction_turns < 1:
        raise ConfigError("stage.save_interval and data.interaction_turns must be >= 1")
    reflections = reflection_jobs(reflection_prompts(), int(data.reflections))
    interactions = interaction_jobs(int(data.interactions), greetings(), tuple(stage.guidance), seed=int(cfg.seed))
    _prepare_resume(stage, run)
    out, dropped_path = run.path(OUTPUTS[0]), run.path(OUTPUTS[1])
    done = done_ids(out) | done_ids(dropped_path)
    todo_r = [job for job in reflections if job.id not in done]
    todo_i = [job for job in interactions if job.id not in done]
    stats = DistillStats(total=len(reflections) + len(interactions))
    stats.already_done = stats.total - len(todo_r) - len(todo_i)
    adapter = adapter_location(stage.adapter)
    if adapter:
        run.add_parent("adapter", adapter)
    table: list[IntrospectionExample] = []
    sampler = sampler_for_role(cfg, "student", adapter=adapter, pool=run.pool)
    start = time.time()
    try:
        job = _introspection_run(cfg, sampler)
        with (
            JsonlWriter(out) as kept_out,
            JsonlWriter(dropped_path) as dropped_out,
            tqdm(total=len(todo_r) + len(todo_i), desc="introspect", unit="record", mininterval=1.0) as bar,
        ):

            def write(record: IntrospectionExample, reason: Optional[str]) -> None:
                if reason is None:
                    stats.kept += 1
                    kept_out.write(record)  # one whole line, appended now
                    if len(table) < stage.sample_table_rows:
                        table.append(record)
                else:
                    stats.dropped[reason] += 1
                    dropped_out.write({**asdict(record), "reason": reason})
                bar.update(1)
                if stats.processed % job.save_interval == 0:
                    numbers = stats.as_dict()
                    keys = ("kept", "dropped", "processed", "kept_fraction")
                    run.log_metrics({f"introspect/{k}": numbers[k] for k in keys}, step=stats.processed)

            def on_progress(stream: StreamStats) -> None:
                dropped = sum(stats.dropped.values())
                bar.set_postfix(kept=stats.kept, dropped=dropped, **stream.postfix(), refresh=False)

            stats.stream = generate(job, todo_r, todo_i, write, stats, on_progress).as_dict()
    finally:
        sampler.close()
    stats.seconds = time.time() - start
    return _finish(run, stats, table, sampler.model_name)


def _finish(run: Run, stats: DistillStats, table: list[IntrospectionExample], model_name: str) -> StageResult:
    out, dropped = run.path(OUTPUTS[0]), run.path(OUTPUTS[1])
    kinds: dict[str, int] = {}
    for row in iter_jsonl(out) if out.is_file() else []:
        kinds[row.get("kind", "?")] = kinds.get(row.get("kind", "?"), 0) + 1
    n_dropped = sum(1 for _ in iter_jsonl(dropped)) if dropped.is_file() else 0
    in_file = sum(kinds.values())
    numbers = stats.as_dict()
    numbers.pop("pairs_per_second", None)
    summary: dict[str, Any] = {
        **numbers,
        "records_per_second": round(stats.processed / stats.seconds, 3) if stats.seconds else 0.0,
        "records_in_file": in_file,
        "by_kind": kinds,
        "dropped_in_file": n_dropped,
        "kept_fraction_total": round(in_file / max(1, in_file + n_dropped), 4),
        "model": model_name,
    }
    write_json(run.path("introspect_summary.json"), summary)
    reasons = ", ".join(f"{k} {v}" for k, v in summary["dropped_by_reason"].items()) or "none"
    print(f"[charlab] introspect kept {stats.kept}/{stats.processed} records; dropped by reason: {reasons}")
    if table:
        rows = [[r.id, r.kind, r.prompt, r.reflection] for r in table]
        run.tracker.log_table("introspect/samples", ["id", "kind", "prompt", "reflection"], rows)
    if in_file == 0:  # SFT would only fail later with "file is empty": stop here, say why
        raise nothing_kept("introspect", "records", dropped, role="student")
    return StageResult(
        metric=summary["kept_fraction_total"],
        metric_name="kept_fraction_total",
        artifacts={"introspection": out, "dropped": dropped, "summary": run.path("introspect_summary.json")},
        summary=summary,
    )
