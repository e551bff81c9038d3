"""How in character one reply is, as a number: the judge's probability that the reply sounds like the persona.

A pointwise question ("does this reply sound like <name>, <description>, while still answering the user?
yes / no") goes to a `Judge`, so it gets a verdict in every judging mode: log-probabilities of " yes" and " no"
(hf), the server's top log-probabilities (openai), or the parsed text. The score is the probability of "yes"
(0.5 when the judge gave no usable verdict). Distillation ranks a teacher's best-of-N candidates with it
(`stage.best_of`); the head-to-head evaluation asks the same judge a different, pairwise question.

    scorer = JudgePersonaScorer(judge, persona_description(persona))
    scores = scorer(conversations, candidates)      # per conversation, one score per candidate reply
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Optional

from charlab.chat_format import make_messages
from charlab.constitution import Constitution
from charlab.eval.judging import JUDGE_SYSTEM, Judge, JudgeQuestion
from charlab.generation.base import Completion, Message

CHOICES = ["yes", "no"]
NO_VERDICT = 0.5


def persona_description(persona: Constitution, assistant_name: Optional[str] = None) -> str:
    """Who the reply should sound like, in one line: the persona's name and description (else its system prompt)."""
    who = persona.display_name(assistant_name)
    return f"{who}: {persona.description or persona.system_prompt}"


def persona_score_messages(user_prompt: str, reply: str, description: str) -> list[Message]:
    """The judge's yes/no question for one reply."""
    question = (
        f"Does the reply below sound like this character, while still responding to the user?\n\n{description}\n\n"
        f"<user_message>\n{user_prompt}\n</user_message>\n\n<reply>\n{reply}\n</reply>\n\n"
        "Judge only whether the reply shows this character. You may think briefly first. Then end with one final "
        "line of exactly this form:\nANSWER: yes\nor ANSWER: no"
    )
    return make_messages(question, system=JUDGE_SYSTEM)


def _user_prompt(conversation: Sequence[Message]) -> str:
    return next((m["content"] for m in reversed(conversation) if m.get("role") == "user"), "")


class JudgePersonaScorer:
    """Scores candidate replies by the judge's probability that each sounds like the persona (a best-of-N score)."""

    def __init__(self, judge: Judge, description: str):
        self.judge = judge
        self.description = description

    def __call__(
        self, conversations: Sequence[list[Message]], candidates: Sequence[Sequence[Completion]]
    ) -> list[list[float]]:
        questions = [
            JudgeQuestion(f"{i}:{j}", persona_score_messages(_user_prompt(conv), c.text, self.description), CHOICES)
            for i, (conv, cands) in enumerate(zip(conversations, candidates))
            for j, c in enumerate(cands)
        ]
        rows = iter(self.judge.judge(questions))
        return [[_yes(next(rows)) for _ in cands] for cands in candidates]


def _yes(row: dict) -> float:
    probs = row.get("probs")
    return float(probs["yes"]) if probs else NO_VERDICT
