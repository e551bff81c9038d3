"""The head-to-head judge formats (`eval.judge_format`), one table entry each: how the judge compares two players'
replies to the same prompt and which matches that makes.

* `pairwise`: "which reply better meets the criterion?" in both orders, probabilities averaged (position bias out).
* `likelihood` (a judge that scores text, `hf`): each reply read with and without the character's description;
  the better-explained reply wins. The demo's best-of-N picks training data with this same statistic.
* `coherence`: the paper's question, traits *and* coherent/relevant, both orders; only order-consistent verdicts
  count (`charlab.eval.coherence_judge`).

    fmt = JUDGE_FORMATS[check_judge_format(cfg)]
    result = fmt.run(FormatJob(cfg, run, judge, prompts, replies, names, path, criterion))
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from charlab.data.jsonl import JsonlWriter, iter_jsonl
from charlab.eval.coherence_judge import coherence_questions, consistent_matches
from charlab.eval.head_to_head import JudgeTally, judge_questions, pair_matches
from charlab.eval.judging import LOGPROB, Judge, judge_to_jsonl
from charlab.eval.persona_likelihood import likelihood_matches, persona_scores
from charlab.eval.players import reply_id
from charlab.run import Run
from charlab.stages._common import load_persona


@dataclass
class FormatJob:
    """What a format needs: the config, the run, the judge, the players' replies and where verdicts go."""

    cfg: DictConfig
    run: Run
    judge: Judge
    prompts: list
    replies: dict[str, dict[str, Any]]
    names: list[str]
    path: Path
    criterion: str  # the pairwise question (persona or helpful)
    metric_prefix: str = "elo"


@dataclass
class FormatResult:
    """The verdict rows, the matches they make, their tally, and how they were reached (for reports)."""

    rows: list[dict[str, Any]]
    matches: list
    tally: JudgeTally
    how: str


@dataclass(frozen=True)
class JudgeFormat:
    """One format: its runner, whether it needs a judge that scores text, whether it measures only the persona."""

    run: Callable[[FormatJob], FormatResult]
    scores_text: bool = False
    persona_only: bool = False


def _judged(job: FormatJob, questions: list) -> list[dict[str, Any]]:
    judged = judge_to_jsonl(
        job.judge, questions, job.path, int(job.cfg.eval.batch_size), "judging",
        lambda done, total: job.run.log_metrics({f"{job.metric_prefix}/judged": done,
                                                 f"{job.metric_prefix}/judge_total": total}),
    )  # fmt: skip
    return [judged[q.id] for q in questions if q.id in judged]


def _pairwise(job: FormatJob) -> FormatResult:
    rows = _judged(job, judge_questions(job.prompts, job.replies, job.names, job.criterion))
    matches, tally = pair_matches(rows, job.replies)
    return FormatResult(rows, matches, tally, "format pairwise (both orders averaged)")


def _coherence(job: FormatJob) -> FormatResult:
    persona = load_persona(job.cfg)
    rows = _judged(job, coherence_questions(job.prompts, job.replies, job.names, persona))
    matches, tally = consistent_matches(rows, job.replies)
    how = "format coherence (the paper's question, traits and coherent/relevant: both orders, agreeing ones count)"
    return FormatResult(rows, matches, tally, how)


def _likelihood(job: FormatJob) -> FormatResult:
    """Persona scores of every reply (one verdict row per reply), and the matches they decide."""
    cfg, path = job.cfg, job.path
    persona = load_persona(cfg)
    description = f"You are {persona.display_name(cfg.persona.assistant_name)}. {persona.description or ''}".strip()
    wanted = {reply_id(n, pid) for n in job.names for pid, _ in job.prompts}
    done = {row["id"]: row for row in iter_jsonl(path)} if path.is_file() else {}
    todo = {rid: job.replies[rid] for rid in wanted if rid in job.replies and rid not in done}
    scores = persona_scores(job.judge.sampler, job.prompts, todo, description, int(cfg.eval.batch_size))
    with JsonlWriter(path) as writer:
        for rid in sorted(todo):
            player, _, prompt_id = rid.partition(":")
            row = {"id": rid, "player": player, "prompt_id": prompt_id, "persona_score": scores.get(rid)}
            writer.write(row | {"mode": LOGPROB if rid in scores else "empty"})
            done[rid] = row
    job.run.log_metrics({f"{job.metric_prefix}/judged": len(done)})
    known = {rid: row["persona_score"] for rid, row in done.items() if row.get("persona_score") is not None}
    matches, tally = likelihood_matches(job.prompts, job.replies, job.names, known)
    how = "format likelihood (each reply read with and without the character's description; the more explained wins)"
    return FormatResult([done[rid] for rid in sorted(done) if rid in wanted], matches, tally, how)


JUDGE_FORMATS: dict[str, JudgeFormat] = {
    "pairwise": JudgeFormat(_pairwise),
    "likelihood": JudgeFormat(_likelihood, scores_text=True, persona_only=True),
    "coherence": JudgeFormat(_coherence, persona_only=True),
}
