"""A run directory and what every job writes into it.

`outputs/<persona>/<stage>/<time>_<id>/` (or one subfolder per job of a multirun) holds Hydra's `.hydra/`,
`config.yaml` (resolved, secrets redacted), `meta.json` (git SHA, times, versions, status, parent artifacts),
`metrics.jsonl`, the stage log and `wandb/`. Library code never sees this object's internals: stages pass
it plain paths and a `log_metrics` callable.
"""

from __future__ import annotations

import json
import logging
import platform
import subprocess
import sys
import time
import traceback
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional

import yaml

from charlab.redact import env_secrets, redact, redact_file, secrets_in
from charlab.settings import project_root
from charlab.tracking import NullTracker, Tracker

if TYPE_CHECKING:
    from charlab.generation.vllm import ServerPool
    from charlab.services import Services

log = logging.getLogger("charlab")
VERSIONED_PACKAGES = (
    "charlab",
    "torch",
    "transformers",
    "peft",
    "hydra-core",
    "omegaconf",
    "tinker",
    "openai",
    "wandb",
)


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def git_info(root: Optional[Path] = None) -> dict[str, Any]:
    """The checkout's commit and whether it has uncommitted changes (empty if not a git checkout)."""
    root = root or project_root()
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, timeout=5)
        if sha.returncode != 0:
            return {}
        dirty = subprocess.run(["git", "status", "--porcelain"], cwd=root, capture_output=True, text=True, timeout=5)
        return {"git_sha": sha.stdout.strip(), "git_dirty": bool(dirty.stdout.strip())}
    except (OSError, subprocess.TimeoutExpired):
        return {}


def package_versions() -> dict[str, str]:
    """Versions of the packages that decide a run's numbers (those installed)."""
    versions = {"python": platform.python_version()}
    for name in VERSIONED_PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return versions


def peak_memory(peak: dict[str, float]) -> dict[str, float]:
    """A stage's peak memory in GB (`charlab.memory.memory_window`); under torchrun the largest over the ranks."""
    from charlab import distributed

    return {key: round(distributed.max_value(value), 3) for key, value in peak.items()}


def read_json(path: Path) -> dict[str, Any]:
    """A JSON object from a file, or {} when it is missing, half-written or not an object."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def read_meta(directory: Path) -> dict[str, Any]:
    """What a run (or artifact) directory's `meta.json` says; {} when it has none or it cannot be read. The one
    reader of `meta.json`: the pipeline, the report, the verdict, launch, export, sweeps and the Studio use it."""
    return read_json(Path(directory) / "meta.json")


def write_json(path: Path, data: Any) -> None:
    """Write JSON atomically (a crash never leaves half a file)."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=2, ensure_ascii=False, default=str) + "\n", encoding="utf-8")
    tmp.replace(path)


def write_meta(path: Path, config: dict[str, Any], parents: Optional[dict[str, str]] = None, **extra: Any) -> Path:
    """A provenance `meta.json` beside an artifact: its config, git SHA, versions and parent artifacts."""
    data = {"created_at": _now(), **git_info(), "versions": package_versions(), "parents": parents or {}}
    data.update(extra)
    data["config"] = config
    write_json(path, data)
    return path


class Run:
    """One job's run directory, metrics stream, tracker and provenance."""

    def __init__(
        self,
        directory: Path,
        config: dict[str, Any],
        secrets: set[str],
        tracker: Optional[Tracker] = None,
        stage: str = "",
    ):
        self.dir = Path(directory)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.config = config
        self.secrets = secrets
        self.tracker: Tracker = tracker or NullTracker()
        self.stage = stage
        self._services: Optional[Services] = None  # the process's shared services (`runner.execute` sets them)
        self.parents: dict[str, str] = {}
        self.metrics_path = self.dir / "metrics.jsonl"
        self.metrics_path.touch()
        self.started_at = _now()
        self._t0 = time.time()
        self._meta: dict[str, Any] = {
            "stage": stage,
            "status": "running",
            "started_at": self.started_at,
            "command": redact(sys.argv, secrets),
            **git_info(),
            "versions": package_versions(),
        }
        self.write_meta()

    @classmethod
    def create(cls, directory: Path, resolved_config: dict[str, Any], stage: str) -> Run:
        """Make the run directory: redacted `config.yaml`, redacted `.hydra/` files, and `meta.json`."""
        secrets = env_secrets() | secrets_in(resolved_config)
        config = redact(resolved_config, secrets)
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        (directory / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False), encoding="utf-8")
        for hydra_file in (directory / ".hydra").glob("*.yaml"):
            redact_file(hydra_file, secrets)
        return cls(directory, config, secrets, stage=stage)

    @property
    def services(self) -> Services:
        """The process's shared services, handed in by `charlab.runner.execute(cfg, services)`."""
        if self._services is None:
            raise RuntimeError("this run has no services: run stages through charlab.runner.execute(cfg, services)")
        return self._services

    @services.setter
    def services(self, services: Services) -> None:
        self._services = services

    @property
    def pool(self) -> ServerPool:
        """The vLLM server pool of this run's services: what a stage passes to whatever starts or stops servers."""
        return self.services.vllm

    # ---- writing -------------------------------------------------------------------------------------
    def path(self, *parts: str) -> Path:
        """A path inside the run directory (parent folders created)."""
        path = self.dir.joinpath(*parts)
        path.parent.mkdir(parents=True, exist_ok=True)
        return path

    def log_metrics(self, metrics: dict[str, Any], step: Optional[int] = None) -> None:
        """Append one line to `metrics.jsonl` and send the same values to the tracker."""
        record = {"time": round(time.time() - self._t0, 3), **({"step": step} if step is not None else {}), **metrics}
        with self.metrics_path.open("a", encoding="utf-8") as f:
            f.write(json.dumps(redact(record, self.secrets), default=float) + "\n")
        self.tracker.log(metrics, step=step)

    def add_parent(self, name: str, path: str | Path) -> None:
        """Record an input artifact (a pairs file, an adapter, another run) in `meta.json`."""
        self.parents[name] = str(path)
        self.write_meta()

    def update_meta(self, **values: Any) -> None:
        """Merge values into `meta.json` (e.g. a stage's headline numbers)."""
        self._meta.update(values)
        self.write_meta()

    def write_meta(self) -> None:
        write_json(self.dir / "meta.json", {**self._meta, "parents": self.parents})

    def finish(self, status: str, metric: Optional[float] = None, error: Optional[BaseException] = None) -> None:
        """Close the run: status, end time and error into `meta.json`; the tracker always finishes."""
        self._meta.update(status=status, ended_at=_now(), duration_s=round(time.time() - self._t0, 3))
        if metric is not None:
            self._meta["metric"] = metric
        if error is not None:
            self._meta["error"] = redact(f"{type(error).__name__}: {error}", self.secrets)
            self._meta["traceback"] = redact(traceback.format_exception(error)[-5:], self.secrets)
        try:
            self.write_meta()
        finally:
            self.tracker.finish(exit_code=0 if status == "completed" else 1)
