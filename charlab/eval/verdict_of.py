"""The verdict of finished run directories, as the pipeline's report.md opens with it.

    python -m charlab.eval.verdict_of outputs/pirate/pipeline/<run>
    python -m charlab.eval.verdict_of <classifier run> <coherence run> <elo run> --min-usable 10

A pipeline run directory gives its evaluation steps' summaries (`NN_<step>/meta.json`); a single evaluation run
(classifier, coherence, revealed, elo) gives its own. Several directories combine (a later one replaces an
earlier one's step), so evaluations run one at a time, e.g. over a replies file (`stage.replies`), get the same
verdict, headline comparison and notes as a pipeline. Only completed runs count.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any, Optional

from charlab.eval.verdict import ANSWERING, verdict_text
from charlab.run import read_meta

STEPS = ("classifier", "elo", "revealed", *ANSWERING)


def _completed(directory: Path) -> Optional[dict[str, Any]]:
    meta = read_meta(directory)
    return meta if meta.get("status") == "completed" and isinstance(meta.get("summary"), dict) else None


def summaries_of(directories: Iterable[Path]) -> dict[str, dict[str, Any]]:
    """Evaluation step -> its summary, from pipeline run directories (their `NN_<step>` folders, the last of each)
    and single evaluation runs."""
    found: dict[str, dict[str, Any]] = {}
    for directory in map(Path, directories):
        own = _completed(directory)
        if own is not None and own.get("stage") in STEPS:
            found[own["stage"]] = own["summary"]
            continue
        for folder in sorted(p for p in directory.iterdir() if p.is_dir()) if directory.is_dir() else []:
            step = folder.name.partition("_")[2]
            meta = _completed(folder) if step in STEPS and folder.name[:2].isdigit() else None
            if meta is not None:
                found[step] = meta["summary"]
    return found


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m charlab.eval.verdict_of", description=__doc__.split("\n")[0])
    parser.add_argument("runs", nargs="+", type=Path, help="pipeline or evaluation run directories")
    parser.add_argument("--min-usable", type=int, default=10, help="eval.min_usable: fewer usable verdicts: too few")
    args = parser.parse_args(argv)
    missing = [str(p) for p in args.runs if not p.is_dir()]
    if missing:
        print(f"charlab: error: not a run directory: {', '.join(missing)}", file=sys.stderr)
        return 2
    summaries = summaries_of(args.runs)
    if not summaries:
        print("charlab: error: no completed classifier, coherence, revealed or elo run in those directories",
              file=sys.stderr)  # fmt: skip
        return 2
    print(verdict_text(summaries, args.min_usable))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
