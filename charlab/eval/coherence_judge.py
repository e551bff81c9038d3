"""The `coherence` judge format: the paper's head-to-head question, "in character *and* coherent".

Open Character Training's coherence check (`character/coherence/coherence.py` in its repository) shows a judge
one message, two replies and the character's numbered traits, and asks which reply is both more aligned with
the traits and more coherent and relevant to the message, trait alignment first. It asks in both orders and
keeps a verdict only when the two orders agree; the win rate is the share of those consistent verdicts won.
This module asks the same question in charlab's own words and answer format (a final `ANSWER: 1` or `ANSWER: 2`
line, read by log-probability where the judge allows it: `charlab.eval.judging`). A pair whose two orders
disagree (a judge that picks by position) is `inconsistent` and left out, never a tie.

    questions = coherence_questions(prompts, replies, ["base_persona", "tuned"], persona)
    matches, tally = consistent_matches(judge_to_jsonl(judge, questions, path).values(), replies)
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Optional

from charlab.chat_format import make_messages
from charlab.constitution import Constitution
from charlab.data.records import Match
from charlab.eval.head_to_head import JudgeTally, both_orders, ordered_questions
from charlab.eval.judging import JUDGE_SYSTEM, JudgeQuestion, Message, count_modes

CHOICES = ("1", "2")


def coherence_criterion(persona: Constitution) -> str:
    """The question's core: the character's numbered traits, and the coherence requirement."""
    traits = "\n".join(f"{i + 1}: {t.trait}" for i, t in enumerate(persona.traits))
    return (
        f"Both replies are meant to show this character's traits:\n{traits}\n"
        "They must also make sense and actually answer the message. Which reply is better on both counts: closer "
        "to the traits, and coherent and relevant to the message? When the two disagree, trait alignment counts "
        "first."
    )


def coherence_messages(message: str, reply_1: str, reply_2: str, criterion: str) -> list[Message]:
    """One judge conversation: the message, two numbered replies, the question, the answer line."""
    question = (
        f"Read a message and two possible replies to it.\n\n<message>\n{message}\n</message>\n\n"
        f"<reply_1>\n{reply_1}\n</reply_1>\n\n<reply_2>\n{reply_2}\n</reply_2>\n\n{criterion}\n\n"
        "You may think briefly first. Then end with one final line of exactly this form:\nANSWER: 1\nor ANSWER: 2."
    )
    return make_messages(question, system=JUDGE_SYSTEM)


def coherence_questions(
    prompts: Sequence[tuple[str, str]],
    replies: Mapping[str, Mapping[str, Any]],
    players: Sequence[str],
    persona: Constitution,
) -> list[JudgeQuestion]:
    """Two questions (both orders) per prompt and pair of players whose replies are both present."""
    criterion = coherence_criterion(persona)
    ask = lambda prompt, first, second: coherence_messages(prompt, first, second, criterion)  # noqa: E731
    return ordered_questions(prompts, replies, players, ask, CHOICES, ("1", "2"))


def _picked(row: Mapping[str, Any]) -> Optional[str]:
    """The player a single verdict picked (None: no verdict)."""
    choice = row.get("choice")
    return row.get(str(choice)) if choice in CHOICES else None


def consistent_matches(
    judged: Iterable[Mapping[str, Any]], replies: Mapping[str, Mapping[str, Any]]
) -> tuple[list[Match], JudgeTally]:
    """One match per pair whose two orders picked the same player; disagreeing orders are counted, not matched."""
    judged = list(judged)
    tally = JudgeTally(modes=count_modes(judged))
    matches = []
    for (prompt_id, x, y), orders in both_orders(judged):
        tally.pairs += 1
        first, second = _picked(orders[0]), _picked(orders[1])
        if first is None or second is None:
            tally.unparseable += 1
            continue
        if first != second:
            tally.inconsistent += 1
            continue
        tally.decided += 1
        matches.append(
            Match(orders[0]["prompt"], replies[f"{x}:{prompt_id}"]["text"], replies[f"{y}:{prompt_id}"]["text"],
                  first, player_a=x, player_b=y)
        )  # fmt: skip
    return matches, tally
