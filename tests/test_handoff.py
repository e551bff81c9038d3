"""The pipeline hands each step a trained adapter in the form its provider or backend can use."""

from __future__ import annotations

import pytest

from charlab.errors import ConfigError
from charlab.stages.handoff import HANDOFFS, Produced, Source, handoff_overrides

pytestmark = pytest.mark.unit

LOCAL_DPO = {"adapter": "/r/02_dpo/adapter", "checkpoints": "/r/02_dpo/checkpoints"}
TINKER_DPO = {
    **LOCAL_DPO,
    "adapter_tinker_sampler": "tinker://run1/sampler_weights/step-000009",
    "adapter_tinker_state": "tinker://run1/weights/step-000009",
}


def kinds(**values: str):
    return lambda consumer: values[consumer]


@pytest.mark.parametrize(
    ("student", "expected"),
    [
        ("hf", "stage.adapter=/r/02_dpo/adapter"),
        ("tinker", "stage.adapter=tinker://run1/sampler_weights/step-000009"),
        ("openai", "stage.adapter=sarcasm-dpo"),
        ("vllm", "stage.adapter=/r/02_dpo/adapter"),  # the managed server loads the folder itself
    ],
)
def test_a_sampling_step_gets_the_form_its_student_provider_takes(student: str, expected: str) -> None:
    """Injected bug caught: handing every provider the PEFT folder (the Tinker pipeline broke at introspect)."""
    wired = handoff_overrides(
        "introspect", {"stage.adapter": "dpo.adapter@student"}, {"dpo": TINKER_DPO}, kinds(student=student), "sarcasm"
    )
    assert wired == [expected]


def test_a_training_step_gets_the_form_its_backend_takes() -> None:
    """Injected bug caught: a Tinker SFT given the sampler path (not resumable) or the local folder."""
    wiring = {"stage.dpo_adapter": "dpo.adapter@backend", "stage.data": "introspect.introspection"}
    artifacts = {"dpo": TINKER_DPO, "introspect": {"introspection": "/r/03/introspection.jsonl"}}
    assert handoff_overrides("sft", wiring, artifacts, kinds(backend="tinker")) == [
        "stage.dpo_adapter=tinker://run1/weights/step-000009",
        "stage.data=/r/03/introspection.jsonl",
    ]
    assert (
        handoff_overrides("sft", wiring, artifacts, kinds(backend="local"))[0] == "stage.dpo_adapter=/r/02_dpo/adapter"
    )


def test_a_form_the_consumer_cannot_use_is_one_line_naming_both_steps() -> None:
    with pytest.raises(ConfigError) as err:
        handoff_overrides("elo", {"stage.adapter": "dpo.adapter@student"}, {"dpo": LOCAL_DPO}, kinds(student="tinker"))
    message = str(err.value)
    assert "\n" not in message and "step 'dpo'" in message and "backend=tinker" in message
    with pytest.raises(ConfigError, match="no handoff for student kind 'carrier-pigeon'"):
        handoff_overrides(
            "elo", {"stage.adapter": "dpo.adapter@student"}, {"dpo": LOCAL_DPO}, kinds(student="carrier-pigeon")
        )
    with pytest.raises(ConfigError, match="consumer 'teapot' is unknown"):
        Source.parse("dpo.adapter@teapot", "pipeline.wiring.elo.stage.adapter")
    with pytest.raises(ConfigError, match=r"use <step>\.<artifact>"):
        Source.parse("dpo", "pipeline.wiring.elo.stage.adapter")


def test_a_new_provider_kind_plugs_in_by_registering_a_handoff(monkeypatch) -> None:
    """What the module docstring promises a provider author (e.g. a managed vLLM server)."""

    def vllm(produced: Produced, key: str, consumer: str) -> list[str]:
        return [f"{key}={produced.path}", f"{consumer}.lora_name={produced.persona}-{produced.step}"]

    monkeypatch.setitem(HANDOFFS, ("provider", "vllm"), vllm)
    wired = handoff_overrides(
        "elo", {"stage.adapter": "dpo.adapter@student"}, {"dpo": LOCAL_DPO}, kinds(student="vllm"), "humor"
    )
    assert wired == ["stage.adapter=/r/02_dpo/adapter", "student.lora_name=humor-dpo"]


def test_the_default_pipeline_wiring_names_a_consumer_for_every_adapter(compose_cfg) -> None:
    """Every adapter a later step samples from or trains on goes through a handoff (none is passed raw)."""
    cfg = compose_cfg(["stage=pipeline"])
    for step, entries in cfg.pipeline.wiring.items():
        for key, text in entries.items():
            source = Source.parse(text, f"{step}.{key}")
            if source.artifact == "adapter" and step != "export":
                assert source.consumer is not None, f"{step}.{key} <- {text}"


def test_an_exported_adapter_is_asked_for_under_the_name_its_model_card_serves_it() -> None:
    exported = {"adapter": "/r/05_export/adapter", "adapter_served_name": "sarcasm"}
    wired = handoff_overrides(
        "elo", {"stage.adapter": "export.adapter@student"}, {"export": exported}, kinds(student="openai"), "sarcasm"
    )
    assert wired == ["stage.adapter=sarcasm"]
