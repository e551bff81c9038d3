"""`stage=dpo`: train a DPO LoRA adapter on a pairs file (teacher replies chosen over the student's own).

    python -m charlab.train stage=dpo stage.pairs=outputs/pirate/distill/<run>/pairs.jsonl model=smollm2-135m
    python -m charlab.train stage=dpo stage.pairs=<pairs.jsonl> stage.resume=true stage.resume_from=<dpo run dir>
    python -m charlab.train stage=dpo stage.pairs=<pairs.jsonl> backend=tinker model=qwen3-8b

Writes `adapter/` (a standard PEFT folder, with `meta.json` provenance inside) and `checkpoints/` into the run
directory, metrics every step to `metrics.jsonl` (+ W&B), and returns the held-out preference accuracy.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Optional

from omegaconf import MISSING, DictConfig

from charlab.errors import ConfigError, DataError
from charlab.registry import StageResult, register_stage
from charlab.run import Run, write_meta
from charlab.stages._common import cache_dir
from charlab.stages._training import (
    Trained,
    TrainingStageConfig,
    loop_config,
    other_rank,
    read_pairs,
    resume_root_of,
    start_trainer,
    train_and_save,
    training_setup,
)
from charlab.training.backend import closing
from charlab.training.loop import validate_loop_config

if TYPE_CHECKING:
    from charlab.training.backend import TrainingBackend
    from charlab.training.dpo import DpoAlgorithm


@dataclass
class DpoStageConfig(TrainingStageConfig):
    """`stage=dpo`: the pairs file and how to train on it (defaults in configs/stage/dpo.yaml)."""

    name: str = "dpo"
    pairs: str = MISSING  # a pairs.jsonl (or a distill run directory holding one)
    beta: float = MISSING
    nll_coef: float = MISSING
    kl_coef: float = MISSING
    resume_from: Optional[str] = None  # a dpo run directory whose newest checkpoint to continue (null: this run's)


def validate(stage: DictConfig) -> None:
    """One-line errors for DPO settings that cannot train."""
    validate_loop_config(loop_config(stage), prefix="stage.")
    checks = [
        (stage.beta > 0, "beta", "a positive number (e.g. 0.1)"),
        (stage.nll_coef >= 0, "nll_coef", "0 (off) or a positive number (e.g. 0.1)"),
        (stage.kl_coef >= 0, "kl_coef", "0 (off) or a positive number (e.g. 0.001)"),
        (stage.max_length >= 8, "max_length", "at least 8 tokens (e.g. 1024)"),
        (0 <= stage.eval_fraction < 1, "eval_fraction", "a value in [0, 1)"),
        (stage.eval_batch_size >= 1, "eval_batch_size", "a positive integer"),
        (stage.keep_checkpoints >= 0, "keep_checkpoints", "0 (keep all) or a positive integer"),
    ]
    for ok, key, allowed in checks:
        if not ok:
            raise ConfigError(f"stage.{key}={stage[key]} is not allowed; use {allowed}")


@register_stage(
    "dpo", schema=DpoStageConfig, description="train a DPO LoRA adapter on a pairs file", data_parallel=True
)
def run(cfg: DictConfig, run: Run) -> StageResult:
    """Train, export the adapter, report held-out accuracy."""
    from charlab.chat_format import ChatFormat
    from charlab.training.dpo import DpoAlgorithm, encode_pairs, reference_key, split_pairs
    from charlab.training.factory import create_backend, model_identity

    stage, model, lora, backend_cfg = training_setup(cfg, validate)
    pairs_path, pairs = read_pairs(Path(stage.pairs).expanduser().resolve())
    run.add_parent("pairs", pairs_path)
    resume_root = resume_root_of(stage, run, "a dpo run directory")

    backend = create_backend(backend_cfg, model, lora, cache_dir(cfg), seed=int(stage.seed), gpu_users=[run.pool])
    with closing(backend):  # Tinker's session learns whether the stage succeeded
        items, stats = encode_pairs(ChatFormat(backend.tokenizer), pairs, int(stage.max_length))
        if not items:
            raise DataError(f"stage.pairs: {pairs_path}: no pair has reply tokens within stage.max_length")
        train_items, eval_items = split_pairs(items, float(stage.eval_fraction), int(stage.seed))
        identity = model_identity(backend_cfg, model)
        algorithm = DpoAlgorithm(
            beta=float(stage.beta),
            nll_coef=float(stage.nll_coef),
            kl_coef=float(stage.kl_coef),
            cache_dir=run.dir,
            model_identity=identity,
            extra_cache_dirs=[resume_root] if stage.resume_from else [],
            eval_batch_size=int(stage.eval_batch_size),
        )
        fingerprint = reference_key(items, identity) + str([it.index for it in eval_items])
        data = {"pairs": stats.pairs, "kept": stats.kept, "truncated": stats.truncated, "dropped": len(stats.dropped)}
        trainer = start_trainer(
            backend, algorithm, (train_items, eval_items), stage, run, fingerprint=fingerprint, data=data, unit="pairs"
        )
        trained = train_and_save(trainer, backend, stage, run, resume_root)
        if trained is None:
            return other_rank()
        parents = {"pairs": str(pairs_path), **({"resumed_from": str(resume_root)} if stage.resume_from else {})}
        _write_adapter_meta(trained, run, parents, model.name_or_path, algorithm, backend)
    print(f"[charlab] dpo adapter: {trained.adapter}")
    return _result(trained, run.dir / "checkpoints", len(train_items), len(eval_items))


def _write_adapter_meta(
    trained: Trained,
    run: Run,
    parents: dict[str, str],
    base_model: str,
    algorithm: DpoAlgorithm,
    backend: TrainingBackend,
) -> None:
    """The adapter's own `meta.json`: where it came from, its training numbers and remote forms."""
    summary = trained.summary
    write_meta(
        trained.adapter / "meta.json",
        run.config,
        parents,
        artifact="dpo adapter",
        base_model=base_model,
        steps=summary.steps,
        resumed_at_step=summary.start_step,
        train=summary.train,
        eval=summary.eval,
        reference_cache=str(algorithm.cache_path) if algorithm.cache_path else None,
        reference_pass_s=round(summary.prepare_s, 3),  # 0 when the cache was reused
        **({"tinker_export": backend.last_export} if backend.last_export else {}),
        **trained.remote,
    )


def _result(trained: Trained, checkpoints: Path, train_pairs: int, eval_pairs: int) -> StageResult:
    """Held-out accuracy as the headline (the last step's training accuracy without a held-out split)."""
    summary = trained.summary
    held_out = summary.eval.get("eval/accuracy")
    metric, metric_name = (held_out, "eval/accuracy")
    if held_out is None:  # no held-out split (eval_fraction=0): the last step's training accuracy
        metric, metric_name = summary.train.get("accuracy"), "accuracy"
    return StageResult(
        metric=metric,
        metric_name=metric_name,
        artifacts={"adapter": trained.adapter, "checkpoints": checkpoints, **trained.remote},
        summary={
            "steps": summary.steps,
            "train_pairs": train_pairs,
            "eval_pairs": eval_pairs,
            **{k: v for k, v in summary.eval.items()},
            "train/loss": summary.train.get("loss"),
        },
    )
