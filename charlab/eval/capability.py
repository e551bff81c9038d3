"""Capability retention: base vs tuned on the same benchmark items, tuned - base with its paired standard error.

    row = compare(base_values, tuned_values)       # per-item scores keyed alike ({"arc_challenge:17": 1.0, ...})
    row.difference, row.se, row.unpaired_se
    capability_reading(stage_summary)               # kept / lost (and on which task), for the pipeline's verdict

Why the paired statistic: both models answer the *same* items, and most of the spread of per-item scores is item
difficulty, which the two models share. The standard error of the mean per-item difference (tuned - base, item
by item) removes that shared part, so it measures exactly the uncertainty of the number we report; the unpaired
sqrt(SE_base^2 + SE_tuned^2) counts item difficulty twice and, for a lightly tuned model, is several times larger,
so it would excuse real losses. A model against itself gives exactly 0 with SE 0 (a negative control that any
mismatch of items between the two runs would break). A task is "worse" when tuned - base < -threshold x paired SE
(threshold 2: about a 2.3% one-sided false alarm per task if nothing changed; with five tasks, ~11% that one
of them fires by chance).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any, Optional

import numpy as np


@dataclass(frozen=True)
class TaskComparison:
    """One task's base and tuned scores (means over the same items) and their paired difference."""

    task: str
    metric: str
    shots: Optional[int]
    n: int  # items both models were scored on
    base: float
    base_se: float
    tuned: float
    tuned_se: float
    difference: float  # tuned - base
    se: float  # paired: SE of the mean per-item difference
    unpaired_se: float  # sqrt(base_se^2 + tuned_se^2), for comparison
    changed: int  # items whose score differs between the models

    @property
    def z(self) -> float:
        """The difference in paired standard errors (0 when both are 0; +-inf for a constant non-zero change)."""
        if self.se > 0:
            return self.difference / self.se
        if math.isnan(self.se):
            return float("nan")
        return 0.0 if self.difference == 0 else math.copysign(float("inf"), self.difference)


def mean_se(values: Sequence[float]) -> tuple[float, float]:
    """Mean and its standard error (sample SD / sqrt(n); lm-eval's `mean_stderr`); NaN SE below two items."""
    array = np.asarray(values, dtype=float)
    if array.size == 0:
        return float("nan"), float("nan")
    se = float(array.std(ddof=1) / math.sqrt(array.size)) if array.size > 1 else float("nan")
    return float(array.mean()), se


def compare(
    base: Mapping[str, float], tuned: Mapping[str, float], task: str = "", metric: str = "acc",
    shots: Optional[int] = None,
) -> TaskComparison:  # fmt: skip
    """Base vs tuned on the items both were scored on (keys: `<task>:<doc id>`)."""
    keys = sorted(set(base) & set(tuned))
    b = np.asarray([base[k] for k in keys], dtype=float)
    t = np.asarray([tuned[k] for k in keys], dtype=float)
    base_mean, base_se = mean_se(b)
    tuned_mean, tuned_se = mean_se(t)
    difference, se = mean_se(t - b)
    return TaskComparison(
        task, metric, shots, len(keys), base_mean, base_se, tuned_mean, tuned_se, difference, se,
        math.hypot(base_se, tuned_se), int(np.sum(b != t)),
    )  # fmt: skip


def comparison_summary(rows: Sequence[TaskComparison]) -> dict[str, Any]:
    """`{task: {...}}` for the stage's summary (what `capability_reading` reads back)."""
    return {r.task: asdict(r) | {"z": r.z} for r in rows}


@dataclass(frozen=True)
class CapabilityReading:
    """Whether the tuned model kept the base model's capability: None when it was not measured."""

    kept: Optional[bool]
    line: str
    worse: tuple[str, ...] = ()


def _is_worse(row: Mapping[str, Any], threshold: float) -> bool:
    difference, se = row.get("difference"), row.get("se")
    if difference is None or (isinstance(difference, float) and math.isnan(difference)):
        return False
    if se is None or (isinstance(se, float) and math.isnan(se)):
        return False  # too few items to tell; the line says so
    return difference < -threshold * se if se > 0 else difference < 0


def capability_reading(summary: Optional[Mapping[str, Any]]) -> CapabilityReading:
    """The capability stage's summary read as one verdict: "kept" unless some task's tuned - base falls below
    -`threshold_se` paired standard errors (see the module docstring for why the paired statistic)."""
    tasks = (summary or {}).get("tasks") or {}
    if not tasks:
        return CapabilityReading(None, "capability: not measured")
    compared = {name: row for name, row in tasks.items() if row.get("tuned") is not None}
    if not compared:
        return CapabilityReading(None, "capability: base only (no tuned model)")
    threshold = float((summary or {}).get("threshold_se", 2.0))
    worse = tuple(name for name, row in compared.items() if _is_worse(row, threshold))
    if worse:
        parts = [
            f"{n} {compared[n]['tuned']:.3f} vs {compared[n]['base']:.3f} "
            f"({compared[n]['difference']:+.3f}, SE {compared[n]['se']:.3f})"
            for n in worse
        ]
        return CapabilityReading(False, "capability lost: " + "; ".join(parts), worse)
    undecided = [n for n, row in compared.items() if row.get("se") is None or math.isnan(float(row["se"]))]
    note = f" ({', '.join(undecided)}: too few items to tell)" if undecided else ""
    return CapabilityReading(
        True,
        f"capability kept: tuned is not below base by more than {threshold:g} paired SE on any of "
        f"{len(compared)} task(s){note}",
    )


COLUMNS = ["task", "metric", "shots", "items", "base", "tuned", "tuned − base", "paired SE", "z", "unpaired SE",
           "items changed"]  # fmt: skip


def scores_table(summary: Mapping[str, Any]) -> str:
    """The capability stage's per-task numbers as a Markdown table (its report and the pipeline's)."""
    from charlab.eval.report import table

    rows = [
        [task, r.get("metric"), r.get("shots"), r.get("n"), r.get("base"), r.get("tuned"), r.get("difference"),
         r.get("se"), r.get("z"), r.get("unpaired_se"), r.get("changed")]
        for task, r in (summary.get("tasks") or {}).items()
    ]  # fmt: skip
    return table(COLUMNS, rows)


def how_to_read(summary: Mapping[str, Any]) -> str:
    """One line per number of `scores_table`."""
    threshold = float(summary.get("threshold_se", 2.0))
    return (
        "- **base / tuned**: the mean per-item score on the same items for both models (`metric`: lm-eval's; acc: "
        "the right choice is the most likely; acc_norm: the same with log-likelihood per character of the choice).\n"
        "- **tuned − base**: mean per-item difference; **paired SE**: its standard error over items (item "
        f"difficulty cancels); **z** = difference / paired SE; a task is worse when z < −{threshold:g}.\n"
        "- **unpaired SE**: √(SE_base² + SE_tuned²), the SE if the items were not shared (for comparison: it "
        "overstates the uncertainty of the difference).\n"
        "- **items changed**: items whose score differs between the models (0: the same answers throughout)."
    )
