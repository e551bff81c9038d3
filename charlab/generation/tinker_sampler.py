"""The `tinker` provider: sampling on the Tinker service from a base model or a `tinker://` checkpoint.

Conversations become tokens through `ChatFormat` with the model's own Hugging Face tokenizer (the one chat
format, also remotely); the service only sees token ids. All requests are submitted before any result is
awaited (at most `max_concurrency` in flight), because the service batches what it has queued; `session`
takes single requests for streaming (`charlab.generation.streaming`).

    sampler = TinkerSampler.create(base_model="Qwen/Qwen3-8B", tokenizer=tokenizer)
    sampler = TinkerSampler.create(checkpoint="tinker://<run>/sampler_weights/final", tokenizer=tokenizer)

Tests drive `TinkerSampler(client, tokenizer, ...)` with a `FakeSamplingClient` that mirrors the SDK.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections import deque
from collections.abc import AsyncIterator
from dataclasses import replace
from typing import Any, Optional

from charlab.chat_format import ChatFormat
from charlab.errors import ProviderError
from charlab.generation.base import Complete, Completion, Message, SamplingParams
from charlab.generation.text import request_seeds, truncate_at_stop


def _tinker() -> Any:
    try:
        import tinker
    except ImportError:
        raise ProviderError(
            "tinker provider: the tinker SDK is not installed; pip install 'charlab[tinker]'"
        ) from None
    return tinker


class TinkerSampler:
    """A `Sampler` over a Tinker `SamplingClient` (or anything with its `sample(...) -> future` method)."""

    def __init__(self, client: Any, tokenizer: Any, model_name: str, max_concurrency: int = 64):
        if max_concurrency < 1:
            raise ProviderError(f"tinker provider: max_concurrency={max_concurrency} is not allowed; use >= 1")
        self.client = client
        self.chat = ChatFormat(tokenizer)
        self.tokenizer = tokenizer
        self.model_name = model_name
        self.max_concurrency = int(max_concurrency)
        self.stop_ids = self.chat.stop_token_ids()

    @classmethod
    def create(
        cls,
        base_model: Optional[str] = None,
        checkpoint: Optional[str] = None,
        tokenizer: Any = None,
        base_url: Optional[str] = None,
        api_key_env: str = "TINKER_API_KEY",
        max_concurrency: int = 64,
    ) -> TinkerSampler:
        """Connect to the service (key from `api_key_env`) and open a sampling client."""
        if not base_model and not checkpoint:
            raise ProviderError(
                "tinker provider: no model; set <role>.model (or model.tinker_name) or <role>.checkpoint=tinker://..."
            )
        if checkpoint and not str(checkpoint).startswith("tinker://"):
            raise ProviderError(f"tinker provider: checkpoint '{checkpoint}' is not a tinker:// path")
        key = os.environ.get(api_key_env or "")
        if not key:
            raise ProviderError(
                f"tinker provider: environment variable {api_key_env} is empty; export your Tinker key (or use .env)"
            )
        tinker = _tinker()
        service = tinker.ServiceClient(base_url=base_url, api_key=key)
        try:
            client = service.create_sampling_client(model_path=checkpoint, base_model=base_model)
            client = client.result() if hasattr(client, "result") else client
        except Exception as err:  # the SDK raises its own types; the user needs one line
            raise ProviderError(
                f"tinker provider: cannot open a sampler for {checkpoint or base_model}: {err}"
            ) from None
        if tokenizer is None:
            tokenizer = client.get_tokenizer()
        return cls(client, tokenizer, model_name=checkpoint or base_model or "", max_concurrency=max_concurrency)

    def sample(self, conversations: list[list[Message]], params: SamplingParams) -> list[Completion]:
        """One completion per conversation, in order; requests go out together and are gathered."""
        if not conversations:
            return []
        seeds = request_seeds(params.seed, conversations)
        in_flight: deque[tuple[int, int, Any]] = deque()
        results: list[Optional[Completion]] = [None] * len(conversations)

        def collect() -> None:
            index, prompt_len, future = in_flight.popleft()
            results[index] = self._completion(prompt_len, future.result(), params)

        for index, (messages, seed) in enumerate(zip(conversations, seeds)):
            if len(in_flight) >= self.max_concurrency:
                collect()
            in_flight.append((index, *self._submit(messages, replace(params, seed=seed))))
        while in_flight:
            collect()
        return results  # type: ignore[return-value]

    @contextlib.asynccontextmanager
    async def session(self) -> AsyncIterator[Complete]:
        """Single requests for streaming (`StreamingSampler`): submitted at once, awaited without a thread."""

        async def complete(messages: list[Message], params: SamplingParams) -> Completion:
            prompt_len, future = self._submit(messages, params)
            response = await asyncio.wrap_future(future.future())  # the SDK's APIFuture as a concurrent future
            return self._completion(prompt_len, response, params)

        yield complete

    def _submit(self, messages: list[Message], params: SamplingParams) -> tuple[int, Any]:
        """Send one request (seed as given); (prompt length, the SDK's future)."""
        types = _tinker().types
        tokens = self.chat.encode_prompt(messages) + (self.chat.encode_text(params.prefill) if params.prefill else [])
        sampling = types.SamplingParams(
            max_tokens=params.max_new_tokens,
            temperature=params.temperature,
            top_p=params.top_p,
            stop=list(self.stop_ids),  # end-of-turn ids; stop strings are cut on this side
            seed=params.seed,
        )
        prompt = types.ModelInput.from_ints(tokens)
        return len(tokens), self.client.sample(prompt=prompt, num_samples=1, sampling_params=sampling)

    def _completion(self, prompt_len: int, response: Any, params: SamplingParams) -> Completion:
        sequence = response.sequences[0]
        tokens = list(sequence.tokens)
        stops = set(self.stop_ids)
        end = next((k for k, t in enumerate(tokens) if t in stops), None)
        text = self.tokenizer.decode(tokens[:end] if end is not None else tokens, skip_special_tokens=True)
        text, hit = truncate_at_stop(text, params.stop)
        finish = "stop" if hit or end is not None or sequence.stop_reason != "length" else "length"
        return Completion(text=text, finish_reason=finish, prompt_tokens=prompt_len, completion_tokens=len(tokens))

    def close(self) -> None:
        """The SDK owns its connections; drop the reference."""
        self.client = None
