"""A Hydra callback that writes a sweep summary when a multirun ends.

Every job of `python -m charlab.train -m ...` has its own run directory (and W&B run); at the end this
collects each job's overrides, status and headline metric into `sweep_summary.json` and `sweep_summary.md`
in the sweep directory, best metric first, and prints where they are.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import yaml
from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from charlab.run import read_meta


def collect_jobs(sweep_dir: Path) -> list[dict[str, Any]]:
    """One row per job directory under `sweep_dir` (those with a `meta.json`)."""
    rows = []
    for meta_path in sorted(sweep_dir.glob("*/meta.json")):
        job_dir = meta_path.parent
        meta = read_meta(job_dir)
        overrides_path = job_dir / ".hydra" / "overrides.yaml"
        overrides = yaml.safe_load(overrides_path.read_text()) if overrides_path.is_file() else []
        rows.append(
            {
                "job": job_dir.name,
                "overrides": overrides or [],
                "status": meta.get("status"),
                "metric_name": meta.get("metric_name"),
                "metric": meta.get("metric"),
                "duration_s": meta.get("duration_s"),
            }
        )
    return rows


def _sort_key(row: dict[str, Any]) -> tuple[int, float]:
    metric = row.get("metric")
    valid = isinstance(metric, (int, float)) and not math.isnan(metric)
    return (0, -float(metric)) if valid else (1, 0.0)


def write_summary(sweep_dir: Path) -> Path:
    """Write `sweep_summary.json` and `.md` (best metric first) and return the markdown path."""
    rows = sorted(collect_jobs(sweep_dir), key=_sort_key)
    (sweep_dir / "sweep_summary.json").write_text(json.dumps(rows, indent=2) + "\n", encoding="utf-8")
    lines = ["# Sweep summary", "", "| job | overrides | status | metric | value |", "| --- | --- | --- | --- | --- |"]
    for row in rows:
        value = row["metric"] if row["metric"] is not None else ""
        lines.append(
            f"| {row['job']} | {' '.join(row['overrides'])} | {row['status']} | {row['metric_name'] or ''} | {value} |"
        )
    path = sweep_dir / "sweep_summary.md"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


class SweepSummaryCallback(Callback):
    """Writes the sweep summary at the end of every multirun."""

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        sweep_dir = Path(str(config.hydra.sweep.dir))
        if sweep_dir.is_dir():
            print(f"[charlab] sweep summary: {write_summary(sweep_dir)}")
