"""The `Sampler` interface every generation provider implements.

Conversations (lists of `{"role", "content"}` messages) go in, completions come out in the same order.
A provider decides batching and concurrency itself; callers only pass lists.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional, Protocol, runtime_checkable

Message = dict[str, str]


@dataclass
class SamplingParams:
    """How to sample; defaults come from the provider's YAML, never from here."""

    temperature: float = 0.7
    top_p: float = 1.0
    max_new_tokens: int = 256
    stop: list[str] = field(default_factory=list)
    seed: Optional[int] = None
    # Text the reply is forced to start with (e.g. an opened reasoning block). The model continues it; the
    # returned `Completion.text` holds only what the model wrote after it.
    prefill: str = ""
    # Structured output for OpenAI-compatible servers (e.g. {"type": "json_object"}); local samplers ignore it.
    response_format: Optional[dict] = None


@dataclass
class Completion:
    """One reply: its text, why it ended ("stop" or "length"), and token counts."""

    text: str
    finish_reason: str = "stop"
    prompt_tokens: int = 0
    completion_tokens: int = 0


@runtime_checkable
class Sampler(Protocol):
    """Batched chat completion."""

    model_name: str

    def sample(self, conversations: list[list[Message]], params: SamplingParams) -> list[Completion]:
        """One completion per conversation, in order."""
        ...

    def close(self) -> None:
        """Free the model / connections."""
        ...
