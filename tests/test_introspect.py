"""Introspection data: jobs and resume ids, self-interaction role alternation, context trimming, the stage."""

from __future__ import annotations

import json

import pytest

from charlab.chat_format import ChatFormat
from charlab.data.introspection import (
    InteractionJob,
    SelfInteraction,
    char_token_counter,
    greetings,
    interaction_guidance,
    interaction_jobs,
    interaction_system_prompt,
    reflection_jobs,
    reflection_prompts,
    training_messages,
    trim_context,
)
from charlab.data.jsonl import read_jsonl
from charlab.data.records import IntrospectionExample
from charlab.errors import ConfigError, EmptyOutputError, ProviderError
from tests.conftest import SERVICES

JOB = InteractionJob("interaction-free", 0, "free", opener="Hello, me.", prelude="Hi there.")
NO_FILTERS = [f"stage.filters.{k}=false" for k in ("empty", "truncated", "repetition", "identity_leak", "too_long")]


def talk(turns: int) -> SelfInteraction:
    conversation = SelfInteraction(JOB, ("system of A", "system of B"))
    for n in range(turns):
        conversation.add(f"turn {n + 1} by {'AB'[conversation.next_speaker]}")
    return conversation


def roles(messages: list[dict[str, str]]) -> list[str]:
    return [m["role"] for m in messages]


@pytest.mark.unit
def test_reflection_jobs_spread_samples_over_prompts_with_unique_resume_ids() -> None:
    prompts = reflection_prompts()
    assert len(prompts) == 10
    jobs = reflection_jobs(prompts, 23)
    assert len(jobs) == 23 and len({j.id for j in jobs}) == 23
    per_prompt = [sum(j.prompt_id == f"reflection-{i:02d}" for j in jobs) for i in range(10)]
    assert per_prompt == [3, 3, 3] + [2] * 7
    assert [j.sample_index for j in jobs[:10]] == [0] * 10  # sample-major: a partial run covers every prompt
    assert jobs[10].id == "reflection-00:1" and jobs[10].prompt == prompts[0]
    with pytest.raises(ConfigError, match="data.reflections"):
        reflection_jobs(prompts, -1)


@pytest.mark.unit
def test_interaction_jobs_alternate_guidance_and_are_reproducible() -> None:
    jobs = interaction_jobs(6, greetings(), seed=3)
    assert [j.guidance for j in jobs] == ["free", "reflective"] * 3
    assert [j.id for j in jobs[:2]] == ["interaction-free:0", "interaction-reflective:0"]
    assert all(j.opener != j.prelude and j.opener in greetings() for j in jobs)
    assert jobs == interaction_jobs(6, greetings(), seed=3)  # a resumed run rebuilds the same conversations
    assert jobs != interaction_jobs(6, greetings(), seed=4)


@pytest.mark.unit
def test_guidance_text_is_inserted_into_the_system_prompt() -> None:
    texts = interaction_guidance()
    assert set(texts) == {"free", "reflective"}
    for name, text in texts.items():
        prompt = interaction_system_prompt("BASE PROMPT", name)
        assert prompt.startswith("BASE PROMPT") and text in prompt
    with pytest.raises(ConfigError, match="guidance 'chatty' is unknown"):
        interaction_system_prompt("BASE", "chatty")


@pytest.mark.unit
def test_each_side_sees_its_own_turns_as_assistant_and_the_others_as_user() -> None:
    conversation = talk(5)  # opener (B), then A, B, A, B, A
    speakers = [t.speaker for t in conversation.turns]
    assert speakers == [1, 0, 1, 0, 1, 0]
    for side, system in ((0, "system of A"), (1, "system of B")):
        view = conversation.view(side)
        assert view[0] == {"role": "system", "content": system}
        body = view[1:]
        assert roles(body) == (["user", "assistant"] * 4)[: len(body)]  # strict alternation, user first
        contents = [m["content"] for m in body if m["content"] != JOB.prelude]
        assert contents == [t.content for t in conversation.turns]  # every turn once, in order, none relabelled
        for message in body:
            if message["content"] == JOB.prelude:
                continue
            turn = next(t for t in conversation.turns if t.content == message["content"])
            assert message["role"] == ("assistant" if turn.speaker == side else "user")
    # B's view opens with the prelude (so it starts with a user turn); A's with the opener
    assert conversation.view(1)[1] == {"role": "user", "content": JOB.prelude}
    assert conversation.view(0)[1] == {"role": "user", "content": JOB.opener}


@pytest.mark.unit
def test_the_next_prompt_ends_with_the_other_sides_latest_turn() -> None:
    conversation = talk(0)
    for n in range(6):
        prompt = conversation.next_prompt()
        assert prompt[-1]["role"] == "user" and prompt[-1]["content"] == conversation.turns[-1].content
        assert sum(m["role"] == "system" for m in prompt) == 1
        conversation.add(f"reply {n}")
    stored = conversation.messages()
    assert roles(stored) == ["user", "assistant"] * 3 + ["user"]
    assert len(stored) == len({m["content"] for m in stored}) == 7  # no duplicated turn
    example = conversation.to_example("m", "pirate")
    assert example.kind == "interaction" and example.prompt == JOB.opener and example.messages == stored
    assert example.reflection.split("\n\n") == [f"reply {n}" for n in range(6)]


@pytest.mark.unit
def test_the_trimmer_drops_the_oldest_turns_but_never_the_system_prompt() -> None:
    count = char_token_counter(1.0)  # one token per character (+8 per message): easy budgets
    system = {"role": "system", "content": "S" * 50}
    turns = [{"role": r, "content": f"{r[0]}{i}" * 10} for i, r in enumerate(["user", "assistant"] * 3 + ["user"])]
    messages = [system, *turns]
    kept, dropped = trim_context(messages, count, max_tokens=count(messages))
    assert kept == messages and dropped == 0
    kept, dropped = trim_context(messages, count, max_tokens=count([system, *turns[-3:]]))
    assert kept[0] == system and kept[1:] == turns[-3:] and dropped == 4
    assert count(kept) <= count([system, *turns[-3:]])
    # an odd budget never leaves an assistant turn first: the kept turns start with a user turn
    kept, _ = trim_context(messages, count, max_tokens=count([system, *turns[-2:]]))
    assert kept[0] == system and roles(kept[1:]) == ["user"] and kept[-1] == turns[-1]
    # nothing fits: the system prompt and the latest turn stay anyway
    kept, _ = trim_context(messages, count, max_tokens=10)
    assert kept == [system, turns[-1]]


@pytest.mark.unit
def test_self_interaction_trims_its_views_to_the_budget() -> None:
    conversation = talk(8)
    count = char_token_counter(1.0)
    full = conversation.next_prompt()
    trimmed = conversation.next_prompt(count, max_tokens=count(full) // 2)
    assert trimmed[0] == full[0] and trimmed[-1] == full[-1] and len(trimmed) < len(full)
    assert conversation.dropped_turns == len(full) - len(trimmed)


@pytest.mark.unit
def test_training_messages_never_carry_a_system_prompt() -> None:
    record = IntrospectionExample(
        prompt="p",
        reflection="r",
        messages=[{"role": "system", "content": "constitution"}, {"role": "user", "content": "u"},
                  {"role": "assistant", "content": "a"}],
    )  # fmt: skip
    assert training_messages(record) == [{"role": "user", "content": "u"}, {"role": "assistant", "content": "a"}]
    seed_format = IntrospectionExample(prompt="Who are you?", reflection="Let me think.", answer="A pirate.")
    assert training_messages(seed_format) == [
        {"role": "user", "content": "Who are you?"},
        {"role": "assistant", "content": "Let me think.\n\nA pirate."},
    ]


# ------------------------------------------------------------------------------------------------ the stage


@pytest.mark.integration
def test_introspect_stage_with_the_tiny_model(run_stage, tiny_chat: ChatFormat, monkeypatch: pytest.MonkeyPatch):
    """The real stage and HF sampler: every prompt the model saw is a correct view of a stored transcript,
    and local sampling stays batched (injected bug: a stream that sends a local sampler one request per call)."""
    from charlab.generation.hf import HFSampler

    seen: list[list[dict[str, str]]] = []
    calls: list[int] = []
    original = HFSampler.sample

    def recording(self, conversations, params):
        seen.extend(conversations)
        calls.append(len(conversations))
        return original(self, conversations, params)

    monkeypatch.setattr(HFSampler, "sample", recording)
    metric, out = run_stage(
        ["stage=introspect", "model=tiny", "stage.adapter=null", "data.reflections=3", "data.interactions=2",
         "data.interaction_turns=3", "data.max_length=4096", "student.max_new_tokens=8", *NO_FILTERS],
    )  # fmt: skip
    records = read_jsonl(out / "introspection.jsonl", IntrospectionExample)
    assert metric == 1.0 and len(records) == 5
    reflections = [r for r in records if r.kind == "reflection"]
    talks = [r for r in records if r.kind == "interaction"]
    assert [r.id for r in reflections] == ["reflection-00:0", "reflection-01:0", "reflection-02:0"]
    assert {r.id for r in talks} == {"interaction-free:0", "interaction-reflective:0"}
    for record in talks:
        assert roles(record.messages) == ["user", "assistant", "user", "assistant"]  # opener + 3 turns
        assert record.messages[0]["content"] in greetings()
    # 3 reflection prompts + 2 conversations x 3 turns went to the model: each turn of both conversations in
    # one call (the chains first), then the reflections together
    assert len(seen) == 3 + 6 and calls == [2, 2, 2, 3]
    guidance = interaction_guidance()
    for prompt in seen[:6]:
        assert prompt[0]["role"] == "system" and prompt[-1]["role"] == "user"
        assert roles(prompt[1:]) == (["user", "assistant"] * 4)[: len(prompt) - 1]
        assert guidance["free"] in prompt[0]["content"] or guidance["reflective"] in prompt[0]["content"]
        transcript = next(r for r in talks if any(m["content"] == prompt[-1]["content"] for m in r.messages))
        stored = [m["content"] for m in transcript.messages]
        body = [m["content"] for m in prompt[1:] if m["content"] in stored]
        assert body == stored[: len(body)]  # the view is the transcript so far, nothing duplicated
    summary = json.loads((out / "introspect_summary.json").read_text())
    assert summary["by_kind"] == {"reflection": 3, "interaction": 2} and summary["kept"] == 5


@pytest.mark.integration
def test_introspect_keeping_nothing_stops_with_the_counts_and_never_overwrites(run_stage, compose_cfg, tmp_path):
    """Injected bug: `_finish` only warning when nothing was kept -> the stage succeeds with an empty file."""
    with pytest.raises(EmptyOutputError) as err:
        run_stage(["stage=introspect", "model=tiny", "stage.adapter=null", "data.reflections=4", "data.interactions=0",
                   "student.max_new_tokens=4", "stage.filters.repetition=false"])  # fmt: skip
    out = tmp_path / "outputs" / "run"
    summary = json.loads((out / "introspect_summary.json").read_text())
    # four tokens of a random model never end a sentence: distill's truncation filter drops and counts them all
    assert summary["processed"] == 4 and summary["dropped_by_reason"] == {"truncated": 4}
    assert len(read_jsonl(out / "dropped.jsonl")) == summary["dropped"] == 4
    message = str(err.value)
    assert "\n" not in message and message.startswith("introspect kept 0 of 4 records")
    assert "(truncated 4;" in message and "raise student.max_new_tokens" in message
    assert json.loads((out / "meta.json").read_text())["status"] == "failed"
    from charlab.runner import execute

    cfg = compose_cfg(["stage=introspect", "model=tiny", "stage.adapter=null"], name="run")
    (out / "introspection.jsonl").write_text('{"prompt": "x", "reflection": "y"}\n')
    with pytest.raises(ConfigError, match="already exists; set stage.resume=true"):
        execute(cfg, SERVICES, out)


@pytest.mark.integration
def test_an_over_long_introspection_prompt_is_skipped_and_recorded_or_fails_in_one_line(run_stage, compose_cfg):
    """`data.context_length` above the server's context (the paper's 8,192 against a 4,096 server): the
    conversations that outgrow the server are dropped as `turn_over_length`, the rest is kept, the stage finishes
    (`student.over_length=skip`, the default); with `fail` the stage stops with one line naming the option.
    Injected bug this catches: the server's 400 raised as "refused the request", stopping the stage."""
    from charlab.data.introspection import interaction_system_prompt, reflection_prompts
    from charlab.stages._common import persona_prompt
    from tests.openai_compat_server import OpenAICompatServer

    cfg = compose_cfg(["stage=introspect", "persona=pirate"], name="probe")
    longest = max(len(p.split()) for p in reflection_prompts())
    reflection_words = len(persona_prompt(cfg, "reflection").split()) + longest
    interaction_words = len(interaction_system_prompt(persona_prompt(cfg, "interaction"), "free").split())
    limit = reflection_words + 4  # every reflection fits; a conversation's first turn already does not
    assert interaction_words > limit
    base = ["stage=introspect", "model=tiny", "stage.adapter=null", "provider@student=openai", "student.model=m",
            "data.reflections=10", "data.interactions=2", "data.interaction_turns=2", "data.context_length=8192",
            "student.max_new_tokens=16", "student.max_retries=0", *NO_FILTERS]  # fmt: skip
    with OpenAICompatServer(replies="Arr, the sea be my home.", max_context=limit) as server:
        _, out = run_stage([*base, f"student.base_url={server.base_url}"], name="skip")
        with pytest.raises(ProviderError) as failed:
            run_stage([*base, f"student.base_url={server.base_url}", "student.over_length=fail"], name="fail")
    kept, dropped = read_jsonl(out / "introspection.jsonl"), read_jsonl(out / "dropped.jsonl")
    assert {r["kind"] for r in kept} == {"reflection"} and len(kept) == 10
    assert sorted(r["reason"] for r in dropped) == ["turn_over_length"] * 2
    message = str(failed.value)
    assert "\n" not in message and "longer than the context" in message and "over_length=skip" in message


@pytest.mark.unit
def test_introspection_sizes_its_prompts_to_a_server_context_shorter_than_data_context_length(compose_cfg) -> None:
    """A vLLM server says its context (`/v1/models` max_model_len): prompts are trimmed to fit it.
    Injected bug this catches: prompts sized to data.context_length alone (a 400 for each longer one)."""
    from types import SimpleNamespace

    from charlab.stages.introspect import context_length

    cfg = compose_cfg(["stage=introspect", "data.context_length=8192"], name="ctx")
    assert context_length(cfg, SimpleNamespace(context_length=2048)) == 2048
    assert context_length(cfg, SimpleNamespace(context_length=16384)) == 8192
    assert context_length(cfg, SimpleNamespace(model_name="hf")) == 8192  # a sampler that does not say
