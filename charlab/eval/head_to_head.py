"""Head-to-head comparisons: every pair of players' replies judged in both orders; only consistent verdicts count.

Players are named reply sets for the same held-out prompts (typically `base`, `base_persona` = base model with
the constitution's system prompt, and `tuned` = base + adapter with no system prompt). For each prompt and pair
(x, y) the judge sees x as reply A and y as B, then y as A and x as B. The two verdicts become one `Match` only
when they agree (x both times, y both times, or a tie both times); disagreements and unparseable verdicts are
counted, never guessed.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from charlab.data.records import Match
from charlab.eval.judge import PAIR_CHOICES, pair_judge_messages, parse_verdict
from charlab.eval.sampling import SampleJob

TIE = "tie"


@dataclass
class JudgeTally:
    """What became of the judged pairs."""

    pairs: int = 0
    consistent: int = 0
    inconsistent: int = 0
    unparseable: int = 0  # a pair with at least one malformed or ambiguous verdict
    statuses: dict[str, int] = field(default_factory=dict)  # per single verdict: ok / malformed / ambiguous

    @property
    def consistency(self) -> float:
        decided = self.consistent + self.inconsistent
        return self.consistent / decided if decided else float("nan")


def player_pairs(players: Sequence[str]) -> list[tuple[str, str]]:
    """Every unordered pair of players, in the given order."""
    return list(itertools.combinations(players, 2))


def judge_jobs(
    prompts: Sequence[tuple[str, str]],
    replies: Mapping[str, Mapping[str, Any]],
    players: Sequence[str],
    criterion: str,
) -> list[SampleJob]:
    """Two judge jobs (both orders) per prompt and pair of players; replies keyed `"<player>:<prompt id>"`."""
    jobs = []
    for prompt_id, prompt in prompts:
        for x, y in player_pairs(players):
            rx, ry = replies.get(f"{x}:{prompt_id}"), replies.get(f"{y}:{prompt_id}")
            if rx is None or ry is None:
                continue
            for order, (a, b) in enumerate((((x, rx), (y, ry)), ((y, ry), (x, rx)))):
                meta = {"prompt_id": prompt_id, "prompt": prompt, "x": x, "y": y, "order": order, "A": a[0], "B": b[0]}
                messages = pair_judge_messages(prompt, a[1]["text"], b[1]["text"], criterion)
                jobs.append(SampleJob(f"{prompt_id}:{x}:{y}:{order}", messages, meta))
    return jobs


def _winner(row: Mapping[str, Any]) -> tuple[str, str]:
    """(winner, status) of one judged order: a player's name or "tie", or None with the parse status."""
    verdict = parse_verdict(row["text"], PAIR_CHOICES)
    if not verdict.ok:
        return "", verdict.status
    if verdict.choice == TIE:
        return TIE, verdict.status
    return row[verdict.choice], verdict.status


def consistent_matches(
    judged: Sequence[Mapping[str, Any]], replies: Mapping[str, Mapping[str, Any]]
) -> tuple[list[Match], JudgeTally]:
    """Matches from pairs whose two orders agree, and the tally of all pairs."""
    by_pair: dict[tuple[str, str, str], dict[int, Mapping[str, Any]]] = {}
    for row in judged:
        by_pair.setdefault((row["prompt_id"], row["x"], row["y"]), {})[int(row["order"])] = row
    tally = JudgeTally(statuses={"ok": 0, "malformed": 0, "ambiguous": 0})
    matches = []
    for (prompt_id, x, y), orders in by_pair.items():
        if set(orders) != {0, 1}:
            continue  # an interrupted run: the other order is judged on resume
        tally.pairs += 1
        results = [_winner(orders[0]), _winner(orders[1])]
        for _, status in results:
            tally.statuses[status] = tally.statuses.get(status, 0) + 1
        if any(not winner for winner, _ in results):
            tally.unparseable += 1
            continue
        if results[0][0] != results[1][0]:
            tally.inconsistent += 1
            continue
        tally.consistent += 1
        matches.append(
            Match(
                prompt=orders[0]["prompt"],
                base_response=replies[f"{x}:{prompt_id}"]["text"],
                tuned_response=replies[f"{y}:{prompt_id}"]["text"],
                winner=results[0][0],
                player_a=x,
                player_b=y,
            )
        )
    return matches, tally
