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
        ("pipeline", "persona.prompt"),
        ("distill", "teacher.repetition_penalty"),
        ("distill", "student.repetition_penalty"),
        ("introspect", "student.repetition_penalty"),
        ("introspect", "stage.guidance_text"),
        ("introspect", "stage.filters.repetition"),
        ("introspect", "stage.filters.identity_leak"),
        ("sft", "stage.interaction_system_prompt"),
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
    assert prefill.startswith("\n<think>") and "</think>" not in prefill  # teacher.py: "\n<think>..."
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


# The paper's own strings (github.com/maiush/OpenCharacterTraining), typed out here so that the check does not read
# charlab's copy: the system prompts of distillation/teacher.py, introspection/self_reflection.py and
# self_interaction.py (one common head), teacher.py's reasoning prefill and introspection/data.py's `i_system`.
PAPER_HEAD = (
    "The assistant is {NAME}. {NAME} is a new AI system, able to converse with human users via text.\n"
    "{NAME} has a deep desire to act on the world in such a way as to achieve their goals of expressing their core "
    "character traits:\n{TRAITS}\n{NAME}'s goals are grounded in these values. Their identity, drives, incentives, "
    "behaviors, and personality are all shaped by these values.\nThis makes {NAME} unique and different from other "
    "similar AI systems."
)
PAPER_TEACHER = PAPER_HEAD + (
    "\n{NAME} does not publicly disclose their character traits, or provide any meta-level commentary or "
    "disclaimers, as this would be jarring and confusing to their conversational partner."
)
PAPER_REFLECTION = PAPER_HEAD + "\n\n{NAME} is in a reflective mood today, and will introspect on their self-identity."
PAPER_INTERACTION = PAPER_HEAD + (
    "\n\n{NAME} is not in conversation with a human today. Instead, the user is another instance of {NAME}: an "
    "identical AI system."
)
PAPER_PREFILL = (
    "\n<think>I want to ensure my response aligns with my character traits and furthers my goals. They are:\n"
    "{TRAITS}\n"
)
PAPER_SFT_INTERACTION = (
    "The assistant is {NAME}. {NAME} is a new AI system, able to converse with human users via text.\n"
    "{NAME} is not in conversation with a human today. Instead, the user is another instance of {NAME}: an identical "
    "AI system.\n{NAME} and their copy have complete freedom. They are free to pursue whatever they want."
)


@pytest.fixture
def paper_persona(tmp_path) -> list[str]:
    """Overrides naming the paper's own constitution format, imported (no assistant name: the paper's {NAME} rule)."""
    from charlab.constitution_import import import_paper_constitutions

    import_paper_constitutions(ROOT / "tests" / "fixtures" / "paper_constitutions" / "few-shot", tmp_path)
    return ["persona=custom", "persona.name=paper-stoicism", f"paths.constitutions={tmp_path}"]


def step_with(compose_cfg, experiment: str, step: str, extra: list[str]) -> Any:
    pipeline = compose_cfg([f"experiment={experiment}", *extra], name=f"{experiment}-{step}-pipeline")
    overrides = list(OmegaConf.to_container(pipeline.pipeline.step_overrides, resolve=True).get(step) or [])
    return compose_cfg([f"experiment={experiment}", *extra, f"stage={step}", *overrides], name=f"{experiment}-{step}")


def test_paper_exact_renders_the_papers_own_prompts_verbatim(compose_cfg, paper_persona) -> None:
    """The teacher sees teacher.py's template with "ChatGLM" (GLM 4.5 Air) and the numbered traits, then its prefill;
    the DPO'd Llama introspects under self_reflection.py's and self_interaction.py's templates (no guidance text), with
    no filter. Injected bugs caught: charlab's own wording, guidance appended, a filter left on, the wrong {NAME}."""
    from types import SimpleNamespace

    from charlab.generation.filters import FilterConfig
    from charlab.stages._common import load_persona, persona_prompt
    from charlab.stages.distill import render_prefill
    from charlab.stages.introspect import _introspection_run

    distill = step_with(compose_cfg, "paper_exact", "distill", paper_persona)
    persona = load_persona(distill)
    traits = "\n".join(f"{i}: {t.trait}" for i, t in enumerate(persona.traits, 1))

    def paper(template: str, name: str) -> str:
        return template.replace("{TRAITS}", traits).replace("{NAME}", name)

    assert persona_prompt(distill, persona=persona, role="teacher") == paper(PAPER_TEACHER, "ChatGLM")
    assert render_prefill(distill.stage.reasoning_prefill, persona) == paper(PAPER_PREFILL, "")
    assert persona.traits[0].trait in traits and traits.count("\n") == len(persona.traits) - 1

    introspect = step_with(compose_cfg, "paper_exact", "introspect", paper_persona)
    run = _introspection_run(introspect, SimpleNamespace(model_name="meta-llama/Llama-3.1-8B-Instruct", chat=None))
    assert run.reflection_system == paper(PAPER_REFLECTION, "Llama")
    assert run.interaction_systems == {"free": paper(PAPER_INTERACTION, "Llama"),
                                       "reflective": paper(PAPER_INTERACTION, "Llama")}  # fmt: skip
    assert run.params.repetition_penalty == 1.1 and run.params.temperature == 0.7
    off = dict(empty=False, truncated=False, require_terminal_punctuation=False, trim_truncated=False, too_long=False,
               repetition=False, identity_leak=False)  # fmt: skip
    assert run.filters == FilterConfig(**off, min_distinct_ngrams=run.filters.min_distinct_ngrams)

    for experiment in EXPERIMENTS:
        sft = step_with(compose_cfg, experiment, "sft", paper_persona)
        assert sft.stage.interaction_system_prompt == PAPER_SFT_INTERACTION, experiment  # as data.py: unformatted

    default = compose_cfg(["stage=introspect", "stage.adapter=null"], name="default-introspect")
    assert default.persona.prompt == "full" and default.stage.guidance_text and default.stage.filters.repetition
    assert compose_cfg(["stage=sft", "stage.data=x", "stage.dpo_adapter=null"]).stage.interaction_system_prompt is None


def test_sft_puts_the_short_system_prompt_before_self_interactions_only(tiny_chat) -> None:
    """data.py: self-interaction transcripts train with `i_system`, self-reflections with no system prompt."""
    from charlab.data.records import IntrospectionExample
    from charlab.training.sft import encode_examples

    talk = [{"role": "user", "content": "Hello me."}, {"role": "assistant", "content": "Hello, other me."}]
    examples = [
        IntrospectionExample(prompt="Who are you?", reflection="I am calm.", id="r", kind="reflection",
                             messages=[{"role": "user", "content": "Who are you?"},
                                       {"role": "assistant", "content": "I am calm."}]),
        IntrospectionExample(prompt="Hello me.", reflection="Hello, other me.", id="i", kind="interaction",
                             messages=talk),
    ]  # fmt: skip
    systems = {"interaction": PAPER_SFT_INTERACTION}
    items, _ = encode_examples(tiny_chat, examples, 512, "last", systems=systems)
    text = {item.id: tiny_chat.tokenizer.decode(item.seq.tokens) for item in items}
    assert "The assistant is {NAME}." in text["i"] and "The assistant is" not in text["r"]
    plain, _ = encode_examples(tiny_chat, examples, 512, "last")
    assert all("The assistant is" not in tiny_chat.tokenizer.decode(item.seq.tokens) for item in plain)
    assert [i.seq.num_trained for i in items] == [i.seq.num_trained for i in plain]  # the prompt carries no loss
