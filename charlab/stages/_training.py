"""What DPO and SFT share: one schema for the training loop and its conversion to `LoopConfig`, the pairs reader,
the resume check, the trainer's start (`start_trainer`) and end (`train_and_save`: train, save the adapter on rank 0,
its remote forms), and the name of the file the SFT stage hands the export stage for its distillation-gap measure."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from omegaconf import MISSING, DictConfig

from charlab import distributed
from charlab.data.jsonl import read_jsonl
from charlab.data.records import DpoExample
from charlab.errors import ConfigError, DataError
from charlab.registry import StageResult
from charlab.run import Run
from charlab.schemas import LoraConfig, ModelConfig, StageConfig
from charlab.stages._common import lora_config, model_config, to_plain
from charlab.training.backend import TrainingBackend
from charlab.training.loop import LoopConfig, Trainer, TrainSummary

GAP_FILE = "gap_conversations.jsonl"  # sft writes it beside the adapter; export measures the gap on it


@dataclass
class TrainingStageConfig(StageConfig):
    """Loop settings of a training stage (defaults in configs/stage/dpo.yaml and sft.yaml)."""

    batch_size: int = MISSING  # sequences (pairs, conversations) per optimizer step
    grad_accum: int = MISSING  # micro-batches per step (memory, not maths)
    lr: float = MISSING
    schedule: str = MISSING  # linear | cosine | constant (after warmup)
    warmup_ratio: float = MISSING
    min_lr_ratio: float = MISSING  # the floor linear/cosine decay to, as a share of lr
    epochs: int = MISSING
    max_grad_norm: float = MISSING
    weight_decay: float = MISSING
    adam_beta1: float = MISSING
    adam_beta2: float = MISSING
    adam_eps: float = MISSING
    save_every: int = MISSING
    keep_checkpoints: int = MISSING
    eval_every: int = MISSING
    eval_batch_size: int = MISSING
    max_length: int = MISSING
    eval_fraction: float = MISSING
    seed: int = MISSING
    max_steps: Optional[int] = None


def loop_config(stage: DictConfig) -> LoopConfig:
    """The stage's training-loop settings."""
    return LoopConfig(
        epochs=int(stage.epochs),
        batch_size=int(stage.batch_size),
        learning_rate=float(stage.lr),
        schedule=str(stage.schedule),
        warmup_ratio=float(stage.warmup_ratio),
        min_lr_ratio=float(stage.min_lr_ratio),
        grad_accum=int(stage.grad_accum),
        max_grad_norm=float(stage.max_grad_norm),
        weight_decay=float(stage.weight_decay),
        adam_beta1=float(stage.adam_beta1),
        adam_beta2=float(stage.adam_beta2),
        adam_eps=float(stage.adam_eps),
        save_every=int(stage.save_every),
        eval_every=int(stage.eval_every),
        keep_checkpoints=int(stage.keep_checkpoints),
        seed=int(stage.seed),
        max_steps=None if stage.max_steps is None else int(stage.max_steps),
    )


def remote_forms(backend: TrainingBackend, artifact: str = "adapter") -> dict[str, str]:
    """The trained adapter's remote forms as artifacts (`adapter_tinker_state`, `adapter_tinker_sampler` on
    Tinker; none locally), which the pipeline's handoffs pass on to later steps."""
    return {f"{artifact}_{form}": path for form, path in backend.remote_artifacts().items()}


def read_pairs(path: Path) -> tuple[Path, list[DpoExample]]:
    """The pairs file (`path`, or `path/pairs.jsonl` for a run directory) and its pairs; one-line errors."""
    if path.is_dir():
        path = path / "pairs.jsonl"
    try:
        pairs = read_jsonl(path, DpoExample)
    except DataError as err:
        raise DataError(f"stage.pairs: {err}") from None
    for row, pair in enumerate(pairs, 1):
        for key in ("prompt", "chosen", "rejected"):
            if not isinstance(getattr(pair, key), str):
                raise DataError(f"stage.pairs: {path}: row {row}: field '{key}' must be a string")
    return path, pairs


def resume_root_of(stage: DictConfig, run: Run, what: str) -> Path:
    """Where the checkpoints (and caches) to continue are: `stage.resume_from` (recorded as a parent), else this run;
    `what` names the directory a wrong `resume_from` should have been ("a dpo run directory")."""
    if not stage.resume_from:
        return run.dir
    root = Path(stage.resume_from).expanduser()
    if not root.is_dir():
        raise ConfigError(f"stage.resume_from={stage.resume_from} is not a directory; give {what}")
    run.add_parent("resumed_from", root)
    return root


def training_setup(
    cfg: DictConfig, validate: Callable[[DictConfig], None]
) -> tuple[DictConfig, ModelConfig, LoraConfig, Any]:
    """A training stage's checked settings and what its backend is built from: (stage, model, LoRA, backend config)."""
    from charlab.training.factory import backend_config

    validate(cfg.stage)
    return cfg.stage, model_config(cfg.model), lora_config(cfg.lora), backend_config(to_plain(cfg.backend))


def start_trainer(
    backend: TrainingBackend, algorithm: Any, split: tuple[list, list], stage: DictConfig, run: Run, *,
    fingerprint: str, data: dict[str, Any], unit: str,
) -> Trainer:
    """The training loop over the (train, eval) items, checkpointing into the run and fingerprinted for resume; the
    run's `meta.json` learns the data counts, the split (`train_<unit>`, `eval_<unit>`) and the steps."""
    train_items, eval_items = split
    trainer = Trainer(
        backend,
        algorithm,
        train_items,
        eval_items,
        loop_config(stage),
        run.dir / "checkpoints",
        on_metrics=run.log_metrics,
        fingerprint=fingerprint,
    )
    sizes = {f"train_{unit}": len(train_items), f"eval_{unit}": len(eval_items)}
    run.update_meta(data=data, **sizes, total_steps=trainer.total_steps)
    return trainer


@dataclass
class Trained:
    """What a training stage's rank 0 has after training: the loop's summary, the saved adapter, its remote forms."""

    summary: TrainSummary
    adapter: Path
    remote: dict[str, str]


def other_rank() -> StageResult:
    """The result of a rank other than 0 under torchrun (rank 0 saves and reports)."""
    return StageResult(metric=None, metric_name=None, artifacts={}, summary={})


def train_and_save(
    trainer: Trainer, backend: TrainingBackend, stage: DictConfig, run: Run, resume_root: Path
) -> Optional[Trained]:
    """Train (continuing `resume_root`'s newest checkpoint when `stage.resume`), then on rank 0 save the adapter into
    the run; None on the other ranks of a torchrun group."""
    summary = trainer.train(resume_from=resume_root / "checkpoints" if stage.resume else None)
    if not distributed.is_main():
        return None
    adapter = backend.save_adapter(run.dir / "adapter")
    return Trained(summary, adapter, remote_forms(backend))
