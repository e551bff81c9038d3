"""Run directories as the Studio reads them: status, metrics, logs, reports, plots and adapters.

A run directory is any folder under the runs root (`paths.output_root`) with a `meta.json` that names a stage
and a `config.yaml` beside it, exactly what `python -m charlab.train` writes. Nothing is cached between calls
beyond what the caller keeps: the files are the truth, so runs started from a shell show up too.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import yaml

from charlab.run import read_json, read_meta

# folders that never hold run directories and can be large
_PRUNE = {"wandb", ".hydra", ".studio", "__pycache__", "adapter", "checkpoints", "merged"}
ADAPTER_FILES = ("adapter_config.json",)
DATA_FILES = ("pairs.jsonl", "introspection.jsonl", "prompts.jsonl", "matches.jsonl", "verdicts.jsonl")


@dataclass
class RunInfo:
    """One run directory and what its `meta.json` and `config.yaml` say."""

    dir: Path
    meta: dict[str, Any]
    config: dict[str, Any] = field(default_factory=dict)

    @property
    def stage(self) -> str:
        return str(self.meta.get("stage") or (self.config.get("stage") or {}).get("name") or "?")

    @property
    def persona(self) -> str:
        return str((self.config.get("persona") or {}).get("name") or "?")

    @property
    def model(self) -> str:
        return str((self.config.get("model") or {}).get("name") or "?")

    @property
    def status(self) -> str:
        """completed | running | failed | stopped (interrupted, e.g. by the Studio's stop button) | unknown."""
        status = str(self.meta.get("status") or "unknown")
        if status == "failed" and str(self.meta.get("error", "")).startswith("KeyboardInterrupt"):
            return "stopped"
        return status

    @property
    def started_at(self) -> str:
        return str(self.meta.get("started_at") or "")

    @property
    def metric(self) -> Optional[float]:
        value = self.meta.get("metric")
        return value if isinstance(value, (int, float)) else None

    @property
    def metric_name(self) -> str:
        return str(self.meta.get("metric_name") or "metric")

    @property
    def summary(self) -> dict[str, Any]:
        value = self.meta.get("summary")
        return value if isinstance(value, dict) else {}

    @property
    def artifacts(self) -> dict[str, str]:
        value = self.meta.get("artifacts")
        return value if isinstance(value, dict) else {}

    @property
    def error(self) -> str:
        return str(self.meta.get("error") or "")

    def relative(self, root: Path) -> str:
        try:
            return str(self.dir.relative_to(root))
        except ValueError:
            return str(self.dir)


def read_yaml(path: Path) -> dict[str, Any]:
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError):
        return {}
    return data if isinstance(data, dict) else {}


def load_run(directory: Path) -> Optional[RunInfo]:
    """The run in `directory`, or None if it is not a run directory."""
    directory = Path(directory)
    meta = read_meta(directory)
    if not meta or "stage" not in meta or not (directory / "config.yaml").is_file():
        return None
    return RunInfo(directory, meta, read_yaml(directory / "config.yaml"))


def list_runs(root: Path) -> list[RunInfo]:
    """Every run directory under `root` (pipeline steps included), newest first."""
    root = Path(root)
    if not root.is_dir():
        return []
    runs = []
    for current, dirs, files in os.walk(root):
        dirs[:] = sorted(d for d in dirs if d not in _PRUNE and not d.startswith("."))
        if "meta.json" in files and "config.yaml" in files:
            run = load_run(Path(current))
            if run is not None:
                runs.append(run)
    runs.sort(key=lambda r: (r.started_at, str(r.dir)), reverse=True)
    return runs


def read_metrics(directory: Path) -> list[dict[str, Any]]:
    """The rows of a run's `metrics.jsonl` (a torn last line, from a live run, is skipped)."""
    path = Path(directory) / "metrics.jsonl"
    rows = []
    try:
        with path.open(encoding="utf-8") as f:
            for line in f:
                try:
                    row = json.loads(line)
                except ValueError:
                    continue
                if isinstance(row, dict):
                    rows.append(row)
    except OSError:
        return []
    return rows


def numeric_series(rows: list[dict[str, Any]]) -> dict[str, list[tuple[float, float]]]:
    """Metric name -> [(step, value)] for every numeric metric (x is `step`, else the row index)."""
    series: dict[str, list[tuple[float, float]]] = {}
    for i, row in enumerate(rows):
        x = row.get("step", i)
        for key, value in row.items():
            if key in ("step", "time") or isinstance(value, bool) or not isinstance(value, (int, float)):
                continue
            series.setdefault(key, []).append((float(x), float(value)))
    return series


def tail(path: Path, lines: int = 40, max_bytes: int = 64_000) -> str:
    """The last `lines` lines of a text file ("" if missing)."""
    try:
        with Path(path).open("rb") as f:
            f.seek(0, os.SEEK_END)
            size = f.tell()
            f.seek(max(0, size - max_bytes))
            data = f.read().decode("utf-8", errors="replace")
    except OSError:
        return ""
    return "\n".join(data.splitlines()[-lines:])


def log_file(directory: Path) -> Optional[Path]:
    """The run's log: Hydra's `<job>.log` (`train.log`), else any `*.log` in the folder."""
    directory = Path(directory)
    preferred = directory / "train.log"
    if preferred.is_file():
        return preferred
    logs = sorted(directory.glob("*.log"))
    return logs[0] if logs else None


def report_of(directory: Path) -> Optional[Path]:
    path = Path(directory) / "report.md"
    return path if path.is_file() else None


def plots_of(directory: Path) -> list[Path]:
    """PNG plots in the run directory and its direct subfolders."""
    directory = Path(directory)
    return sorted(directory.glob("*.png")) + sorted(directory.glob("*/*.png"))


_IMAGE_LINK = re.compile(r"!\[[^\]]*\]\(([^)\s]+)\)")


def split_report(text: str) -> tuple[str, list[str]]:
    """Report markdown without its image links (the UI shows those files itself) and the linked files."""
    images = _IMAGE_LINK.findall(text)
    return _IMAGE_LINK.sub("", text), images


def data_files(runs: list[RunInfo], names: tuple[str, ...] = DATA_FILES) -> list[Path]:
    """Data files (`pairs.jsonl`, `introspection.jsonl`, ...) in the given runs, pipeline steps included."""
    found = []
    for run in runs:
        for name in names:
            found += sorted(run.dir.glob(name)) + sorted(run.dir.glob(f"*/{name}"))
    return list(dict.fromkeys(found))


def find_adapters(run: RunInfo) -> list[Path]:
    """PEFT adapter folders (with `adapter_config.json`) inside a run directory."""
    found = []
    for current, dirs, files in os.walk(run.dir):
        dirs[:] = sorted(d for d in dirs if d not in ("wandb", ".hydra"))
        if any(name in files for name in ADAPTER_FILES):
            found.append(Path(current))
            dirs[:] = []
    return found


def adapter_rank(adapter: Path) -> Optional[int]:
    value = read_json(Path(adapter) / "adapter_config.json").get("r")
    return value if isinstance(value, int) else None


@dataclass
class AdapterInfo:
    """A trained adapter and the commands that serve or export it."""

    path: Path
    run: RunInfo
    rank: Optional[int]
    base_model: str
    name: str


def adapter_info(run: RunInfo, adapter: Path) -> AdapterInfo:
    # the folder the adapter was trained on when it exists here (offline models live in the cache), else the
    # model's hub id from the run's config
    trained_on = str(read_json(Path(adapter) / "adapter_config.json").get("base_model_name_or_path") or "")
    base = trained_on if trained_on and Path(trained_on).is_dir() else ""
    base = base or str((run.config.get("model") or {}).get("name_or_path") or trained_on)
    name = re.sub(r"[^A-Za-z0-9_-]+", "-", f"{run.persona}-{run.stage}").strip("-")
    return AdapterInfo(Path(adapter), run, adapter_rank(adapter), base, name)


def vllm_command(info: AdapterInfo) -> str:
    """Serve the base model with the adapter as a LoRA module on an OpenAI-compatible vLLM server."""
    rank = max(info.rank or 16, 16)
    return (
        f"vllm serve {info.base_model} --enable-lora --max-lora-rank {rank} \\\n"
        f"    --lora-modules {info.name}={info.path}"
    )


def transformers_snippet(info: AdapterInfo) -> str:
    """Python that loads the adapter with transformers + PEFT and chats with it."""
    return (
        "from peft import PeftModel\n"
        "from transformers import AutoModelForCausalLM, AutoTokenizer\n\n"
        f'base = AutoModelForCausalLM.from_pretrained("{info.base_model}")\n'
        f'tokenizer = AutoTokenizer.from_pretrained("{info.base_model}")\n'
        f'model = PeftModel.from_pretrained(base, "{info.path}")\n'
        'messages = [{"role": "user", "content": "Who are you?"}]\n'
        "inputs = tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_tensors='pt')\n"
        "output = model.generate(**inputs, max_new_tokens=128)\n"
        "print(tokenizer.decode(output[0][inputs['input_ids'].shape[1]:], skip_special_tokens=True))"
    )
