"""`stage=capability`: lm-eval on base vs tuned, offline, over a multiple-choice task defined on a local file
(`tests/fixtures/capability/easy_facts.yaml`: 40 easy facts, four choices each).

The controls: an adapter that leaves the model unchanged (LoRA B = 0) must give tuned - base exactly 0 with paired
SE 0 (any mismatch of items between the two runs breaks it); an adapter from a real DPO run must change per-item
scores; the pipeline must hand the exported adapter to the step; offline, a hub benchmark stops in one line naming
its dataset; without lm-eval, one line naming the extra.
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import pytest

from charlab.errors import ConfigError, DataError
from charlab.eval.capability import capability_reading, compare
from charlab.eval.lm_harness import parse_tasks, require_lm_eval, task_source
from tests.conftest import ROOT
from tests.test_dpo_stage import write_pairs
from tests.test_vllm import vllm_python  # noqa: F401  (fixture)

TASK = ROOT / "tests" / "fixtures" / "capability" / "easy_facts.yaml"
FAST = ["model=tiny", f"stage.tasks=[{TASK}]", "stage.batch_size=16"]


def summary_of(run_dir: Path) -> dict:
    return json.loads((run_dir / "meta.json").read_text())["summary"]


# ---- the statistic, by hand ---------------------------------------------------------------------------------


@pytest.mark.unit
def test_the_paired_se_is_the_se_of_per_item_differences_and_smaller_than_the_unpaired_one() -> None:
    base = {f"t:{i}": float(i % 2) for i in range(40)}  # hard and easy items alternate
    tuned = dict(base) | {"t:1": 0.0, "t:3": 0.0}  # tuned loses two easy items
    row = compare(base, tuned, "t")
    diffs = [tuned[k] - base[k] for k in base]
    mean = sum(diffs) / 40
    sd = math.sqrt(sum((d - mean) ** 2 for d in diffs) / 39)
    assert (row.n, row.changed) == (40, 2)
    assert row.difference == pytest.approx(-0.05) and row.se == pytest.approx(sd / math.sqrt(40))
    assert row.unpaired_se == pytest.approx(math.hypot(row.base_se, row.tuned_se)) and row.unpaired_se > 2 * row.se
    same = compare(base, base, "t")
    assert (same.difference, same.se, same.z, same.changed) == (0.0, 0.0, 0.0, 0)


@pytest.mark.unit
def test_the_reading_calls_a_loss_only_beyond_the_threshold_in_paired_ses() -> None:
    def summary(difference: float, se: float) -> dict:
        row = {"base": 0.5, "tuned": 0.5 + difference, "difference": difference, "se": se}
        return {"threshold_se": 2.0, "tasks": {"mmlu": row, "arc": {**row, "difference": 0.0}}}

    assert capability_reading(summary(-0.019, 0.01)).kept is True
    lost = capability_reading(summary(-0.021, 0.01))
    assert lost.kept is False and lost.worse == ("mmlu",) and lost.line.startswith("capability lost: mmlu 0.479 vs")
    assert capability_reading(summary(-0.01, 0.0)).kept is False  # every item lost the same: SE 0, still worse
    assert capability_reading(summary(0.0, None)).line.endswith("(mmlu, arc: too few items to tell)")
    assert capability_reading(None).kept is None
    base_only = {"tasks": {"t": {"base": 0.5, "tuned": None}}}
    assert capability_reading(base_only).line.endswith("base only (no tuned model)")


@pytest.mark.unit
def test_task_entries_and_local_task_files() -> None:
    specs = parse_tasks(["mmlu", {"task": "arc_challenge", "shots": 25, "metric": "acc_norm"}, str(TASK)])
    assert [(s.task, s.shots, s.metric, s.is_file) for s in specs[:2]] == [
        ("mmlu", None, "acc", False), ("arc_challenge", 25, "acc_norm", False)
    ]  # fmt: skip
    config = task_source(specs[2])  # relative data files are read relative to the YAML, whatever the cwd
    assert config["dataset_kwargs"]["data_files"]["test"] == str(TASK.parent / "easy_facts.jsonl")
    bad_entries = [
        ([], "stage.tasks is empty"),
        ([{"task": "mmlu", "shot": 5}], r"stage.tasks\[0\]: key 'shot' is not allowed"),
        ([{"task": "mmlu", "shots": -1}], r"stage.tasks\[0\].shots=-1 is not allowed"),
    ]
    for bad, message in bad_entries:
        with pytest.raises(ConfigError, match=message):
            parse_tasks(bad)


@pytest.mark.unit
def test_without_lm_eval_the_error_names_the_extra(monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "lm_eval", None)  # `import lm_eval` now raises ImportError
    with pytest.raises(ConfigError, match=r"needs EleutherAI's lm-eval.*pip install 'charlab\[capability\]'"):
        require_lm_eval()


# ---- the stage on the tiny model --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def unchanged_adapter(tiny_model, cache_dir, tmp_path_factory) -> Path:
    """PEFT's default LoRA init (B = 0): the tuned model *is* the base model."""
    from peft import LoraConfig, get_peft_model

    from charlab.models import load_causal_lm

    out = tmp_path_factory.mktemp("unchanged")
    config = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"])
    get_peft_model(load_causal_lm(tiny_model, cache_dir), config).save_pretrained(out)
    return out


def test_an_adapter_that_changes_nothing_gives_exactly_zero_and_resume_reuses_scores(run_stage, unchanged_adapter):
    """Injected bug caught: the tuned run scoring different items than the base run (e.g. limit or few-shot seed
    applied to one model only) makes `items changed` > 0 or the SE > 0."""
    metric, out = run_stage(["stage=capability", *FAST, f"stage.adapter={unchanged_adapter}"])
    row = summary_of(out)["tasks"]["charlab_easy_facts"]
    assert (row["n"], row["shots"], row["metric"]) == (40, 0, "acc")
    assert (row["difference"], row["se"], row["changed"]) == (0.0, 0.0, 0) and metric == 0.0
    assert row["base"] == row["tuned"] == row["lm_eval"]["base"] == row["lm_eval"]["tuned"]  # lm-eval's own mean
    assert row["unpaired_se"] > 0  # the unpaired statistic cannot see that the two runs are the same model
    samples = [json.loads(line) for line in (out / "samples.jsonl").read_text().splitlines()]
    assert [s["item"] for s in samples] == [f"charlab_easy_facts:{i}" for i in range(40)]
    assert all(s["base"] == s["tuned"] for s in samples)
    assert json.loads((out / "meta.json").read_text())["parents"]["adapter"] == str(unchanged_adapter)
    report = (out / "report.md").read_text()
    assert "**capability kept: tuned is not below base by more than 2 paired SE on any of 1 task(s)**" in report
    assert "| charlab_easy_facts | acc | 0 | 40 |" in report and "paired SE" in report

    scores = (out / "scores_tuned.json").stat().st_mtime_ns
    run_stage(["stage=capability", *FAST, f"stage.adapter={unchanged_adapter}", "stage.resume=true",
               f"hydra.run.dir={out}"], name=out.name)  # fmt: skip
    assert (out / "scores_tuned.json").stat().st_mtime_ns == scores  # finished scores are not recomputed


def test_the_pipeline_hands_a_real_dpo_adapter_to_the_step_and_its_scores_differ(run_stage, tmp_path: Path) -> None:
    """dpo -> export -> capability on the tiny model: the step gets the exported adapter (pipeline.wiring), the
    DPO-trained model answers some items differently from base, and the pipeline's report shows the numbers."""
    pairs = write_pairs(tmp_path / "pairs.jsonl", n=16)
    steps = {
        "dpo": [f"stage.pairs={pairs}", "stage.batch_size=4", "stage.lr=5e-2", "stage.eval_fraction=0",
                "stage.save_every=0", "stage.eval_every=0"],
        "export": ["stage.sft_adapter=null"],
        "capability": [f"stage.tasks=[{TASK}]", "stage.batch_size=16"],
    }  # fmt: skip
    step_args = [f"+pipeline.step_overrides.{k}=[{','.join(map(repr, v))}]" for k, v in steps.items()]
    _, root = run_stage(
        ["stage=pipeline", "model=tiny", "pipeline.steps=[dpo,export,capability]", "pipeline.metric_step=capability",
         *step_args], name="pipe",
    )  # fmt: skip
    step = root / "03_capability"
    assert json.loads((step / "meta.json").read_text())["parents"]["adapter"] == str(root / "02_export" / "adapter")
    row = summary_of(step)["tasks"]["charlab_easy_facts"]
    assert row["changed"] > 0 and row["se"] > 0, row  # training moved the model's answers
    report = (root / "report.md").read_text()
    assert "## Capability (lm-eval)" in report and "| charlab_easy_facts | acc | 0 | 40 |" in report


def write_group(folder: Path) -> Path:
    """A group of two tasks over the fixture file (two prompt formats), pooled item by item like MMLU's subjects."""
    import yaml

    config = yaml.safe_load(TASK.read_text())
    config["dataset_kwargs"]["data_files"]["test"] = str(TASK.parent / "easy_facts.jsonl")
    for name, text in (("a", "{{question}}"), ("b", "Q: {{question}}\nA:")):
        member = config | {"task": f"facts_{name}", "doc_to_text": text}
        (folder / f"facts_{name}.yaml").write_text(yaml.safe_dump(member))
    group = {"group": "facts", "task": ["facts_a", "facts_b"],
             "aggregate_metric_list": [{"metric": "acc", "aggregation": "mean", "weight_by_size": True}]}  # fmt: skip
    (folder / "facts.yaml").write_text(yaml.safe_dump(group))
    return folder


def test_a_group_is_pooled_item_by_item_with_its_shots_and_limit_on_every_member(run_stage, tmp_path: Path) -> None:
    """Injected bugs caught: shots set on the group but not its members; items of one member only; a per-member
    limit applied once to the whole group."""
    folder = write_group(tmp_path)
    _, out = run_stage(["stage=capability", "model=tiny", f"stage.task_paths=[{folder}]", "eval.capability_limit=10",
                        "stage.tasks=[{task: facts, shots: 2}]"])  # fmt: skip
    row = summary_of(out)["tasks"]["facts"]
    assert (row["n"], row["shots"], row["tuned"]) == (20, 2, None)
    assert row["base"] == pytest.approx(row["lm_eval"]["base"])  # lm-eval's own size-weighted group mean
    scores = json.loads((out / "scores_base.json").read_text())
    assert (scores["lm_eval"]["n-shot"]["facts_a"], scores["lm_eval"]["n-shot"]["facts_b"]) == (2, 2)
    assert sorted({k.split(":")[0] for k in scores["tasks"]["facts"]["values"]}) == ["facts_a", "facts_b"]


def test_offline_a_hub_benchmark_stops_in_one_line_naming_its_dataset(cli, tmp_path: Path) -> None:
    empty = tmp_path / "hf-home"  # no cached datasets, whatever this machine has cached
    result = cli(["stage=capability", "model=tiny", "logger=none", "stage.tasks=[arc_challenge]"], timeout=300,
                 HF_HOME=str(empty), HF_DATASETS_CACHE=str(empty / "datasets"), HF_HUB_OFFLINE="1")  # fmt: skip
    assert result.returncode == 2, result.stderr[-2000:]
    lines = [line for line in result.stderr.splitlines() if line.startswith("charlab: error:")]
    assert lines == [
        "charlab: error: capability task 'arc_challenge': dataset 'allenai/ai2_arc' is not in the Hugging Face cache "
        "and HF_HUB_OFFLINE=1; fetch it once online (the same command without HF_HUB_OFFLINE) or use a task over a "
        "local file"
    ]
    assert "Loading weights" not in result.stderr  # it stopped before any model loaded


@pytest.mark.parametrize(
    "kind, message",
    [("vllm", "scores the base model only: .*provider@student=hf"), ("openai", "scores the base model only"),
     ("tinker", "is not supported; lm-eval scores items by log-likelihood through hf, vllm, openai")],
)  # fmt: skip
def test_a_provider_that_cannot_score_the_model_is_one_line_before_anything_runs(run_stage, kind, message) -> None:
    with pytest.raises(ConfigError, match=f"provider@student={kind} {message}"):
        run_stage(["stage=capability", *FAST, f"provider@student={kind}", "stage.adapter=/nowhere/adapter"])


def test_an_unknown_task_or_metric_is_one_line(compose_cfg) -> None:
    from charlab.eval.lm_harness import load_tasks

    with pytest.raises(ConfigError, match="'no_such_task' is not an lm-eval task or group"):
        load_tasks(parse_tasks(["no_such_task"]))
    with pytest.raises(ConfigError, match="task 'charlab_easy_facts' has no metric 'f1'; it has acc, acc_norm"):
        load_tasks(parse_tasks([{"task": str(TASK), "metric": "f1"}]))
    with pytest.raises(DataError, match="missing.yaml: file not found"):
        load_tasks(parse_tasks([str(TASK.parent / "missing.yaml")]))


@pytest.mark.slow
@pytest.mark.vllm
def test_on_charlabs_vllm_server_the_base_model_scores_the_items_as_hf_does(vllm_python, run_stage) -> None:  # noqa: F811
    """lm-eval's local-completions against charlab's managed vLLM server (SmolLM2): the same per-item scores as
    lm-eval's hf model. Injected bugs caught: text sent instead of token ids, or another model's name, shifts
    items; the server left running (servers.json)."""
    common = ["stage=capability", "model=smollm2-135m", f"stage.tasks=[{TASK}]"]
    _, hf = run_stage(common, name="hf")
    _, served = run_stage([*common, "provider@student=vllm"], name="vllm")
    scores = {name: json.loads((out / "scores_base.json").read_text()) for name, out in (("hf", hf), ("vllm", served))}
    assert (scores["hf"]["model_type"], scores["vllm"]["model_type"]) == ("hf", "local-completions")
    hf_items, vllm_items = (scores[n]["tasks"]["charlab_easy_facts"]["values"] for n in ("hf", "vllm"))
    assert len(vllm_items) == len(hf_items) == 40
    assert sum(vllm_items[k] == hf_items[k] for k in hf_items) >= 39  # fp32 both; at most one near-tie may flip
    record = json.loads((served / "vllm" / "servers.json").read_text())
    assert len(record) == 1 and record[0]["stopped_at"] is not None
