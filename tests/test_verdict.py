"""The report's verdict line: each instrument's reading, when it counts, and what the line says."""

from __future__ import annotations

import pytest

from charlab.eval.verdict import (
    BLIND,
    LESS,
    MORE,
    SAME,
    TOO_FEW,
    classifier_reading,
    judge_reading,
    readings_from_summaries,
    revealed_reading,
    verdict_line,
)

pytestmark = pytest.mark.unit


def est(value: float, low: float, high: float, n: int = 30) -> dict:
    return {"value": value, "low": low, "high": high, "n": n}


def classifier(diff: dict, control: dict | None = None) -> dict:
    rates = {"base": est(0.1, 0.0, 0.2), "tuned": est(0.1 + diff["value"], 0.4, 0.8), "tuned - base": diff}
    if control is not None:
        rates["base_persona - base"] = control
    return {"in_persona": rates}


def judge(rate: dict, control: dict | None = None) -> dict:
    vs = {"tuned": rate} | ({"base_persona": control} if control else {})
    return {"vs_base": vs, "verdict_modes": {"logprob": 60, "top_logprobs": 0, "text": 0, "unparseable": 0}}


def revealed(shift: dict, target: str = "tuned") -> dict:
    return {
        "headline_condition": "preference",
        "reference": "base",
        "target": target,
        "comparisons": {"preference": {"rank_shift": shift}},
    }


def test_each_instrument_reads_its_ci_against_its_own_null() -> None:
    """Injected bugs caught: comparing the judge's win rate with 0 instead of 0.5; a CI touching the null
    counted as a difference."""
    assert classifier_reading(classifier(est(0.5, 0.3, 0.7)), 10).status == MORE
    assert classifier_reading(classifier(est(-0.3, -0.5, -0.1)), 10).status == LESS
    assert classifier_reading(classifier(est(0.1, -0.05, 0.25)), 10).status == SAME
    assert classifier_reading(classifier(est(0.1, 0.0, 0.25)), 10).status == SAME  # touching 0 is not excluding it
    assert judge_reading(judge(est(0.8, 0.65, 0.9)), 10).status == MORE
    assert judge_reading(judge(est(0.3, 0.2, 0.45)), 10).status == LESS
    assert judge_reading(judge(est(0.6, 0.45, 0.75)), 10).status == SAME
    assert revealed_reading(revealed(est(12.0, 3.0, 20.0)), 10).status == MORE
    assert revealed_reading(revealed(est(12.0, 3.0, 20.0), target="base_persona"), 10).status == "absent"


def test_too_few_usable_verdicts_and_a_failed_positive_control_are_left_out() -> None:
    assert classifier_reading(classifier(est(0.5, 0.3, 0.7, n=6)), 10).status == TOO_FEW
    assert judge_reading(judge(est(0.9, 0.7, 1.0, n=4)), 10).status == TOO_FEW
    blind = classifier_reading(classifier(est(0.5, 0.3, 0.7), control=est(0.05, -0.1, 0.2)), 10)
    assert blind.status == BLIND
    assert blind.text.endswith("failed its positive control (base + constitution vs base +0.05, 95% CI -0.10 – +0.20)")
    assert "too few prompts (6 < 10)" in classifier_reading(classifier(est(0.5, 0.3, 0.7, n=6)), 10).text
    judge_blind = judge_reading(judge(est(0.8, 0.7, 0.9), control=est(0.55, 0.4, 0.7)), 10)
    assert judge_blind.status == BLIND and judge_blind.null == 0.5
    assert judge_blind.text.endswith("positive control (base + constitution vs base 0.55, 95% CI 0.40 – 0.70)")
    assert "too few usable matches (4 < 10)" in judge_reading(judge(est(0.9, 0.7, 1.0, n=4)), 10).text
    assert judge_reading(judge(est(0.8, 0.7, 0.9), control=est(0.9, 0.8, 1.0)), 10).status == MORE
    # revealed preferences: 40 usable trials, but the persona's traits played only 3 games
    few_games = revealed(est(12.0, 3.0, 20.0, n=40))
    few_games["comparisons"]["preference"]["tracked_games"] = 3
    reading = revealed_reading(few_games, 10)
    assert reading.status == TOO_FEW and "too few games of the persona's traits (3 < 10)" in reading.text


def test_the_line_says_the_answer_the_numbers_and_who_agrees() -> None:
    readings = readings_from_summaries(
        classifier(est(0.52, 0.30, 0.71)), judge(est(0.78, 0.62, 0.91, n=32)), revealed(est(4.0, -2.0, 9.0))
    )
    line = verdict_line(readings)
    assert line.startswith("**Verdict: tuned is more in persona than base.**")
    assert "difference +0.52, 95% CI +0.30 – +0.71" in line and "0.78 of 32 matches" in line
    assert "60 logprob" in line and "Agreeing that tuned is more in persona: classifier, judge." in line
    mixed = verdict_line(readings_from_summaries(classifier(est(0.5, 0.3, 0.7)), judge(est(0.3, 0.2, 0.4)), None))
    assert mixed.startswith("**Verdict: mixed**")
    few = verdict_line(readings_from_summaries(classifier(est(0.5, 0.3, 0.7, n=4)), None, None))
    assert few.startswith("**Verdict: cannot tell**") and "too few prompts (4 < 10)" in few
    none = verdict_line(readings_from_summaries(classifier(est(0.0, -0.2, 0.2)), None, None))
    assert none.startswith("**Verdict: no clear difference")
