"""EleutherAI's lm-evaluation-harness (`lm-eval`) as charlab's capability benchmark runner.

    specs = parse_tasks([{"task": "arc_challenge", "shots": 25, "metric": "acc_norm"}, "tests/fixtures/x.yaml"])
    tasks = load_tasks(specs)                       # datasets fetched (or a one-line error) before any model loads
    scores = run_tasks(tasks, "hf", {"pretrained": path, "peft": adapter}, limit=100, batch_size=8, seed=0)
    scores["arc_challenge"].values                  # {"arc_challenge:0": 1.0, ...}: one score per item

A task is an lm-eval task or group name (MMLU is a group of 57 subjects) or a YAML file in lm-eval's task format;
a YAML's relative `dataset_kwargs.data_files` are read relative to the file, so a task over a local JSONL works
from any directory. `lm-eval` is an optional extra (`pip install 'charlab[capability]'`), imported only here.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from charlab.errors import ConfigError, DataError

EXTRA = "capability"
SPEC_KEYS = ("task", "shots", "metric")


@dataclass(frozen=True)
class TaskSpec:
    """One benchmark: which lm-eval task, with how many few-shot examples, scored by which per-item metric."""

    task: str  # an lm-eval task or group name, or a YAML file defining one
    shots: Optional[int] = None  # None: the task's own default
    metric: str = "acc"

    @property
    def is_file(self) -> bool:
        return self.task.endswith((".yaml", ".yml"))


@dataclass
class LoadedTask:
    """A task (or group) loaded by lm-eval, with the leaf tasks whose items it scores."""

    spec: TaskSpec
    label: str  # how reports name it: the task/group name
    obj: Any  # lm_eval Task or Group
    leaves: list[str] = field(default_factory=list)


@dataclass
class TaskScores:
    """One model's per-item scores on one task (`<leaf task>:<doc id>` -> metric value) and lm-eval's aggregate."""

    values: dict[str, float]
    lm_eval_value: Optional[float] = None


def require_lm_eval() -> Any:
    """The `lm_eval` module, or a one-line error naming the extra that installs it."""
    try:
        import lm_eval
    except ImportError:
        raise ConfigError(
            f"stage=capability needs EleutherAI's lm-eval, which is not installed: pip install 'charlab[{EXTRA}]'"
        ) from None
    return lm_eval


def parse_tasks(value: Any, where: str = "stage.tasks") -> list[TaskSpec]:
    """`stage.tasks` entries (a name or YAML path, or a mapping with task, shots, metric) as `TaskSpec`s."""
    entries = list(value or [])
    if not entries:
        raise ConfigError(f"{where} is empty; e.g. {where}=[arc_challenge] or a YAML file in lm-eval's task format")
    specs = []
    for i, entry in enumerate(entries):
        item = dict(entry) if isinstance(entry, Mapping) else {"task": entry}
        unknown = sorted(set(item) - set(SPEC_KEYS))
        if unknown or not item.get("task"):
            problem = f"key '{unknown[0]}' is not allowed" if unknown else "needs a task"
            use = "{task: <name or .yaml>, shots: <int|null>, metric: acc}"
            raise ConfigError(f"{where}[{i}]: {problem}; use {use}")
        shots = item.get("shots")
        if shots is not None and (not isinstance(shots, int) or shots < 0):
            raise ConfigError(f"{where}[{i}].shots={shots!r} is not allowed; use an integer >= 0 or null")
        specs.append(TaskSpec(str(item["task"]), shots, str(item.get("metric") or "acc")))
    return specs


def task_source(spec: TaskSpec) -> Any:
    """What lm-eval loads for a spec: the name, or a YAML file's config with its data files made absolute."""
    if not spec.is_file:
        return spec.task
    import yaml

    path = Path(spec.task).expanduser()
    if not path.is_file():
        raise DataError(f"stage.tasks: {path}: file not found (a task YAML in lm-eval's format)")
    try:
        config = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as err:
        raise DataError(f"stage.tasks: {path}: not valid YAML ({' '.join(str(err).split())[:200]})") from None
    if not isinstance(config, dict) or not config.get("task"):
        raise DataError(f"stage.tasks: {path}: field 'task' is missing (lm-eval's task format)")
    files = (config.get("dataset_kwargs") or {}).get("data_files")
    if files is not None:
        config["dataset_kwargs"]["data_files"] = _absolute(files, path.parent)
    return config


def _absolute(files: Any, folder: Path) -> Any:
    if isinstance(files, dict):
        return {k: _absolute(v, folder) for k, v in files.items()}
    if isinstance(files, list):
        return [_absolute(v, folder) for v in files]
    local = Path(str(files)).expanduser()
    return str(local if local.is_absolute() or "://" in str(files) else (folder / local).resolve())


def task_manager(specs: list[TaskSpec], task_paths: Optional[list[str]] = None) -> Any:
    """lm-eval's task index over `task_paths` (folders of task YAMLs, its --include_path), with its own bundled
    tasks only when a named task is not found there (indexing its ~10k files takes seconds)."""
    from lm_eval.tasks import TaskManager

    folders = [str(Path(p).expanduser()) for p in task_paths or []]
    for folder in folders:
        if not Path(folder).is_dir():
            raise DataError(f"stage.task_paths: {folder}: not a folder (of lm-eval task YAMLs)")
    names = [s.task for s in specs if not s.is_file]
    manager = TaskManager(include_path=folders or None, include_defaults=False) if folders or not names else None
    if manager is None or any(name not in manager.all_tasks for name in names):
        manager = TaskManager(include_path=folders or None, include_defaults=True)
    return manager


def load_tasks(specs: list[TaskSpec], task_paths: Optional[list[str]] = None) -> list[LoadedTask]:
    """Load every task with its data (offline: a one-line error naming the missing dataset) and its few-shot count."""
    require_lm_eval()
    manager = task_manager(specs, task_paths)
    loaded = []
    for spec in specs:
        source = task_source(spec)
        label = source["task"] if isinstance(source, dict) else spec.task
        if isinstance(source, str) and source not in manager.all_tasks:
            raise ConfigError(
                f"stage.tasks: '{source}' is not an lm-eval task or group, nor a .yaml file (list: lm-eval ls tasks)"
            )
        try:
            obj = manager.load([source])
        except Exception as err:  # noqa: BLE001 - lm-eval raises whatever `datasets` raises
            raise DataError(_dataset_problem(label, source, err)) from None
        leaves = dict(obj["tasks"])
        for task in leaves.values():
            if spec.shots is not None:
                task.set_config(key="num_fewshot", value=spec.shots)
            if spec.metric not in task.aggregation():
                allowed = ", ".join(sorted(task.aggregation()))
                raise ConfigError(f"stage.tasks: task '{label}' has no metric '{spec.metric}'; it has {allowed}")
        top = obj["groups"].get(label) or leaves.get(label) or next(iter(leaves.values()))
        loaded.append(LoadedTask(spec, label, top, sorted(leaves)))
    return loaded


def _dataset_problem(label: str, source: Any, err: BaseException) -> str:
    """One line saying which dataset a task could not load, and why (offline: what to do)."""
    import huggingface_hub.constants as hub

    text = " ".join(str(err).split())
    named = re.search(r"'([^'\s]+)'", text)  # "Couldn't reach 'allenai/ai2_arc' on the Hub"
    dataset = named.group(1) if named else (source.get("dataset_path") if isinstance(source, dict) else label)
    if hub.HF_HUB_OFFLINE:
        return (
            f"capability task '{label}': dataset '{dataset}' is not in the Hugging Face cache and HF_HUB_OFFLINE=1; "
            "fetch it once online (the same command without HF_HUB_OFFLINE) or use a task over a local file"
        )
    return f"capability task '{label}': dataset '{dataset}' could not be loaded: {text[:200]}"


def run_tasks(
    tasks: list[LoadedTask], model: str, model_args: dict[str, Any], limit: Optional[int], seed: int
) -> tuple[dict[str, TaskScores], dict[str, Any]]:
    """Evaluate one model (lm-eval's `model` type and `model_args`) on every task with per-item scores logged.

    Returns each task's per-item scores and lm-eval's own record of the run (versions, n-shot, config)."""
    lm_eval = require_lm_eval()
    result = lm_eval.simple_evaluate(
        model=model,
        model_args=model_args,
        tasks=[t.obj for t in tasks],
        limit=limit,
        log_samples=True,
        bootstrap_iters=0,  # standard errors are computed from the per-item scores (paired across models)
        random_seed=seed,
        numpy_random_seed=seed,
        torch_random_seed=seed,
        fewshot_random_seed=seed,
    )
    samples = result.get("samples") or {}
    scores = {}
    for task in tasks:
        metric = task.spec.metric
        rows = [(leaf, row) for leaf in task.leaves for row in samples.get(leaf, [])]
        values = {f"{leaf}:{row['doc_id']}": float(row[metric]) for leaf, row in rows}
        reported = (result.get("results") or {}).get(task.label, {}).get(f"{task.spec.metric},none")
        scores[task.label] = TaskScores(values, float(reported) if isinstance(reported, (int, float)) else None)
    record = {k: result.get(k) for k in ("versions", "n-shot", "n-samples", "config")}
    return scores, record
