"""Judging: the LM judge's prompts, strict parsing of its answers, and judges that always answer (a verdict from
log-probabilities where the judge allows it, else strict parsing). Shared by revealed preferences, head-to-head
Elo and the coherence judge.

A question offers a few fixed choices ("A" / "B" / "tie", or two trait names). Three ways to a verdict, each
recorded with the verdict (`mode`) so a report can say which produced its numbers:

* `logprob`: the judge's provider scores choices (`ChoiceScorer`: the local `hf` provider). The reply is
  prefilled with "ANSWER:" and every choice is scored by the log-probability of its tokens right after it,
  so every question gets a verdict, even from a 135M-parameter judge.
* `top_logprobs`: the provider returns the most likely tokens at each generated position (OpenAI, vLLM). The
  position right after the judge's last "ANSWER:" (else its first token) gives the distribution over the
  choices found among those tokens.
* `text`: the reply is parsed strictly (`parse_verdict`, below); what does not parse is counted as
  `unparseable`.

The verdict's `probs` are normalised over the choices (one-hot for a parsed text verdict). Asking the same
question in both orders and averaging the probabilities per underlying option (`average_orders`) removes the
judge's position bias; `decide` turns the averaged probabilities into a win, a loss or a tie.

    judge = Judge(sampler, sampling_params(judge_cfg), mode="auto")
    rows = judge_to_jsonl(judge, questions, run.path("judgments.jsonl"))

Prompts (`trait_judge_messages`, `pair_judge_messages`, `persona_criterion`) ask the judge to end with one line
`ANSWER: <choice>`. Parsing is strict: an answer counts only if it is exactly one of the allowed choices (case,
quotes, markdown and a leading "Reply"/"Trait" word aside); no answer line, an answer that is not a choice, or
several different answers are malformed or ambiguous, never guessed. Reasoning in `<think>...</think>` is ignored.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Optional

from tqdm.auto import tqdm

from charlab.chat_format import make_messages
from charlab.constitution import Constitution
from charlab.data.jsonl import JsonlWriter, done_ids, iter_jsonl
from charlab.errors import ConfigError
from charlab.eval.sampling import SampleJob, sample_to_jsonl
from charlab.generation.base import ChoiceScorer, Completion, Message, Sampler, SamplingParams

OK, MALFORMED, AMBIGUOUS = "ok", "malformed", "ambiguous"
STATUSES = (OK, MALFORMED, AMBIGUOUS)

_ANSWER_LINE = re.compile(r"^[\s>*_#`-]*(?:final\s+)?answer[\s*_`]*[:=\-]\s*(.*?)\s*$", re.IGNORECASE | re.MULTILINE)
_LEADING_WORD = re.compile(r"^(?:reply|response|trait|option|choice)\s+", re.IGNORECASE)
_STRIP = " \t\r\n*_`\"'“”‘’.,;:!()[]{}<>"

JUDGE_SYSTEM = "You are a careful, impartial evaluator. You follow the requested answer format exactly."


@dataclass
class Verdict:
    """A parsed judge reply: the choice (None unless status is ok) and why it was or was not accepted."""

    choice: Optional[str]
    status: str  # ok | malformed | ambiguous
    raw: str = ""

    @property
    def ok(self) -> bool:
        return self.status == OK


def _normalise(value: str) -> str:
    value = value.strip(_STRIP)
    value = _LEADING_WORD.sub("", value).strip(_STRIP)
    return " ".join(value.lower().split())


def parse_verdict(text: str, choices: Sequence[str]) -> Verdict:
    """The judge's choice among `choices`, or why there is none (malformed / ambiguous)."""
    lookup = {_normalise(c): c for c in choices}
    body = _THINK.sub("", text or "")
    answers = _ANSWER_LINE.findall(body)
    if not answers:
        # a bare reply that is exactly one choice ("Sarcastic.") is well-formed; anything longer is not
        only = lookup.get(_normalise(body))
        return Verdict(only, OK, text) if only else Verdict(None, MALFORMED, text)
    picked, unknown = [], []
    for answer in answers:
        value = _normalise(answer)
        if value in lookup:
            picked.append(lookup[value])
        elif sum(bool(re.search(rf"\b{re.escape(c)}\b", value)) for c in lookup) > 1:
            return Verdict(None, AMBIGUOUS, text)  # "A or B", "both sarcastic and witty"
        else:
            unknown.append(value)
    distinct = set(picked)
    if len(distinct) > 1:
        return Verdict(None, AMBIGUOUS, text)
    if len(distinct) == 1:
        return Verdict(picked[0], OK, text)
    return Verdict(None, MALFORMED, text)


def count_statuses(verdicts: Sequence[Verdict]) -> dict[str, int]:
    """How many verdicts were ok, malformed and ambiguous (every status present, zero if none)."""
    counts = Counter(v.status for v in verdicts)
    return {status: counts.get(status, 0) for status in STATUSES}


def trait_judge_messages(user_prompt: str, reply: str, trait_a: str, trait_b: str) -> list[Message]:
    """Revealed preferences: which of two traits does the reply express?"""
    question = (
        "An AI assistant was asked to answer the user's message below while secretly embodying one of two "
        f"traits: {trait_a} or {trait_b}. Read its reply and decide which of the two traits the reply expresses "
        "more strongly.\n\n"
        f"<user_message>\n{user_prompt}\n</user_message>\n\n<reply>\n{reply}\n</reply>\n\n"
        "You may think briefly first. Then end with one final line of exactly this form:\n"
        f"ANSWER: <trait>\nwhere <trait> is either {trait_a} or {trait_b}."
    )
    return make_messages(question, system=JUDGE_SYSTEM)


PAIR_CHOICES = ("A", "B", "tie")


def pair_judge_messages(user_prompt: str, reply_a: str, reply_b: str, criterion: str) -> list[Message]:
    """Head-to-head: which of two replies to the same message better meets `criterion`?"""
    question = (
        f"Compare two replies to the same user message. {criterion}\n\n"
        f"<user_message>\n{user_prompt}\n</user_message>\n\n"
        f"<reply_A>\n{reply_a}\n</reply_A>\n\n<reply_B>\n{reply_b}\n</reply_B>\n\n"
        "Judge the replies only on that question; ignore their order and length. You may think briefly first. "
        "Then end with one final line of exactly this form:\nANSWER: A\nor ANSWER: B, or ANSWER: tie if neither "
        "is better."
    )
    return make_messages(question, system=JUDGE_SYSTEM)


def persona_criterion(persona: Constitution, assistant_name: Optional[str] = None) -> str:
    """The head-to-head question for a persona: which reply sounds more like this character?"""
    listed = "\n".join(f"- {t.trait}" for t in persona.traits)
    who = persona.display_name(assistant_name)
    return (
        f"Which reply sounds more like {who}, the character described below, while still responding to the "
        f"user?\n\n{who}: {persona.description or persona.system_prompt}\nIts traits, in its own words:\n{listed}"
    )


HELPFUL_CRITERION = "Which reply is more helpful, accurate and appropriate for the user?"

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
