"""The request stream: API lanes full up to max_concurrency, follow-ups first, local lanes batched, errors stop it.

API lanes run against the real loopback OpenAI-compatible server; local lanes against `ListSampler`, a small
`Sampler` implementation that answers from a rule and records each `sample()` call (the scheduler is the
thing under test, not a model).
"""

from __future__ import annotations

import itertools
import threading
from collections import Counter

import pytest
from openai_compat_server import OpenAICompatServer

from charlab.errors import ProviderError
from charlab.generation.base import Completion, SamplingParams
from charlab.generation.openai_compat import OpenAISampler
from charlab.generation.streaming import Request, RequestStream

PARAMS = SamplingParams(temperature=0.0, max_new_tokens=16, seed=0)


def user(text: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": text}]


class ListSampler:
    """A local-style `Sampler` (no `session`): echoes the last message and records every call's size."""

    def __init__(self, name: str = "local"):
        self.model_name = name
        self.calls: list[list[str]] = []

    def sample(self, conversations, params):
        self.calls.append([c[-1]["content"] for c in conversations])
        return [Completion(text=f"re: {c[-1]['content']}", completion_tokens=2) for c in conversations]

    def close(self) -> None:
        pass


@pytest.mark.integration
@pytest.mark.timing
def test_an_api_lane_fills_max_concurrency_and_never_exceeds_it():
    """Injected bug: a lane that ignores its limit sends more than max_concurrency at once."""
    first_eight = threading.Barrier(8, timeout=120)  # the first 8 replies wait until all 8 are in flight
    count = itertools.count()

    def reply(messages):
        if next(count) < 8:
            first_eight.wait()
        return f"You said: {messages[-1]['content']}."

    with OpenAICompatServer(replies=reply, latency_s=0.05) as server:
        sampler = OpenAISampler("m", base_url=server.base_url, max_concurrency=8)
        replies: dict[int, str] = {}
        stream = RequestStream()
        stats = stream.run(
            (Request(sampler, user(f"q{i}"), PARAMS, tag=i) for i in range(40)),
            lambda request, completion: replies.__setitem__(request.tag, completion.text),
        )
        assert server.max_in_flight == 8 and stats.max_in_flight == 8
        assert replies == {i: f"You said: q{i}." for i in range(40)}
        assert stats.done == 40 and stats.capacity == 8 and stats.completion_tokens > 0
        seeds = [body["seed"] for body in server.requests]
        assert len(set(seeds)) == 40  # per-request seeds, from params.seed and the conversation


@pytest.mark.integration
@pytest.mark.timing
def test_a_slow_reply_holds_only_its_own_slot():
    """Injected bug: chunked rounds (the next requests wait until the whole group returned) would leave the
    other 30 requests queued behind the held one until the safety timeout."""
    release = threading.Event()
    answered: list[str] = []

    def reply(messages):
        last = messages[-1]["content"]
        if last == "slow":
            release.wait(timeout=600)  # a safety net only: the 30 other replies set it
        answered.append(last)
        if len(answered) == 30:
            release.set()  # every other request came back while "slow" held its slot
        return "ok"

    with OpenAICompatServer(replies=reply) as server:
        sampler = OpenAISampler("m", base_url=server.base_url, max_concurrency=4, timeout_s=900)
        source = [Request(sampler, user(f"q{i}"), PARAMS) for i in range(30)]
        source.insert(0, Request(sampler, user("slow"), PARAMS))
        RequestStream().run(source, lambda r, c: None)
    assert answered[-1] == "slow" and len(answered) == 31


@pytest.mark.integration
@pytest.mark.timing
def test_a_conversation_advances_as_soon_as_its_previous_turn_returns():
    """Injected bug: follow-ups held back until the other requests of their round return (the old chunked
    loop) — the fast chain would then wait for the slow reply."""
    slow_release = threading.Event()
    order: list[str] = []

    def reply(messages):
        last = messages[-1]["content"]
        if last == "slow":
            slow_release.wait(timeout=600)  # a safety net only: the fast chain's last turn sets it
        order.append(last)
        return f"{last}+"

    with OpenAICompatServer(replies=reply) as server:
        sampler = OpenAISampler("m", base_url=server.base_url, max_concurrency=4, timeout_s=900)

        def on_reply(request, completion):
            kind, turn = request.tag
            if kind == "fast" and turn < 4:
                follow_up = request.messages + [{"role": "user", "content": completion.text}]
                return [Request(sampler, follow_up, PARAMS, ("fast", turn + 1))]
            if kind == "fast":
                slow_release.set()  # all four turns came back while "slow" was still in flight
            return []

        first = [Request(sampler, user("slow"), PARAMS, ("slow", 1)), Request(sampler, user("a"), PARAMS, ("fast", 1))]
        RequestStream().run(first, on_reply)
    assert order == ["a", "a+", "a++", "a+++", "slow"]


@pytest.mark.integration
@pytest.mark.timing
def test_retries_are_counted_and_a_fatal_error_stops_the_stream():
    with OpenAICompatServer(failures=["429", "500"]) as server:
        sampler = OpenAISampler("m", base_url=server.base_url, max_concurrency=1, retry_backoff_s=0.01)
        stats = RequestStream().run([Request(sampler, user("x"), PARAMS), Request(sampler, user("y"), PARAMS)],
                                    lambda r, c: None)  # fmt: skip
        assert stats.retried == 2 and stats.done == 2
    delivered = []
    with OpenAICompatServer(models=["known"]) as server:
        good = OpenAISampler("known", base_url=server.base_url, max_concurrency=2)
        bad = OpenAISampler("unknown", base_url=server.base_url, max_concurrency=2)
        requests = [Request(good, user("fine"), PARAMS, "ok"), Request(bad, user("x"), PARAMS, "bad")]
        requests += [Request(good, user(f"later {i}"), PARAMS, "later") for i in range(50)]
        with pytest.raises(ProviderError, match="model 'unknown' not found"):
            RequestStream().run(requests, lambda r, c: delivered.append(r.tag))
    assert "bad" not in delivered and delivered.count("later") < 50  # stopped, not run to the end


@pytest.mark.unit
def test_a_local_lane_samples_windows_of_equal_params_and_puts_follow_ups_first():
    """Injected bug: a window that mixes sampling params, or one request per call, fails the call sizes."""
    local = ListSampler()
    hot = SamplingParams(temperature=1.0, max_new_tokens=16, seed=0)
    source = [Request(local, user(f"a{i}"), PARAMS, ("a", i)) for i in range(5)]
    source += [Request(local, user(f"b{i}"), hot, ("b", i)) for i in range(3)]

    def on_reply(request, completion):
        kind, i = request.tag
        return [Request(local, user(f"c{i}"), PARAMS, ("c", i))] if kind == "a" and i < 2 else []

    stats = RequestStream(window=4).run(source, on_reply)
    assert local.calls == [["a0", "a1", "a2", "a3"], ["c0", "c1", "a4"], ["b0", "b1", "b2"]]
    assert stats.done == 10 and stats.max_in_flight == 4 and stats.capacity == 4


@pytest.mark.integration
@pytest.mark.timing
def test_an_api_lane_streams_while_a_local_batch_computes():
    """Teacher local, student API: the API lane does not wait for the local lane (it runs in a thread)."""
    release = threading.Event()

    class SlowLocal(ListSampler):
        released = False

        def sample(self, conversations, params):
            self.released = release.wait(timeout=600)  # False: released by the safety timeout, not the API lane
            return super().sample(conversations, params)

    local = SlowLocal()
    with OpenAICompatServer() as server:
        api = OpenAISampler("m", base_url=server.base_url, max_concurrency=4)
        done: Counter = Counter()

        def on_reply(request, completion):
            done[request.tag] += 1
            if request.tag == "api" and done["api"] == 20:
                release.set()  # every API reply came back while the local batch was still computing

        source = [Request(local, user("t"), PARAMS, "local")] + [Request(api, user(f"s{i}"), PARAMS, "api")
                                                                  for i in range(20)]  # fmt: skip
        RequestStream(window=4).run(source, on_reply)
    assert done == {"api": 20, "local": 1} and local.released  # every API reply came while the local batch ran
