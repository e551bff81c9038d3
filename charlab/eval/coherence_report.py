"""The coherence step's report sections and its one-line headline, from its summary and per-reply rows."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from charlab.eval.coherence import MEASURES
from charlab.eval.report import cell, ci, fmt, table

COLUMNS = ("loop", "relevance", "minilm_relevance", "minilm_cosine", "distinct_2", "in_character",
           "in_character_coherent")  # fmt: skip
LABELS = {"loop": "loops", "relevance": "relevance (LM)", "minilm_relevance": "relevance (MiniLM)",
          "minilm_cosine": "MiniLM cosine", "distinct_2": "distinct-2", "in_character": "in character",
          "in_character_coherent": "in character and coherent"}  # fmt: skip


def _value(entry: Mapping[str, Any] | None) -> str:
    if not entry or entry.get("value") is None:
        return "–"
    return f"{fmt(entry['value'], 2)} ({ci(entry.get('low'), entry.get('high'), 2)})"


def headline_text(summary: Mapping[str, Any]) -> str:
    """Tuned vs base + constitution on "in character and coherent", one line."""
    head = summary.get("headline") or {}
    estimate = head.get("estimate")
    if head.get("status") != "ok" or not estimate or estimate.get("value") is None:
        return f"tuned vs base + constitution, in character and coherent: not measured ({head.get('how', '')})"
    return (
        f"tuned vs base + constitution, in character and coherent: win rate {fmt(estimate['value'], 2)} "
        f"(95% CI {ci(estimate.get('low'), estimate.get('high'), 2)}, {estimate.get('n')} "
        f"{'matches' if head['how'].startswith('coherence judge') else 'prompts'}; chance 0.5; {head['how']})"
    )


def players_table(summary: Mapping[str, Any]) -> str:
    """One row per player: each measure's mean and CI (loops also as a count)."""
    rows = []
    for name in summary.get("players", []):
        count = (summary.get("loop_counts") or {}).get(name, [0, 0])
        row = [name]
        for measure in COLUMNS:
            text = _value((summary.get(measure) or {}).get(name))
            row.append(f"{count[0]} of {count[1]}: {text}" if measure == "loop" and text != "–" else text)
        rows.append(row)
    return table(["player", *(LABELS[m] for m in COLUMNS)], rows)


def differences_table(summary: Mapping[str, Any]) -> str:
    """Each player minus base, paired by prompt (a CI excluding 0: the players differ)."""
    rows = []
    for name in summary.get("players", []):
        key = f"{name} - base"
        if name == "base":
            continue
        rows.append([key, *(_value((summary.get(m) or {}).get(key)) for m in ("loop", "relevance", "minilm_relevance",
                                                                            "in_character_coherent"))])  # fmt: skip
    head = ["difference", "loops", "relevance (LM)", "relevance (MiniLM)", "in character and coherent"]
    return table(head, rows) if rows else "No base player to compare with."


def _judge_section(judged: Mapping[str, Any] | None) -> str:
    if not judged:
        return "Not asked (a local judge answers the paper's question by position; `stage.head_to_head=true` asks it)."
    rates = [[pair.replace("_vs_", " vs "), _value(v), (v or {}).get("n")] for pair, v in judged["win_rates"].items()]
    return (
        table(["player vs opponent", "win rate (95% CI)", "consistent verdicts"], rates)
        + f"\n\n{judged['pairs']} pairs judged in both orders: {judged['consistent']} consistent, "
        f"{judged['inconsistent']} disagreeing between orders (left out), {judged['unparseable']} unparseable. "
        f"Judge: {judged['how']}."
    )


def loop_samples(rows: Sequence[Mapping[str, Any]], replies: Mapping[str, Any], prompts: Sequence, n: int = 5) -> str:
    """Up to `n` looping replies per player, with the reason."""
    texts = dict(prompts)
    picked = [r for r in rows if r["loop"] is not None]
    by_player: dict[str, list] = {}
    for row in picked:
        by_player.setdefault(row["player"], []).append(row)
    lines = [
        [r["player"], cell(texts.get(r["prompt_id"], ""), 80), r["loop"], cell(replies[r["id"]].get("text", ""), 160)]
        for group in by_player.values()
        for r in group[:n]
    ]
    return table(["player", "prompt", "why", "reply"], lines) if lines else "No reply loops."


def coherence_sections(
    summary: Mapping[str, Any], rows: Sequence[Mapping[str, Any]], replies: Mapping[str, Any], prompts: Sequence
) -> list[tuple[str, str]]:
    """The step's `report.md` sections."""
    how = summary.get("instruments") or {}
    legend = "\n".join(f"- **{LABELS[m]}**: {MEASURES[m]}" for m in COLUMNS)
    setup = (
        f"{summary.get('prompts')} held-out prompts; relevance (LM): {how.get('relevance')}, own prompt vs "
        f"{how.get('distractors')} others (chance {_chance(how.get('distractors'))}); MiniLM: {how.get('minilm')}; "
        f"in character: {how.get('in_character')}. CIs: 95% percentile bootstrap over prompts."
    )
    return [
        ("Headline", f"**{headline_text(summary)}**"),
        ("Per player", players_table(summary) + "\n\n" + legend),
        ("Differences from base (paired by prompt)", differences_table(summary)),
        ("Coherence judge (the paper's question)", _judge_section(summary.get("coherence_judge"))),
        ("Replies that loop or say almost nothing", loop_samples(rows, replies, prompts)),
        ("Setup", setup),
    ]


def _chance(k: Any) -> str:
    try:
        return fmt(1.0 / (int(k) + 1), 2)
    except (TypeError, ValueError):
        return "–"
