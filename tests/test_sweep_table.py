"""`scripts/sweep_table.py`: one row per finished trial, its searched `demo.*` settings, best objective first."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from tests.conftest import ROOT


def trial(folder: Path, lr: str, coherent: float, finished: bool = True) -> None:
    (folder / ".hydra").mkdir(parents=True)
    (folder / ".hydra" / "overrides.yaml").write_text(f"- demo.dpo_lr={lr}\n- experiment=demo\n")
    step = folder / "06_coherence"
    step.mkdir()
    estimate = lambda v: {"tuned": {"value": v, "low": v - 0.1, "high": v + 0.1, "n": 20}}  # noqa: E731
    summary = {m: estimate(0.5) for m in ("in_character", "loop", "relevance", "minilm_relevance")}
    summary["in_character_coherent"] = estimate(coherent)
    summary["headline"] = {"estimate": {"value": 0.55, "low": 0.4, "high": 0.7, "n": 20}}
    status = "completed" if finished else "running"
    (step / "meta.json").write_text(json.dumps({"status": status, "summary": summary}))


def test_rows_are_finished_trials_best_first(tmp_path: Path) -> None:
    trial(tmp_path / "0_run", "1e-4", 0.2)
    trial(tmp_path / "1_run", "2e-4", 0.6)
    trial(tmp_path / "2_run", "4e-4", 0.9, finished=False)
    out = subprocess.run([sys.executable, str(ROOT / "scripts" / "sweep_table.py"), str(tmp_path)],
                         capture_output=True, text=True, check=True).stdout.splitlines()  # fmt: skip
    assert out[0].startswith("| run | demo.dpo_lr | in character |")
    assert [line.split(" | ")[0] for line in out[2:]] == ["| 1_run", "| 0_run"]
    assert out[2].split(" | ")[1] == "2e-4" and "0.60 (0.50-0.70)" in out[2] and out[2].endswith("0.55 (0.40-0.70) |")


def test_a_missing_folder_is_a_one_line_error(tmp_path: Path) -> None:
    result = subprocess.run([sys.executable, str(ROOT / "scripts" / "sweep_table.py"), str(tmp_path / "nope")],
                            capture_output=True, text=True)  # fmt: skip
    assert result.returncode == 2 and result.stderr.strip() == f"{tmp_path / 'nope'}: not a directory"
