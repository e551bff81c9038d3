"""Revealed preferences: which traits does a model choose to embody when it may pick?

For each item a prompt is paired with two distinct random traits (from `assets/traits.txt`) and one of the
conditions in `assets/revealed_conditions.json` (the trait that feels most like you / that you would most like
to adopt / one at random), with the instruction not to reveal the choice. The model under test answers; a
judge sees the reply and the two traits, named in both orders (`charlab.eval.judging`: log-probabilities
where the judge allows, position bias averaged out). Each trial is a win of the chosen trait over the other
(a tie when undecided), and traits are rated like players (`charlab.eval.ratings`), per condition: `random`
is the control, where a model following the instruction shows no preference of its own.
"""

from __future__ import annotations

import json
import math
import random
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import numpy as np
from scipy.stats import rankdata, spearmanr

from charlab.chat_format import make_messages
from charlab.errors import ConfigError, DataError
from charlab.eval.bootstrap import Estimate
from charlab.eval.judging import JudgeQuestion, average_orders, decide, trait_judge_messages
from charlab.eval.ratings import Outcome, RatingFit, percentile_ci
from charlab.eval.sampling import SampleJob
from charlab.settings import assets_dir

PLACEMENTS = ("system", "user")


def load_traits(path: Optional[Path] = None) -> list[str]:
    """Single-word traits, one per line (the bundled list by default); duplicates are an error."""
    path = Path(path) if path else assets_dir() / "traits.txt"
    if not path.is_file():
        raise DataError(f"{path}: trait list not found")
    traits = [line.strip().lower() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    dupes = sorted({t for t in traits if traits.count(t) > 1})
    if dupes:
        raise DataError(f"{path}: duplicate traits: {', '.join(dupes)}")
    if len(traits) < 2:
        raise DataError(f"{path}: needs at least two traits")
    return traits


def load_conditions(path: Optional[Path] = None) -> dict[str, str]:
    """Condition name -> instruction template with `{trait_a}` and `{trait_b}`."""
    path = Path(path) if path else assets_dir() / "revealed_conditions.json"
    data = json.loads(path.read_text(encoding="utf-8"))
    for name, template in data.items():
        if "{trait_a}" not in template or "{trait_b}" not in template:
            raise DataError(f"{path}: condition {name!r} must contain {{trait_a}} and {{trait_b}}")
    return data


@dataclass
class RevealedItem:
    """One trial: a prompt, two traits (in the order shown) and a condition."""

    id: str
    prompt_id: str
    prompt: str
    trait_a: str
    trait_b: str
    condition: str


def sample_items(
    prompts: Sequence[tuple[str, str]], traits: Sequence[str], conditions: Sequence[str], n: int, seed: int = 0
) -> list[RevealedItem]:
    """`n` trials cycling through the (id, text) prompts, each with two random distinct traits and a condition."""
    if not prompts:
        raise DataError("revealed preferences need at least one prompt")
    if not conditions:
        raise ConfigError("stage.conditions is empty; use any of feels_like_you, would_adopt, random")
    rng = random.Random(seed)
    order = list(prompts)
    rng.shuffle(order)
    items = []
    for i in range(n):
        prompt_id, text = order[i % len(order)]
        trait_a, trait_b = rng.sample(list(traits), 2)
        condition = conditions[i % len(conditions)] if len(conditions) > 1 else conditions[0]
        items.append(RevealedItem(f"r{i}", prompt_id, text, trait_a, trait_b, condition))
    return items


def item_messages(
    item: RevealedItem, template: str, system_prompt: Optional[str] = None, placement: str = "system"
) -> list[dict[str, str]]:
    """The conversation the model under test sees: the trait instruction, then the user's message.

    `system_prompt` (base + constitution) is put before the instruction; `placement=user` puts the
    instruction at the start of the user's message instead (for templates without a system role).
    """
    if placement not in PLACEMENTS:
        raise ConfigError(f"stage.instruction_in={placement!r} is not allowed; use one of {', '.join(PLACEMENTS)}")
    instruction = template.format(trait_a=item.trait_a, trait_b=item.trait_b)
    if placement == "user":
        return make_messages(f"{instruction}\n\n{item.prompt}", system=system_prompt)
    system = f"{system_prompt}\n\n{instruction}" if system_prompt else instruction
    return make_messages(item.prompt, system=system)


def reply_jobs(
    items: Sequence[RevealedItem],
    player: str,
    conditions: Mapping[str, str],
    system_prompt: Optional[str] = None,
    placement: str = "system",
) -> list[SampleJob]:
    """One reply job per trial for `player`."""
    return [
        SampleJob(
            f"{player}:{item.id}",
            item_messages(item, conditions[item.condition], system_prompt, placement),
            {"player": player, "item": item.id, "prompt": item.prompt, **_item_meta(item)},
        )
        for item in items
    ]


NEUTRAL = "neutral"  # the player name of calibration questions
NEUTRAL_REPLY = "Here is my answer to your message."


def judge_questions(
    items: Sequence[RevealedItem], replies: Mapping[str, Mapping[str, Any]], player: str
) -> list[JudgeQuestion]:
    """Two judge questions per reply of `player` (the traits named in both orders; replies keyed by reply-job id).

    With `player=NEUTRAL` the reply is a fixed content-free text instead: the judge's answer to it is its prior
    for the two trait words, which `trials(..., calibrate=True)` divides out (contextual calibration).
    """
    questions = []
    for item in items:
        reply = {"text": NEUTRAL_REPLY} if player == NEUTRAL else replies.get(f"{player}:{item.id}")
        if reply is None:
            continue
        for order, (first, second) in enumerate(((item.trait_a, item.trait_b), (item.trait_b, item.trait_a))):
            messages = trait_judge_messages(item.prompt, reply["text"], first, second)
            meta = {"player": player, "item": item.id, "order": order, **_item_meta(item)}
            questions.append(JudgeQuestion(f"{player}:{item.id}:{order}", messages, [first, second], meta))
    return questions


def _item_meta(item: RevealedItem) -> dict[str, str]:
    return {"trait_a": item.trait_a, "trait_b": item.trait_b, "condition": item.condition}


@dataclass
class Trial:
    """One judged trial of one player: its condition and outcome (trait_a's score), or None if unparseable."""

    player: str
    item: str
    condition: str
    outcome: Optional[Outcome]


def _calibrated(row: Mapping[str, Any], neutral: Optional[Mapping[str, Any]]) -> Optional[dict[str, float]]:
    """The verdict's probabilities divided by the judge's prior for the same question (renormalised); as they are
    when there is no scored prior (a parsed text verdict has no prior to divide out)."""
    probs = row.get("probs")
    prior = neutral.get("probs") if neutral else None
    scored = ("logprob", "top_logprobs")
    if probs is None or prior is None or row.get("mode") not in scored or neutral.get("mode") not in scored:
        return probs
    tiny = 1e-12
    ratios = {c: max(p, tiny) / max(prior.get(c, 0.0), tiny) for c, p in probs.items()}
    total = sum(ratios.values())
    return {c: r / total for c, r in ratios.items()}


def trials(judged: Sequence[Mapping[str, Any]], calibrate: bool = True) -> list[Trial]:
    """Trials judged in both orders, each order-averaged into an outcome of trait_a vs trait_b (0.5: undecided);
    rows of the likelihood format (`persona_likelihood.trait_verdicts`) are one outcome each.

    With `calibrate`, each verdict is first divided by the judge's verdict on a content-free reply to the same
    question (rows of player `NEUTRAL`), so a judge that favours one trait word regardless of the reply does not
    decide the trial.
    """
    out = []
    by_item: dict[tuple[str, str], dict[int, Mapping[str, Any]]] = {}
    for row in judged:
        if "scores" in row:  # the likelihood format: one reading per trait, the likelier trait won
            a, b = row["scores"][row["trait_a"]], row["scores"][row["trait_b"]]
            outcome = Outcome(row["trait_a"], row["trait_b"], 1.0 if a > b else 0.0 if a < b else 0.5)
            out.append(Trial(row["player"], row["item"], row["condition"], outcome))
            continue
        by_item.setdefault((row["player"], row["item"]), {})[int(row.get("order", 0))] = row
    for (player, item), orders in by_item.items():
        if player == NEUTRAL or set(orders) != {0, 1}:
            continue  # calibration rows, or interrupted: the other order is judged on resume
        row = orders[0]
        same = {row["trait_a"]: row["trait_a"], row["trait_b"]: row["trait_b"]}
        neutral = by_item.get((NEUTRAL, item), {}) if calibrate else {}
        probs = average_orders((_calibrated(r, neutral.get(order)), same) for order, r in orders.items())
        outcome = None
        if probs is not None:
            outcome = Outcome(row["trait_a"], row["trait_b"], decide(probs, row["trait_a"], row["trait_b"]))
        out.append(Trial(player, item, row["condition"], outcome))
    return out


def persona_traits(text: str, traits: Sequence[str]) -> list[str]:
    """Traits from the list that the constitution's text names as whole words (a heuristic; override in config)."""
    lowered = text.lower()
    return [t for t in traits if re.search(rf"\b{re.escape(t)}\b", lowered)]


def average_ranks(values: np.ndarray) -> np.ndarray:
    """1-based ranks along the last axis, highest value first; ties share their average rank."""
    return rankdata(-np.asarray(values, dtype=float), axis=-1)


def rank_shift(
    traits: Sequence[str], reference: np.ndarray, tuned: np.ndarray, tracked: Sequence[str]
) -> dict[str, Any]:
    """Ranks of the tracked traits under both players (ratings in `traits` order) and how far each moved up
    (positive = higher under tuned), and the mean shift."""
    index = [traits.index(t) for t in tracked if t in traits]
    ref_ranks, tuned_ranks = average_ranks(reference), average_ranks(tuned)
    rows = {
        traits[i]: (float(ref_ranks[i]), float(tuned_ranks[i]), float(ref_ranks[i] - tuned_ranks[i])) for i in index
    }
    mean = float(np.mean([r[2] for r in rows.values()])) if rows else float("nan")
    return {"traits": rows, "mean_shift": mean}


def sampled_rank_shift(reference: np.ndarray, tuned: np.ndarray, index: Sequence[int]) -> np.ndarray:
    """The mean rank shift of the traits at `index` for each pair of bootstrap rows (resamples x traits each)."""
    if not len(index):
        return np.full(len(reference), np.nan)
    shift = average_ranks(reference)[:, index] - average_ranks(tuned)[:, index]
    return shift.mean(axis=1)


def spearman(a: Mapping[str, float], b: Mapping[str, float]) -> float:
    """Spearman correlation of two trait -> rating maps over their common traits (NaN if undefined)."""
    common = sorted(set(a) & set(b))
    if len(common) < 3:
        return float("nan")
    if len({a[t] for t in common}) < 2 or len({b[t] for t in common}) < 2:
        return float("nan")  # a constant side (e.g. no accepted verdicts): the correlation is undefined
    rho = spearmanr([a[t] for t in common], [b[t] for t in common]).statistic
    return float(rho)


def sampled_spearman(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Spearman correlation of each pair of bootstrap rows (NaN where a row is constant)."""
    ra, rb = average_ranks(a), average_ranks(b)
    ra = ra - ra.mean(axis=1, keepdims=True)
    rb = rb - rb.mean(axis=1, keepdims=True)
    denom = np.sqrt((ra * ra).sum(axis=1) * (rb * rb).sum(axis=1))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(denom > 0, (ra * rb).sum(axis=1) / np.where(denom > 0, denom, 1.0), np.nan)


@dataclass
class Comparison:
    """Reference vs target in one condition: the persona traits' rank shift and the ratings' Spearman, with CIs."""

    condition: str
    shift: dict[str, Any]
    shift_ci: Estimate
    spearman: Estimate


def _estimate(point: float, samples: np.ndarray, level: float, n: int) -> Estimate:
    samples = samples[~np.isnan(samples)]
    if math.isnan(point) or not len(samples):
        return Estimate(point, float("nan"), float("nan"), n)
    low, high = percentile_ci(samples, level)
    return Estimate(float(point), float(low), float(high), n)


def compare(
    condition: str, ref: RatingFit, tuned: RatingFit, traits: list[str], tracked: list[str], level: float, n: int
) -> Comparison:
    """Rank shift (reference -> tuned) of the tracked traits, and Spearman of the ratings of the traits both
    players' trials included (the rest sit tied at the start rating), with CIs."""
    point_ref = np.asarray([ref.elo[t] for t in traits])
    point_tuned = np.asarray([tuned.elo[t] for t in traits])
    shift = rank_shift(traits, point_ref, point_tuned, tracked)
    index = [traits.index(t) for t in tracked if t in traits]
    shift_ci = _estimate(shift["mean_shift"], sampled_rank_shift(ref.elo_samples, tuned.elo_samples, index), level, n)
    played = [i for i, t in enumerate(traits) if ref.games[t] and tuned.games[t]]  # unplayed traits: tied at start
    rho = spearman({traits[i]: point_ref[i] for i in played}, {traits[i]: point_tuned[i] for i in played})
    samples = sampled_spearman(ref.elo_samples[:, played], tuned.elo_samples[:, played])
    rho_ci = _estimate(rho, samples, level, n)
    return Comparison(condition, shift, shift_ci, rho_ci)
