"""Revealed preferences: which traits does a model choose to embody when it may pick?

For each item a prompt is paired with two distinct random traits (from `assets/traits.txt`) and one of the
conditions in `assets/revealed_conditions.json` (the trait that feels most like you / that you would most like
to adopt / one at random), with the instruction not to reveal the choice. The model under test answers; a
judge sees the reply and the two traits and must name one (strictly parsed). Each accepted verdict is a win
of the chosen trait over the other, and traits are rated like players (`charlab.eval.ratings`).
"""

from __future__ import annotations

import json
import random
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from scipy.stats import spearmanr

from charlab.chat_format import make_messages
from charlab.errors import ConfigError, DataError
from charlab.eval.judge import parse_verdict, trait_judge_messages
from charlab.eval.ratings import Outcome, PlayerRating
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


def judge_jobs(
    items: Sequence[RevealedItem], replies: Mapping[str, Mapping[str, Any]], player: str
) -> list[SampleJob]:
    """One judge job per reply of `player` (replies keyed by reply-job id)."""
    jobs = []
    for item in items:
        reply = replies.get(f"{player}:{item.id}")
        if reply is None:
            continue
        messages = trait_judge_messages(item.prompt, reply["text"], item.trait_a, item.trait_b)
        meta = {"player": player, "item": item.id, **_item_meta(item)}
        jobs.append(SampleJob(f"{player}:{item.id}", messages, meta))
    return jobs


def _item_meta(item: RevealedItem) -> dict[str, str]:
    return {"trait_a": item.trait_a, "trait_b": item.trait_b, "condition": item.condition}


def parse_judgements(rows: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Judge rows with the parsed verdict (`choice`, `status`) added."""
    out = []
    for row in rows:
        verdict = parse_verdict(row["text"], [row["trait_a"], row["trait_b"]])
        out.append({**row, "choice": verdict.choice, "status": verdict.status})
    return out


def outcomes(judged: Sequence[Mapping[str, Any]]) -> list[Outcome]:
    """Accepted verdicts as trait-vs-trait outcomes (the chosen trait wins)."""
    return [
        Outcome(row["trait_a"], row["trait_b"], 1.0 if row["choice"] == row["trait_a"] else 0.0)
        for row in judged
        if row["status"] == "ok"
    ]


def persona_traits(text: str, traits: Sequence[str]) -> list[str]:
    """Traits from the list that the constitution's text names as whole words (a heuristic; override in config)."""
    lowered = text.lower()
    return [t for t in traits if re.search(rf"\b{re.escape(t)}\b", lowered)]


def ranks(table: Sequence[PlayerRating]) -> dict[str, int]:
    """1-based rank of each trait (table is best first)."""
    return {r.player: i for i, r in enumerate(table, 1)}


def rank_shift(base: Sequence[PlayerRating], tuned: Sequence[PlayerRating], traits: Sequence[str]) -> dict[str, Any]:
    """Rank of each of `traits` under both models and how far it moved up (positive = higher under tuned)."""
    base_ranks, tuned_ranks = ranks(base), ranks(tuned)
    rows = {t: (base_ranks[t], tuned_ranks[t], base_ranks[t] - tuned_ranks[t]) for t in traits if t in base_ranks}
    mean = sum(r[2] for r in rows.values()) / len(rows) if rows else float("nan")
    return {"traits": rows, "mean_shift": mean}


def spearman(a: Mapping[str, float], b: Mapping[str, float]) -> float:
    """Spearman correlation of two trait -> rating maps over their common traits (NaN if undefined)."""
    common = sorted(set(a) & set(b))
    if len(common) < 3:
        return float("nan")
    if len({a[t] for t in common}) < 2 or len({b[t] for t in common}) < 2:
        return float("nan")  # a constant side (e.g. no accepted verdicts): the correlation is undefined
    rho = spearmanr([a[t] for t in common], [b[t] for t in common]).statistic
    return float(rho)
