"""`stage=sft` killed mid-training (SIGKILL) and resumed from its checkpoint: the same adapter as an unbroken run."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from charlab.training.loop import find_checkpoints, newest_checkpoint
from tests.conftest import ROOT, cli_env, kill_when_held
from tests.test_sft import examples, write_examples

pytestmark = [pytest.mark.integration, pytest.mark.timing]


def overrides(data: Path) -> list[str]:
    return ["stage=sft", "model=tiny", f"stage.data={data}", "stage.dpo_adapter=null", "stage.batch_size=2",
            "stage.grad_accum=1", "stage.save_every=1", "stage.keep_checkpoints=0", "stage.eval_every=0",
            "stage.eval_fraction=0.1", "stage.gap_examples=2", "stage.max_length=128", "lora.rank=8", "lora.alpha=16",
            "stage.lr=1e-3"]  # fmt: skip


def adapter_weights(run_dir: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(run_dir / "adapter" / "adapter_model.safetensors"))


def test_sft_resumes_after_a_kill_and_matches_an_unbroken_run(tmp_path: Path, run_stage) -> None:
    data = write_examples(tmp_path / "introspection.jsonl", examples(10, 2, seed=1))
    first = tmp_path / "first"
    kill_when_held(
        [*overrides(data), "logger=none", f"hydra.run.dir={first}"], tmp_path, "checkpoint:2",
        lambda: len(find_checkpoints(first / "checkpoints")) >= 2,
    )  # fmt: skip
    assert not (first / "adapter").exists()
    killed_at = int(newest_checkpoint(first / "checkpoints").name.split("-")[1])
    assert killed_at == 2  # held after its 2nd checkpoint (save_every=1)

    second = tmp_path / "second"
    done = subprocess.run(
        [sys.executable, "-m", "charlab.train", *overrides(data), "logger=none", "stage.resume=true",
         f"stage.resume_from={first}", f"hydra.run.dir={second}"],
        cwd=ROOT, env=cli_env(tmp_path), capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    summary = json.loads((second / "adapter" / "meta.json").read_text())["summary"]
    assert summary["resumed_at_step"] == killed_at >= 2 and summary["steps"] == 6
    steps = [json.loads(line).get("step") for line in (second / "metrics.jsonl").read_text().splitlines()]
    assert min(s for s in steps if s is not None) == killed_at + 1  # nothing before the checkpoint was redone

    _, unbroken = run_stage(overrides(data), name="unbroken")
    resumed, reference = adapter_weights(second), adapter_weights(unbroken)
    assert resumed.keys() == reference.keys()
    for key in reference:
        torch.testing.assert_close(resumed[key], reference[key], atol=1e-6, rtol=1e-5)
