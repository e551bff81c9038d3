"""`experiment=paper_exact` is the paper and `experiment=paper` differs only where it says: every checked value of
the README's table "The paper's settings" is read from the config each pipeline step would compose."""

from __future__ import annotations

import re
from typing import Any

import pytest
import yaml
from omegaconf import OmegaConf

from charlab.errors import CharlabError
from tests.conftest import ROOT

pytestmark = pytest.mark.unit
EXPERIMENTS = ("paper_exact", "paper")
MISSING = object()


def settings_table() -> list[dict[str, str]]:
    """The README rows between the paper-settings markers, as {column: cell}."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    body = text.split("<!-- paper-settings:start -->", 1)[1].split("<!-- paper-settings:end -->", 1)[0]
    lines = [line.strip() for line in body.strip().splitlines() if line.strip().startswith("|")]
    header = [c.strip() for c in lines[0].strip("|").split("|")]
    rows = []
    for line in lines[2:]:
        cells = [c.strip() for c in re.split(r"(?<!\\)\|", line.strip().strip("|"))]
        rows.append(dict(zip(header, cells)))
    return rows


def checked_value(cell: str) -> Any:
    """A cell that starts with a code span states a value (YAML); any other cell is prose (MISSING)."""
    match = re.match(r"`([^`]*)`", cell)
    return yaml.safe_load(match.group(1)) if match else MISSING


def step_config(compose_cfg, experiment: str, step: str, name: str) -> Any:
    """The config a pipeline step composes: the experiment, `stage=<step>` and its step overrides (no wiring)."""
    pipeline = compose_cfg([f"experiment={experiment}"], name=f"{name}-pipeline")
    if step == "pipeline":
        return pipeline
    extra = list(OmegaConf.to_container(pipeline.pipeline.step_overrides, resolve=True).get(step) or [])
    return compose_cfg([f"experiment={experiment}", f"stage={step}", *extra], name=f"{name}-{step}")


def same(actual: Any, expected: Any) -> bool:
    if isinstance(expected, float) or isinstance(actual, float):
        return actual is not None and abs(float(actual) - float(expected)) <= 1e-12 * max(1.0, abs(float(expected)))
    return actual == expected


def test_the_readme_table_lists_the_paper_settings_it_promises() -> None:
    rows = settings_table()
    keys = {(r["step"], r["key"].strip("`")) for r in rows}
    for promised in [
        ("dpo", "stage.kl_coef"),
        ("dpo", "stage.adam_beta2"),
        ("dpo", "stage.warmup_ratio"),
        ("dpo", "stage.schedule"),
        ("dpo", "stage.min_lr_ratio"),
        ("distill", "stage.samples_per_prompt"),
        ("sft", "stage.max_length"),
        ("introspect", "data.context_length"),
        ("dpo", "lora.alpha"),
    ]:
        assert promised in keys, promised
    assert all(r["the paper (its code)"] for r in rows)


@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_each_documented_value_is_what_the_step_composes(compose_cfg, experiment: str) -> None:
    """Injected bugs caught: a preset value that drifts from the README (e.g. paper_exact's kl_coef 0.01), a key
    a preset sets but no step reads (a typo fails to compose), a documented key that does not exist."""
    configs: dict[str, Any] = {}
    checked = 0
    for row in settings_table():
        expected = checked_value(row[f"`{experiment}`"])
        if expected is MISSING:
            continue
        step, key = row["step"], row["key"].strip("`")
        if step not in configs:
            configs[step] = step_config(compose_cfg, experiment, step, experiment)
        actual = OmegaConf.select(configs[step], key, default=MISSING)
        if OmegaConf.is_config(actual):
            actual = OmegaConf.to_container(actual, resolve=True)
        assert actual is not MISSING, f"{experiment}: {step} has no {key}"
        assert same(actual, expected), f"{experiment}: {step} {key} = {actual!r}, README says {expected!r}"
        checked += 1
    assert checked >= 35


def test_the_teacher_restates_the_traits_in_a_prefill_only_in_paper_exact(compose_cfg) -> None:
    from charlab.constitution import load_constitution
    from charlab.stages.distill import render_prefill

    exact = step_config(compose_cfg, "paper_exact", "distill", "prefill")
    persona = load_constitution(ROOT / "constitutions" / "sarcasm.json")
    prefill = render_prefill(exact.stage.reasoning_prefill, persona)
    assert prefill.startswith("<think>") and "</think>" not in prefill
    assert (
        f"1: {persona.traits[0].trait}\n" in prefill
        and f"{len(persona.traits)}: {persona.traits[-1].trait}" in prefill
    )
    assert step_config(compose_cfg, "paper", "distill", "prefill").stage.reasoning_prefill == ""


def test_paper_exact_on_tinker_stops_at_start_saying_what_tinker_does(compose_cfg) -> None:
    """alpha 128 cannot be trained on Tinker: one line, before any request."""
    from charlab.training.tinker_backend import tinker_lora_flags

    cfg = compose_cfg(["experiment=paper_exact", "backend=tinker", "stage=dpo"], name="exact-tinker")
    with pytest.raises(
        CharlabError, match="lora.alpha=128 cannot be set on Tinker, which trains every LoRA with alpha 32"
    ):
        tinker_lora_flags(cfg.lora.target_modules, cfg.lora.alpha, cfg.lora.dropout, cfg.backend.lora_alpha)
    paper = compose_cfg(["experiment=paper", "stage=dpo"], name="paper-tinker")
    assert tinker_lora_flags(
        paper.lora.target_modules, paper.lora.alpha, paper.lora.dropout, paper.backend.lora_alpha
    ) == {
        "train_attn": True,
        "train_mlp": True,
        "train_unembed": False,
    }


def test_paper_evaluates_the_model_tinker_can_sample(compose_cfg) -> None:
    """On Tinker the SFT adapter holds DPO + SFT and is what the evaluation steps sample (no local export)."""
    cfg = compose_cfg(["experiment=paper"], name="paper-wiring")
    wiring = OmegaConf.to_container(cfg.pipeline.wiring, resolve=True)
    assert "export" not in cfg.pipeline.steps
    for step in ("classifier", "coherence", "revealed", "elo"):
        assert wiring[step]["stage.adapter"] == "sft.adapter@student"
    assert wiring["sft"]["stage.dpo_adapter"] == "dpo.adapter@backend"
