"""The one verdict line: is the tuned model more in persona than base, *and* does it still answer? By how much,
and which instruments agree? Built from the evaluation steps' summaries (`meta.json`), so the pipeline report, the
Studio and any finished run directory give the same line.

Each instrument gives one reading of tuned vs base with a CI: the classifier (in-persona rate difference,
no difference = 0), the head-to-head judge (tuned's persona win rate against base, chance = 0.5) and revealed
preferences (the persona traits' rank shift, none = 0). A reading counts only when the instrument had enough
usable verdicts (`eval.min_usable`) and did not fail its own positive control (base + constitution vs base,
where the run has it); otherwise the line says why it is left out. The answer is "more" when a counted
instrument's CI lies above its null and none lies below ("less" the other way round, "mixed" when both happen,
"no clear difference" when every counted CI covers the null); the line names the instruments that agree. A judge
that measures with the statistic that picked the training data (the likelihood judge after best-of-N by persona
contrast) is named and left out: training optimised it.

The second question has its own readings (`ANSWERING`: step name -> readings; the coherence step's loop rate and
relevance, and any further instrument such as capability retention registered beside it), each a paired CI of
tuned minus base read against "not worse": "in character and coherent" only when tuned is more in persona and no
counted check is worse than base beyond its CI; otherwise the line names what failed ("in persona, but 11 of 20
replies loop; relevance 0.44 vs 0.98").

    text = verdict_text({"classifier": clf_summary, "coherence": coherence_summary, "elo": elo_summary}, 10)
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Optional

from charlab.eval.bootstrap import Estimate
from charlab.eval.report import fmt

MORE, LESS, SAME, TOO_FEW, BLIND, ABSENT = "more", "less", "no clear difference", "too few", "blind", "absent"
TRAINED_TO = "trained to"  # measures with the statistic that picked the training data: left out
WORSE, KEPT = "worse", "not worse"  # the second question's statuses


@dataclass
class Reading:
    """One instrument's reading of tuned vs base."""

    instrument: str
    status: str  # more | less | no clear difference | too few | blind | absent
    effect: Optional[Estimate] = None
    null: float = 0.0
    text: str = ""  # what the number is, for the line
    short: str = ""  # the failure in a few words ("11 of 20 replies loop"), for the head of the line

    @property
    def counts(self) -> bool:
        return self.status in (MORE, LESS, SAME, WORSE, KEPT)


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


def _unusable(
    instrument: str, effect: Estimate, control: Optional[Estimate], null: float, min_usable: int, text: str, unit: str
) -> Optional[Reading]:
    """The reading of a persona instrument that cannot count: too few `unit`s, or a failed positive control (base +
    constitution not above `null`; shown signed when the null is 0); None when it counts."""
    if effect.n < min_usable:
        return Reading(instrument, TOO_FEW, effect, null, f"{text}: too few {unit} ({effect.n} < {min_usable})")
    if control is not None and not (control.excludes(null) and control.value > null):
        signed = null == 0.0
        shown = _signed(control.value) if signed else fmt(control.value, 2)
        return Reading(
            instrument, BLIND, effect, null,
            f"{text}: failed its positive control (base + constitution vs base {shown}, "
            f"{_ci(control, signed=signed)})",
        )  # fmt: skip
    return None


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
    unusable = _unusable("classifier", effect, control, 0.0, min_usable, text, "prompts")
    return unusable or Reading("classifier", _direction(effect, 0.0), effect, 0.0, text)


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
    unusable = _unusable("judge", effect, control, 0.5, min_usable, text, "usable matches")
    if unusable:
        return unusable
    if summary.get("selection_overlap"):
        return Reading("judge", TRAINED_TO, effect, 0.5, f"{text}: left out, {summary['selection_overlap']}")
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
    games = int(comparison.get("tracked_games", effect.n))  # older runs: usable trials
    text = (
        f"persona traits' rank shift {_signed(effect.value, 1)} ({_ci(effect, 1, signed=True)}, {condition}, "
        f"{effect.n} usable trials, {games} of them games of the persona's traits; verdicts: {how})"
    )
    if games < min_usable:
        return Reading(
            "revealed preferences", TOO_FEW, effect, 0.0,
            f"{text}: too few games of the persona's traits ({games} < {min_usable})",
        )  # fmt: skip
    return Reading("revealed preferences", _direction(effect, 0.0), effect, 0.0, text)


def _checked(
    instrument: str, effect: Estimate, worse_if_above: bool, min_usable: int, text: str, short: str
) -> Reading:
    """A second-question reading: worse when tuned - base lies beyond 0 in the bad direction (CI excluding 0)."""
    if effect.n < min_usable:
        return Reading(instrument, TOO_FEW, effect, 0.0, f"{text}: too few prompts ({effect.n} < {min_usable})", short)
    bad = effect.excludes(0.0) and (effect.value > 0 if worse_if_above else effect.value < 0)
    return Reading(instrument, WORSE if bad else KEPT, effect, 0.0, text, short)


def coherence_readings(summary: Mapping[str, Any], min_usable: int) -> list[Reading]:
    """Tuned minus base loop rate and relevance (LM and MiniLM prompt identification), from the coherence step."""
    out = []
    loops = _estimate((summary.get("loop") or {}).get("tuned - base"))
    if loops is not None:
        counts = summary.get("loop_counts") or {}
        (kt, nt), (kb, nb) = counts.get("tuned", [0, 0]), counts.get("base", [0, 0])
        text = (
            f"{kt} of {nt} tuned replies loop or say almost nothing vs {kb} of {nb} for base (difference "
            f"{_signed(loops.value)}, {_ci(loops, signed=True)}, {loops.n} prompts)"
        )
        out.append(_checked("loops", loops, True, min_usable, text, f"{kt} of {nt} replies loop"))
    k = (summary.get("instruments") or {}).get("distractors", "K")
    picked = f"own prompt picked out of {int(k) + 1}" if str(k).isdigit() else "own prompt picked out"
    for key, label, how in (("relevance", "relevance", "by the language model"), ("minilm_relevance",
                            "MiniLM relevance", "by MiniLM")):  # fmt: skip
        rates = summary.get(key) or {}
        effect, tuned, base = (_estimate(rates.get(name)) for name in ("tuned - base", "tuned", "base"))
        if effect is None or tuned is None or base is None:
            continue
        text = (
            f"{label} {fmt(tuned.value, 2)} vs {fmt(base.value, 2)} for base ({picked} {how}; difference "
            f"{_signed(effect.value)}, {_ci(effect, signed=True)})"
        )
        short = f"{label} {fmt(tuned.value, 2)} vs {fmt(base.value, 2)}"
        out.append(_checked(label, effect, False, min_usable, text, short))
    return out


def capability_readings(summary: Mapping[str, Any], min_usable: int) -> list[Reading]:
    """Tuned minus base per benchmark task (the capability step): worse when it lies more than `threshold_se`
    paired standard errors below 0 (the interval below is difference +- threshold x SE)."""
    threshold = float(summary.get("threshold_se", 2.0))
    out = []
    for task, row in (summary.get("tasks") or {}).items():
        diff, se, tuned, base = (row.get(k) for k in ("difference", "se", "tuned", "base"))
        if diff is None or tuned is None or se is None or math.isnan(float(se)):
            continue
        effect = Estimate(float(diff), float(diff) - threshold * float(se), float(diff) + threshold * float(se),
                          int(row.get("n") or 0))  # fmt: skip
        text = (
            f"{task} {fmt(tuned, 3)} vs {fmt(base, 3)} for base (difference {_signed(effect.value, 3)}, paired SE "
            f"{fmt(se, 3)}, {effect.n} items; worse below -{threshold:g} SE)"
        )
        out.append(_checked(f"capability ({task})", effect, False, min_usable, text, f"{task} {fmt(tuned, 3)} vs "
                            f"{fmt(base, 3)}"))  # fmt: skip
    return out


# The verdict's second question, "does tuned still answer?": evaluation step -> its readings of tuned vs base,
# each with status KEPT / WORSE / TOO_FEW (`_checked` reads a paired difference that way).
ANSWERING: dict[str, Callable[[Mapping[str, Any], int], list[Reading]]] = {
    "coherence": coherence_readings,
    "capability": capability_readings,
}


def readings_from_summaries(
    classifier: Optional[Mapping[str, Any]],
    elo: Optional[Mapping[str, Any]],
    revealed: Optional[Mapping[str, Any]],
    min_usable: int = 10,
) -> list[Reading]:
    """The persona readings of the instruments whose summaries are given (None: that step did not run)."""
    readings = []
    if classifier:
        readings.append(classifier_reading(classifier, min_usable))
    if elo:
        readings.append(judge_reading(elo, min_usable))
    if revealed:
        readings.append(revealed_reading(revealed, min_usable))
    return readings


def answering_readings(summaries: Mapping[str, Mapping[str, Any]], min_usable: int = 10) -> Optional[list[Reading]]:
    """The second question's readings of the steps that ran (None: none of them ran, it was not asked)."""
    asked = [step for step in ANSWERING if summaries.get(step)]
    if not asked:
        return None
    return [r for step in asked for r in ANSWERING[step](summaries[step], min_usable)]


def _persona_head(counted: list[Reading]) -> tuple[str, str]:
    directions = {r.status for r in counted}
    if not counted:
        return "", (
            "**Verdict: cannot tell** whether tuned is more in persona than base (no instrument has a usable reading)."
        )
    if MORE in directions and LESS in directions:
        return "", "**Verdict: mixed** (the instruments disagree)."
    if MORE in directions:
        return MORE, "**Verdict: tuned is more in persona than base.**"
    if LESS in directions:
        return LESS, "**Verdict: tuned is less in persona than base.**"
    return SAME, "**Verdict: no clear difference between tuned and base** (every CI covers no difference)."


def _answering_head(checks: list[Reading]) -> str:
    """The head of the line when tuned is more in persona: in character and coherent, or what failed."""
    capability = [c for c in checks if c.instrument.startswith("capability")]
    coherence = [c for c in checks if c not in capability]
    failed = [
        f"{what}: {'; '.join(c.short for c in group if c.status == WORSE)}"
        for what, group in (("not coherent", coherence), ("capability lost", capability))
        if any(c.status == WORSE for c in group)
    ]
    if failed:
        return f"**Verdict: in persona, but {'; '.join(failed)}.**"
    kept = {c.instrument for c in coherence if c.status == KEPT}
    if "loops" in kept and kept & {"relevance", "MiniLM relevance"}:
        scores = " and its benchmark scores" if any(c.status == KEPT for c in capability) else ""
        return (
            "**Verdict: tuned is in character and coherent** (more in persona than base; its loop rate and relevance"
            f"{scores} are not worse than base's beyond their CIs)."
        )
    return (
        "**Verdict: tuned is more in persona than base; whether it still answers cannot be told** (too few readings)."
    )


def verdict_line(readings: list[Reading], checks: Optional[list[Reading]] = None) -> str:
    """One line: the overall answer, each instrument's number and CI (or why it is left out), who agrees; with
    `checks` (the second question's readings) the answer needs both."""
    counted = [r for r in readings if r.counts]
    direction, head = _persona_head(counted)
    if direction == MORE and checks is not None:
        head = _answering_head(checks)
    parts = [head]
    labels = {MORE: "more in persona", LESS: "less in persona", SAME: "no clear difference", WORSE: "worse than base",
              KEPT: "not worse than base"}  # fmt: skip
    for r in [*readings, *(checks or [])]:
        label = labels.get(r.status)
        parts.append(f"{r.instrument[0].upper() + r.instrument[1:]}: {r.text}" + (f" → {label}." if label else "."))
    agree = [r.instrument for r in counted if r.status == MORE]
    if counted:
        parts.append(f"Agreeing that tuned is more in persona: {', '.join(agree) if agree else 'none'}.")
    return " ".join(parts)


def notes(summaries: Mapping[str, Mapping[str, Any]]) -> list[str]:
    """What a reader must know about the instruments: what the classifier was trained on, and which one measures
    the statistic that picked the training data."""
    out = []
    clf = summaries.get("classifier") or {}
    if clf.get("trained_on"):
        out.append(f"The persona classifier was trained on {clf['trained_on']}.")
    elo = summaries.get("elo") or {}
    if elo.get("selection_overlap"):
        out.append(f"A training-data selection statistic used as an instrument: {elo['selection_overlap']}; it is "
                   "left out of the verdict.")  # fmt: skip
    return out


def verdict_text(summaries: Mapping[str, Mapping[str, Any]], min_usable: int = 10) -> str:
    """The verdict line, the paper's headline comparison (tuned vs base + constitution, in character and
    coherent) where the coherence step ran, and the notes: what report.md and the Studio open with."""
    from charlab.eval.coherence_report import headline_text

    readings = readings_from_summaries(
        summaries.get("classifier"), summaries.get("elo"), summaries.get("revealed"), min_usable
    )
    parts = [verdict_line(readings, answering_readings(summaries, min_usable))]
    if summaries.get("coherence"):
        text = headline_text(summaries["coherence"])
        parts.append(f"**Headline comparison:** {text[0].upper() + text[1:]}.")
    parts += notes(summaries)
    return "\n\n".join(parts)
