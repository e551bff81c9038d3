"""The stage registry: a stage registers its `run(cfg, run)` function (and config schema) by name.

`charlab.runner` dispatches `cfg.stage.name` through it; `registered_stages()` drives listings and errors.
A stage is a plain function, not a class hierarchy:

    @register_stage("show", schema=ShowStageConfig, description="print the persona")
    def run(cfg: DictConfig, run: Run) -> StageResult: ...

Stage modules register themselves when imported; `charlab.stages.load_stages()` (through `charlab.app.setup()`)
imports them. The registry imports no stage.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional, Union

from charlab.errors import ConfigError

if TYPE_CHECKING:
    from omegaconf import DictConfig

    from charlab.run import Run


@dataclass
class StageResult:
    """What a stage hands back: its headline metric (what sweeps optimise), artifacts and numbers."""

    metric: Optional[float] = None
    metric_name: Optional[str] = None
    artifacts: dict[str, Union[Path, str]] = field(default_factory=dict)  # str: a remote one (tinker://...)
    summary: dict[str, Any] = field(default_factory=dict)


StageFn = Callable[["DictConfig", "Run"], StageResult]


@dataclass(frozen=True)
class StageSpec:
    """A registered stage."""

    name: str
    run: StageFn
    schema: Optional[type] = None
    description: str = ""
    schemas: dict[str, type] = field(default_factory=dict)  # further ConfigStore schemas: `schemas/<key>`
    data_parallel: bool = False  # trains: runs under torchrun when `backend.nproc_per_node` > 1 (`charlab.launch`)


_STAGES: dict[str, StageSpec] = {}


def register_stage(
    name: str,
    schema: Optional[type] = None,
    description: str = "",
    schemas: Optional[dict[str, type]] = None,
    data_parallel: bool = False,
) -> Callable[[StageFn], StageFn]:
    """Decorator: register `fn` as stage `name` (its YAML is `configs/stage/<name>.yaml`); `schemas`: further
    ConfigStore nodes its YAML uses (`{"pipeline": PipelineConfig}` is stored as `schemas/pipeline`);
    `data_parallel`: a training stage, which `backend.nproc_per_node` > 1 runs under torchrun."""

    def decorator(fn: StageFn) -> StageFn:
        existing = _STAGES.get(name)
        if existing is not None and _where(existing.run) != _where(fn):  # the same module loaded again is no clash
            raise ValueError(f"stage {name!r} is registered twice: by {_where(existing.run)} and by {_where(fn)}")
        summary = description or (fn.__doc__ or "").strip().split("\n")[0]
        _STAGES[name] = StageSpec(name, fn, schema, summary, dict(schemas or {}), data_parallel)
        return fn

    return decorator


def _where(fn: StageFn) -> str:
    """`module.qualname` of a stage function: every stage's function is called `run`, its module tells them apart."""
    return f"{fn.__module__}.{fn.__qualname__}"


def registered_stages() -> list[str]:
    """Names of every registered stage, sorted."""
    return sorted(_STAGES)


def get_stage(name: str) -> StageSpec:
    """The stage called `name`, or a one-line error listing the registered ones."""
    if not _STAGES:
        raise RuntimeError("no stages are registered: call charlab.app.setup() first")
    if name not in _STAGES:
        raise ConfigError(f"stage {name!r} is not registered; registered stages: {', '.join(registered_stages())}")
    return _STAGES[name]


def all_stages() -> list[StageSpec]:
    """Every registered stage (for listings and the ConfigStore)."""
    return [_STAGES[n] for n in sorted(_STAGES)]
