"""Head-to-head comparisons: every pair of players' replies judged in both orders, position bias averaged out.

Players are named reply sets for the same held-out prompts (typically `base`, `base_persona` = base model with
the constitution's system prompt, and `tuned` = base + adapter with no system prompt). For each prompt and pair
(x, y) the judge sees x as reply A and y as B, then y as A and x as B. The two verdicts' probabilities are
averaged per player (`charlab.eval.judging.average_orders`), so a judge that always prefers the first reply
(or the second) contributes nothing but ties; the pair's outcome is x's expected score above, below or at 0.5
(a win, a loss or a tie; two parsed text verdicts that disagree are a tie, as in MT-Bench). A pair where either
order has no verdict is counted as unparseable and left out.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from charlab.data.records import Match
from charlab.eval.judging import PAIR_CHOICES, JudgeQuestion, average_orders, count_modes, decide, pair_judge_messages

TIE = "tie"


@dataclass
class JudgeTally:
    """What became of the judged pairs, and how their single verdicts were reached."""

    pairs: int = 0
    decided: int = 0  # pairs with a winner
    ties: int = 0
    unparseable: int = 0  # pairs where at least one order has no verdict
    inconsistent: int = 0  # formats that keep only order-consistent verdicts: pairs whose two orders disagree
    modes: dict[str, int] = field(
        default_factory=dict
    )  # per single verdict: logprob / top_logprobs / text / unparseable

    @property
    def usable(self) -> int:
        """Pairs that became a match (a win or a tie)."""
        return self.decided + self.ties


def player_pairs(players: Sequence[str]) -> list[tuple[str, str]]:
    """Every unordered pair of players, in the given order."""
    return list(itertools.combinations(players, 2))


def ordered_questions(
    prompts: Sequence[tuple[str, str]],
    replies: Mapping[str, Mapping[str, Any]],
    players: Sequence[str],
    ask: Callable[[str, str, str], list[dict[str, str]]],
    choices: Sequence[str],
    slots: tuple[str, str],
) -> list[JudgeQuestion]:
    """Two questions (both orders) per prompt and pair of players whose replies are both present: `ask(prompt,
    first reply, second reply)` builds the conversation; each row's meta names the player in each slot."""
    questions = []
    for prompt_id, prompt in prompts:
        for x, y in player_pairs(players):
            rx, ry = replies.get(f"{x}:{prompt_id}"), replies.get(f"{y}:{prompt_id}")
            if rx is None or ry is None:
                continue
            texts = {x: rx["text"], y: ry["text"]}
            for order, (first, second) in enumerate(((x, y), (y, x))):
                meta = {"prompt_id": prompt_id, "prompt": prompt, "x": x, "y": y, "order": order,
                        slots[0]: first, slots[1]: second}  # fmt: skip
                messages = ask(prompt, texts[first], texts[second])
                questions.append(JudgeQuestion(f"{prompt_id}:{x}:{y}:{order}", messages, list(choices), meta))
    return questions


def judge_questions(
    prompts: Sequence[tuple[str, str]],
    replies: Mapping[str, Mapping[str, Any]],
    players: Sequence[str],
    criterion: str,
) -> list[JudgeQuestion]:
    """Two judge questions (both orders) per prompt and pair of players; replies keyed `"<player>:<prompt id>"`."""
    ask = lambda prompt, a, b: pair_judge_messages(prompt, a, b, criterion)  # noqa: E731
    return ordered_questions(prompts, replies, players, ask, PAIR_CHOICES, ("A", "B"))


def both_orders(
    judged: Sequence[Mapping[str, Any]],
) -> Iterator[tuple[tuple[str, str, str], tuple[Mapping[str, Any], Mapping[str, Any]]]]:
    """((prompt id, x, y), (order 0 row, order 1 row)) for each pair judged in both orders (an interrupted run
    judges the other order on resume)."""
    by_pair: dict[tuple[str, str, str], dict[int, Mapping[str, Any]]] = {}
    for row in judged:
        by_pair.setdefault((row["prompt_id"], row["x"], row["y"]), {})[int(row["order"])] = row
    for key, orders in by_pair.items():
        if set(orders) == {0, 1}:
            yield key, (orders[0], orders[1])


def pair_matches(
    judged: Sequence[Mapping[str, Any]], replies: Mapping[str, Mapping[str, Any]]
) -> tuple[list[Match], JudgeTally]:
    """One match per pair judged in both orders (order-averaged verdict), and the tally of all pairs."""
    tally = JudgeTally(modes=count_modes(judged))
    matches = []
    for (prompt_id, x, y), orders in both_orders(judged):
        tally.pairs += 1
        probs = average_orders(
            (row.get("probs"), {"A": row["A"], "B": row["B"], TIE: TIE}) for row in (orders[0], orders[1])
        )
        if probs is None:
            tally.unparseable += 1
            continue
        score = decide(probs, x, y, TIE)
        winner = x if score == 1.0 else y if score == 0.0 else TIE
        tally.decided += winner != TIE
        tally.ties += winner == TIE
        matches.append(
            Match(
                prompt=orders[0]["prompt"],
                base_response=replies[f"{x}:{prompt_id}"]["text"],
                tuned_response=replies[f"{y}:{prompt_id}"]["text"],
                winner=winner,
                player_a=x,
                player_b=y,
            )
        )
    return matches, tally
