"""The training benchmarks compare like with like: every row (charlab, each ablation, TRL's configurations) trains
the same tokens to the same step-1 loss. Timing is never checked here (speed goals live in benchmarks/); the rows
run in this process (`--in-process`), and `tests/test_gpu_check.py` runs the benchmark commands themselves."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.integration


@pytest.mark.parametrize("bench", ["bench_dpo", "bench_sft"])
def test_every_row_trains_the_same_tokens_to_the_same_step_1_loss(bench: str, tiny_model: object, tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch,
                                                                  capsys: pytest.CaptureFixture) -> None:  # fmt: skip
    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))
    module = __import__(bench)
    results = tmp_path / "rounds.json"
    # one step over every example: which examples share a step cannot differ between rows
    argv = [f"{bench}.py", "--model", "tiny", "--batch", "4", "--grad-accum", "2", "--steps", "0", "--repeats", "1",
            "--in-process", "--rows", ",".join(module.ROWS), "--results", str(results)]  # fmt: skip
    monkeypatch.setattr(sys, "argv", argv)
    module.main()
    out = capsys.readouterr().out
    (measured,) = json.loads(results.read_text())
    assert set(measured) == set(module.ROWS)
    charlab = measured["charlab"]
    assert charlab["trained"] > 0 and charlab["steps_total"] == 1
    for row, r in measured.items():
        assert (r["tokens"], r["trained"], r["steps_total"]) == (charlab["tokens"], charlab["trained"], 1), row
        # charlab's ablations compute the same maths; TRL reduces the DPO NLL term per micro-batch (1e-4 here)
        tolerance = 1e-5 if row.startswith("charlab") else 1e-3
        assert r["loss1"] == pytest.approx(charlab["loss1"], abs=tolerance), row
    assert "speed vs trl-best" in out and "versions: " in out and "command: " in out
