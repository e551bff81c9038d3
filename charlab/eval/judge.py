"""Judge prompts and strict verdict parsing, shared by revealed preferences and head-to-head Elo.

A judge is any `Sampler`. It is asked to end with one line `ANSWER: <choice>`. Parsing is strict: a
verdict counts only if its answer is exactly one of the allowed choices (case, quotes, markdown and a leading
"Reply"/"Trait" word aside). No answer line, an answer that is not a choice, or several different answers
are counted as malformed or ambiguous, never guessed. A judge's reasoning in `<think>...</think>` is ignored.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Optional

from charlab.chat_format import make_messages
from charlab.constitution import Constitution

Message = dict[str, str]
OK, MALFORMED, AMBIGUOUS = "ok", "malformed", "ambiguous"
STATUSES = (OK, MALFORMED, AMBIGUOUS)

_THINK = re.compile(r"<think>.*?(</think>|$)", re.IGNORECASE | re.DOTALL)
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
