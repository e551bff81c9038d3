"""Judges that always answer: a verdict from log-probabilities where the judge allows it, else strict parsing.

A question offers a few fixed choices ("A" / "B" / "tie", or two trait names). Three ways to a verdict, each
recorded with the verdict (`mode`) so a report can say which produced its numbers:

* `logprob`: the judge's provider scores choices (`ChoiceScorer`: the local `hf` provider). The reply is
  prefilled with "ANSWER:" and every choice is scored by the log-probability of its tokens right after it,
  so every question gets a verdict, even from a 135M-parameter judge.
* `top_logprobs`: the provider returns the most likely tokens at each generated position (OpenAI, vLLM). The
  position right after the judge's last "ANSWER:" (else its first token) gives the distribution over the
  choices found among those tokens.
* `text`: the reply is parsed strictly (`charlab.eval.judge.parse_verdict`); what does not parse is counted
  as `unparseable`, never guessed.

The verdict's `probs` are normalised over the choices (one-hot for a parsed text verdict). Asking the same
question in both orders and averaging the probabilities per underlying option (`average_orders`) removes the
judge's position bias; `decide` turns the averaged probabilities into a win, a loss or a tie.

    judge = Judge(sampler, sampling_params(judge_cfg), mode="auto")
    rows = judge_to_jsonl(judge, questions, run.path("judgments.jsonl"))
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Optional

from tqdm.auto import tqdm

from charlab.data.jsonl import JsonlWriter, done_ids, iter_jsonl
from charlab.errors import ConfigError
from charlab.eval.judge import OK, parse_verdict
from charlab.eval.sampling import SampleJob, sample_to_jsonl
from charlab.generation.base import ChoiceScorer, Completion, Message, Sampler, SamplingParams

LOGPROB, TOP_LOGPROBS, TEXT, UNPARSEABLE = "logprob", "top_logprobs", "text", "unparseable"
VERDICT_MODES = (LOGPROB, TOP_LOGPROBS, TEXT, UNPARSEABLE)  # how each verdict was reached (last: none was)
JUDGE_MODES = ("auto", "logprob", "text")  # eval.judge_mode
ANSWER_PREFILL = "ANSWER:"
_ANSWER_END = re.compile(r"answer[\s*_`]*[:=]\s*[*_`\"']*$", re.IGNORECASE)
_THINK = re.compile(r"<think>.*?(</think>|$)", re.IGNORECASE | re.DOTALL)
_TOKEN_STRIP = " \t\r\n*_`\"'.,;:!()[]{}<>"


@dataclass
class JudgeQuestion:
    """One question to a judge: the conversation, the allowed answers, and metadata copied to its row."""

    id: str
    messages: list[Message]
    choices: list[str]
    meta: dict[str, Any] = field(default_factory=dict)


class Judge:
    """A `Sampler` used as a judge; `mode` is auto (log-probabilities where possible), logprob or text."""

    def __init__(self, sampler: Sampler, params: SamplingParams, mode: str = "auto", top_logprobs: int = 20):
        if mode not in JUDGE_MODES:
            raise ConfigError(f"eval.judge_mode={mode!r} is not allowed; use one of {', '.join(JUDGE_MODES)}")
        scores = isinstance(sampler, ChoiceScorer)
        if mode == "logprob" and not scores:
            raise ConfigError(
                f"eval.judge_mode=logprob: the judge's provider ({type(sampler).__name__}) cannot score choices; "
                "use provider@judge=hf, or eval.judge_mode=auto (log-probabilities the server sends, else text)"
            )
        self.sampler = sampler
        self.scores = scores and mode != "text"
        self.params = replace(params, top_logprobs=int(top_logprobs) if mode == "auto" else 0)

    def judge(self, questions: Sequence[JudgeQuestion]) -> list[dict[str, Any]]:
        """One verdict row per question: `text`, `mode`, `status`, `choice` and `probs` over the choices."""
        if not questions:
            return []
        if self.scores:
            scored = self.sampler.score_choices(  # type: ignore[attr-defined]
                [q.messages for q in questions], [[" " + c for c in q.choices] for q in questions], ANSWER_PREFILL
            )
            return [scored_verdict(q, logprobs) for q, logprobs in zip(questions, scored)]
        completions = self.sampler.sample([q.messages for q in questions], self.params)
        return [text_verdict(q, c.text, c.logprobs) for q, c in zip(questions, completions)]


def _softmax(logprobs: Mapping[str, float]) -> dict[str, float]:
    top = max(logprobs.values())
    weights = {k: math.exp(v - top) for k, v in logprobs.items()}
    total = sum(weights.values())
    return {k: w / total for k, w in weights.items()}


def _best(probs: Mapping[str, float]) -> str:
    return max(probs, key=lambda k: probs[k])


def scored_verdict(question: JudgeQuestion, logprobs: Sequence[float]) -> dict[str, Any]:
    """The verdict of scored choices: their probabilities renormalised over the choices."""
    probs = _softmax(dict(zip(question.choices, logprobs)))
    return {"text": "", "mode": LOGPROB, "status": OK, "choice": _best(probs), "probs": probs}


def _normalise_token(token: str) -> str:
    return token.strip(_TOKEN_STRIP).lower()


def answer_distribution(tokens: Sequence[Mapping[str, Any]], choices: Sequence[str]) -> Optional[dict[str, float]]:
    """The choices' probabilities at the answer position of a generated reply's top log-probabilities.

    The answer position follows the last "ANSWER:" the judge wrote (outside a <think> block), else it is the
    first generated token. A top token counts for a choice when it is the choice or a prefix of only that
    choice (case, spaces and markdown aside). None when no choice is among the top tokens there.
    """
    if not tokens:
        return None
    position, text = 0, ""
    for i, item in enumerate(tokens):
        if i and _ANSWER_END.search(_THINK.sub("", text)):
            position = i
        text += str(item.get("token", ""))
    keys = {c: _normalise_token(c) for c in choices}
    mass: dict[str, float] = {}
    for token, logprob in (tokens[position].get("top") or {}).items():
        word = _normalise_token(token)
        if not word:
            continue
        matches = [c for c, k in keys.items() if k == word] or [c for c, k in keys.items() if k.startswith(word)]
        if len(matches) == 1:
            mass[matches[0]] = mass.get(matches[0], 0.0) + math.exp(float(logprob))
    total = sum(mass.values())
    return {c: mass.get(c, 0.0) / total for c in choices} if total > 0 else None


def text_verdict(question: JudgeQuestion, text: str, logprobs: Optional[list[dict]]) -> dict[str, Any]:
    """A generated reply's verdict: from its top log-probabilities where they name a choice, else parsed."""
    probs = answer_distribution(logprobs or [], question.choices)
    if probs is not None:
        return {"text": text, "mode": TOP_LOGPROBS, "status": OK, "choice": _best(probs), "probs": probs}
    verdict = parse_verdict(text, question.choices)
    if verdict.ok:
        probs = {c: float(c == verdict.choice) for c in question.choices}
        return {"text": text, "mode": TEXT, "status": OK, "choice": verdict.choice, "probs": probs}
    return {"text": text, "mode": UNPARSEABLE, "status": verdict.status, "choice": None, "probs": None}


def judge_to_jsonl(
    judge: Judge,
    questions: Sequence[JudgeQuestion],
    path: Path,
    batch_size: int = 8,
    desc: str = "judging",
    on_batch: Optional[Callable[[int, int], None]] = None,
) -> dict[str, dict[str, Any]]:
    """Judge every question not yet in `path`, appending `{id, **meta, verdict fields}` rows; all rows by id.

    A judge that generates streams its questions (an API judge keeps its `max_concurrency` in flight, each
    verdict appended as it returns); one that scores choices locally goes `batch_size` at a time.
    """
    if not judge.scores:
        by_id = {q.id: q for q in questions}
        jobs = [SampleJob(q.id, q.messages, {**q.meta, "choices": q.choices}) for q in questions]

        def to_row(job: SampleJob, completion: Completion) -> dict[str, Any]:
            verdict = text_verdict(by_id[job.id], completion.text, completion.logprobs)
            return {"id": job.id, **job.meta, **verdict}

        return sample_to_jsonl(judge.sampler, jobs, judge.params, path, batch_size, desc, on_batch, to_row)
    path = Path(path)
    done = done_ids(path)
    pending = [q for q in questions if q.id not in done]
    total = len(questions)
    with JsonlWriter(path) as writer, tqdm(total=total, initial=total - len(pending), desc=desc) as bar:
        for start in range(0, len(pending), max(1, batch_size)):
            chunk = pending[start : start + max(1, batch_size)]
            for question, row in zip(chunk, judge.judge(chunk)):
                writer.write({"id": question.id, **question.meta, "choices": question.choices, **row})
            writer.flush()
            bar.update(len(chunk))
            if on_batch is not None:
                on_batch(bar.n, total)
    wanted = {q.id for q in questions}
    return {row["id"]: row for row in iter_jsonl(path) if row.get("id") in wanted}


def average_orders(asked: Iterable[tuple[Optional[Mapping[str, float]], Mapping[str, str]]]) -> Optional[dict]:
    """Per underlying option, the mean probability over the orders a question was asked in.

    Each element is (a verdict's `probs` over its choices, choice -> option); None if any order has no verdict.
    """
    totals: dict[str, float] = {}
    count = 0
    for probs, options in asked:
        if probs is None:
            return None
        count += 1
        for choice, p in probs.items():
            totals[options[choice]] = totals.get(options[choice], 0.0) + float(p)
    return {option: total / count for option, total in totals.items()} if count else None


def decide(probs: Mapping[str, float], x: str, y: str, tie: Optional[str] = None, eps: float = 1e-9) -> float:
    """x's score from order-averaged probabilities: 1 (x preferred), 0 (y preferred) or 0.5 (neither)."""
    expected = probs.get(x, 0.0) + 0.5 * probs.get(tie, 0.0) if tie else probs.get(x, 0.0)
    total = probs.get(x, 0.0) + probs.get(y, 0.0) + (probs.get(tie, 0.0) if tie else 0.0)
    expected = expected / total if total > 0 else 0.5
    return 1.0 if expected > 0.5 + eps else 0.0 if expected < 0.5 - eps else 0.5


def count_modes(rows: Iterable[Mapping[str, Any]]) -> dict[str, int]:
    """How many verdicts each mode produced (`unparseable`: none)."""
    counts = dict.fromkeys(VERDICT_MODES, 0)
    for row in rows:
        counts[row.get("mode", UNPARSEABLE)] = counts.get(row.get("mode", UNPARSEABLE), 0) + 1
    return counts
