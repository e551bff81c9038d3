"""One markdown row per pipeline run of a sweep: its searched settings and what its coherence step measured.

    python scripts/sweep_table.py outputs/multirun/<day>/<time>          # a Hydra multirun folder
    python scripts/sweep_table.py outputs/pirate/pipeline/<run> ...      # or any pipeline run directories

Columns: the run's `demo.*` overrides (from its .hydra/overrides.yaml), then for tuned: in character (classifier),
looping replies, relevance (own prompt picked out of K + 1 by the language model, and by MiniLM), in character
and coherent (the sweep's objective), and the headline win rate against base + constitution, each with its 95% CI.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any, Optional

import yaml

COLUMNS = (
    ("in_character", "in character"),
    ("loop", "loops"),
    ("relevance", "relevance (LM)"),
    ("minilm_relevance", "relevance (MiniLM)"),
    ("in_character_coherent", "in character and coherent"),
)


def coherence_summary(run: Path) -> Optional[dict[str, Any]]:
    """The summary of the run's coherence step (its folder `NN_coherence`), or None when it did not finish."""
    for step in sorted(run.glob("*_coherence")):
        meta = json.loads((step / "meta.json").read_text()) if (step / "meta.json").is_file() else {}
        if meta.get("status") == "completed":
            return meta["summary"]
    return None


def searched(run: Path) -> dict[str, str]:
    """The run's `demo.*` command-line overrides (what the sweeper chose)."""
    path = run / ".hydra" / "overrides.yaml"
    items = yaml.safe_load(path.read_text()) if path.is_file() else []
    return dict(item.split("=", 1) for item in items if item.startswith("demo."))


def cell(estimate: Optional[dict[str, Any]]) -> str:
    if not estimate:
        return "-"
    return f"{estimate['value']:.2f} ({estimate['low']:.2f}-{estimate['high']:.2f})"


def table(runs: list[Path]) -> str:
    """The markdown table, best objective first."""
    rows = []
    for run in runs:
        summary = coherence_summary(run)
        if summary is None:
            continue
        rows.append((run, searched(run), summary))
    keys = sorted({key for _, knobs, _ in rows for key in knobs})
    rows.sort(key=lambda r: -((r[2].get("in_character_coherent") or {}).get("tuned") or {}).get("value", -1))
    head = ["run", *keys, *(label for _, label in COLUMNS), "win rate vs base + constitution"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for run, knobs, summary in rows:
        values = [cell((summary.get(measure) or {}).get("tuned")) for measure, _ in COLUMNS]
        values.append(cell((summary.get("headline") or {}).get("estimate")))
        lines.append("| " + " | ".join([run.name, *(knobs.get(k, "-") for k in keys), *values]) + " |")
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    if not argv:
        print("usage: python scripts/sweep_table.py <multirun folder or pipeline run directories>", file=sys.stderr)
        return 2
    runs: list[Path] = []
    for arg in argv:
        folder = Path(arg)
        if not folder.is_dir():
            print(f"{arg}: not a directory", file=sys.stderr)
            return 2
        runs += [folder] if list(folder.glob("*_coherence")) else sorted(p for p in folder.iterdir() if p.is_dir())
    print(table(runs))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
