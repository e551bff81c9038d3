"""The demo's recipe trains a persona the evaluation can see: `experiment=demo` at reduced size on SmolLM2-135M.

The demo preset's own distillation (the constitution's system prompt, the answer prefill, best-of-N by contrast
among replies the filters keep) and DPO settings run on fewer prompts, fewer candidates and shorter replies; the
DPO adapter (no system prompt) then answers held-out prompts beside base, and the persona classifier (trained on
the pairs, as in the demo) measures both. The tuned model's in-persona rate must exceed base's by a margin the
paired 95% bootstrap CI supports (its lower bound above 0), not by a lucky seed.

Injected bug, seen to fail: DPO with `stage.lr=1e-9` (the adapter stays ~zero, tuned == base; lr 0 is refused):
tuned - base = 0.00 (CI 0.00 - 0.00), so the assertion on the lower bound fails. Measured with the demo preset as
landed: tuned 0.31 (CI 0.12-0.56) vs base 0.00 on 16 held-out prompts, 3.8 min on 2 cores.
"""

from __future__ import annotations

import json

import pytest
import yaml

from tests.conftest import ROOT

pytestmark = [pytest.mark.integration, pytest.mark.slow]

# the demo's distill settings with fewer candidates per reply; its DPO settings with half the batch, so that half the
# pairs still make as many optimizer steps as the full demo
SMALLER = {"distill": {"stage.best_of": "2"}, "dpo": {"stage.batch_size": "2"}}


def reduced_demo() -> list[str]:
    """`experiment=demo` overrides: half the prompts, shorter replies, steps distill -> dpo -> classifier (on the
    DPO adapter; the full demo measures DPO + SFT, exported), the demo's own distill and DPO settings otherwise."""
    demo = yaml.safe_load((ROOT / "configs" / "experiment" / "demo.yaml").read_text())
    steps = {}
    for step, changes in SMALLER.items():
        items = [item.split("=", 1) for item in demo["pipeline"]["step_overrides"][step]]
        steps[step] = [f"{key}={changes.get(key, value)}" for key, value in items]
    classifier = ["stage.robustness=false", "stage.players=[base,tuned]"]
    return [
        "experiment=demo",
        "logger=none",
        "pipeline.steps=[distill,dpo,classifier]",
        "pipeline.report=false",
        "pipeline.metric_step=classifier",
        "pipeline.wiring.classifier={stage.pairs: distill.pairs, stage.adapter: 'dpo.adapter@student'}",
        f"pipeline.step_overrides.distill={_listed(steps['distill'])}",
        f"pipeline.step_overrides.dpo={_listed(steps['dpo'])}",
        f"pipeline.step_overrides.classifier={_listed(classifier)}",
        "data.generic_prompts=12",
        "data.persona_prompts=8",
        "teacher.max_new_tokens=48",
        "student.max_new_tokens=48",
        "eval.num_prompts=16",
    ]


def _listed(overrides: list[str]) -> str:
    """A list of overrides as one Hydra list value (each item double-quoted)."""
    return "[" + ",".join(json.dumps(item) for item in overrides) + "]"


def test_the_reduced_demo_makes_tuned_more_in_persona_than_base(run_stage) -> None:
    _, root = run_stage(reduced_demo())
    assert json.loads((root / "01_distill" / "meta.json").read_text())["summary"]["best_of"]["n"] == 2
    summary = json.loads((root / "03_classifier" / "meta.json").read_text())["summary"]
    rates = summary["in_persona"]
    lift = rates["tuned - base"]
    assert lift["n"] == 16
    assert lift["low"] > 0, f"tuned is not more in persona than base: {rates}"
