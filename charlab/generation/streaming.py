"""Streaming generation: every provider kept busy, every reply handed back the moment it returns.

Callers describe their work as `Request`s (a sampler, a conversation, sampling params and a tag of their
own) from a lazy source, and `RequestStream.run(source, on_reply)` calls `on_reply(request, completion)` as
each reply arrives, in the caller's thread of control, so the caller can append a finished record at once.
`on_reply` may return follow-up requests (the next turn of a conversation); they go ahead of new work, so
started work finishes first.

Two kinds of lanes, one per sampler:
- a sampler with `session()` (`openai`, `tinker`, and so vLLM through the openai client) takes single
  requests: up to its `max_concurrency` are in flight at all times while there is work;
- any other sampler (local `hf`) gets windows of up to `window` requests with equal sampling params, one
  `sample()` call at a time in a worker thread, so it keeps its length-sorted batches (and an API lane keeps
  streaming while a local batch computes).

    stream = RequestStream(window=16)
    stats = stream.run((Request(sampler, messages, params, tag=i) for i, messages in enumerate(chats)), on_reply)
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass, field, replace
from typing import Any, Optional

from charlab.generation.base import Completion, Message, Sampler, SamplingParams, StreamingSampler
from charlab.generation.openai_compat import run_sync
from charlab.generation.text import conversation_key, derive_seed

OnReply = Callable[["Request", Completion], Optional[Iterable["Request"]]]


@dataclass
class Request:
    """One conversation to complete by `sampler`; `tag` is the caller's own handle on it.

    On a streaming lane the request's seed is `params.seed` mixed with the conversation and `seed_key`
    (so equal conversations with different keys, e.g. two self-interactions that opened alike, differ);
    a local lane seeds each batch from `params.seed` and the batch's tokens, as `hf` always does.
    """

    sampler: Sampler
    messages: list[Message]
    params: SamplingParams
    tag: Any = None
    seed_key: tuple = ()


@dataclass
class StreamStats:
    """What a stream did: requests in flight now, done, retried, tokens, and how full its lanes were."""

    in_flight: int = 0
    max_in_flight: int = 0
    done: int = 0
    retried: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    capacity: int = 0  # requests all opened lanes may have in flight together (max_concurrency or window)
    started: Optional[float] = None  # first request sent
    last_event: Optional[float] = None
    in_flight_seconds: float = 0.0  # integral of in_flight over time, for the mean

    def _tick(self, delta: int) -> None:
        now = time.perf_counter()
        if self.started is None:
            self.started = self.last_event = now
        self.in_flight_seconds += self.in_flight * (now - self.last_event)
        self.last_event = now
        self.in_flight += delta
        self.max_in_flight = max(self.max_in_flight, self.in_flight)

    @property
    def seconds(self) -> float:
        """From the first request sent to the latest reply."""
        return (self.last_event - self.started) if self.started is not None else 0.0

    @property
    def mean_in_flight(self) -> float:
        return self.in_flight_seconds / self.seconds if self.seconds else 0.0

    def as_dict(self) -> dict[str, Any]:
        seconds = self.seconds
        return {
            "requests": self.done,
            "retried": self.retried,
            "seconds": round(seconds, 3),
            "mean_in_flight": round(self.mean_in_flight, 2),
            "max_in_flight": self.max_in_flight,
            "capacity": self.capacity,
            "in_flight_ratio": round(self.mean_in_flight / self.capacity, 4) if self.capacity else 0.0,
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "tokens_per_second": round(self.completion_tokens / seconds, 1) if seconds else 0.0,
        }

    def postfix(self) -> dict[str, Any]:
        """The progress-bar fields: requests in flight, done, retried, generated tokens/s."""
        seconds = self.seconds
        rate = self.completion_tokens / seconds if seconds else 0.0
        return {"in_flight": self.in_flight, "done": self.done, "retried": self.retried, "tok/s": f"{rate:.0f}"}


def _params_key(params: SamplingParams) -> str:
    return json.dumps(asdict(params), sort_keys=True, default=str)


@dataclass
class _Lane:
    """The queued requests of one sampler, grouped by sampling params (one group on a streaming lane).

    Follow-ups queue ahead of fresh work, each kind first come first served. A streaming lane (`complete`
    set) may have `limit` requests in flight; a local lane runs one batch of at most `limit` requests at a
    time, all with the params of its first queued request.
    """

    sampler: Sampler
    limit: int
    streaming: bool
    complete: Optional[Callable[[list[Message], SamplingParams], Any]] = None
    follow_ups: OrderedDict[str, deque[Request]] = field(default_factory=OrderedDict)
    fresh: OrderedDict[str, deque[Request]] = field(default_factory=OrderedDict)
    pending: int = 0
    in_flight: int = 0

    @property
    def free(self) -> int:
        if self.streaming:
            return self.limit - self.in_flight
        return 0 if self.in_flight else self.limit

    def push(self, request: Request, follow_up: bool = False) -> None:
        key = "" if self.streaming else _params_key(request.params)
        (self.follow_ups if follow_up else self.fresh).setdefault(key, deque()).append(request)
        self.pending += 1

    def _head(self) -> str:
        return next(iter(self.follow_ups or self.fresh))

    def _queued(self, key: str) -> int:
        return len(self.follow_ups.get(key, ())) + len(self.fresh.get(key, ()))

    def take(self, n: int) -> list[Request]:
        """Up to `n` requests with the first queued request's params, follow-ups first."""
        key, batch = self._head(), []
        for groups in (self.follow_ups, self.fresh):
            group = groups.get(key)
            while group and len(batch) < n:
                batch.append(group.popleft())
            if group is not None and not group:
                del groups[key]
        self.pending -= len(batch)
        return batch

    def hungry(self) -> bool:
        """Whether more work from the source could let this lane start more now."""
        if self.free <= 0:
            return False
        if self.streaming:
            return self.pending < self.free
        return not self.pending or self._queued(self._head()) < self.limit


class RequestStream:
    """Runs requests from a source on their samplers' lanes; see the module docstring."""

    def __init__(self, window: int = 16, on_progress: Optional[Callable[[StreamStats], None]] = None):
        self.window = max(1, int(window))
        self.on_progress = on_progress
        self.stats = StreamStats()
        self._lanes: dict[int, _Lane] = {}
        self._source: Optional[Iterator[Request]] = None

    def run(self, source: Iterable[Request], on_reply: OnReply) -> StreamStats:
        """Complete every request (and every follow-up `on_reply` returns); the stream's stats."""
        self._source = iter(source)
        run_sync(self._run(on_reply))
        return self.stats

    # ---- the loop -------------------------------------------------------------------------------------------
    async def _run(self, on_reply: OnReply) -> None:
        self._local = asyncio.Lock()  # local samplers compute one batch at a time (they share the CPU/GPU)
        tasks: set[asyncio.Task] = set()
        async with contextlib.AsyncExitStack() as sessions:
            try:
                await self._fill(sessions, tasks)
                while tasks:
                    finished, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
                    for task in finished:
                        tasks.discard(task)
                        for request, completion in task.result():
                            self._deliver(request, completion, on_reply)
                        await self._fill(sessions, tasks)  # a freed slot refills before the next reply is read
            finally:
                for task in tasks:  # a fatal error ends the stream: stop what is still in flight
                    task.cancel()
                await asyncio.gather(*tasks, return_exceptions=True)

    def _deliver(self, request: Request, completion: Completion, on_reply: OnReply) -> None:
        stats = self.stats
        stats.done += 1
        stats.retried += completion.retries
        stats.prompt_tokens += completion.prompt_tokens
        stats.completion_tokens += completion.completion_tokens
        for follow_up in on_reply(request, completion) or ():
            self._queue(follow_up, follow_up=True)
        if self.on_progress is not None:
            self.on_progress(stats)

    async def _fill(self, sessions: contextlib.AsyncExitStack, tasks: set[asyncio.Task]) -> None:
        """Start what the lanes have room for, pulling from the source while a lane is hungry."""
        while True:
            for lane in self._lanes.values():
                # a local lane waits until its batch is full (or nothing more can come); a streaming one never
                while lane.free > 0 and lane.pending and (lane.streaming or self._source is None or not lane.hungry()):
                    if lane.streaming and lane.complete is None:
                        lane.complete = await sessions.enter_async_context(lane.sampler.session())
                    tasks.add(self._start(lane))
            if self._source is None or (self._lanes and not any(lane.hungry() for lane in self._lanes.values())):
                return
            request = next(self._source, None)
            if request is None:
                self._source = None
            else:
                self._queue(request)

    def _queue(self, request: Request, follow_up: bool = False) -> None:
        key = id(request.sampler)
        if key not in self._lanes:
            streaming = isinstance(request.sampler, StreamingSampler)
            limit = int(request.sampler.max_concurrency) if streaming else self.window
            self._lanes[key] = _Lane(request.sampler, limit, streaming)
            self.stats.capacity += limit
        self._lanes[key].push(request, follow_up)

    def _start(self, lane: _Lane) -> asyncio.Task:
        if lane.streaming:
            batch = lane.take(1)
            request = batch[0]
            seed = derive_seed(request.params.seed, conversation_key(request.messages), *request.seed_key)
            work = lane.complete(request.messages, replace(request.params, seed=seed))
        else:
            batch = lane.take(lane.limit)
            work = self._local_batch(lane.sampler, batch)
        lane.in_flight += len(batch)
        self.stats._tick(len(batch))
        return asyncio.ensure_future(self._track(lane, batch, work))

    async def _local_batch(self, sampler: Sampler, batch: list[Request]) -> list[Completion]:
        async with self._local:
            return await asyncio.to_thread(sampler.sample, [r.messages for r in batch], batch[0].params)

    async def _track(self, lane: _Lane, batch: list[Request], work: Any) -> list[tuple[Request, Completion]]:
        try:
            result = await work
        finally:
            lane.in_flight -= len(batch)
            self.stats._tick(-len(batch))
        return list(zip(batch, result if isinstance(result, list) else [result]))
