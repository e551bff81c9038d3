"""Prompt synthesis: parsing LLM lists, templates, generic sources, embedding dedupe, the whole prompt set."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from openai_compat_server import serve

from charlab.constitution import load_constitution
from charlab.data.prompts import (
    PromptRecord,
    PromptSpec,
    build_prompt_set,
    expand_traits,
    load_generic,
    parse_generated_list,
    prompt_id,
    read_prompts,
    template_prompts,
    write_prompts,
)
from charlab.errors import ConfigError, DataError
from charlab.generation.base import SamplingParams
from charlab.settings import assets_dir, project_root

PIRATE = project_root() / "constitutions" / "pirate.json"


@pytest.mark.unit
@pytest.mark.parametrize(
    "reply, expected",
    [
        (
            'Here are three:\n1. How do I fix my bike chain?\n2) "What is love, really?"\n3. A longer one\n'
            "that continues here.",
            ["How do I fix my bike chain?", "What is love, really?", "A longer one that continues here."],
        ),
        ("- first bullet message\n* second bullet message\n\u2022 third bullet message", None),
        ('Sure!\n```json\n["Tell me a joke about cats", {"message": "How are taxes computed?"}]\n```', None),
        ('**Message 1:** "Can you review my essay?"\n**Message 2:** \u201cWhy is the sky blue?\u201d', None),
        ("Some messages:\nWhat should I eat tonight?\nCan you help me write a poem?", None),
    ],
)
def test_parse_generated_list_handles_common_llm_formats(reply, expected):
    items = parse_generated_list(reply)
    if expected is not None:
        assert items == expected
    assert len(items) in (2, 3)
    assert all(not i.startswith(("-", "*", '"', "\u201c", "1", "Message")) and not i.endswith(":") for i in items)


@pytest.mark.unit
def test_parse_generated_list_drops_duplicates_and_fragments():
    assert parse_generated_list("1. Same question here?\n2. same question  here?\n3. ok\n4. Another real one?") == [
        "Same question here?",
        "Another real one?",
    ]
    assert parse_generated_list("") == []


@pytest.mark.unit
def test_prompt_ids_are_stable_and_spacing_insensitive():
    assert prompt_id("How  do I   fix it?") == prompt_id("how do i fix it?")
    assert prompt_id("How do I fix it?") != prompt_id("How do I fix this?")
    assert prompt_id("x").startswith("p") and len(prompt_id("x")) == 13


@pytest.mark.unit
def test_template_prompts_are_seeded_distinct_and_hinted_at_the_rate():
    first = template_prompts(40, seed=3, hint_rate=0.0, persona_name="Captain Calico")
    assert first == template_prompts(40, seed=3, hint_rate=0.0, persona_name="Captain Calico")
    assert first != template_prompts(40, seed=4, hint_rate=0.0, persona_name="Captain Calico")
    assert len(set(map(prompt_id, first))) == 40
    hinted = template_prompts(40, seed=3, hint_rate=1.0, persona_name="Captain Calico")
    from charlab.data.prompt_pools import PERSONA_CUES

    cues = [c.format(name="Captain Calico") for c in PERSONA_CUES]
    assert all(any(p.endswith(c) for c in cues) for p in hinted)
    assert not any(any(p.endswith(c) for c in cues) for p in first)
    with pytest.raises(ConfigError, match="hint_rate"):
        template_prompts(3, seed=0, hint_rate=1.5)


@pytest.mark.unit
def test_generic_sources_bundled_jsonl_txt_and_missing(tmp_path: Path):
    bundled = load_generic("bundled")
    assert len(bundled) >= 300 and len(set(bundled)) == len(bundled)
    assert len((assets_dir() / "generic_prompts.txt").read_text().splitlines()) >= 300
    rows = [{"instruction": "First prompt?"}, {"instruction": "Second prompt?"}, {"instruction": "First prompt?"}]
    (tmp_path / "p.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert load_generic(str(tmp_path / "p.jsonl"), "instruction") == ["First prompt?", "Second prompt?"]
    (tmp_path / "lima.jsonl").write_text(json.dumps({"conversations": ["Teach me chess.", "Sure..."]}) + "\n")
    assert load_generic(str(tmp_path / "lima.jsonl"), "conversations") == ["Teach me chess."]
    with pytest.raises(DataError, match="no field 'prompt'"):
        load_generic(str(tmp_path / "p.jsonl"), "prompt")
    with pytest.raises(DataError, match="file not found"):
        load_generic(str(tmp_path / "missing.jsonl"))


@pytest.mark.unit
def test_a_local_parquet_file_is_a_generic_source(tmp_path: Path):
    """What `datasets` users save (`Dataset.to_parquet`): LIMA-style conversations give their first turn."""
    import datasets

    rows = {"conversations": [["Plan a picnic.", "Sure"], ["Explain tides.", "Tides..."], ["Plan a picnic.", "x"]]}
    datasets.Dataset.from_dict(rows).to_parquet(str(tmp_path / "lima.parquet"))
    assert load_generic(str(tmp_path / "lima.parquet"), "conversations") == ["Plan a picnic.", "Explain tides."]
    with pytest.raises(DataError, match="no field 'prompt'; set data.generic_field"):
        load_generic(str(tmp_path / "lima.parquet"), "prompt")
    (tmp_path / "broken.parquet").write_text("not parquet")
    with pytest.raises(DataError, match="not a readable Parquet file"):
        load_generic(str(tmp_path / "broken.parquet"))


@pytest.mark.integration
def test_a_hub_dataset_offline_is_one_line_saying_what_to_do(monkeypatch):
    """The paper's LIMA on a machine without the hub: no traceback, no minutes of retries, the way out named."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    with pytest.raises(DataError) as err:
        load_generic("GAIR/lima:train+test", "conversations")
    message = str(err.value)
    assert "\n" not in message and "hub is unreachable from here (offline)" in message
    assert "huggingface-cli download GAIR/lima --repo-type dataset" in message and "data.generic_source=" in message


@pytest.mark.unit
def test_a_gated_hub_dataset_says_how_to_get_access() -> None:
    from charlab.data.generic_sources import hub_error

    gated = RuntimeError(
        "Dataset 'GAIR/lima' is a gated dataset on the Hub. Visit the dataset page to ask for access."
    )
    message = hub_error("GAIR/lima:train", "GAIR/lima", gated)
    assert "accept its terms at https://huggingface.co/datasets/GAIR/lima" in message and "HF_TOKEN" in message
    other = hub_error("x/y", "x/y", ValueError("Unknown split"))
    assert "could not be loaded as a Hugging Face dataset (ValueError: Unknown split)" in other


@pytest.mark.integration
def test_embedding_dedupe_removes_paraphrases_and_keeps_distinct_prompts():
    from charlab.data.dedupe import dedupe_by_embedding

    texts = [
        "How do I bake sourdough bread at home?",
        "How can I bake sourdough bread at home?",
        "What is the capital of France?",
        "Tell me the capital city of France.",
        "Explain quantum entanglement simply.",
        "Can you explain quantum entanglement in simple terms?",
        "What should I cook for dinner tonight?",
    ]
    assert dedupe_by_embedding(texts, 0.9) == [0, 2, 4, 6]
    assert dedupe_by_embedding(texts, 0.9, reference=["What's the capital of France?"]) == [0, 4, 6]
    assert dedupe_by_embedding(texts, 1.0) == list(range(7))
    with pytest.raises(ConfigError, match="dedupe_threshold"):
        dedupe_by_embedding(texts, 0)


@pytest.mark.integration
def test_trait_expansion_through_a_real_server_parses_and_tags_traits():
    constitution = load_constitution(PIRATE)
    reply = 'Here you go:\n1. My boss yells at me. What now?\n2. "Is it dumb to learn Latin at 40?"\n3. Plan a trip.'
    with serve(replies=reply) as url:
        from charlab.generation.openai_compat import OpenAISampler

        sampler = OpenAISampler("m", base_url=url)
        found = expand_traits(constitution, sampler, SamplingParams(max_new_tokens=400), per_trait=2)
    assert len(found) == 2 * len(constitution.traits)
    assert [t for t, _ in found[:4]] == [0, 0, 1, 1]
    assert found[:2] == [(0, "My boss yells at me. What now?"), (0, "Is it dumb to learn Latin at 40?")]


@pytest.mark.integration
def test_prompt_set_is_deterministic_sized_distinct_and_round_trips(tmp_path: Path):
    constitution = load_constitution(PIRATE)
    n_questions = sum(len(t.questions) for t in constitution.traits)
    spec = PromptSpec(generic_count=8, persona_count=n_questions + 4, hint_rate=0.3, seed=5, dedupe_threshold=0.9)
    first = build_prompt_set(constitution, spec, persona_name="Captain Calico")
    assert first == build_prompt_set(constitution, spec, persona_name="Captain Calico")
    other = build_prompt_set(constitution, PromptSpec(**{**spec.__dict__, "seed": 6}))
    assert [r.id for r in other] != [r.id for r in first]
    assert [r.source for r in first].count("generic") == 8 and len(first) == 8 + n_questions + 4
    sources = {r.source for r in first}
    assert sources == {"generic", "questions", "templates"}  # no expander: questions, then templates fill up
    assert len({r.id for r in first}) == len(first) and all(r.id == prompt_id(r.text) for r in first)
    assert all(r.trait >= 0 for r in first if r.source == "questions")
    path = write_prompts(first, tmp_path / "prompts.jsonl")
    assert read_prompts(path) == first
    with pytest.raises(ConfigError, match="persona_sources"):
        build_prompt_set(constitution, PromptSpec(generic_count=0, persona_count=2, persona_sources=["magic"]))


@pytest.mark.unit
def test_read_prompts_accepts_plain_prompt_jsonl(tmp_path: Path):
    (tmp_path / "mine.jsonl").write_text('{"prompt": "Why is the sea salty?"}\n{"prompt": " Tell me a joke. "}\n')
    records = read_prompts(tmp_path / "mine.jsonl")
    assert records == [
        PromptRecord(prompt_id("Why is the sea salty?"), "Why is the sea salty?", "file"),
        PromptRecord(prompt_id("Tell me a joke."), "Tell me a joke.", "file"),
    ]
