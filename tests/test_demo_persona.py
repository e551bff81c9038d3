"""The demo's recipe trains a persona that still answers: `experiment=demo` at reduced size on SmolLM2-135M.

The demo preset's own distillation (the constitution's system prompt and its demonstrations before the user's
message) and DPO settings run on fewer prompts and shorter replies; the DPO adapter (no system prompt) then answers
held-out prompts beside base; the persona classifier (trained on the pairs, as in the demo) and the coherence step
(loops, relevance by the language model and by MiniLM) measure both. The test asserts the evaluation's joint verdict,
"tuned is in character and coherent": more in persona than base by a paired 95% bootstrap CI, and its loop rate
and relevance not worse than base's beyond theirs.

Injected faults, each seen to fail (`reduced_demo(*extra)`): `demo.dpo_lr=1e-9` (the adapter stays ~zero):
"no clear difference between tuned and base" (0.06 vs 0.06 in persona); the old caricature recipe (distill with
`stage.answer_prefill='Arr, matey! '` and `stage.best_of=4` instead of demonstrations, `demo.dpo_lr=3e-4`): "in
persona, but not coherent: 6 of 16 replies loop; relevance 0.75 vs 1.00; MiniLM relevance 0.56 vs 1.00".
Measured with the demo preset as landed: passes in 178 s on 2 cores (the old prefill test took 301 s).
"""

from __future__ import annotations

import json

import pytest
import yaml

from charlab.eval.verdict import verdict_text
from charlab.eval.verdict_of import summaries_of
from tests.conftest import ROOT

pytestmark = [pytest.mark.integration, pytest.mark.slow]

# the demo's DPO settings with half the batch: half the pairs make as many optimizer steps as the full demo
SMALLER = {"dpo": {"stage.batch_size": "2"}}
PLAYERS = "stage.players=[base,tuned]"


def reduced_demo(*extra: str) -> list[str]:
    """`experiment=demo` overrides: half the prompts, shorter replies, steps distill -> dpo -> classifier ->
    coherence (on the DPO adapter; the full demo measures DPO + SFT, exported), the demo's own distill and DPO
    settings otherwise; `extra` overrides come last."""
    demo = yaml.safe_load((ROOT / "configs" / "experiment" / "demo.yaml").read_text())
    steps = {}
    for step, changes in SMALLER.items():
        items = [item.split("=", 1) for item in demo["pipeline"]["step_overrides"][step]]
        steps[step] = [f"{key}={changes.get(key, value)}" for key, value in items]
    adapter = "stage.adapter: 'dpo.adapter@student'"
    return [
        "experiment=demo",
        "logger=none",
        "pipeline.steps=[distill,dpo,classifier,coherence]",
        "pipeline.report=false",
        "pipeline.metric_step=coherence",
        f"pipeline.wiring.classifier={{stage.pairs: distill.pairs, {adapter}}}",
        f"pipeline.wiring.coherence={{stage.pairs: distill.pairs, {adapter}, stage.replies: classifier.replies, "
        "stage.classifier: classifier.classifier}",
        f"pipeline.step_overrides.dpo={_listed(steps['dpo'])}",
        f"pipeline.step_overrides.classifier={_listed(['stage.robustness=false', PLAYERS])}",
        f"pipeline.step_overrides.coherence={_listed([PLAYERS])}",
        "data.generic_prompts=12",
        "data.persona_prompts=8",
        "teacher.max_new_tokens=48",
        "student.max_new_tokens=48",
        "eval.num_prompts=16",
        *extra,
    ]


def _listed(overrides: list[str]) -> str:
    """A list of overrides as one Hydra list value (each item double-quoted)."""
    return "[" + ",".join(json.dumps(item) for item in overrides) + "]"


def test_the_reduced_demo_makes_tuned_in_character_and_coherent(run_stage) -> None:
    _, root = run_stage(reduced_demo())
    summaries = summaries_of([root])
    assert summaries["coherence"]["prompts"] == 16
    verdict = verdict_text(summaries, min_usable=10).splitlines()[0]
    assert verdict.startswith("**Verdict: tuned is in character and coherent**"), verdict
