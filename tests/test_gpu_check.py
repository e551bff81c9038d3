"""`bash scripts/gpu_check.sh --cpu --no-vllm`: the GPU check's own commands at toy size on this CPU.

The pipeline (distill -> dpo -> introspect -> sft on the tiny model, hf sampling), its report, the sampling
benchmark and the DPO / SFT benchmarks against TRL all run and print their numbers. On a GPU machine the same
script runs at its real size (`bash scripts/gpu_check.sh`); the vLLM rows need `.venv-vllm` (`--cpu` without
`--no-vllm` runs them there, slowly: each server start is about a minute on this CPU).
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import ROOT, cli_env

STEPS = ("01_distill", "02_dpo", "03_introspect", "04_sft")


@pytest.mark.integration
@pytest.mark.slow
def test_gpu_check_runs_on_the_cpu_and_reports_each_steps_speed_and_own_peak_memory(tmp_path: Path) -> None:
    """Injected bugs this catches: a step override that does not compose (the script stops at once); the distill
    row reading a token key distill does not write (no generated tokens/s); no per-step peak memory."""
    run = tmp_path / "run"
    env = cli_env(tmp_path, RUN_DIR=str(run), PY=sys.executable)
    result = subprocess.run(["bash", "scripts/gpu_check.sh", "--cpu", "--no-vllm"], cwd=ROOT, env=env,
                            capture_output=True, text=True, timeout=1500)  # fmt: skip
    out = result.stdout
    assert result.returncode == 0, out[-3000:] + result.stderr[-3000:]
    rows = {line.split()[0]: line for line in out.splitlines() if re.match(r"0\d_\w+ +completed", line)}
    assert sorted(rows) == list(STEPS), out[-3000:]
    for step in ("01_distill", "03_introspect"):
        assert re.search(r"generated +\d+\.\d tokens/s", rows[step]), rows[step]
    for step in ("02_dpo", "04_sft"):
        assert re.search(r"trained +\d+\.\d tokens/s", rows[step]), rows[step]
    peaks = {step: json.loads((run / step / "meta.json").read_text())["peak_memory"] for step in STEPS}
    assert all(f"peak: CPU {peaks[s]['cpu_rss_gb']:.2f} GB" in rows[s] for s in STEPS), rows
    whole = json.loads((run / "meta.json").read_text())["peak_memory"]["cpu_rss_gb"]
    assert whole >= max(p["cpu_rss_gb"] for p in peaks.values())  # the pipeline's window holds its steps'
    assert "vLLM rows skipped" in out and re.search(r"hf batch 8: \d+ tokens", out)
    for bench in ("DPO", "SFT"):  # the benchmark tables: charlab and TRL's best (every row: test_benchmarks.py)
        assert f"\n{bench}, tiny, 8 " in out, bench
        table = out.split(f"\n{bench}, tiny, 8 ", 1)[1]
        assert all(re.search(rf"^{row} +", table, re.M) for row in ("charlab", "trl-best")), bench
