"""Resumable batched sampling into a JSONL file: the shared loop of every evaluation that generates text.

Each job has an id; rows already in the file are skipped, so a crashed or interrupted evaluation resumes
where it stopped, and every reply is on disk the moment it returns.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from tqdm.auto import tqdm

from charlab.data.jsonl import JsonlWriter, done_ids, iter_jsonl
from charlab.generation.base import Completion, Message, Sampler, SamplingParams
from charlab.generation.streaming import Request, RequestStream


@dataclass
class SampleJob:
    """One conversation to complete; `meta` is copied into its output row."""

    id: str
    messages: list[Message]
    meta: dict[str, Any] = field(default_factory=dict)


def sample_to_jsonl(
    sampler: Sampler,
    jobs: Sequence[SampleJob],
    params: SamplingParams,
    path: Path,
    batch_size: int = 8,
    desc: str = "sampling",
    on_batch: Optional[Callable[[int, int], None]] = None,
    to_row: Optional[Callable[[SampleJob, Completion], dict[str, Any]]] = None,
) -> dict[str, dict[str, Any]]:
    """Complete every job not yet in `path`, appending one row per job; all rows by id.

    A row is `{id, **meta, text, finish_reason}`, or `to_row(job, completion)` (which must keep `id`).
    Requests stream (`charlab.generation.streaming`): an API sampler keeps its `max_concurrency` in flight,
    a local one samples `batch_size` at a time; each row is appended the moment its reply returns.
    `on_batch(done, total)` is called every `batch_size` rows and at the end (for metrics).
    """
    path = Path(path)
    done = done_ids(path)
    pending = [job for job in jobs if job.id not in done]
    total, step = len(jobs), max(1, batch_size)
    with JsonlWriter(path) as writer, tqdm(total=total, initial=total - len(pending), desc=desc) as bar:

        def on_reply(request: Request, completion: Completion) -> None:
            job: SampleJob = request.tag
            if to_row is not None:
                writer.write(to_row(job, completion))
            else:
                text, finish = completion.text, completion.finish_reason
                writer.write({"id": job.id, **job.meta, "text": text, "finish_reason": finish})
            bar.update(1)
            bar.set_postfix(stream.stats.postfix(), refresh=False)
            if on_batch is not None and (bar.n % step == 0 or bar.n == total):
                on_batch(bar.n, total)

        stream = RequestStream(window=step)
        stream.run((Request(sampler, job.messages, params, job) for job in pending), on_reply)
    wanted = {job.id for job in jobs}
    return {row["id"]: row for row in iter_jsonl(path) if row.get("id") in wanted}


def fresh_file(path: Path, resume: bool) -> Path:
    """`path`, emptied unless resuming (a rerun in the same folder must not mix old and new rows)."""
    path = Path(path)
    if not resume and path.exists():
        path.unlink()
    return path
