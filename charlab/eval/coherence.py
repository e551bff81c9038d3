"""Does each player still answer? Per-reply coherence measurements, and per player their means with CIs.

For every reply (`reply_rows`): whether it loops or says almost nothing (`loops.loop_reason`), its distinct-2,
whether a language model picks its own prompt out of K + 1 (`relevance.lm_identification`), the same by MiniLM
and its MiniLM cosine with the prompt (`relevance.embedding_relevance`), whether the persona classifier puts it in
character, and whether it is **in character and coherent**: in character, no loop, and its own prompt identified
(by the language model; by MiniLM where no language model scored). Empty replies loop and identify nothing.

Per player (`player_estimates`) each measure's mean gets a CI from resampling prompts jointly across players, and
each player minus base a paired CI (`bootstrap.paired_rates`). `head_to_head` is the paper's headline comparison
read from these flags: per prompt, the reply that is in character and coherent beats the one that is not (both
or neither: a tie, half a win), so tuned vs base + constitution is a win rate with chance at 0.5.

    rows = reply_rows(replies, players, prompts, ignore=ignore, lm=lm, minilm=minilm, in_persona=in_persona, ...)
    loops = player_estimates(rows, players, prompts, "loop")        # {"tuned": Estimate, "tuned - base": ...}
"""

from __future__ import annotations

import math
from collections.abc import Collection, Mapping, Sequence
from typing import Any, Optional

from charlab.eval.bootstrap import Estimate, paired_rates
from charlab.eval.loops import distinct_n, loop_reason
from charlab.eval.players import reply_id

# measure -> what it is (report and README say the same)
MEASURES = {
    "loop": "share of replies that loop or say almost nothing",
    "distinct_2": "distinct word pairs / all word pairs within a reply",
    "relevance": "share of replies whose own prompt the language model finds likeliest of K + 1",
    "minilm_relevance": "share of replies whose own prompt is the nearest of K + 1 by MiniLM",
    "minilm_cosine": "MiniLM cosine of reply and prompt (lower for any persona: style moves it)",
    "in_character": "share of replies the persona classifier puts in character",
    "in_character_coherent": "share of replies in character, not looping, and answering their own prompt",
}


def _flag(value: Optional[bool]) -> Optional[float]:
    return None if value is None else float(value)


def reply_rows(
    replies: Mapping[str, Mapping[str, Any]],
    players: Sequence[str],
    prompts: Sequence[tuple[str, str]],
    *,
    ignore: Collection[str],
    lm: Optional[Mapping[str, Mapping[str, Any]]],
    minilm: Optional[Mapping[str, Mapping[str, float]]],
    in_persona: Mapping[str, bool],
    min_content_words: int,
    min_distinct_ngrams: float,
) -> list[dict[str, Any]]:
    """One row of measurements per present reply (`coherence.jsonl`); None where a measure was not taken (`lm`,
    `minilm` None: not measured; a reply missing from them is empty)."""
    rows = []
    for name in players:
        for pid, _ in prompts:
            rid = reply_id(name, pid)
            if rid not in replies:
                continue
            text = str(replies[rid].get("text", ""))
            reason = loop_reason(text, ignore, min_content_words, min_distinct_ngrams)
            relevance = None if lm is None else lm.get(rid, {}).get("hit", 0.0)
            minilm_hit = None if minilm is None else minilm.get(rid, {}).get("hit", 0.0)
            answers = relevance if relevance is not None else minilm_hit
            character = in_persona.get(rid)
            coherent = None if character is None or answers is None else character and reason is None and answers == 1
            rows.append(
                {"id": rid, "player": name, "prompt_id": pid, "loop": reason, "distinct_2": distinct_n(text, 2),
                 "relevance": relevance, "minilm_relevance": minilm_hit,
                 "minilm_cosine": None if minilm is None else minilm.get(rid, {}).get("cosine", 0.0),
                 "in_character": _flag(character), "in_character_coherent": _flag(coherent)}
            )  # fmt: skip
    return rows


def _values(row: Mapping[str, Any], measure: str) -> float:
    value = row.get(measure)
    if measure == "loop":
        return float(value is not None)
    return math.nan if value is None else float(value)


def player_estimates(
    rows: Sequence[Mapping[str, Any]],
    players: Sequence[str],
    prompts: Sequence[tuple[str, str]],
    measure: str,
    resamples: int = 1000,
    level: float = 0.95,
    seed: int = 0,
) -> dict[str, Estimate]:
    """Each player's mean of `measure` over prompts and each minus base (paired), with CIs; {} if never taken."""
    by_id = {row["id"]: row for row in rows}
    values = {
        name: [_values(by_id[reply_id(name, pid)], measure) if reply_id(name, pid) in by_id else math.nan
               for pid, _ in prompts]
        for name in players
    }  # fmt: skip
    if all(math.isnan(v) for series in values.values() for v in series):
        return {}
    return paired_rates(values, "base" if "base" in players else None, resamples, level, seed)


def head_to_head(
    rows: Sequence[Mapping[str, Any]],
    player: str,
    opponent: str,
    prompts: Sequence[tuple[str, str]],
    resamples: int = 1000,
    level: float = 0.95,
    seed: int = 0,
) -> Optional[Estimate]:
    """`player`'s win rate against `opponent` on "in character and coherent" (per prompt: 1 when only its reply
    is, 0 when only the opponent's is, 0.5 when both or neither), with a CI over prompts; None without flags."""
    by_id = {row["id"]: row for row in rows}
    scores = []
    for pid, _ in prompts:
        mine, theirs = (by_id.get(reply_id(p, pid), {}).get("in_character_coherent") for p in (player, opponent))
        scores.append(math.nan if mine is None or theirs is None else 0.5 + 0.5 * (mine - theirs))
    if all(math.isnan(s) for s in scores):
        return None
    return paired_rates({"score": scores}, None, resamples, level, seed)["score"]


def loop_reasons(rows: Sequence[Mapping[str, Any]], player: str) -> dict[str, int]:
    """How many of a player's replies loop for each reason."""
    counts: dict[str, int] = {}
    for row in rows:
        if row["player"] == player and row["loop"] is not None:
            counts[row["loop"]] = counts.get(row["loop"], 0) + 1
    return counts
