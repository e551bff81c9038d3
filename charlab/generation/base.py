"""The `Sampler` interface every generation provider implements.

Conversations (lists of `{"role", "content"}` messages) go in, completions come out in the same order.
A provider decides batching and concurrency itself; callers only pass lists. A provider that can take one
request at a time (an API) also implements `StreamingSampler`, which `charlab.generation.streaming` uses to
keep its `max_concurrency` requests in flight.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from typing import Optional, Protocol, runtime_checkable

Message = dict[str, str]


@dataclass
class SamplingParams:
    """How to sample; defaults come from the provider's YAML, never from here."""

    temperature: float = 0.7
    top_p: float = 1.0
    max_new_tokens: int = 256
    # > 1 makes tokens already in the prompt or the reply less likely (transformers' and vLLM's definition); 1: off
    repetition_penalty: float = 1.0
    stop: list[str] = field(default_factory=list)
    seed: Optional[int] = None
    # Text the reply is forced to start with (e.g. an opened reasoning block). The model continues it; the
    # returned `Completion.text` holds only what the model wrote after it.
    prefill: str = ""
    # Structured output for OpenAI-compatible servers (e.g. {"type": "json_object"}); local samplers ignore it.
    response_format: Optional[dict] = None
    # Ask for the k most likely tokens at each generated position (`Completion.logprobs`); 0: none. Providers
    # that cannot return them leave `Completion.logprobs` as None.
    top_logprobs: int = 0


@dataclass
class Completion:
    """One reply: its text, why it ended ("stop" or "length"), token counts, and retries it took."""

    text: str
    finish_reason: str = "stop"
    prompt_tokens: int = 0
    completion_tokens: int = 0
    retries: int = 0
    # With `SamplingParams.top_logprobs`: per generated token {"token": text, "logprob": its log-probability,
    # "top": {token text: logprob}}; None where the provider cannot send them.
    logprobs: Optional[list[dict]] = None


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


Complete = Callable[[list[Message], SamplingParams], Awaitable[Completion]]


@runtime_checkable
class StreamingSampler(Sampler, Protocol):
    """A sampler that also completes single requests concurrently (API providers)."""

    max_concurrency: int

    def session(self) -> AbstractAsyncContextManager[Complete]:
        """An async context (connections open) yielding `complete(messages, params)` for one request.

        `params.seed` is used as given (the caller has already made it per request). Callers keep at most
        `max_concurrency` requests in flight.
        """
        ...


@runtime_checkable
class ChoiceScorer(Protocol):
    """A sampler that can also score fixed answers: the log-probability of each choice as the reply's next text."""

    def score_choices(
        self, conversations: list[list[Message]], choices: list[list[str]], prefill: str = "", per_token: bool = False
    ) -> list[list[float]]:
        """For each conversation, the log-probability of each of its choices right after the assistant turn
        starts with `prefill` (a choice's text is appended to the prefill as is, e.g. prefill "ANSWER:",
        choice " A"); `per_token`: the mean over the choice's tokens."""
        ...
