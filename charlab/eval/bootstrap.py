"""Percentile-bootstrap confidence intervals for the evaluation's rates and scores, resampling prompts.

Replies to the same held-out prompt are not independent across models (an easy prompt is easy for all), so
rates of several models are resampled *jointly* by prompt: the CI of a difference (tuned - base) then
reflects the paired design. Classifier scores are resampled by prompt too (several texts answer one prompt).

    rates = paired_rates({"base": [0, 1, 0], "tuned": [1, 1, 0]}, resamples=1000)
    rates["tuned"].value, rates["tuned"].low, rates["tuned - base"].low
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from charlab.eval.ratings import percentile_ci


@dataclass(frozen=True)
class Estimate:
    """A point estimate, its percentile-bootstrap CI and the number of units (prompts) behind it."""

    value: float
    low: float
    high: float
    n: int

    def excludes(self, value: float) -> bool:
        """Whether the CI lies entirely above or below `value` (False when undefined)."""
        return not math.isnan(self.low) and (self.low > value or self.high < value)

    def as_dict(self) -> dict[str, float]:
        return {"value": self.value, "low": self.low, "high": self.high, "n": self.n}


NAN = Estimate(float("nan"), float("nan"), float("nan"), 0)


def paired_rates(
    hits: Mapping[str, Sequence[float]],
    reference: str | None = None,
    resamples: int = 1000,
    level: float = 0.95,
    seed: int = 0,
) -> dict[str, Estimate]:
    """Mean of each model's per-prompt values (prompts aligned across models), and of each model minus
    `reference`, with CIs from resampling the prompts jointly. NaN entries (no reply) are left out of a mean."""
    names = list(hits)
    if not names:
        return {}
    values = np.asarray([np.asarray(hits[n], dtype=float) for n in names])  # models x prompts
    n_prompts = values.shape[1]
    if n_prompts == 0:
        return {n: NAN for n in names}
    rng = np.random.default_rng(seed + 5)
    picks = rng.integers(0, n_prompts, size=(max(1, resamples), n_prompts))
    with warnings.catch_warnings():  # an all-NaN column (no reply) is a legitimate NaN here
        warnings.simplefilter("ignore", category=RuntimeWarning)
        boot = np.nanmean(values[:, picks], axis=2)  # models x resamples
        point = np.nanmean(values, axis=1)
    out = {}
    for i, name in enumerate(names):
        low, high = percentile_ci(boot[i][~np.isnan(boot[i])], level) if np.any(~np.isnan(boot[i])) else (np.nan,) * 2
        out[name] = Estimate(float(point[i]), float(low), float(high), int(np.sum(~np.isnan(values[i]))))
    if reference in names:
        r = names.index(reference)
        for i, name in enumerate(names):
            if i == r:
                continue
            diff = boot[i] - boot[r]
            diff = diff[~np.isnan(diff)]
            low, high = percentile_ci(diff, level) if len(diff) else (np.nan, np.nan)
            both = int(np.sum(~np.isnan(values[i]) & ~np.isnan(values[r])))
            out[f"{name} - {reference}"] = Estimate(float(point[i] - point[r]), float(low), float(high), both)
    return out


def grouped_metric(
    metric: Callable[[np.ndarray], float],
    groups: Sequence[str],
    resamples: int = 1000,
    level: float = 0.95,
    seed: int = 0,
) -> Estimate:
    """`metric(indices)` on all rows, with a CI from resampling whole groups (e.g. all texts of one prompt)."""
    keys = sorted(set(groups))
    if not keys:
        return NAN
    members = {k: [] for k in keys}
    for i, g in enumerate(groups):
        members[g].append(i)
    rng = np.random.default_rng(seed + 6)
    samples = []
    for _ in range(max(1, resamples)):
        chosen = rng.integers(0, len(keys), size=len(keys))
        value = metric(np.asarray([i for k in chosen for i in members[keys[k]]], dtype=np.int64))
        if not math.isnan(value):
            samples.append(value)
    point = metric(np.arange(len(groups)))
    if not samples:
        return Estimate(point, float("nan"), float("nan"), len(keys))
    low, high = percentile_ci(np.asarray(samples), level)
    return Estimate(float(point), float(low), float(high), len(keys))
