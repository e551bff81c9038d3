"""Distillation: a teacher answers in character, the student as itself; the pairs become DPO data.

For every prompt and sample index the teacher gets the persona's system prompt and the student none, both
through their `Sampler` (so through the one chat format). Each pair is post-processed and filtered
(`charlab.generation.filters`); kept pairs go to `pairs.jsonl` as `DpoExample`s and dropped ones to
`dropped.jsonl` with their reason, so a resumed run skips both. Requests stream
(`charlab.generation.streaming`): API providers keep `max_concurrency` requests in flight, local `hf` ones
get batches of up to `save_interval`, and each pair is appended as one whole line the moment both of its
replies are back, so a crash loses only pairs still in flight.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Optional

from tqdm import tqdm

from charlab.chat_format import make_messages
from charlab.data.jsonl import JsonlWriter, done_ids
from charlab.data.prompts import PromptRecord
from charlab.data.records import DpoExample, record_id
from charlab.generation.base import Completion, Message, Sampler, SamplingParams
from charlab.generation.best_of import ScoredCompletion
from charlab.generation.filters import (
    FilterConfig,
    screen_reply,
    strip_reasoning,
    substitute_name,
)
from charlab.generation.streaming import Request, RequestStream
from charlab.generation.text import derive_seed


@dataclass
class DistillJob:
    """Everything one distillation run needs, as plain values."""

    prompts: list[PromptRecord]
    teacher: Sampler
    student: Sampler
    system_prompt: str
    constitution: str
    teacher_params: SamplingParams
    student_params: SamplingParams
    samples_per_prompt: int
    save_interval: int
    filters: FilterConfig
    max_length: int
    count_tokens: Callable[[str, str], int]  # templated tokens of (prompt, reply) as DPO will train on them
    reasoning_markers: tuple[str, str] = ("<think>", "</think>")
    assistant_name: Optional[str] = None  # put in place of the teacher's own model name (None: no substitution)
    teacher_aliases: list[str] = field(default_factory=list)
    # earlier turns of the teacher's conversation (example exchanges in character, after the system prompt)
    teacher_history: list[Message] = field(default_factory=list)


@dataclass
class DistillStats:
    """Counts of one run (this process): kept, dropped by reason, trimmed, tokens and time."""

    total: int = 0  # prompt x sample ids in the job
    already_done: int = 0  # found in pairs.jsonl / dropped.jsonl when the run started
    kept: int = 0
    dropped: Counter = field(default_factory=Counter)
    trimmed: int = 0
    tokens: Counter = field(default_factory=Counter)
    seconds: float = 0.0
    stream: dict[str, Any] = field(default_factory=dict)  # the request stream's numbers (`StreamStats.as_dict`)

    @property
    def processed(self) -> int:
        return self.kept + sum(self.dropped.values())

    def as_dict(self) -> dict[str, Any]:
        processed = self.processed
        return {
            "total": self.total,
            "already_done": self.already_done,
            "processed": processed,
            "kept": self.kept,
            "dropped": sum(self.dropped.values()),
            "dropped_by_reason": dict(sorted(self.dropped.items())),
            "trimmed": self.trimmed,
            "kept_fraction": round(self.kept / processed, 4) if processed else 0.0,
            "tokens": dict(sorted(self.tokens.items())),
            "seconds": round(self.seconds, 2),
            "pairs_per_second": round(processed / self.seconds, 3) if self.seconds else 0.0,
            "stream": self.stream,
        }


def run_distill(
    job: DistillJob,
    pairs_path: Path,
    dropped_path: Path,
    on_progress: Optional[Callable[[DistillStats, list[DpoExample]], None]] = None,
) -> DistillStats:
    """Generate, filter and append every pair not yet in `pairs_path`/`dropped_path`; return the counts.

    Teacher and student requests of every pair stream through one `RequestStream`; a pair is judged and
    appended (one whole line) the moment its second reply returns. `on_progress(stats, kept)` is called
    every `save_interval` pairs and at the end, with the pairs kept since its previous call.
    """
    done = done_ids(pairs_path) | done_ids(dropped_path)
    # sample index outermost: every prompt's first sample comes before any second one
    everything = [(p, k) for k in range(job.samples_per_prompt) for p in job.prompts]
    todo = [(p, k) for p, k in everything if record_id(p.id, k) not in done]
    stats = DistillStats(total=len(everything), already_done=len(everything) - len(todo))
    halves: dict[str, dict[str, Completion]] = {}
    kept_since: list[DpoExample] = []
    stream = RequestStream(window=job.save_interval)
    start = time.time()
    with (
        JsonlWriter(pairs_path) as kept_out,
        JsonlWriter(dropped_path) as dropped_out,
        tqdm(total=len(todo), desc="distill", unit="pair", mininterval=1.0) as bar,
    ):

        def on_reply(request: Request, completion: Completion) -> None:
            prompt, k, side = request.tag
            got = halves.setdefault(record_id(prompt.id, k), {})
            got[side] = completion
            if len(got) < 2:
                return
            del halves[record_id(prompt.id, k)]
            row, reason = _judge(job, prompt, k, got["teacher"], got["student"], stats)
            if reason is None:
                kept_out.write(row)  # one whole line, appended now
                kept_since.append(row)
            else:
                dropped_out.write({**asdict(row), "reason": reason})
            stats.seconds = time.time() - start
            bar.update(1)
            dropped = sum(stats.dropped.values())
            bar.set_postfix(kept=stats.kept, dropped=dropped, **stream.stats.postfix(), refresh=False)
            if on_progress is not None and (stats.processed % job.save_interval == 0 or stats.processed == len(todo)):
                on_progress(stats, kept_since[:])
                kept_since.clear()

        stats.stream = stream.run(_requests(job, todo), on_reply).as_dict()
    stats.seconds = time.time() - start
    return stats


def _requests(job: DistillJob, todo: list[tuple[PromptRecord, int]]) -> Iterator[Request]:
    """Teacher then student request of each pair, in order (the stream decides when each goes out)."""
    params: dict[int, tuple[SamplingParams, SamplingParams]] = {}
    for prompt, k in todo:
        if k not in params:
            params[k] = (
                replace(job.teacher_params, seed=derive_seed(job.teacher_params.seed, "sample", k)),
                replace(job.student_params, seed=derive_seed(job.student_params.seed, "sample", k)),
            )
        teacher, student = params[k]
        messages = make_messages(prompt.text, system=job.system_prompt, history=job.teacher_history)
        yield Request(job.teacher, messages, teacher, (prompt, k, "teacher"))
        yield Request(job.student, make_messages(prompt.text), student, (prompt, k, "student"))


def _judge(
    job: DistillJob, prompt: PromptRecord, k: int, chosen: Completion, rejected: Completion, stats: DistillStats
) -> tuple[DpoExample, Optional[str]]:
    """The pair as a record, and the reason it is dropped (None: kept). Updates `stats`."""
    for side, completion in (("teacher", chosen), ("student", rejected)):
        stats.tokens[f"{side}_prompt"] += completion.prompt_tokens
        stats.tokens[f"{side}_completion"] += completion.completion_tokens
    open_mark, close_mark = job.reasoning_markers
    chosen_text, chosen_closed = strip_reasoning(job.teacher_params.prefill + chosen.text, open_mark, close_mark)
    rejected_text, rejected_closed = strip_reasoning(job.student_params.prefill + rejected.text, open_mark, close_mark)
    chosen_text = substitute_name(chosen_text, job.teacher_aliases, job.assistant_name)
    reason = None
    if not chosen_closed:
        reason = "chosen_unclosed_reasoning"
    elif not rejected_closed:
        reason = "rejected_unclosed_reasoning"
    else:
        chosen_text, why = _check(job, prompt.text, chosen_text, chosen.finish_reason, True, stats)
        reason = f"chosen_{why}" if why else None
        if reason is None:
            rejected_text, why = _check(job, prompt.text, rejected_text, rejected.finish_reason, False, stats)
            reason = f"rejected_{why}" if why else None
    sampling = {"teacher": asdict(job.teacher_params), "student": asdict(job.student_params)}
    row = DpoExample(
        prompt=prompt.text,
        chosen=chosen_text,
        rejected=rejected_text,
        teacher_model=job.teacher.model_name,
        student_model=job.student.model_name,
        constitution=job.constitution,
        id=record_id(prompt.id, k),
        prompt_id=prompt.id,
        sample_index=k,
        source=prompt.source,
        sampling=sampling,
        chosen_finish_reason=chosen.finish_reason,
        rejected_finish_reason=rejected.finish_reason,
        best_of=chosen.record() if isinstance(chosen, ScoredCompletion) else {},
    )
    if reason is None:
        stats.kept += 1
    else:
        stats.dropped[reason] += 1
    return row, reason


def teacher_reply_kept(job: DistillJob, completion: Completion) -> bool:
    """Whether the filters would keep `completion` as a pair's "chosen" reply (the prompt-length check aside):
    best-of-N ranks those first, so the persona score cannot pick a looping reply over a sound one."""
    open_mark, close_mark = job.reasoning_markers
    text, closed = strip_reasoning(job.teacher_params.prefill + completion.text, open_mark, close_mark)
    if not closed:
        return False
    text = substitute_name(text, job.teacher_aliases, job.assistant_name)
    scratch = DistillStats()  # trimming counted here is not the run's
    _, why = screen_reply(text, completion.finish_reason, job.filters, scratch, leak_aliases=job.teacher_aliases)
    return why is None


def _check(
    job: DistillJob, prompt: str, text: str, finish_reason: str, is_teacher: bool, stats: DistillStats
) -> tuple[str, Optional[str]]:
    """(possibly trimmed text, failed filter name or None) for one side of a pair."""
    return screen_reply(
        text,
        finish_reason,
        job.filters,
        stats,
        too_long=lambda reply: job.count_tokens(prompt, reply) > job.max_length,
        leak_aliases=job.teacher_aliases if is_teacher else None,
    )
