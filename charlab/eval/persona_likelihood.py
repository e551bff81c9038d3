"""The `likelihood` judge format: which reply does the character's description explain better?

A small local judge compares two replies poorly when asked in words (a 135M model mostly follows the position
of the answer), but it is a fine language model. So it reads each reply twice, once with the character's
description as system prompt and once without, and the reply's persona score is how much more likely its tokens
become (mean per-token log-likelihood ratio). For each prompt and pair of players the reply with the higher
score wins (an empty reply loses; two empty replies tie): no answer to parse, no position to be biased by.
Needs a judge provider that scores text (`ChoiceScorer`: `hf`).

    scores = persona_scores(judge_sampler, prompts, replies, system_prompt)    # {"<player>:<prompt id>": llr}
    matches, tally = likelihood_matches(prompts, replies, players, scores)
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from charlab.chat_format import make_messages
from charlab.data.records import Match
from charlab.eval.head_to_head import TIE, JudgeTally, player_pairs
from charlab.eval.judging import LOGPROB, VERDICT_MODES
from charlab.generation.base import ChoiceScorer, Completion
from charlab.generation.best_of import persona_contrast


def persona_scores(
    scorer: ChoiceScorer,
    prompts: Sequence[tuple[str, str]],
    replies: Mapping[str, Mapping[str, Any]],
    description: str,
    batch_size: int = 8,
) -> dict[str, float]:
    """Mean per-token log-likelihood of each reply with `description` as system prompt minus without it
    (`generation.best_of.persona_contrast`, per token: replies of different lengths compare fairly), by reply id;
    empty replies get no score."""
    texts = {pid: text for pid, text in prompts}
    ids = [rid for rid, row in replies.items() if str(row.get("text", "")).strip() and rid.split(":", 1)[1] in texts]
    contrast = persona_contrast(scorer, per_token=True)
    scores: dict[str, float] = {}
    for start in range(0, len(ids), max(1, batch_size)):
        chunk = ids[start : start + max(1, batch_size)]
        conversations = [make_messages(texts[rid.split(":", 1)[1]], system=description) for rid in chunk]
        gains = contrast(conversations, [[Completion(text=str(replies[rid]["text"]))] for rid in chunk])
        scores.update({rid: gain for rid, (gain,) in zip(chunk, gains)})
    return scores


def likelihood_matches(
    prompts: Sequence[tuple[str, str]],
    replies: Mapping[str, Mapping[str, Any]],
    players: Sequence[str],
    scores: Mapping[str, float],
) -> tuple[list[Match], JudgeTally]:
    """One match per prompt and pair of players: the reply with the higher persona score wins."""
    tally = JudgeTally(modes=dict.fromkeys(VERDICT_MODES, 0))
    tally.modes[LOGPROB] = 2 * len(scores)  # each reply read with and without the description
    matches = []
    for prompt_id, prompt in prompts:
        for x, y in player_pairs(players):
            rx, ry = f"{x}:{prompt_id}", f"{y}:{prompt_id}"
            if rx not in replies or ry not in replies:
                continue
            tally.pairs += 1
            sx, sy = scores.get(rx, float("-inf")), scores.get(ry, float("-inf"))  # an empty reply shows no one
            winner = x if sx > sy else y if sx < sy else TIE
            tally.decided += winner != TIE
            tally.ties += winner == TIE
            matches.append(Match(prompt, replies[rx]["text"], replies[ry]["text"], winner, x, y))
    return matches, tally


def trait_verdicts(
    scorer: ChoiceScorer,
    items: Sequence[Any],
    replies: Mapping[str, Mapping[str, Any]],
    player: str,
    template: str,
    batch_size: int = 8,
) -> list[dict[str, Any]]:
    """Revealed preferences in the likelihood format: each trial's reply read once under each of its two traits
    (`template` with `{trait}` as system prompt); the trait that makes the reply likelier (per token) won.

    Rows: `{id, player, item, trait_a, trait_b, condition, mode, scores}`; `revealed.trials` reads them.
    """
    rows = []
    todo = [item for item in items if str(replies.get(f"{player}:{item.id}", {}).get("text", "")).strip()]
    for start in range(0, len(todo), max(1, batch_size)):
        chunk = todo[start : start + max(1, batch_size)]
        conversations, choices = [], []
        for item in chunk:
            reply = str(replies[f"{player}:{item.id}"]["text"])
            for trait in (item.trait_a, item.trait_b):
                conversations.append(make_messages(item.prompt, system=template.format(trait=trait)))
                choices.append([reply])
        scores = scorer.score_choices(conversations, choices, per_token=True)
        for k, item in enumerate(chunk):
            (a,), (b,) = scores[2 * k], scores[2 * k + 1]
            rows.append(
                {"id": f"{player}:{item.id}", "player": player, "item": item.id, "trait_a": item.trait_a,
                 "trait_b": item.trait_b, "condition": item.condition, "mode": LOGPROB,
                 "scores": {item.trait_a: a, item.trait_b: b}}
            )  # fmt: skip
    return rows
