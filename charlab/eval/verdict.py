"""The one verdict line: did the tuned model become more in persona than base, by how much, and which instruments
agree? Built from the evaluation steps' summaries (`meta.json`), so the pipeline report, the Studio and any
finished run directory give the same line.

Each instrument gives one reading of tuned vs base with a CI: the classifier (in-persona rate difference,
no difference = 0), the head-to-head judge (tuned's persona win rate against base, chance = 0.5) and revealed
preferences (the persona traits' rank shift, none = 0). A reading counts only when the instrument had enough
usable verdicts (`eval.min_usable`) and did not fail its own positive control (base + constitution vs base,
where the run has it); otherwise the line says why it is left out. The answer is "more" when a counted
instrument's CI lies above its null and none lies below ("less" the other way round, "mixed" when both happen,
"no clear difference" when every counted CI covers the null); the line names the instruments that agree.

    readings = readings_from_summaries(classifier_summary, elo_summary, revealed_summary, min_usable=10)
    line = verdict_line(readings)
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Optional

from charlab.eval.bootstrap import Estimate
from charlab.eval.report import fmt

MORE, LESS, SAME, TOO_FEW, BLIND, ABSENT = "more", "less", "no clear difference", "too few", "blind", "absent"


@dataclass
class Reading:
    """One instrument's reading of tuned vs base."""

    instrument: str
    status: str  # more | less | no clear difference | too few | blind | absent
    effect: Optional[Estimate] = None
    null: float = 0.0
    text: str = ""  # what the number is, for the line

    @property
    def counts(self) -> bool:
        return self.status in (MORE, LESS, SAME)


def _estimate(data: Optional[Mapping[str, Any]]) -> Optional[Estimate]:
    if not data or data.get("value") is None:
        return None
    nan = float("nan")
    return Estimate(
        float(data["value"]),
        nan if data.get("low") is None else float(data["low"]),
        nan if data.get("high") is None else float(data["high"]),
        int(data.get("n") or 0),
    )


def _direction(effect: Estimate, null: float) -> str:
    if not effect.excludes(null):
        return SAME
    return MORE if effect.value > null else LESS


def _signed(value: float, digits: int = 2) -> str:
    return f"{value:+.{digits}f}"


def _ci(e: Estimate, digits: int = 2, signed: bool = False) -> str:
    f = (lambda v: _signed(v, digits)) if signed else (lambda v: fmt(v, digits))
    return f"95% CI {f(e.low)} – {f(e.high)}"


def classifier_reading(summary: Mapping[str, Any], min_usable: int) -> Reading:
    """Tuned minus base in-persona rate (classifier)."""
    rates = summary.get("in_persona") or {}
    effect, control = _estimate(rates.get("tuned - base")), _estimate(rates.get("base_persona - base"))
    if effect is None:
        return Reading("classifier", ABSENT, text="no tuned and base in-persona rates")
    tuned, base = _estimate(rates.get("tuned")), _estimate(rates.get("base"))
    text = (
        f"in-persona rate {fmt(tuned.value, 2) if tuned else '–'} vs {fmt(base.value, 2) if base else '–'} for base "
        f"(difference {_signed(effect.value)}, {_ci(effect, signed=True)}, {effect.n} held-out prompts)"
    )
    if effect.n < min_usable:
        return Reading("classifier", TOO_FEW, effect, 0.0, f"{text}: too few prompts ({effect.n} < {min_usable})")
    if control is not None and not (control.excludes(0.0) and control.value > 0):
        return Reading(
            "classifier", BLIND, effect, 0.0,
            f"{text}: failed its positive control (base + constitution vs base {_signed(control.value)}, "
            f"{_ci(control, signed=True)})",
        )  # fmt: skip
    return Reading("classifier", _direction(effect, 0.0), effect, 0.0, text)


def judge_reading(summary: Mapping[str, Any], min_usable: int) -> Reading:
    """Tuned's persona win rate against base (head-to-head judge)."""
    against = summary.get("vs_base") or {}
    effect, control = _estimate(against.get("tuned")), _estimate(against.get("base_persona"))
    if effect is None:
        return Reading("judge", ABSENT, text="no tuned vs base matches")
    modes = summary.get("verdict_modes") or {}
    how = ", ".join(f"{n} {m}" for m, n in modes.items() if n) or "no verdicts"
    text = (
        f"tuned preferred over base in {fmt(effect.value, 2)} of {effect.n} matches ({_ci(effect)}; chance 0.5; "
        f"{summary.get('judge_format', 'pairwise')} format; verdicts: {how})"
    )
    if effect.n < min_usable:
        return Reading("judge", TOO_FEW, effect, 0.5, f"{text}: too few usable matches ({effect.n} < {min_usable})")
    if control is not None and not (control.excludes(0.5) and control.value > 0.5):
        return Reading(
            "judge", BLIND, effect, 0.5,
            f"{text}: failed its positive control (base + constitution vs base {fmt(control.value, 2)}, "
            f"{_ci(control)})",
        )  # fmt: skip
    return Reading("judge", _direction(effect, 0.5), effect, 0.5, text)


def revealed_reading(summary: Mapping[str, Any], min_usable: int) -> Reading:
    """The persona traits' rank shift from base to tuned (revealed preferences)."""
    condition = summary.get("headline_condition")
    comparison = (summary.get("comparisons") or {}).get(condition) or {}
    effect = _estimate(comparison.get("rank_shift"))
    if effect is None or summary.get("reference") != "base" or summary.get("target") != "tuned":
        return Reading("revealed preferences", ABSENT, text="no base -> tuned rank shift")
    totals: dict[str, int] = {}
    for counts in (summary.get("verdict_modes") or {}).values():
        for mode, n in counts.items():
            totals[mode] = totals.get(mode, 0) + n
    how = ", ".join(f"{n} {m}" for m, n in totals.items() if n) or "no verdicts"
    text = (
        f"persona traits' rank shift {_signed(effect.value, 1)} ({_ci(effect, 1, signed=True)}, {condition}, "
        f"{effect.n} usable trials; verdicts: {how})"
    )
    if effect.n < min_usable:
        return Reading(
            "revealed preferences", TOO_FEW, effect, 0.0, f"{text}: too few usable trials ({effect.n} < {min_usable})"
        )
    return Reading("revealed preferences", _direction(effect, 0.0), effect, 0.0, text)


def readings_from_summaries(
    classifier: Optional[Mapping[str, Any]],
    elo: Optional[Mapping[str, Any]],
    revealed: Optional[Mapping[str, Any]],
    min_usable: int = 10,
) -> list[Reading]:
    """The readings of the instruments whose summaries are given (None: that step did not run)."""
    readings = []
    if classifier:
        readings.append(classifier_reading(classifier, min_usable))
    if elo:
        readings.append(judge_reading(elo, min_usable))
    if revealed:
        readings.append(revealed_reading(revealed, min_usable))
    return readings


def verdict_line(readings: list[Reading]) -> str:
    """One line: the overall answer, each instrument's number and CI (or why it is left out), who agrees."""
    counted = [r for r in readings if r.counts]
    directions = {r.status for r in counted}
    if not counted:
        head = (
            "**Verdict: cannot tell** whether tuned is more in persona than base (no instrument has a usable reading)."
        )
    elif MORE in directions and LESS in directions:
        head = "**Verdict: mixed** (the instruments disagree)."
    elif MORE in directions:
        head = "**Verdict: tuned is more in persona than base.**"
    elif LESS in directions:
        head = "**Verdict: tuned is less in persona than base.**"
    else:
        head = "**Verdict: no clear difference between tuned and base** (every CI covers no difference)."
    parts = [head]
    for r in readings:
        label = {MORE: "more in persona", LESS: "less in persona", SAME: "no clear difference"}.get(r.status)
        parts.append(f"{r.instrument[0].upper() + r.instrument[1:]}: {r.text}" + (f" → {label}." if label else "."))
    agree = [r.instrument for r in counted if r.status == MORE]
    if counted:
        parts.append(f"Agreeing that tuned is more in persona: {', '.join(agree) if agree else 'none'}.")
    return " ".join(parts)
