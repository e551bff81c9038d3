"""What picked and shaped the training data, read from the pairs files, so a report can say when an instrument
measures with the statistic training was selected by (it was trained to that instrument).

Distillation may keep the best of N teacher replies by a score (`best_of.scorer` in each pair: `contrast:<model>`,
the teacher's persona log-likelihood gain, or `judge:<model>`, the judge's persona verdict) and may open every
teacher reply with an answer prefill (`sampling.teacher.prefill`, kept in `chosen`). The `likelihood` judge
format scores replies with the same persona contrast; the `pairwise` format asks a judge the same kind of
question. A classifier trained on prefilled texts learns the prefill (charlab strips it, see `classifier_data`).

    selection = training_selection([Path("pairs.jsonl")])
    selection.overlap("likelihood")   # "the likelihood judge scores with the persona contrast that picked ..."
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from charlab.data.jsonl import iter_jsonl

# a judge format -> the best-of scorer kind that selects with the same statistic
SAME_STATISTIC = {"likelihood": "contrast", "pairwise": "judge"}


def answer_prefill(row: dict) -> str:
    """The answer prefill a pair's chosen reply opens with ("" when none: a reasoning prefill is stripped)."""
    prefill = str(((row.get("sampling") or {}).get("teacher") or {}).get("prefill") or "")
    return prefill if prefill.strip() and str(row.get("chosen", "")).startswith(prefill) else ""


@dataclass
class TrainingSelection:
    """The best-of-N scorer and the answer prefill of the training pairs (empty when none)."""

    best_of: int = 1
    scorer: str = ""  # e.g. contrast:smollm2-135m
    prefill: str = ""
    prefilled: int = 0  # chosen replies that open with it
    pairs: int = 0

    def overlap(self, judge_format: str) -> Optional[str]:
        """Why an instrument in `judge_format` measures what picked the training data, or None."""
        kind = self.scorer.partition(":")[0]
        if self.best_of < 2 or SAME_STATISTIC.get(judge_format) != kind:
            return None
        return (
            f"the {judge_format} judge measures with the statistic that picked the training data "
            f"(distillation kept the best of {self.best_of} teacher replies by {self.scorer}): training optimised it"
        )

    def as_dict(self) -> dict:
        return {"best_of": self.best_of, "scorer": self.scorer, "prefill": self.prefill,
                "prefilled": self.prefilled, "pairs": self.pairs}  # fmt: skip


def training_selection(pair_files: Sequence[Path]) -> TrainingSelection:
    """The selection recorded in pairs files (`DpoExample` rows); files without pairs count nothing."""
    found = TrainingSelection()
    for path in pair_files:
        if not Path(path).is_file():
            continue
        for row in iter_jsonl(path):
            if "chosen" not in row:
                continue
            found.pairs += 1
            best = row.get("best_of") or {}
            if int(best.get("n") or 1) > found.best_of:
                found.best_of, found.scorer = int(best["n"]), str(best.get("scorer") or "")
            prefill = answer_prefill(row)
            if prefill:
                found.prefill = found.prefill or prefill
                found.prefilled += 1
    return found
