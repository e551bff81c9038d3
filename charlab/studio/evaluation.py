"""What the Studio shows of an evaluation: the verdict line and the in-persona rates, for a pipeline run (from its
step folders) or a single classifier / coherence / elo / revealed run, as the pipeline's `report.md` opens."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

from charlab.eval.classifier_report import PLAYER_TEXT
from charlab.eval.report import ci
from charlab.eval.verdict import verdict_text
from charlab.eval.verdict_of import STEPS, summaries_of
from charlab.studio.runs import RunInfo


@dataclass
class EvaluationView:
    """The verdict (line, headline comparison, notes) and one row per model: in-persona rate, its CI, prompts."""

    verdict: str
    rates: list[dict[str, Any]]


def evaluation_of(run: RunInfo) -> Optional[EvaluationView]:
    """The run's verdict and in-persona rates; None for runs that evaluate nothing."""
    if run.stage != "pipeline" and run.stage not in STEPS:
        return None
    summaries = summaries_of([run.dir]) if run.dir.is_dir() else {}
    if not summaries:
        return None
    min_usable = int((run.config.get("eval") or {}).get("min_usable") or 10)
    rates = [
        {"model": PLAYER_TEXT.get(name, name), "in-persona rate": value.get("value"),
         "95% CI": ci(value.get("low"), value.get("high")), "prompts": value.get("n")}
        for name, value in ((summaries.get("classifier") or {}).get("in_persona") or {}).items()
        if " - " not in name
    ]  # fmt: skip
    return EvaluationView(verdict_text(summaries, min_usable), rates)
