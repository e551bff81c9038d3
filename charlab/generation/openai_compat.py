"""The `openai` provider: any OpenAI-compatible chat-completions server (OpenAI, vLLM, ...).

Requests go out concurrently through the official async client, at most `max_concurrency` at a time, each
with its own timeout: a whole list through `sample`, or one at a time through `session` (streaming). Rate
limits (429), server errors (5xx), timeouts and dropped connections are retried
with exponential backoff and jitter (honouring `Retry-After`); problems retrying cannot fix (no key, a
rejected key, an unknown model, a bad request) stop the call with a one-line `ProviderError`. A request longer
than the server's context (a 400 that says so) is handled as `over_length` says: `skip` returns an empty
completion with finish_reason "over_length" (the stage records it as dropped and goes on), `fail` stops with one
line. The key is read from the environment variable `api_key_env`, never from a file; a loopback server may run
without one.

    sampler = OpenAISampler("Qwen/Qwen3-8B", base_url="http://127.0.0.1:8000/v1", max_concurrency=32)
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
import os
import random
import re
from collections.abc import AsyncIterator, Coroutine
from dataclasses import replace
from typing import Any, Optional, TypeVar
from urllib.parse import urlparse

from charlab.errors import ProviderError
from charlab.generation.base import Complete, Completion, Message, SamplingParams
from charlab.generation.text import request_seeds, truncate_at_stop

log = logging.getLogger("charlab")
T = TypeVar("T")
OPENAI_URL = "https://api.openai.com/v1"
LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1", "0.0.0.0")
OVER_LENGTH = ("skip", "fail")
# what OpenAI and vLLM (old and new) say when a prompt does not fit the model's context
TOO_LONG = re.compile(r"context.length|maximum model length|context_length_exceeded", re.IGNORECASE)


def run_sync(coro: Coroutine[Any, Any, T]) -> T:
    """Run a coroutine to completion from sync code, also when the caller already runs an event loop."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(coro)
    with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:  # e.g. inside Streamlit or Jupyter
        return pool.submit(asyncio.run, coro).result()


def is_loopback(url: str) -> bool:
    """Whether `url` points at this machine (a local test or vLLM server may need no key)."""
    return (urlparse(url).hostname or "") in LOOPBACK_HOSTS


def _one_line(err: BaseException, limit: int = 200) -> str:
    text = " ".join(str(err).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


class OpenAISampler:
    """A `Sampler` over an OpenAI-compatible chat-completions endpoint."""

    def __init__(
        self,
        model: str,
        base_url: Optional[str] = None,
        api_key_env: str = "OPENAI_API_KEY",
        max_concurrency: int = 32,
        timeout_s: float = 120.0,
        max_retries: int = 6,
        retry_backoff_s: float = 1.0,
        retry_backoff_max_s: float = 60.0,
        over_length: str = "fail",
    ):
        if not model:
            raise ProviderError("openai provider: no model name; set <role>.model to a model the server serves")
        if base_url is not None and not str(base_url).strip():
            raise ProviderError(
                "openai provider: base_url is empty; set it to the server's URL (e.g. http://127.0.0.1:8000/v1) "
                "or leave it null for api.openai.com"
            )
        url = str(base_url or OPENAI_URL).rstrip("/")
        if urlparse(url).scheme not in ("http", "https") or not urlparse(url).hostname:
            raise ProviderError(f"openai provider: base_url '{url}' is not an http(s) URL like http://host:8000/v1")
        key = os.environ.get(api_key_env) if api_key_env else None
        if not key and not is_loopback(url):
            raise ProviderError(
                f"openai provider: environment variable {api_key_env or '(api_key_env unset)'} is empty but "
                f"{url} needs a key; export it (or put it in .env), or point base_url at a local server"
            )
        if max_concurrency < 1 or max_retries < 0 or timeout_s <= 0:
            raise ProviderError(
                f"openai provider: max_concurrency={max_concurrency}, max_retries={max_retries}, "
                f"timeout_s={timeout_s} not allowed; use >= 1, >= 0 and > 0"
            )
        if over_length not in OVER_LENGTH:
            raise ProviderError(
                f"openai provider: over_length={over_length!r} is not allowed; use {' or '.join(OVER_LENGTH)}"
            )
        self.over_length = over_length
        self.model_name = model
        self.base_url = url
        self._api_key = key or "no-key"  # the client insists on some key; a loopback server ignores it
        self.max_concurrency = int(max_concurrency)
        self.timeout_s = float(timeout_s)
        self.max_retries = int(max_retries)
        self.retry_backoff_s = float(retry_backoff_s)
        self.retry_backoff_max_s = float(retry_backoff_max_s)
        self.stats = {"requests": 0, "retries": 0, "over_length": 0}
        self._token_field = "max_tokens"  # switched once if the server wants max_completion_tokens
        self._logprobs_refused = False  # set once if the server rejects logprobs (then replies come without)

    # ---- public -------------------------------------------------------------------------------------------
    def sample(self, conversations: list[list[Message]], params: SamplingParams) -> list[Completion]:
        """One completion per conversation, in order, requested concurrently."""
        if not conversations:
            return []
        return run_sync(self._sample_all(conversations, params))

    @contextlib.asynccontextmanager
    async def session(self) -> AsyncIterator[Complete]:
        """One connection pool for many single requests (`StreamingSampler`); at most `max_concurrency` at once."""
        from openai import AsyncOpenAI

        client = AsyncOpenAI(api_key=self._api_key, base_url=self.base_url, timeout=self.timeout_s, max_retries=0)
        gate = asyncio.Semaphore(self.max_concurrency)
        try:
            yield lambda messages, params: self._request(client, gate, messages, params)
        finally:
            await client.close()

    def close(self) -> None:
        """Nothing persistent to free: each call or session opens and closes its own connection pool."""

    # ---- async core ---------------------------------------------------------------------------------------
    async def _sample_all(self, conversations: list[list[Message]], params: SamplingParams) -> list[Completion]:
        seeds = request_seeds(params.seed, conversations)
        async with self.session() as complete:
            tasks = [
                asyncio.ensure_future(complete(messages, replace(params, seed=seed)))
                for messages, seed in zip(conversations, seeds)
            ]
            try:
                return list(await asyncio.gather(*tasks))
            except BaseException:
                for task in tasks:  # one fatal error ends the call: stop the requests still in flight
                    task.cancel()
                await asyncio.gather(*tasks, return_exceptions=True)
                raise

    async def _request(
        self, client: Any, gate: asyncio.Semaphore, messages: list[Message], params: SamplingParams
    ) -> Completion:
        import openai
        from openai.types.chat import ChatCompletion

        body: dict[str, Any] = {
            "model": self.model_name,
            "messages": list(messages),
            "temperature": params.temperature,
        }
        body["top_p"] = params.top_p
        if params.repetition_penalty != 1.0:  # vLLM's extension of the API (OpenAI's own has none: sent only when set)
            body["repetition_penalty"] = params.repetition_penalty
        if params.stop:
            body["stop"] = list(params.stop)
        if params.seed is not None:
            body["seed"] = params.seed
        if params.response_format:
            body["response_format"] = dict(params.response_format)
        if params.top_logprobs > 0 and not self._logprobs_refused:  # OpenAI allows at most 20
            body["logprobs"], body["top_logprobs"] = True, min(20, int(params.top_logprobs))
        if params.prefill:  # vLLM's continuation of a started assistant turn
            body["messages"] = body["messages"] + [{"role": "assistant", "content": params.prefill}]
            body.update(continue_final_message=True, add_generation_prompt=False)
        retries = 0
        for attempt in range(self.max_retries + 1):
            try:
                async with gate:
                    self.stats["requests"] += 1
                    # the client's own `post`: `chat.completions.create` would re-validate every message against
                    # its typed schema, several ms of CPU per request that a stream at full concurrency cannot spare
                    response = await client.post(
                        "/chat/completions",
                        body={**body, self._token_field: params.max_new_tokens},
                        cast_to=ChatCompletion,
                    )
                return self._completion(response, params, retries=retries)
            except openai.NotFoundError as err:
                raise ProviderError(await self._unknown_model(client, err)) from None
            except (openai.AuthenticationError, openai.PermissionDeniedError) as err:
                raise ProviderError(
                    f"openai provider: {self.base_url} rejected the key ({err.status_code}): {_one_line(err)}"
                ) from None
            except openai.BadRequestError as err:
                if self._token_field == "max_tokens" and "max_completion_tokens" in str(err):
                    self._token_field = "max_completion_tokens"
                    continue
                if "logprobs" in body and "logprobs" in str(err).lower():
                    self._logprobs_refused = True  # e.g. reasoning models: a judge falls back to parsing text
                    body.pop("logprobs"), body.pop("top_logprobs", None)
                    log.warning("openai provider: %s refused logprobs; continuing without", self.base_url)
                    continue
                if TOO_LONG.search(str(err)):
                    return self._over_length(err)
                raise ProviderError(
                    f"openai provider: {self.base_url} refused the request: {_one_line(err)}"
                ) from None
            except (openai.APIConnectionError, openai.RateLimitError, openai.APIStatusError) as err:
                status = getattr(err, "status_code", None)
                if isinstance(err, openai.APIStatusError) and not (status == 429 or status >= 500 or status == 408):
                    raise ProviderError(
                        f"openai provider: {self.base_url} answered {status}: {_one_line(err)}"
                    ) from None
                if attempt == self.max_retries:
                    raise ProviderError(
                        f"openai provider: {self.base_url} still failing after {attempt + 1} attempts "
                        f"({type(err).__name__}: {_one_line(err, 120)}); raise max_retries or check the server"
                    ) from None
                self.stats["retries"] += 1
                retries += 1
                delay = self._backoff(attempt, err)
                log.debug("openai request failed (%s); retry %d in %.2fs", type(err).__name__, attempt + 1, delay)
                await asyncio.sleep(delay)
        raise AssertionError("unreachable")  # pragma: no cover

    def _over_length(self, err: BaseException) -> Completion:
        """A request longer than the server's context: an empty "over_length" completion (skip) or one line (fail)."""
        if self.over_length == "fail":
            raise ProviderError(
                f"openai provider: a request is longer than the context of '{self.model_name}' at {self.base_url} "
                f"({_one_line(err, 160)}); raise the server's context (vllm: <role>.server.max_model_len), shorten "
                "the prompts (data.context_length) or set <role>.over_length=skip"
            ) from None
        self.stats["over_length"] += 1
        if self.stats["over_length"] == 1:
            log.warning("openai provider: a request over the context of %s was skipped (%s); later ones are counted",
                        self.model_name, _one_line(err, 160))  # fmt: skip
        return Completion(text="", finish_reason="over_length")

    def _backoff(self, attempt: int, err: BaseException) -> float:
        """Exponential backoff with equal jitter, at least the server's Retry-After (both capped)."""
        ceiling = min(self.retry_backoff_max_s, self.retry_backoff_s * 2**attempt)
        delay = ceiling / 2 + random.uniform(0, ceiling / 2)
        response = getattr(err, "response", None)
        retry_after = response.headers.get("retry-after") if response is not None else None
        try:
            delay = max(delay, min(float(retry_after), self.retry_backoff_max_s)) if retry_after else delay
        except ValueError:  # an HTTP date instead of seconds: keep our own delay
            pass
        return delay

    async def _unknown_model(self, client: Any, err: BaseException) -> str:
        served = ""
        try:
            names = [m.id async for m in client.models.list()]
            served = f"; it serves: {', '.join(names[:10])}" if names else ""
        except Exception:  # listing is a courtesy; the 404 is the error
            pass
        return (
            f"openai provider: model '{self.model_name}' not found at {self.base_url} (404){served}; "
            "check <role>.model and that base_url ends in /v1"
        )

    def _completion(self, response: Any, params: SamplingParams, retries: int = 0) -> Completion:
        if not getattr(response, "choices", None):
            raise ProviderError(f"openai provider: {self.base_url} returned no choices for model '{self.model_name}'")
        choice = response.choices[0]
        text, hit = truncate_at_stop(choice.message.content or "", params.stop)
        usage = getattr(response, "usage", None)
        return Completion(
            text=text,
            finish_reason="length" if choice.finish_reason == "length" and not hit else "stop",
            prompt_tokens=int(getattr(usage, "prompt_tokens", 0) or 0),
            completion_tokens=int(getattr(usage, "completion_tokens", 0) or 0),
            retries=retries,
            logprobs=_token_logprobs(choice) if params.top_logprobs > 0 else None,
        )


def _token_logprobs(choice: Any) -> Optional[list[dict]]:
    """Per generated token: its text and the server's top alternatives ({token: logprob}); None if not sent."""
    content = getattr(getattr(choice, "logprobs", None), "content", None)
    if not content:
        return None
    return [
        {
            "token": str(item.token),
            "logprob": float(item.logprob),
            "top": {str(alt.token): float(alt.logprob) for alt in (item.top_logprobs or [])}
            or {str(item.token): float(item.logprob)},
        }
        for item in content
    ]
