"""Peak memory of one stage, and the memory a server process group holds.

    with memory_window() as peak:        # around one stage (a pipeline's steps nest inside the pipeline's window)
        ...
    peak()                                # {"cpu_rss_gb": ..., "gpu_allocated_gb": ..., "gpu_reserved_gb": ...}
    process_group_memory(pid)             # a vLLM server: {"cpu_rss_gb", "cpu_peak_rss_gb"[, "gpu_gb"]}

A pipeline runs its steps in one process, so the process-wide peaks (torch's `max_memory_allocated`, the kernel's
VmHWM) would make every step report the largest peak so far. Each window resets them when it opens (Linux:
`/proc/self/clear_refs` with 5 resets VmHWM; CUDA: `reset_peak_memory_stats`) and folds what it measured into the
windows around it, so an enclosing run still reports the peak over everything inside it.
"""

from __future__ import annotations

import contextlib
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

_open: list[dict[str, float]] = []  # the peaks of the enclosing windows, measured before a nested one reset them


def _cuda() -> object | None:
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_available() and torch.cuda.is_initialized():
        return torch
    return None


def _status_kib(path: Path, field: str) -> int | None:
    try:
        for line in path.read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        return None
    return None


def current_peaks() -> dict[str, float]:
    """This process's peaks since the last reset, in GB (CPU: VmHWM where Linux has it, else ru_maxrss)."""
    import resource

    hwm = _status_kib(Path("/proc/self/status"), "VmHWM")
    if hwm is None:
        scale = 1024**3 if sys.platform == "darwin" else 1024**2  # ru_maxrss: bytes on macOS, KiB on Linux
        peak = {"cpu_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / scale}
    else:
        peak = {"cpu_rss_gb": hwm / 1024**2}
    torch = _cuda()
    if torch is not None:
        devices = range(torch.cuda.device_count())  # type: ignore[attr-defined]
        peak["gpu_allocated_gb"] = max(torch.cuda.max_memory_allocated(d) for d in devices) / 1024**3  # type: ignore[attr-defined]
        peak["gpu_reserved_gb"] = max(torch.cuda.max_memory_reserved(d) for d in devices) / 1024**3  # type: ignore[attr-defined]
    return peak


def reset_peaks() -> None:
    """Start the process-wide peaks afresh (CPU VmHWM on Linux, every CUDA device)."""
    with contextlib.suppress(OSError):
        Path("/proc/self/clear_refs").write_text("5")
    torch = _cuda()
    if torch is not None:
        for device in range(torch.cuda.device_count()):  # type: ignore[attr-defined]
            torch.cuda.reset_peak_memory_stats(device)  # type: ignore[attr-defined]


def release_accelerator_memory() -> None:
    """Hand the CUDA caching allocator's free blocks back to the driver (torch keeps them reserved otherwise, and
    another process, e.g. a vLLM server, sees them as used)."""
    torch = _cuda()
    if torch is not None:
        torch.cuda.synchronize()  # type: ignore[attr-defined]
        torch.cuda.empty_cache()  # type: ignore[attr-defined]


def _fold(into: dict[str, float], peak: dict[str, float]) -> None:
    for key, value in peak.items():
        into[key] = max(into.get(key, 0.0), value)


@contextlib.contextmanager
def memory_window() -> Iterator[Callable[[], dict[str, float]]]:
    """A window over one stage: `peak()` gives the peaks inside it (GB, rounded), nested windows included."""
    now = current_peaks()
    for outer in _open:
        _fold(outer, now)
    mine: dict[str, float] = {}
    _open.append(mine)
    reset_peaks()

    def peak() -> dict[str, float]:
        _fold(mine, current_peaks())
        return {key: round(value, 3) for key, value in mine.items()}

    try:
        yield peak
    finally:
        now = current_peaks()
        _open.remove(mine)
        for outer in _open:
            _fold(outer, now)
            _fold(outer, mine)


def process_group_memory(pgid: int) -> dict[str, float]:
    """Resident and peak resident memory (GB) summed over the processes of group `pgid`, and the GPU memory
    `nvidia-smi` says they hold (where it lists them)."""
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if len(fields) > 2 and fields[2] == str(pgid):  # fields after the name: state, ppid, pgrp, ...
            pids.append(int(entry.name))
    rss = sum(_status_kib(Path("/proc") / str(p) / "status", "VmRSS") or 0 for p in pids)
    hwm = sum(_status_kib(Path("/proc") / str(p) / "status", "VmHWM") or 0 for p in pids)
    memory = {"cpu_rss_gb": round(rss / 1024**2, 3), "cpu_peak_rss_gb": round(hwm / 1024**2, 3)}
    gpu = _gpu_mib_by_pid()
    if gpu:
        memory["gpu_gb"] = round(sum(gpu.get(p, 0) for p in pids) / 1024, 3)
    return memory if pids else {}


def _gpu_mib_by_pid() -> dict[int, int]:
    """`nvidia-smi`'s compute processes and the MiB each holds; {} without NVIDIA GPUs."""
    try:
        out = subprocess.run(
            ["nvidia-smi", "--query-compute-apps=pid,used_memory", "--format=csv,noheader,nounits"],
            capture_output=True, text=True, timeout=20,
        ).stdout  # fmt: skip
    except (OSError, subprocess.SubprocessError):
        return {}
    usage: dict[int, int] = {}
    for line in out.splitlines():
        parts = [p.strip() for p in line.split(",")]
        if len(parts) == 2 and parts[0].isdigit() and parts[1].isdigit():
            usage[int(parts[0])] = usage.get(int(parts[0]), 0) + int(parts[1])
    return usage
