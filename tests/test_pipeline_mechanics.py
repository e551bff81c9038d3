"""Pipeline mechanics on the cheap `show` stage: per-step folders, failure message, resume skips finished steps."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from charlab.stages.handoff import handoff_overrides
from charlab.stages.pipeline import PipelineStepError

pytestmark = pytest.mark.integration
STEPS = ["pipeline.steps=[show,show]", "pipeline.report=false", "stage=pipeline"]


def test_wiring_maps_earlier_artifacts_and_skips_missing_sources() -> None:
    wiring = {"dpo": {"stage.pairs": "distill.pairs"}, "sft": {"stage.data": "introspect.introspection"}}
    artifacts = {"distill": {"pairs": "/r/01_distill/pairs.jsonl"}}
    never = lambda consumer: pytest.fail("plain artifacts need no consumer kind")  # noqa: E731
    assert handoff_overrides("dpo", wiring["dpo"], artifacts, never) == ["stage.pairs=/r/01_distill/pairs.jsonl"]
    assert handoff_overrides("sft", wiring["sft"], artifacts, never) == []


def test_failed_step_names_itself_and_resume_skips_finished_steps(run_stage, tmp_path: Path) -> None:
    quiet = '+pipeline.step_overrides.show=["stage.show_template=false"]'
    with pytest.raises(PipelineStepError) as err:
        run_stage(["stage=pipeline", "pipeline.steps=[show,nostage]", "pipeline.report=false", quiet], name="first")
    message = str(err.value)
    assert "pipeline step 'nostage' failed" in message and "stage.resume=true" in message
    root = tmp_path / "outputs" / "first"
    state = json.loads((root / "pipeline.json").read_text())
    assert state["steps"]["01_show"]["status"] == "completed"
    assert state["steps"]["02_nostage"]["status"] == "failed"
    first_meta = root / "01_show" / "meta.json"
    mtime = first_meta.stat().st_mtime_ns

    resume = [f"stage.resume_from={root}", "stage.resume=true"]
    run_stage(STEPS + resume + [quiet], name="second")
    assert first_meta.stat().st_mtime_ns == mtime  # finished steps are never rerun
    assert json.loads((root / "02_show" / "meta.json").read_text())["status"] == "completed"
    assert (root / "02_show" / "train.log").is_file()
    state = json.loads((root / "pipeline.json").read_text())
    assert state["steps"]["02_show"]["status"] == "completed"
    parents = json.loads((tmp_path / "outputs" / "second" / "meta.json").read_text())["parents"]
    assert parents["resumed_pipeline"] == str(root)
