"""What the Studio shows of an evaluation: the verdict line and the in-persona rates, for a pipeline run (from its
step folders) or a single classifier / elo / revealed run, the same line the pipeline's `report.md` opens with."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from charlab.eval.classifier_report import PLAYER_TEXT
from charlab.eval.report import ci
from charlab.eval.verdict import ANSWERING, verdict_text
from charlab.studio.runs import RunInfo, read_json

INSTRUMENTS = ("classifier", "elo", "revealed", *ANSWERING)


@dataclass
class EvaluationView:
    """The verdict (line, headline comparison, notes) and one row per model: in-persona rate, its CI, prompts."""

    verdict: str
    rates: list[dict[str, Any]]


def _step_summaries(directory: Path) -> dict[str, dict[str, Any]]:
    """The evaluation steps' summaries in a pipeline run directory (`NN_<step>/meta.json`; the last of each)."""
    found: dict[str, dict[str, Any]] = {}
    for folder in sorted(p for p in directory.iterdir() if p.is_dir()):
        step = folder.name.partition("_")[2]
        if step in INSTRUMENTS and folder.name[:2].isdigit():
            meta = read_json(folder / "meta.json")
            if meta.get("status") == "completed" and isinstance(meta.get("summary"), dict):
                found[step] = meta["summary"]
    return found


def evaluation_of(run: RunInfo) -> Optional[EvaluationView]:
    """The run's verdict and in-persona rates; None for runs that evaluate nothing."""
    if run.stage == "pipeline":
        summaries = _step_summaries(run.dir) if run.dir.is_dir() else {}
    elif run.stage in INSTRUMENTS and run.status == "completed":
        summaries = {run.stage: run.summary}
    else:
        return None
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
