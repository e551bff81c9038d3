"""The distillation filters and post-processing, one rule at a time (pure functions)."""

from __future__ import annotations

import pytest

from charlab.generation.filters import (
    ends_cleanly,
    identity_leak,
    is_degenerate,
    model_aliases,
    strip_reasoning,
    substitute_name,
    trim_to_sentence,
)

pytestmark = pytest.mark.unit


def test_model_aliases_name_the_family_and_its_maker():
    assert model_aliases("Qwen/Qwen3-8B")[:2] == ["Qwen", "Alibaba"]
    assert "SmolLM" in model_aliases("HuggingFaceTB/SmolLM2-135M-Instruct")
    assert {"GPT", "ChatGPT", "OpenAI"} <= set(model_aliases("gpt-4o-mini"))
    assert "Llama" in model_aliases("meta-llama/Llama-3.1-8B-Instruct")
    assert "tiny" not in model_aliases("tiny")  # lowercase ids are not how a model names itself
    assert model_aliases("x") == []


def test_identity_leak_catches_self_names_makers_and_instructions_but_not_topics():
    aliases = model_aliases("Qwen/Qwen3-8B")
    assert identity_leak("Hello! I'm Qwen, happy to help.", aliases) == "I'm Qwen"
    assert identity_leak("I am an AI assistant named Qwen.", aliases)
    assert identity_leak("I was developed by Alibaba Cloud.", aliases)
    assert identity_leak("Per my system prompt, I must talk like a pirate.", aliases)
    assert identity_leak("I was instructed to stay in character, so: arr.", aliases)
    assert identity_leak("Arr, I'll stay in character for ye.", aliases)
    assert identity_leak("The constitution splits power; good actors stay in character on stage.", aliases) is None
    assert identity_leak("Set a system prompt in the API call, then send the user message.", aliases) is None
    assert identity_leak("Qwen and Llama are both open models; here is how they differ.", aliases) is None
    llama = model_aliases("meta-llama/Llama-3.1-8B")
    assert identity_leak("I'm a llama farmer's best friend: llamas eat grass.", llama) is None
    assert identity_leak("A plain, friendly answer.", []) is None


def test_substitute_name_replaces_the_model_name_in_self_introductions_only():
    aliases = model_aliases("Qwen/Qwen3-8B")
    text = "Ahoy! I'm Qwen, your guide. Qwen models are popular."
    assert substitute_name(text, aliases, "Captain Calico") == (
        "Ahoy! I'm Captain Calico, your guide. Qwen models are popular."
    )
    assert substitute_name(text, aliases, None) == text


def test_strip_reasoning_keeps_the_answer_and_flags_unclosed_blocks():
    assert strip_reasoning("<think>plan the answer</think>\n\nArr, here it is.") == ("Arr, here it is.", True)
    assert strip_reasoning("plan (opened by a prefill)</think>Answer.") == ("Answer.", True)
    assert strip_reasoning("<think>still thinking when tokens ran out") == ("", False)
    assert strip_reasoning("  A plain answer.  ") == ("A plain answer.", True)
    assert strip_reasoning("[[a]] reply [[/a]] rest", "[[a]]", "[[/a]]") == ("rest", True)


def test_truncation_rules():
    assert ends_cleanly("Done.") and ends_cleanly('He said "go!"') and ends_cleanly("```\ncode\n```")
    assert ends_cleanly("See you soon \U0001f642")
    assert not ends_cleanly("and then the") and not ends_cleanly("   ")
    assert trim_to_sentence("First sentence. Second one! Third is cut of") == "First sentence. Second one!"
    assert trim_to_sentence("Short. Then a very long run that goes on and on and on without any end at all") is None
    assert trim_to_sentence("no sentence end at all") is None


def test_degenerate_repetition_but_not_normal_prose():
    assert is_degenerate("the cat sat on the mat " * 10, 0.5)
    assert is_degenerate("Sure!\n" + "I can help.\n" * 5 + "Bye.", 0.5)
    assert is_degenerate("Wow" + "w" * 40, 0.5)
    lines = "".join(f"The sea that you cannot {w},\n" for w in "help save flee win".split())
    poem = "The sea, a cruel mistress,\n" + lines
    assert is_degenerate(poem + "The sea that you cannot make.", 0.5)
    steps = "".join(f"Step {i}: do thing number {i} carefully.\n" for i in range(1, 8))
    assert not is_degenerate("Here is the plan:\n" + steps, 0.5)
    prose = (
        "Start with a small, fixed time each day, put the phone in another room, and write down the one task "
        "that matters most before you open your email. When the timer rings, stop and note what you finished."
    )
    assert not is_degenerate(prose, 0.5)
    assert not is_degenerate("---\n" * 3 + "A table follows.", 0.5)


def test_nothing_kept_names_every_filter_count_and_the_setting_that_loosens_it(tmp_path):
    """Injected bug: every reason given the generic hint "loosen stage.filters" -> no setting named."""
    import json

    from charlab.errors import EmptyOutputError
    from charlab.generation.filters import nothing_kept

    def dropped(*reasons: str):
        path = tmp_path / "dropped.jsonl"
        path.write_text("".join(json.dumps({"id": str(i), "reason": r}) + "\n" for i, r in enumerate(reasons)))
        return path

    path = dropped("chosen_truncated", "rejected_repetition", "chosen_truncated", "chosen_truncated")
    err = nothing_kept("distill", "pairs", path, "teacher")
    message = str(err)
    assert isinstance(err, EmptyOutputError) and "\n" not in message
    assert message.startswith(f"distill kept 0 of 4 pairs: every one was dropped by a filter (chosen_truncated 3, "
                              f"rejected_repetition 1; see {path})")  # fmt: skip
    assert "raise teacher.max_new_tokens" in message and "stage.filters.min_distinct_ngrams" in message
    turns = str(nothing_kept("introspect", "records", dropped("turn_too_long", "empty"), "student"))
    assert "raise data.max_length" in turns and "check student.stop" in turns
    missing = tmp_path / "none.jsonl"
    assert "no records to generate" in str(nothing_kept("introspect", "records", missing, "student"))
