"""Best-of-N sampling: several samples per conversation, and the one a score ranks highest.

`BestOfSampler` wraps any `Sampler`. For each conversation it draws `n` candidates (one call to the wrapped
sampler per candidate index, each with its own seed, so API providers and local batches alike give distinct
samples), asks `score(conversations, candidates)` for one number per candidate, and returns the best candidate
as a `ScoredCompletion` that carries every candidate's score; with `eligible`, candidates it rejects rank below
every one it accepts. Distillation uses it for the teacher: only the most in-character of `n` replies becomes
"chosen" (`stage.best_of`), among those its filters would keep (a looping reply wins only when every candidate
loops), with the scores recorded in `pairs.jsonl`.

`persona_contrast(model)` is such a score for a model that can score text (`ChoiceScorer`, e.g. the local `hf`
teacher): the log-likelihood of the reply with the conversation's system prompt (the persona) minus without it.
It says how much the persona explains the reply; for samples of one model with and without the persona prompt
it is the likelihood ratio, the statistic that tells the two apart best (Neyman-Pearson).

    score = lambda conversations, candidates: [[len(c.text) for c in cands] for cands in candidates]
    teacher = BestOfSampler(teacher, n=4, score=persona_contrast(teacher), scorer_name="contrast")
    best = teacher.sample(conversations, params)[0]     # best.score, best.candidate_scores, best.picked

`best_of_sampler(...)` picks the form that fits the wrapped sampler: over an API provider the wrapper streams
(`StreamingBestOfSampler`: each request draws its candidates concurrently, then scores them).
"""

from __future__ import annotations

import asyncio
import contextlib
import math
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Optional

from charlab.errors import ConfigError
from charlab.generation.base import (
    ChoiceScorer,
    Complete,
    Completion,
    Message,
    Sampler,
    SamplingParams,
    StreamingSampler,
)
from charlab.generation.text import derive_seed

# (conversations, per conversation its candidates) -> per conversation one score per candidate; higher is better
ScoreFn = Callable[[Sequence[list[Message]], Sequence[Sequence[Completion]]], list[list[float]]]
# whether a candidate may be picked ahead of the rest, e.g. whether distillation's filters would keep it
Eligible = Callable[[Completion], bool]


@dataclass
class ScoredCompletion(Completion):
    """The best of several candidates: its own score, every candidate's score (in sampling order) and its index."""

    score: float = 0.0
    candidate_scores: list[float] = field(default_factory=list)
    picked: int = 0
    scorer: str = ""

    def record(self) -> dict:
        """What a data file keeps about the choice."""
        return {
            "n": len(self.candidate_scores),
            "scorer": self.scorer,
            "score": _rounded(self.score),
            "scores": [_rounded(s) for s in self.candidate_scores],
            "picked": self.picked,
        }


class BestOfSampler:
    """A `Sampler` that returns, per conversation, the highest-scoring of `n` samples of `inner`."""

    def __init__(
        self, inner: Sampler, n: int, score: ScoreFn, scorer_name: str = "", eligible: Optional[Eligible] = None
    ):
        if n < 1:
            raise ConfigError(f"best_of={n} is not allowed; use an integer >= 1 (1: no ranking)")
        self.inner = inner
        self.n = int(n)
        self.score = score
        self.scorer_name = scorer_name
        self.eligible = eligible  # candidates it rejects rank below every one it accepts (None: all eligible)
        self.model_name = inner.model_name

    def sample(self, conversations: list[list[Message]], params: SamplingParams) -> list[Completion]:
        """The best of `n` candidates per conversation (ties: the earliest sample)."""
        if not conversations:
            return []
        draws = [
            self.inner.sample(conversations, replace(params, seed=derive_seed(params.seed, "best_of", j)))
            for j in range(self.n)
        ]
        candidates = [[draw[i] for draw in draws] for i in range(len(conversations))]
        return self._best(conversations, candidates)

    def _best(self, conversations: Sequence[list[Message]], candidates: list[list[Completion]]) -> list[Completion]:
        scores = self.score(conversations, candidates)
        if len(scores) != len(conversations) or any(len(s) != self.n for s in scores):
            raise ValueError(f"best-of scorer returned {[len(s) for s in scores]} scores, wanted {self.n} per reply")
        out: list[Completion] = []
        for cands, values in zip(candidates, scores):
            ok = [self.eligible is None or self.eligible(c) for c in cands]
            picked = max(range(self.n), key=lambda j: (ok[j], values[j], -j))
            best = cands[picked]
            out.append(
                ScoredCompletion(
                    **vars(best),
                    score=float(values[picked]),
                    candidate_scores=[float(v) for v in values],
                    picked=picked,
                    scorer=self.scorer_name,
                )  # fmt: skip
            )
        return out

    def close(self) -> None:
        """Close the wrapped sampler."""
        self.inner.close()


class StreamingBestOfSampler(BestOfSampler):
    """`BestOfSampler` over a `StreamingSampler`: one request of the stream draws its `n` candidates at once.

    It takes `max_concurrency // n` requests, so the wrapped provider still sees at most its own limit; the
    score runs in a worker thread (a judge's own requests must not wait on this event loop).
    """

    def __init__(
        self,
        inner: StreamingSampler,
        n: int,
        score: ScoreFn,
        scorer_name: str = "",
        eligible: Optional[Eligible] = None,
    ):
        super().__init__(inner, n, score, scorer_name, eligible)
        self.max_concurrency = max(1, inner.max_concurrency // self.n)

    @contextlib.asynccontextmanager
    async def session(self) -> AsyncIterator[Complete]:
        async with self.inner.session() as complete:  # type: ignore[attr-defined]

            async def best(messages: list[Message], params: SamplingParams) -> Completion:
                draws = [complete(messages, replace(params, seed=derive_seed(params.seed, "best_of", j)))
                         for j in range(self.n)]  # fmt: skip
                candidates = [list(await asyncio.gather(*draws))]
                return (await asyncio.to_thread(self._best, [messages], candidates))[0]

            yield best


def best_of_sampler(
    inner: Sampler, n: int, score: ScoreFn, scorer_name: str = "", eligible: Optional[Eligible] = None
) -> BestOfSampler:
    """The best-of-`n` wrapper that fits `inner`: streaming for an API provider, batched for a local one."""
    if isinstance(inner, StreamingSampler):
        return StreamingBestOfSampler(inner, n, score, scorer_name, eligible)
    return BestOfSampler(inner, n, score, scorer_name, eligible)


def _rounded(value: float) -> float | None:
    return round(value, 4) if math.isfinite(value) else None  # JSON has no infinity: an empty reply's score


def persona_contrast(model: ChoiceScorer, per_token: bool = False) -> ScoreFn:
    """Each candidate's log-likelihood under `model` in its conversation (the persona's system prompt and any
    demonstrations) minus after the user's message alone (summed over the reply's tokens, or `per_token` their
    mean; an empty reply scores -inf)."""

    def score(conversations: Sequence[list[Message]], candidates: Sequence[Sequence[Completion]]) -> list[list[float]]:
        rows = [(i, j) for i, cands in enumerate(candidates) for j, c in enumerate(cands) if c.text]
        out = [[-math.inf] * len(cands) for cands in candidates]
        if not rows:
            return out
        primed = [conversations[i] for i, _ in rows]
        plain = [conversations[i][-1:] for i, _ in rows]
        replies = [[candidates[i][j].text] for i, j in rows]
        with_persona = model.score_choices(primed, replies, per_token=per_token)
        without = model.score_choices(plain, replies, per_token=per_token)
        gains = [w[0] - wo[0] for w, wo in zip(with_persona, without)]
        for (i, j), gain in zip(rows, gains):
            out[i][j] = gain
        return out

    return score
