"""Resumable batched sampling into a JSONL file: the shared loop of every evaluation that generates text.

Each job has an id; rows already in the file are skipped, so a crashed or interrupted evaluation resumes
where it stopped, and every finished batch is on disk before the next one starts.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from tqdm.auto import tqdm

from charlab.data.jsonl import JsonlWriter, done_ids, iter_jsonl
from charlab.generation.base import Message, Sampler, SamplingParams


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
) -> dict[str, dict[str, Any]]:
    """Complete every job not yet in `path`, appending `{id, **meta, text, finish_reason}` rows; all rows by id.

    `on_batch(done, total)` is called after each batch (for metrics).
    """
    path = Path(path)
    done = done_ids(path)
    pending = [job for job in jobs if job.id not in done]
    total = len(jobs)
    with JsonlWriter(path) as writer, tqdm(total=total, initial=total - len(pending), desc=desc) as bar:
        for start in range(0, len(pending), max(1, batch_size)):
            chunk = pending[start : start + max(1, batch_size)]
            completions = sampler.sample([job.messages for job in chunk], params)
            for job, completion in zip(chunk, completions):
                writer.write(
                    {
                        "id": job.id,
                        **job.meta,
                        "text": completion.text,
                        "finish_reason": completion.finish_reason,
                    }
                )
            writer.flush()
            bar.update(len(chunk))
            if on_batch is not None:
                on_batch(bar.n, total)
    wanted = {job.id for job in jobs}
    return {row["id"]: row for row in iter_jsonl(path) if row.get("id") in wanted}


def fresh_file(path: Path, resume: bool) -> Path:
    """`path`, emptied unless resuming (a rerun in the same folder must not mix old and new rows)."""
    path = Path(path)
    if not resume and path.exists():
        path.unlink()
    return path
