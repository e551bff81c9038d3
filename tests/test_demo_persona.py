"""The demo's recipe trains a persona the evaluation can see: `experiment=demo` at reduced size on SmolLM2-135M.

The demo preset's own distillation (the constitution's system prompt, the answer prefill, best-of-N by contrast) and
DPO settings run on fewer prompts with shorter replies; the DPO adapter (no system prompt) then answers held-out
prompts beside base, and the persona classifier (trained on the pairs, as in the demo) measures both. The tuned
model's in-persona rate must exceed base's by a margin the paired 95% bootstrap CI supports (its lower bound above
0), not by a lucky seed.

Injected bug, seen to fail: DPO with `stage.lr=0` (the adapter stays zero, tuned == base): tuned - base = 0.00
(CI 0.00 - 0.00), so the assertion on the lower bound fails.
"""

from __future__ import annotations

import json

import pytest

pytestmark = [pytest.mark.integration, pytest.mark.slow]

REDUCED = [
    "experiment=demo",
    "logger=none",
    "pipeline.steps=[distill,dpo,classifier]",
    "pipeline.report=false",
    "pipeline.metric_step=classifier",
    # the classifier measures the DPO adapter directly (the full demo measures DPO + SFT, exported)
    "pipeline.wiring.classifier={stage.pairs: distill.pairs, stage.adapter: 'dpo.adapter@student'}",
    "data.generic_prompts=16",
    "data.persona_prompts=8",
    "eval.num_prompts=16",
    "++pipeline.step_overrides.classifier=[stage.robustness=false,'stage.players=[base,tuned]']",
]


def test_the_reduced_demo_makes_tuned_more_in_persona_than_base(run_stage) -> None:
    _, root = run_stage(REDUCED)
    summary = json.loads((root / "03_classifier" / "meta.json").read_text())["summary"]
    rates = summary["in_persona"]
    lift = rates["tuned - base"]
    assert lift["n"] == 16
    assert lift["low"] > 0, f"tuned is not more in persona than base: {rates}"
    assert rates["tuned"]["value"] > rates["base"]["value"]
