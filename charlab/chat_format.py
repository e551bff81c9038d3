"""The one chat format: conversations to text, prompt tokens, and training tokens with a loss mask.

Teacher, student, policy, reference, SFT and inference all go through `ChatFormat`, so a persona is never
trained in one format and sampled in another. Rendering uses the tokenizer's own chat template. The loss
mask is found by rendering the conversation incrementally: the text an assistant turn adds after its
generation prompt (its content and end-of-turn marker) is what the model is trained to produce; character
offsets map that span onto the tokens of the full rendering, so the mask matches the tokens actually trained.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal, Optional

from charlab.errors import ConfigError

Message = dict[str, str]
TrainOn = Literal["all", "last"]
ROLES = ("system", "user", "assistant")
END_OF_TURN_TOKENS = ("<|im_end|>", "<|eot_id|>", "<end_of_turn>", "<|end|>", "<|endoftext|>", "</s>")


def make_messages(user: str, system: Optional[str] = None, history: Optional[list[Message]] = None) -> list[Message]:
    """A conversation: optional system prompt, earlier turns, then the user's message."""
    messages: list[Message] = [{"role": "system", "content": system}] if system else []
    messages.extend(history or [])
    messages.append({"role": "user", "content": user})
    return messages


def check_messages(messages: list[Message]) -> None:
    """Raise a one-line error unless every message has a known role and string content."""
    if not messages:
        raise ConfigError("conversation is empty")
    for i, message in enumerate(messages):
        if message.get("role") not in ROLES:
            raise ConfigError(f"message {i}: role {message.get('role')!r} is not one of {', '.join(ROLES)}")
        if not isinstance(message.get("content"), str):
            raise ConfigError(f"message {i}: content must be a string")


@dataclass
class EncodedChat:
    """Token ids of a rendered conversation and a 0/1 mask of the tokens that carry the loss."""

    input_ids: list[int]
    loss_mask: list[int]
    prompt_length: int = 0  # tokens before the first trained token
    meta: dict[str, Any] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.input_ids)

    @property
    def num_trained(self) -> int:
        return int(sum(self.loss_mask))


class ChatFormat:
    """Turns conversations into text and tokens with one tokenizer's chat template."""

    def __init__(self, tokenizer: Any, template_kwargs: Optional[dict[str, Any]] = None):
        if not getattr(tokenizer, "chat_template", None):
            raise ConfigError(
                f"tokenizer {getattr(tokenizer, 'name_or_path', '?')!r} has no chat template; set model.chat_template"
            )
        if not getattr(tokenizer, "is_fast", False):
            raise ConfigError(f"tokenizer {getattr(tokenizer, 'name_or_path', '?')!r} is not a fast tokenizer")
        self.tokenizer = tokenizer
        self.template_kwargs = dict(template_kwargs or {})

    # ---- text -----------------------------------------------------------------------------------------
    def render(self, messages: list[Message], add_generation_prompt: bool = True) -> str:
        """The conversation as the model sees it; with a generation prompt it ends where the reply starts."""
        check_messages(messages)
        return self.tokenizer.apply_chat_template(
            messages, tokenize=False, add_generation_prompt=add_generation_prompt, **self.template_kwargs
        )

    # ---- tokens ---------------------------------------------------------------------------------------
    def encode_text(self, text: str) -> list[int]:
        """Token ids of already-rendered text (the template writes its own special tokens)."""
        return list(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def encode_prompt(self, messages: list[Message]) -> list[int]:
        """Token ids of a conversation ready for the assistant's next reply (what samplers feed the model)."""
        return self.encode_text(self.render(messages, add_generation_prompt=True))

    def stop_token_ids(self) -> list[int]:
        """Ids that end an assistant turn: the tokenizer's EOS plus known end-of-turn markers in its vocab."""
        ids = {self.tokenizer.eos_token_id} if self.tokenizer.eos_token_id is not None else set()
        vocab = self.tokenizer.get_vocab()
        ids.update(vocab[t] for t in END_OF_TURN_TOKENS if t in vocab and t in self.tokenizer.all_special_tokens)
        return sorted(ids)

    def encode_with_mask(
        self, messages: list[Message], train_on: TrainOn = "all", roles: tuple[str, ...] = ("assistant",)
    ) -> EncodedChat:
        """Tokens of the whole conversation and a mask over the turns of `roles` (all of them, or the last).

        The span of a trained turn starts after its generation prompt and ends where the next turn starts,
        so it includes the end-of-turn marker: the model learns to stop.
        """
        check_messages(messages)
        if train_on not in ("all", "last"):
            raise ConfigError(f"train_on={train_on!r} is not allowed; use 'all' or 'last'")
        trained = [i for i, m in enumerate(messages) if m["role"] in roles]
        if not trained:
            raise ConfigError(f"conversation has no {'/'.join(roles)} turn to train on")
        if train_on == "last":
            trained = trained[-1:]
        full = self.render(messages, add_generation_prompt=False)
        spans = []
        for i in trained:
            start_text = self.render(messages[:i], add_generation_prompt=True) if i else ""
            end_text = self.render(messages[: i + 1], add_generation_prompt=False)
            if not full.startswith(end_text) or not end_text.startswith(start_text):
                raise ConfigError(
                    f"the chat template of {self.tokenizer.name_or_path!r} does not render conversations "
                    "incrementally, so the loss mask cannot be located; set model.chat_template"
                )
            spans.append((len(start_text), len(end_text)))
        enc = self.tokenizer(full, add_special_tokens=False, return_offsets_mapping=True)
        ids = list(enc["input_ids"])
        mask = [0] * len(ids)
        for t, (start, end) in enumerate(enc["offset_mapping"]):
            if end > start and any(s <= start < e for s, e in spans):
                mask[t] = 1
        prompt_length = mask.index(1) if 1 in mask else len(ids)
        return EncodedChat(ids, mask, prompt_length)

    def encode_completion(self, prompt: list[Message], completion: str) -> EncodedChat:
        """A prompt conversation plus one assistant reply, with the loss on the reply (DPO's sequences)."""
        return self.encode_with_mask(prompt + [{"role": "assistant", "content": completion}], train_on="last")
