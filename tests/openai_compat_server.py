"""A real OpenAI-compatible chat-completions server on 127.0.0.1 for tests and benchmarks.

It speaks `POST /v1/chat/completions` and `GET /v1/models` over real HTTP (a threading `http.server`), answers
from canned replies, a function, or any `Sampler` (e.g. the tiny model or SmolLM2; with `logprobs: true` and
`top_logprobs: k` a sampler-backed server returns the model's own per-token log-probabilities, in OpenAI's
`choices[0].logprobs.content` shape, as vLLM does; canned replies come without), and can misbehave on purpose:
rate limits (429), server errors (500), replies slower than the client's timeout, dropped connections, and a
fixed latency per request. Every request it receives is recorded.

    from tests.openai_compat_server import serve

    with serve(replies=["Ahoy."], failures=["429", "500", "timeout"]) as base_url:
        sampler = OpenAISampler("test-model", base_url=base_url, timeout_s=5, retry_backoff_s=0.01)

    with OpenAICompatServer(replies=sampler_of_tiny_model, latency_s=0.2) as server:
        ... server.base_url, server.requests, server.failures_served ...

With `max_context=n` it refuses, as vLLM does (400, "This model's maximum context length is n tokens..."), a
request whose messages hold more than n words (its "tokens"). `GET /health` answers 200 and `POST
/v1/load_lora_adapter` adds a served name, so `tests/vllm_standin.py` can stand in for `vllm serve`.

`failures` is a list (applied to the first requests, in order; `None` entries succeed) or a dict of
probabilities per kind (`{"429": 0.2, "500": 0.1, "timeout": 0.05, "drop": 0.05}`, seeded). Kinds:
"429" (with `Retry-After: 0`), "500", "503", "timeout" (no reply: the request is held until the client gives
up, the server stops or `timeout_delay_s` passes, so a client timeout of any length sees a timeout), "drop"
(the connection is closed without an answer).
"""

from __future__ import annotations

import itertools
import json
import random
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Optional, Union

Messages = list[dict[str, str]]
Replies = Union[None, str, Sequence[str], Callable[[Messages], str], Any]
FAILURE_KINDS = ("429", "500", "503", "timeout", "drop")


class OpenAICompatServer:
    """The server; use as a context manager (starts on enter, stops on exit)."""

    def __init__(
        self,
        replies: Replies = None,
        failures: Union[None, Sequence[Optional[str]], dict[str, float]] = None,
        latency_s: float = 0.0,
        timeout_delay_s: float = 600.0,
        models: Optional[Sequence[str]] = None,
        api_key: Optional[str] = None,
        seed: int = 0,
        max_context: Optional[int] = None,
        port: int = 0,
    ):
        self._reply = _reply_function(replies)
        self.max_context = max_context
        self.port = port
        self._sampler = replies if hasattr(replies, "sample") else None
        self._sampler_lock = threading.Lock()  # a local model answers one request at a time
        self._plan = list(failures) if isinstance(failures, (list, tuple)) else []
        self._rates = dict(failures) if isinstance(failures, dict) else {}
        for kind in [*self._plan, *self._rates]:
            if kind is not None and kind not in FAILURE_KINDS:
                raise ValueError(f"unknown failure kind {kind!r}; allowed: {', '.join(FAILURE_KINDS)}")
        self.latency_s = latency_s
        self.timeout_delay_s = timeout_delay_s
        self.models = list(models) if models is not None else None
        self.api_key = api_key
        self._random = random.Random(seed)
        self._lock = threading.Lock()
        self._count = 0
        self.requests: list[dict[str, Any]] = []  # bodies of every chat-completions request, in arrival order
        self.failures_served: list[str] = []
        self.in_flight = 0
        self.max_in_flight = 0  # the most chat requests handled at the same time
        self.first_request_at: Optional[float] = None  # time.perf_counter() of the first chat request
        self.last_reply_at: Optional[float] = None  # ... and of the end of the latest one
        self._in_flight_seconds = 0.0  # integral of in_flight over time (for the mean)
        self.completed = 0  # replies produced (a reply to a client that already timed out counts too)
        self.stopping = threading.Event()  # set on stop: releases requests held by a "timeout" failure
        self._httpd: Optional[ThreadingHTTPServer] = None
        self._thread: Optional[threading.Thread] = None

    # ---- lifecycle ------------------------------------------------------------------------------------------
    @property
    def base_url(self) -> str:
        assert self._httpd is not None, "server not started"
        return f"http://127.0.0.1:{self._httpd.server_address[1]}/v1"

    def start(self) -> OpenAICompatServer:
        server = self

        class Handler(_Handler):
            owner = server

        self._httpd = _QuietServer(("127.0.0.1", self.port), Handler)
        self._httpd.daemon_threads = True
        self._thread = threading.Thread(target=self._httpd.serve_forever, name="openai-compat-server", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self.stopping.set()
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._httpd = None

    def __enter__(self) -> OpenAICompatServer:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    def _count_in_flight(self, delta: int) -> None:
        """Change `in_flight` (call with `_lock` held), integrating it over time."""
        now = time.perf_counter()
        if self.first_request_at is None:
            self.first_request_at = now
        self._in_flight_seconds += self.in_flight * (now - (self.last_reply_at or now))
        self.last_reply_at = now
        self.in_flight += delta
        self.max_in_flight = max(self.max_in_flight, self.in_flight)

    @property
    def busy_seconds(self) -> float:
        """From the first chat request's arrival to the end of the latest one."""
        return (self.last_reply_at - self.first_request_at) if self.first_request_at is not None else 0.0

    @property
    def mean_in_flight(self) -> float:
        """Chat requests handled at once, averaged over `busy_seconds`."""
        return self._in_flight_seconds / self.busy_seconds if self.busy_seconds else 0.0

    # ---- behaviour ------------------------------------------------------------------------------------------
    def next_failure(self) -> Optional[str]:
        """The failure the next request gets (None: answer it)."""
        with self._lock:
            index = self._count
            self._count += 1
            if index < len(self._plan):
                kind = self._plan[index]
            else:
                kind = None
                roll = self._random.random()
                for name, rate in self._rates.items():
                    if roll < rate:
                        kind = name
                        break
                    roll -= rate
            if kind:
                self.failures_served.append(kind)
            return kind

    def answer(self, body: dict[str, Any]) -> tuple[str, str, int, int, Optional[dict[str, Any]]]:
        """(text, finish_reason, prompt_tokens, completion_tokens, logprobs) for one request body."""
        messages = body.get("messages", [])
        max_tokens = int(body.get("max_tokens") or body.get("max_completion_tokens") or 256)
        if self._sampler is not None:
            from charlab.generation.base import SamplingParams

            params = SamplingParams(
                temperature=float(body.get("temperature", 0.7)),
                top_p=float(body.get("top_p", 1.0)),
                max_new_tokens=max_tokens,
                repetition_penalty=float(body.get("repetition_penalty", 1.0)),
                stop=list(body.get("stop") or []),
                seed=body.get("seed"),
                top_logprobs=int(body.get("top_logprobs") or 1) if body.get("logprobs") else 0,
            )
            with self._sampler_lock:
                done = self._sampler.sample([messages], params)[0]
            return done.text, done.finish_reason, done.prompt_tokens, done.completion_tokens, _openai_logprobs(done)
        text = self._reply(messages)
        for stop in body.get("stop") or []:
            if stop and stop in text:
                text = text[: text.index(stop)]
        words = text.split(" ")
        finish = "stop"
        if len(words) > max_tokens:  # one "token" per word: enough to exercise finish_reason=length
            text, finish = " ".join(words[:max_tokens]), "length"
        prompt_tokens = sum(len(str(m.get("content", "")).split()) for m in messages)
        return text, finish, prompt_tokens, min(len(words), max_tokens), None


def _openai_logprobs(completion: Any) -> Optional[dict[str, Any]]:
    """A completion's per-token log-probabilities in the chat-completions `logprobs` shape (None if it has none)."""
    if not getattr(completion, "logprobs", None):
        return None
    return {
        "content": [
            {
                "token": item["token"],
                "logprob": item["logprob"],
                "bytes": None,
                "top_logprobs": [{"token": t, "logprob": lp, "bytes": None} for t, lp in item["top"].items()],
            }
            for item in completion.logprobs
        ]
    }


class _QuietServer(ThreadingHTTPServer):
    """Ignores clients that hang up first (a client timeout is a scenario here, not a server bug)."""

    request_queue_size = 256  # listen() backlog: the default 5 drops bursts of concurrent connections

    def handle_error(self, request: Any, client_address: Any) -> None:
        import sys

        if not isinstance(sys.exc_info()[1], (BrokenPipeError, ConnectionResetError)):
            super().handle_error(request, client_address)


class _Handler(BaseHTTPRequestHandler):
    owner: OpenAICompatServer
    protocol_version = "HTTP/1.1"

    def setup(self) -> None:
        super().setup()
        # headers and body go out in two writes; without NODELAY, Nagle + delayed ACK add ~40 ms per reply
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def log_message(self, *args: Any) -> None:  # keep test output quiet
        pass

    def _send(self, status: int, payload: dict[str, Any], headers: Optional[dict[str, str]] = None) -> None:
        data = json.dumps(payload).encode("utf-8")
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.end_headers()
        self.wfile.write(data)

    def _error(self, status: int, message: str, kind: str, headers: Optional[dict[str, str]] = None) -> None:
        self._send(status, {"error": {"message": message, "type": kind, "code": status}}, headers)

    def _authorized(self) -> bool:
        if self.owner.api_key is None:
            return True
        if self.headers.get("Authorization") == f"Bearer {self.owner.api_key}":
            return True
        self._error(401, "Incorrect API key provided.", "invalid_request_error")
        return False

    def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
        if not self._authorized():
            return
        if self.path.rstrip("/") == "/v1/models":
            names = self.owner.models or ["test-model"]
            extra = {"max_model_len": self.owner.max_context} if self.owner.max_context else {}
            data = [{"id": n, "object": "model", "created": 0, "owned_by": "charlab-tests", **extra} for n in names]
            self._send(200, {"object": "list", "data": data})
        elif self.path.rstrip("/") == "/health":
            self._send(200, {})
        else:
            self._error(404, f"no route {self.path}", "not_found")

    def do_POST(self) -> None:  # noqa: N802
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b"{}"
        if not self._authorized():
            return
        if self.path.rstrip("/") == "/v1/load_lora_adapter" and self.owner.models is not None:
            self.owner.models.append(str(json.loads(raw).get("lora_name")))
            self._send(200, {})
            return
        if self.path.rstrip("/") != "/v1/chat/completions":
            self._error(404, f"no route {self.path}", "not_found")
            return
        try:
            body = json.loads(raw)
        except json.JSONDecodeError:
            self._error(400, "body is not JSON", "invalid_request_error")
            return
        owner = self.owner
        with owner._lock:
            owner.requests.append(body)
            owner._count_in_flight(+1)
        try:
            self._chat(owner, body)
        finally:
            with owner._lock:
                owner._count_in_flight(-1)

    def _chat(self, owner: OpenAICompatServer, body: dict[str, Any]) -> None:
        model = body.get("model")
        if owner.models is not None and model not in owner.models:
            self._error(404, f"The model `{model}` does not exist.", "NotFoundError")
            return
        words = sum(len(str(m.get("content", "")).split()) for m in body.get("messages", []))
        if owner.max_context and words > owner.max_context:
            self._error(400, f"This model's maximum context length is {owner.max_context} tokens. However, your "
                        f"prompt contains {words} input tokens.", "BadRequestError")  # fmt: skip
            return
        failure = owner.next_failure()
        if owner.latency_s:
            time.sleep(owner.latency_s)
        if failure == "drop":
            self.close_connection = True
            self.connection.close()
            return
        if failure in ("429", "500", "503"):
            headers = {"Retry-After": "0"} if failure == "429" else None
            self._error(int(failure), f"injected {failure}", "injected", headers)
            return
        if failure == "timeout":  # held until the client gave up: no race between a late reply and its timeout
            owner.stopping.wait(owner.timeout_delay_s)
            return
        text, finish, prompt_tokens, completion_tokens, logprobs = owner.answer(body)
        with owner._lock:
            owner.completed += 1
        self._send(
            200,
            {
                "id": f"chatcmpl-{uuid.uuid4().hex[:12]}",
                "object": "chat.completion",
                "created": int(time.time()),
                "model": model,
                "choices": [
                    {
                        "index": 0,
                        "message": {"role": "assistant", "content": text},
                        "finish_reason": finish,
                        "logprobs": logprobs,
                    }
                ],
                "usage": {
                    "prompt_tokens": prompt_tokens,
                    "completion_tokens": completion_tokens,
                    "total_tokens": prompt_tokens + completion_tokens,
                },
            },
        )


def _reply_function(replies: Replies) -> Callable[[Messages], str]:
    if replies is None:
        return lambda messages: f"You said: {messages[-1].get('content', '')}."
    if isinstance(replies, str):
        return lambda messages: replies
    if callable(replies) and not hasattr(replies, "sample"):
        return replies
    if hasattr(replies, "sample"):
        return lambda messages: ""  # answered by the sampler in `answer`
    cycle = itertools.cycle(list(replies))
    lock = threading.Lock()

    def next_reply(messages: Messages) -> str:
        with lock:
            return next(cycle)

    return next_reply


@contextmanager
def serve(
    replies: Replies = None,
    failures: Union[None, Sequence[Optional[str]], dict[str, float]] = None,
    latency_s: float = 0.0,
    timeout_delay_s: float = 600.0,
    models: Optional[Sequence[str]] = None,
    api_key: Optional[str] = None,
    seed: int = 0,
    max_context: Optional[int] = None,
) -> Iterator[str]:
    """Start a server for the `with` block and yield its base URL (`http://127.0.0.1:<port>/v1`)."""
    server = OpenAICompatServer(replies, failures, latency_s, timeout_delay_s, models, api_key, seed, max_context)
    with server:
        yield server.base_url


def main() -> None:
    """Run a server in its own process (benchmarks, manual checks): prints its base URL, serves until killed."""
    import argparse

    parser = argparse.ArgumentParser(description="A loopback OpenAI-compatible server with canned replies.")
    parser.add_argument("--reply", default="Here is a short, canned answer.")
    parser.add_argument("--latency", type=float, default=0.0, help="seconds added to every request")
    args = parser.parse_args()
    with OpenAICompatServer(replies=args.reply, latency_s=args.latency) as server:
        print(server.base_url, flush=True)
        threading.Event().wait()


if __name__ == "__main__":
    main()
