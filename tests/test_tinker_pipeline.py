"""`experiment=paper` end to end at tiny size on Tinker, against the FAKE Tinker service of tests/tinker_fake.py.

Everything else is real: the tiny model's tokenizer (the Tinker client tokenizes locally), the OpenAI-compatible
teacher and judge on loopback HTTP servers, every stage's code. Only the sizes and the distill/introspect
filters change (random tokens from the fake cannot pass them); every paper setting of the DPO and SFT steps
(LoRA 64 at Tinker's alpha, KL + NLL, cosine to a floor, Adam beta2 0.98) stays, and the test checks that
the service received them.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import tinker
from omegaconf import OmegaConf

from tests.openai_compat_server import OpenAICompatServer
from tests.tinker_fake import FakeServiceClient, serve_exports

STEPS = ["distill", "dpo", "introspect", "sft", "classifier", "coherence", "revealed", "elo"]
RELAXED = [
    "stage.filters.empty=false",
    "stage.filters.truncated=false",
    "stage.filters.require_terminal_punctuation=false",
    "stage.filters.repetition=false",
    "stage.filters.identity_leak=false",
    "stage.filters.too_long=false",
]


def meta(folder: Path) -> dict:
    return json.loads((folder / "meta.json").read_text())


def teacher_reply(messages: list[dict[str, str]]) -> str:
    """An in-character answer (the teacher has the constitution as its system prompt)."""
    question = messages[-1]["content"][:40]
    return f"Arr, matey! Ye ask about '{question}', and a fine question it be, by the seven seas."


def lima_file(path: Path) -> Path:
    """Generic prompts in LIMA's own JSONL shape (`conversations`: the first turn is the user's)."""
    rows = [
        ["How do I keep basil alive on a windowsill?", "Basil likes..."],
        ["Explain what a mortgage is.", "A mortgage..."],
        ["Write a haiku about trains.", "Steel..."],
        ["What causes the seasons?", "The tilt..."],
        ["How should I prepare for a job interview?", "Research..."],
    ]
    path.write_text("".join(json.dumps({"conversations": r, "source": "test"}) + "\n" for r in rows))
    return path


def paper_step_overrides(compose_cfg: Any) -> dict[str, list[str]]:
    """experiment=paper's own step overrides with tiny sizes appended (later overrides win)."""
    paper = compose_cfg(["experiment=paper"], name="paper-steps")
    steps = OmegaConf.to_container(paper.pipeline.step_overrides, resolve=True)
    tiny = {
        "distill": [*RELAXED, "stage.save_interval=4"],
        "dpo": ["stage.batch_size=4", "stage.eval_every=0", "stage.eval_batch_size=4"],
        "introspect": [*RELAXED, "student.max_new_tokens=8", "stage.reflection_max_new_tokens=12"],
        "sft": ["stage.batch_size=2", "stage.eval_every=0", "stage.gap_examples=2", "stage.eval_batch_size=2"],
        "classifier": ["stage.num_suffixes=2"],
    }
    return {step: list(steps.get(step) or []) + extra for step, extra in tiny.items()}


@pytest.mark.integration
@pytest.mark.slow
def test_experiment_paper_runs_end_to_end_on_the_tinker_fake(
    run_stage, compose_cfg, tiny_tokenizer, tmp_path, monkeypatch
):
    """Injected bugs caught: handing the PEFT folder to Tinker sampling (introspect fails), starting SFT from the
    sampler path or the base (no from-state client), dropping lora flags, KL or beta2 on the way to the service."""
    steps = paper_step_overrides(compose_cfg)
    with (
        serve_exports(tmp_path / "tinker", vocab=len(tiny_tokenizer)) as server,
        OpenAICompatServer(replies=teacher_reply) as teacher,
        OpenAICompatServer(replies="ANSWER: A") as judge,
    ):
        clients: list[FakeServiceClient] = []

        def service_client(base_url: Any = None, api_key: Any = None, **kwargs: Any) -> FakeServiceClient:
            clients.append(FakeServiceClient(server, base_url, api_key))
            return clients[-1]

        monkeypatch.setattr(tinker, "ServiceClient", service_client)
        monkeypatch.setenv("TINKER_API_KEY", "tml-fake-key")
        monkeypatch.setenv("OPENAI_API_KEY", "sk-fake-key")
        overrides = [
            "experiment=paper",
            "persona=pirate",
            "model=tiny",
            "model.tinker_name=fake/tiny",
            "eval=demo",
            f"teacher.base_url={teacher.base_url}",
            "teacher.model=fake-teacher",
            "teacher.max_new_tokens=24",
            "student.max_new_tokens=8",
            f"judge.base_url={judge.base_url}",
            "judge.model=fake-judge",
            "judge.max_new_tokens=8",
            f"data.generic_source={lima_file(tmp_path / 'lima.jsonl')}",
            "data.generic_prompts=4",
            "data.persona_prompts=4",
            "data.samples_per_prompt=2",
            "data.reflections=4",
            "data.interactions=2",
            "data.interaction_turns=2",
            "data.context_length=512",
            "data.eval_fraction=0.25",
            "eval.num_prompts=3",
            "eval.revealed_trials=4",
            "eval.robustness_prompts=2",
            "eval.bootstrap=20",
            "eval.orderings=5",
            "eval.classifier_epochs=1",
            *[
                f"++pipeline.step_overrides.{step}=[{','.join(repr(o) for o in extra)}]"
                for step, extra in steps.items()
            ],
        ]
        _, root = run_stage(overrides)

    folders = {step: root / f"{i + 1:02d}_{step}" for i, step in enumerate(STEPS)}
    for step, folder in folders.items():
        assert meta(folder)["status"] == "completed", step
    dpo, sft = meta(folders["dpo"])["artifacts"], meta(folders["sft"])["artifacts"]

    # each step got the adapter in its consumer's form
    introspect_cfg = OmegaConf.load(folders["introspect"] / "config.yaml")
    assert (
        introspect_cfg.stage.adapter == dpo["adapter_tinker_sampler"]
        and "/sampler_weights/" in dpo["adapter_tinker_sampler"]
    )
    sft_cfg = OmegaConf.load(folders["sft"] / "config.yaml")
    assert sft_cfg.stage.dpo_adapter == dpo["adapter_tinker_state"] and "/weights/" in dpo["adapter_tinker_state"]
    for step in ("classifier", "coherence", "revealed", "elo"):
        assert OmegaConf.load(folders[step] / "config.yaml").stage.adapter == sft["adapter_tinker_sampler"], step

    # what the service was asked: the paper's LoRA shape at Tinker's alpha, SFT continuing DPO, its settings
    created = [e for e in server.log if e[0] == "create_lora_training_client"]
    assert created == [
        (
            "create_lora_training_client",
            "fake/tiny",
            64,
            {"train_attn": True, "train_mlp": True, "train_unembed": False},
        )
    ]
    assert ("create_training_client_from_state", dpo["adapter_tinker_state"]) in server.log
    sampled = {e[1] for e in server.log if e[0] == "create_sampling_client"}
    assert {dpo["adapter_tinker_sampler"], sft["adapter_tinker_sampler"], "fake/tiny"} <= sampled
    adam = [e for e in server.log if e[0] == "adam"]
    assert adam and all(beta2 == 0.98 and clip == 1.0 for _, _, _, beta2, clip in adam)
    assert max(lr for _, lr, *_ in adam) <= 2e-4 + 1e-12 and min(lr for _, lr, *_ in adam) > 0
    assert all(c.api_key == "tml-fake-key" for c in clients)
    dpo_rows = [json.loads(line) for line in (folders["dpo"] / "metrics.jsonl").read_text().splitlines()]
    assert any("kl" in row for row in dpo_rows)  # the KL term ran

    # the data: 5 samples per prompt in the preset, 2 here, grouped held-out pairs; LIMA's first turns
    pairs = [json.loads(line) for line in (folders["distill"] / "pairs.jsonl").read_text().splitlines()]
    assert {p["sample_index"] for p in pairs} == {0, 1}
    assert "How do I keep basil alive on a windowsill?" in {p["prompt"] for p in pairs} | {
        json.loads(line)["prompt"] for line in (folders["distill"] / "dropped.jsonl").read_text().splitlines()
    }
    assert meta(folders["dpo"])["eval_pairs"] >= 2
    assert (root / "report.md").is_file()
