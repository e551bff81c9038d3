"""Experiment trackers: W&B (offline by default) or none, behind one small interface.

W&B must never touch the network unless asked: the mode goes into the environment *before* wandb is
imported (an offline `wandb.init` alone still reaches for a telemetry endpoint). One tracker is one W&B run
per job; `finish` is always called by the run, also when the stage fails.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Optional, Protocol

from charlab.errors import ConfigError

TRACKER_KINDS = ("wandb", "none")
WANDB_MODES = ("offline", "online", "disabled")


class Tracker(Protocol):
    """Where metrics, tables and summaries go besides `metrics.jsonl`."""

    def log(self, metrics: dict[str, Any], step: Optional[int] = None) -> None: ...

    def log_table(self, name: str, columns: list[str], rows: list[list[Any]]) -> None: ...

    def summary(self, values: dict[str, Any]) -> None: ...

    def finish(self, exit_code: int = 0) -> None: ...


class NullTracker:
    """Tracking off: every call is a no-op."""

    def log(self, metrics: dict[str, Any], step: Optional[int] = None) -> None:
        pass

    def log_table(self, name: str, columns: list[str], rows: list[list[Any]]) -> None:
        pass

    def summary(self, values: dict[str, Any]) -> None:
        pass

    def finish(self, exit_code: int = 0) -> None:
        pass


class WandbTracker:
    """One W&B run writing under `<run dir>/wandb/`."""

    def __init__(
        self,
        run_dir: Path,
        config: dict[str, Any],
        *,
        mode: str,
        project: str,
        entity: Optional[str],
        group: Optional[str],
        job_type: Optional[str],
        tags: Optional[list[str]],
        name: Optional[str],
    ):
        if mode not in WANDB_MODES:
            raise ConfigError(f"logger.mode={mode!r} is not allowed; use one of {', '.join(WANDB_MODES)}")
        os.environ["WANDB_MODE"] = mode
        os.environ.setdefault("WANDB_SILENT", "true")
        os.environ.setdefault("WANDB_CONSOLE", "off")
        if mode != "online":
            os.environ.setdefault("WANDB_DISABLE_GIT", "true")
        import wandb

        self._wandb = wandb
        self.run = wandb.init(
            dir=str(run_dir),
            project=project,
            entity=entity,
            group=group,
            job_type=job_type,
            tags=list(tags or []),
            name=name,
            config=config,
            mode=mode,
            reinit="create_new",  # a pipeline keeps its own run open while each step logs its own,
        )

    def log(self, metrics: dict[str, Any], step: Optional[int] = None) -> None:
        self.run.log(metrics, step=step)

    def log_table(self, name: str, columns: list[str], rows: list[list[Any]]) -> None:
        self.run.log({name: self._wandb.Table(columns=columns, data=rows)})

    def summary(self, values: dict[str, Any]) -> None:
        for key, value in values.items():
            self.run.summary[key] = value

    def finish(self, exit_code: int = 0) -> None:
        self.run.finish(exit_code=exit_code)


def make_tracker(logger_cfg: dict[str, Any], run_dir: Path, config: dict[str, Any], name: str) -> Tracker:
    """The tracker a `logger` config group option asks for."""
    kind = logger_cfg.get("kind", "none")
    if kind == "none":
        return NullTracker()
    if kind != "wandb":
        raise ConfigError(f"logger.kind={kind!r} is not allowed; use one of {', '.join(TRACKER_KINDS)}")
    return WandbTracker(
        run_dir=run_dir,
        config=config,
        mode=logger_cfg["mode"],  # every key: `WandbLoggerConfig` (configs/logger/wandb.yaml holds the defaults)
        project=logger_cfg["project"],
        entity=logger_cfg["entity"],
        group=logger_cfg["group"],
        job_type=logger_cfg["job_type"],
        tags=logger_cfg["tags"],
        name=name,
    )
