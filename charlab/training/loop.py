"""The generic training loop every algorithm (DPO, SFT) plugs into, on any `TrainingBackend`.

It owns what algorithms share: seeded, length-grouped batches; the learning-rate schedule (warmup, then
linear, cosine or constant, decaying to `min_lr_ratio` x the peak); gradient accumulation; metrics every
step through a callback; evaluation every `eval_every` steps and at the end; checkpoints every `save_every`
steps and at the end; resuming from the newest complete checkpoint. The algorithm supplies the sequences and
the loss of each micro-batch.

Requests are pipelined (step t+1 is submitted before step t's results are awaited): a remote backend stays busy.

A checkpoint is a folder `step-NNNNNN/` with the backend's state in `state/`, the loop's position in
`loop_state.json` and a `COMPLETE` marker written last, built under a temporary name and renamed into place,
so a killed run never leaves a half checkpoint that resuming would trust.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import math
import os
import random
import shutil
import time
from collections import deque
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Optional, Protocol

from charlab import distributed, failpoints
from charlab.errors import ConfigError
from charlab.training.backend import AdamParams, LossFn, ResultFuture, TokenSequence, TrainingBackend

log = logging.getLogger("charlab")
SCHEDULES = ("linear", "cosine", "constant")
COMPLETE = "COMPLETE"
MetricsCallback = Callable[[dict[str, float], int], None]


@dataclass
class LoopConfig:
    """How to train (the stage YAML sets every value)."""

    epochs: int
    batch_size: int
    learning_rate: float
    schedule: str = "linear"
    warmup_ratio: float = 0.0
    min_lr_ratio: float = 0.0  # the floor linear/cosine decay to, as a share of learning_rate
    grad_accum: int = 1
    max_grad_norm: float = 0.0
    weight_decay: float = 0.0
    adam_beta1: float = 0.9
    adam_beta2: float = 0.999
    adam_eps: float = 1e-8
    save_every: int = 0  # 0: only at the end
    eval_every: int = 0  # 0: only at the end
    keep_checkpoints: int = 2  # newest checkpoints kept (0: keep all)
    seed: int = 0
    max_steps: Optional[int] = None
    group_by_length: bool = True


def validate_loop_config(cfg: LoopConfig, prefix: str = "") -> None:
    """One-line errors naming the option (`prefix` is how the caller's config spells it, e.g. `stage.`)."""
    checks = [
        (cfg.batch_size >= 1, "batch_size", "a positive integer (e.g. 16)"),
        (cfg.epochs >= 1, "epochs", "a positive integer"),
        (cfg.grad_accum >= 1, "grad_accum", "a positive integer"),
        (cfg.learning_rate > 0, "lr", "a positive number (e.g. 1.0e-4)"),
        (0 <= cfg.warmup_ratio < 1, "warmup_ratio", "a value in [0, 1)"),
        (0 <= cfg.min_lr_ratio <= 1, "min_lr_ratio", "a value in [0, 1] (0: decay to zero)"),
        (cfg.schedule in SCHEDULES, "schedule", " | ".join(SCHEDULES)),
        (cfg.max_grad_norm >= 0, "max_grad_norm", "0 (off) or a positive number"),
        (cfg.save_every >= 0, "save_every", "0 (only at the end) or a positive integer"),
        (cfg.eval_every >= 0, "eval_every", "0 (only at the end) or a positive integer"),
        (cfg.max_steps is None or cfg.max_steps >= 1, "max_steps", "null or a positive integer"),
    ]
    values = {**asdict(cfg), "lr": cfg.learning_rate}
    for ok, key, allowed in checks:
        if not ok:
            raise ConfigError(f"{prefix}{key}={values[key]} is not allowed; use {allowed}")


def learning_rate_at(
    step: int, total: int, base: float, warmup: int, schedule: str, min_ratio: float = 0.0
) -> float:
    """The learning rate of optimizer step `step` (0-based): linear warmup, then the schedule down to
    `min_ratio` x `base` (cosine with `min_ratio=0.1` is OpenRLHF's `cosine_with_min_lr`, the paper's)."""
    if step < warmup:
        return base * (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    if schedule == "constant":
        return base
    decay = 0.5 * (1.0 + math.cos(math.pi * progress)) if schedule == "cosine" else 1.0 - progress
    return base * (min_ratio + (1.0 - min_ratio) * decay)


def plan_epoch(lengths: list[int], batch_size: int, seed: int, epoch: int, group_by_length: bool) -> list[list[int]]:
    """One epoch's batches of item indices: a seeded shuffle; with grouping, similar lengths share a batch.

    Grouping sorts windows of 32 batches by length and then shuffles the batch order, so batches have little
    padding while their order (and each batch's content across epochs) stays random.
    """
    rng = random.Random(f"{seed}:{epoch}")
    order = list(range(len(lengths)))
    rng.shuffle(order)
    if group_by_length:
        window = batch_size * 32
        windows = [sorted(order[s : s + window], key=lambda i: -lengths[i]) for s in range(0, len(order), window)]
        order = [i for w in windows for i in w]
    batches = [order[s : s + batch_size] for s in range(0, len(order), batch_size)]
    if group_by_length:
        rng.shuffle(batches)
    return batches


def micro_batches(n_items: int, ranks: int, rank: int, grad_accum: int) -> list[list[int]]:
    """Rank `rank`'s micro-batches of a global batch of `n_items`, as indices into the batch.

    A rank's share is every `ranks`-th item from its rank (`distributed.shard`). Every rank gets the same number of
    micro-batches, sized from the largest share (at most `grad_accum` of them, one item each when the share is
    smaller): under DDP each backward pass all-reduces, so ranks that ran different numbers would fall out of
    step. A rank whose share runs out gets empty micro-batches (the loop runs them at weight 0).
    """
    mine = list(range(rank, n_items, ranks))
    widest = max(1, math.ceil(n_items / ranks))
    size = math.ceil(widest / grad_accum)
    return [mine[start : start + size] for start in range(0, widest, size)]


class Algorithm(Protocol):
    """What DPO and SFT provide to the loop; items are whatever the algorithm trains on (pairs, chats)."""

    name: str
    prepare_metric: Optional[str]  # the metric `prepare`'s seconds are logged as (None: not logged)

    def item_length(self, item: Any) -> int:
        """Tokens the item puts through the model (for length grouping and tokens/s)."""
        ...

    def item_weight(self, item: Any) -> float:
        """The item's share in its step's loss (DPO: 1 per pair; SFT: its trained tokens, for a token mean)."""
        ...

    def prepare(self, backend: TrainingBackend, items: list[Any]) -> None:
        """Once, before the first step (e.g. reference log-probabilities of every item, cached)."""
        ...

    def micro_batch(self, items: list[Any], weight: float) -> tuple[list[TokenSequence], LossFn]:
        """The sequences of `items` and their loss, scaled by `weight` (the items' share of the step)."""
        ...

    def evaluate(self, backend: TrainingBackend, items: list[Any]) -> dict[str, float]:
        """Held-out metrics of the current weights."""
        ...


@dataclass
class TrainSummary:
    """What a finished `train` call reports."""

    steps: int
    start_step: int
    prepare_s: float = 0.0  # the algorithm's one-off `prepare` (DPO: the reference pass), not in step_time_s
    train: dict[str, float] = field(default_factory=dict)  # the last step's metrics
    eval: dict[str, float] = field(default_factory=dict)  # the last evaluation
    checkpoint: Optional[Path] = None


# ------------------------------------------------------------------------------------------------ checkpoints


def checkpoint_name(step: int) -> str:
    return f"step-{step:06d}"


def find_checkpoints(root: Path) -> list[Path]:
    """Complete checkpoints under `root`, oldest first."""
    root = Path(root)
    if not root.is_dir():
        return []
    found = [p for p in root.glob("step-*") if p.is_dir() and (p / COMPLETE).is_file()]
    return sorted(found, key=lambda p: int(p.name.split("-")[1]))


def newest_checkpoint(root: Path) -> Optional[Path]:
    found = find_checkpoints(root)
    return found[-1] if found else None


def write_checkpoint(backend: TrainingBackend, root: Path, step: int, loop_state: dict[str, Any], keep: int) -> Path:
    """Save backend state + loop position as `root/step-NNNNNN`, atomically; prune to the newest `keep`."""
    root.mkdir(parents=True, exist_ok=True)
    final = root / checkpoint_name(step)
    tmp = root / f".tmp-{final.name}-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    location = backend.save_state(tmp / "state")
    state = {**loop_state, "step": step, "state": location.replace(str(tmp), str(final))}
    (tmp / "loop_state.json").write_text(json.dumps(state, indent=2, default=float) + "\n")
    (tmp / COMPLETE).write_text(time.strftime("%Y-%m-%dT%H:%M:%S\n"))
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)
    if keep > 0:
        for old in find_checkpoints(root)[:-keep]:
            shutil.rmtree(old, ignore_errors=True)
    failpoints.reached("checkpoint", final)
    return final


# ------------------------------------------------------------------------------------------------ the loop


def _merge(parts: list[tuple[float, dict[str, float]]]) -> dict[str, float]:
    """Micro-batch metrics averaged by each micro-batch's share of the step."""
    merged: dict[str, float] = {}
    for weight, metrics in parts:
        for key, value in metrics.items():
            if key.endswith(":sum"):  # Tinker's summed counters are not averages
                continue
            merged[key] = merged.get(key, 0.0) + weight * float(value)
    return merged


class Trainer:
    """One training run of `algorithm` on `backend` (see the module docstring)."""

    def __init__(
        self,
        backend: TrainingBackend,
        algorithm: Algorithm,
        train_items: list[Any],
        eval_items: list[Any],
        config: LoopConfig,
        checkpoint_dir: Path,
        *,
        on_metrics: Optional[MetricsCallback] = None,
        fingerprint: str = "",
        progress: Optional[bool] = None,
    ):
        validate_loop_config(config)
        if not train_items:
            raise ConfigError("nothing to train on: the training split is empty")
        self.backend, self.algorithm, self.config = backend, algorithm, config
        self.train_items, self.eval_items = train_items, eval_items
        self.checkpoint_dir = Path(checkpoint_dir)
        self.on_metrics = on_metrics or (lambda metrics, step: None)
        self.progress = progress
        self._resumed_train: dict[str, float] = {}  # the last step's metrics, from a checkpoint
        lengths = [algorithm.item_length(item) for item in train_items]
        self.plan = [
            batch
            for epoch in range(config.epochs)
            for batch in plan_epoch(lengths, config.batch_size, config.seed, epoch, config.group_by_length)
        ]
        if config.max_steps is not None:
            self.plan = self.plan[: config.max_steps]
        self.total_steps = len(self.plan)
        self.steps_per_epoch = math.ceil(len(train_items) / config.batch_size)
        self.warmup = math.ceil(config.warmup_ratio * self.total_steps)
        digest = hashlib.sha256(json.dumps([fingerprint, self.plan]).encode()).hexdigest()
        self.fingerprint = digest[:16]

    def params(self, step: int) -> AdamParams:
        c = self.config
        lr = learning_rate_at(step, self.total_steps, c.learning_rate, self.warmup, c.schedule, c.min_lr_ratio)
        return AdamParams(lr, c.adam_beta1, c.adam_beta2, c.adam_eps, c.weight_decay, c.max_grad_norm)

    def resume(self, source: Path) -> int:
        """Load the newest checkpoint under `source` (a checkpoints folder); returns its step (0 if none).

        Under torchrun rank 0 reads it and the other ranks receive the weights and optimizer state from it.
        """
        step = self._load_checkpoint(source) if distributed.is_main() else 0
        step = distributed.broadcast_object(step)
        if step and distributed.active():
            self.backend.sync_from_main()
        return step

    def _load_checkpoint(self, source: Path) -> int:
        checkpoint = newest_checkpoint(source)
        if checkpoint is None:
            log.warning("resume: no complete checkpoint in %s; starting from step 0", source)
            return 0
        state = json.loads((checkpoint / "loop_state.json").read_text())
        if state.get("fingerprint") != self.fingerprint:
            raise ConfigError(
                f"cannot resume from {checkpoint}: it was trained on other data or batch settings "
                "(pairs, max_length, eval split, batch_size, epochs, max_steps or seed differ)"
            )
        self.backend.load_state(checkpoint / "state")
        self._resumed_train = dict(state.get("train") or {})
        log.info("resumed from %s (step %d of %d)", checkpoint, state["step"], self.total_steps)
        return int(state["step"])

    def _submit(self, step: int) -> tuple[list[tuple[float, ResultFuture[dict[str, float]]]], ResultFuture, int]:
        """Forward/backward this rank's share of step `step` in micro-batches, then the optimizer step.

        Each micro-batch's loss is scaled by its items' share of the whole global batch (times the number of
        ranks, whose gradients DDP averages), so the step's gradient is the same whatever the micro-batching and
        however many processes share the batch. Every rank runs the same number of micro-batches
        (`micro_batches`): an empty one runs the batch's first item at weight 0, so the ranks' backward passes
        and DDP's all-reduces stay in step. Only the last micro-batch synchronises gradients (`no_sync` before).
        """
        items = [self.train_items[i] for i in self.plan[step]]
        total = sum(self.algorithm.item_weight(item) for item in items) or 1.0
        w = distributed.world() if distributed.active() else distributed.World()
        parts = micro_batches(len(items), w.size, w.rank, self.config.grad_accum)
        futures = []
        for k, indices in enumerate(parts):
            part = [items[i] for i in indices]
            share = sum(self.algorithm.item_weight(item) for item in part) / total
            sequences, loss_fn = self.algorithm.micro_batch(part or items[:1], share * w.size)
            last = k == len(parts) - 1
            with self.backend.no_sync() if not last else contextlib.nullcontext():
                futures.append((share, self.backend.forward_backward(sequences, loss_fn)))
        tokens = sum(self.algorithm.item_length(item) for item in items)
        return futures, self.backend.optim_step(self.params(step)), tokens

    def evaluate(self, step: int) -> dict[str, float]:
        """Held-out metrics (rank 0 alone: the weights are the same on every rank)."""
        if not self.eval_items or not distributed.is_main():
            return {}
        metrics = {f"eval/{k}": v for k, v in self.algorithm.evaluate(self.backend, self.eval_items).items()}
        self.on_metrics(metrics, step)
        return metrics

    def train(self, resume_from: Optional[Path] = None) -> TrainSummary:
        """Run to the last step (from the newest checkpoint under `resume_from`, if given)."""
        from tqdm.auto import tqdm

        prepared = time.perf_counter()
        self.algorithm.prepare(self.backend, self.train_items + self.eval_items)
        prepare_s = time.perf_counter() - prepared
        start = self.resume(resume_from) if resume_from is not None else 0
        summary = TrainSummary(self.total_steps, start, prepare_s, train=self._resumed_train)
        if self.algorithm.prepare_metric:  # e.g. DPO's reference pass, timed on its own
            self.on_metrics({self.algorithm.prepare_metric: prepare_s}, start)
        c = self.config
        quiet = self.progress is False or not distributed.is_main()
        bar = tqdm(total=self.total_steps, initial=start, desc=self.algorithm.name, disable=quiet)
        pending: deque[tuple[int, Any, Any, int]] = deque()
        started, tokens_done, steps_done = time.perf_counter(), 0, 0

        def finish() -> None:
            nonlocal tokens_done, steps_done
            step, futures, optim, tokens = pending.popleft()
            metrics = distributed.sum_metrics(_merge([(w, f.result()) for w, f in futures]))  # global-batch means
            metrics.update({f"optim/{k}": float(v) for k, v in (optim.result() or {}).items()})
            # Running means since the loop started, after `prepare` (timed on its own as the algorithm's
            # `prepare_metric`): with requests in flight one step's own time is not observable.
            tokens_done, steps_done = tokens_done + tokens, steps_done + 1
            elapsed = max(time.perf_counter() - started, 1e-9)
            metrics.update(
                lr=self.params(step).learning_rate,
                epoch=(step + 1) / self.steps_per_epoch,
                tokens=float(tokens),
                tokens_per_s=tokens_done / elapsed,
                step_time_s=elapsed / steps_done,
            )
            summary.train = metrics
            self.on_metrics(metrics, step + 1)
            bar.update(1)
            bar.set_postfix(loss=f"{metrics.get('loss', float('nan')):.4f}")

        try:
            for step in range(start, self.total_steps):
                pending.append((step, *self._submit(step)))
                if len(pending) > 1:  # keep one step in flight while the next is submitted
                    finish()
                done_steps = step + 1
                save = c.save_every and done_steps % c.save_every == 0 and done_steps < self.total_steps
                evaluate = c.eval_every and done_steps % c.eval_every == 0 and done_steps < self.total_steps
                if save or evaluate:
                    while pending:
                        finish()
                    if evaluate:
                        summary.eval = self.evaluate(done_steps)
                    if save:
                        self._checkpoint(done_steps, summary)
            while pending:
                finish()
        finally:
            bar.close()
        summary.eval = self.evaluate(self.total_steps) or summary.eval
        summary.checkpoint = self._checkpoint(self.total_steps, summary)
        return summary

    def _checkpoint(self, step: int, summary: TrainSummary) -> Optional[Path]:
        if not distributed.is_main():  # the weights are the same on every rank: rank 0 writes them
            return None
        state = {"fingerprint": self.fingerprint, "total_steps": self.total_steps, "train": summary.train}
        return write_checkpoint(self.backend, self.checkpoint_dir, step, state, self.config.keep_checkpoints)
