"""`stage=dpo` end to end on the tiny model: artifacts and provenance, bad input, kill + resume, the Python API."""

from __future__ import annotations

import json
import math
import os
import random
from pathlib import Path
from typing import Any

import pytest

from charlab.errors import CharlabError
from charlab.training.loop import newest_checkpoint
from tests.conftest import kill_when_held

pytestmark = pytest.mark.integration
TOPICS = ["the harbor", "bread", "the river", "a castle", "the weather", "my garden", "the library", "the ocean"]


def write_pairs(path: Path, n: int = 20, seed: int = 0) -> Path:
    """A separable pairs file in the distill stage's format (pirate voice chosen, plain voice rejected)."""
    rng = random.Random(seed)
    with path.open("w", encoding="utf-8") as f:
        for i in range(n):
            topic = rng.choice(TOPICS)
            row = {
                "prompt": f"Tell me about {topic}.",
                "chosen": f"Arr, matey! {topic} be a fine sight, yo ho!",
                "rejected": f"Sure! Here is a short summary about {topic}.",
                "teacher_model": "tiny",
                "student_model": "tiny",
                "constitution": "pirate",
                "id": f"p{i}:0",
            }
            f.write(json.dumps(row) + "\n")
    return path


def overrides(pairs: Path, *extra: str) -> list[str]:
    return ["stage=dpo", "model=tiny", f"stage.pairs={pairs}", "stage.batch_size=4", "stage.lr=5e-3", *extra]


def metric_rows(run_dir: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]


def test_stage_dpo_writes_a_peft_adapter_with_provenance_and_per_step_metrics(run_stage, tmp_path, capsys) -> None:
    pairs = write_pairs(tmp_path / "pairs.jsonl")
    metric, run_dir = run_stage(overrides(pairs, "stage.eval_every=2", "stage.save_every=2"))
    adapter = run_dir / "adapter"
    assert (adapter / "adapter_config.json").is_file() and (adapter / "adapter_model.safetensors").is_file()
    assert f"dpo adapter: {adapter}" in capsys.readouterr().out
    meta = json.loads((adapter / "meta.json").read_text())
    assert meta["parents"]["pairs"] == str(pairs) and meta["config"]["stage"]["pairs"] == str(pairs)
    assert meta["config"]["lora"]["rank"] == 32 and "versions" in meta and meta["steps"] == 4
    run_meta = json.loads((run_dir / "meta.json").read_text())
    assert run_meta["status"] == "completed" and run_meta["artifacts"]["adapter"] == str(adapter)
    assert run_meta["parents"]["pairs"] == str(pairs) and run_meta["metric_name"] == "eval/accuracy"
    rows = metric_rows(run_dir)
    steps = [r for r in rows if "loss" in r]
    assert [r["step"] for r in steps] == [1, 2, 3, 4]
    for key in ("loss", "accuracy", "margin", "reward_chosen", "reward_rejected", "nll", "lr", "tokens_per_s"):
        assert all(key in r for r in steps), key
    evals = [r for r in rows if "eval/accuracy" in r]
    assert [r["step"] for r in evals] == [2, 4] and metric == evals[-1]["eval/accuracy"]
    assert list((run_dir / "checkpoints").glob("step-*/COMPLETE")) and list(run_dir.glob("ref_logprobs-*.json"))


BAD_PAIRS = {
    "missing": None,
    "binary": b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\xff\xfe",
    "empty": "",
    "malformed": '{"prompt": "hi", "chosen": "a", "rejected": "b"}\n{"prompt": oops}\n',
    "no-chosen": '{"prompt": "hi", "rejected": "b"}\n',
    "not-a-string": '{"prompt": "hi", "chosen": ["a"], "rejected": "b"}\n',
}


@pytest.mark.parametrize(
    ("case", "extra", "message"),
    [
        ("missing", [], "stage.pairs: .*pairs.jsonl: file not found"),
        ("empty", [], "stage.pairs: .*: file is empty"),
        ("binary", [], r"stage.pairs: .*pairs.jsonl: line 1 is not UTF-8 text \(byte 0x89 at column 1\)"),
        ("malformed", [], "line 2 is not valid JSON"),
        ("no-chosen", [], "row 1: missing field 'chosen'"),
        ("not-a-string", [], "field 'chosen' must be a string"),
        ("good", ["lora.rank=0"], "lora.rank=0 is not allowed"),
        ("good", ["stage.batch_size=0"], "stage.batch_size=0 is not allowed"),
        ("good", ["stage.beta=0"], "stage.beta=0"),
        ("good", ["model.name_or_path=no-such-org/no-such-model"], "model 'tiny'.*not a local folder"),
    ],
)
def test_bad_input_is_a_one_line_error(run_stage, tmp_path, case: str, extra: list[str], message: str) -> None:
    pairs = tmp_path / "pairs.jsonl"
    if case == "good":
        write_pairs(pairs, n=4)
    elif isinstance(BAD_PAIRS[case], bytes):
        pairs.write_bytes(BAD_PAIRS[case])
    elif BAD_PAIRS[case] is not None:
        pairs.write_text(BAD_PAIRS[case])
    if extra == ["model.name_or_path=no-such-org/no-such-model"]:
        extra = [*extra, "model.builder=null"]
    with pytest.raises(CharlabError, match=message) as err:
        run_stage(overrides(pairs, *extra))
    assert "\n" not in str(err.value)


@pytest.mark.parametrize(
    ("content", "problem"),
    [(None, "file not found"), (BAD_PAIRS["binary"], "line 1 is not UTF-8 text (byte 0x89")],
    ids=["missing", "binary"],
)
def test_the_cli_prints_one_error_line(cli, tmp_path, content: bytes | None, problem: str) -> None:
    """Injected bug: `iter_jsonl` decoding text without catching `UnicodeDecodeError` -> a traceback, exit 1."""
    pairs = tmp_path / "pairs.jsonl"
    if content is not None:
        pairs.write_bytes(content)
    result = cli(overrides(pairs, "logger=none"), timeout=300)
    assert result.returncode == 2, result.stderr[-2000:]
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith(f"charlab: error: stage.pairs: {pairs}: {problem}")
    runs = [p.parent for p in (tmp_path / "outputs").rglob("meta.json")]
    assert all(json.loads((run / "meta.json").read_text())["status"] == "failed" for run in runs)
    assert not [p for run in runs for p in run.iterdir() if p.name in ("adapter", "checkpoints")]


@pytest.fixture
def one_thread() -> Any:
    """`backend.num_threads=1` sets torch's threads for the whole process: put them back afterwards."""
    import torch

    before = torch.get_num_threads()
    yield "backend.num_threads=1"  # tiny matrices gain nothing from threads, and lose much on a busy machine
    torch.set_num_threads(before)


@pytest.mark.timing
def test_a_killed_run_resumes_from_its_newest_checkpoint_to_the_same_final_loss(run_stage, tmp_path, one_thread):
    pairs = write_pairs(tmp_path / "pairs.jsonl", n=40)
    train = overrides(pairs, "stage.batch_size=2", "stage.epochs=3", "stage.save_every=2", "stage.eval_every=0")
    train.append(one_thread)
    _, straight = run_stage(train, name="straight")
    final = [r for r in metric_rows(straight) if "loss" in r][-1]
    train_pairs = json.loads((straight / "meta.json").read_text())["train_pairs"]  # whole prompts are held out
    assert final["step"] == 3 * math.ceil(train_pairs / 2)

    killed = tmp_path / "outputs" / "killed"
    cache = str(Path(os.environ.get("CHARLAB_CACHE", "~/.cache/charlab")).expanduser())
    checkpoints = killed / "checkpoints"
    kill_when_held(
        [*train, "logger=none", f"hydra.run.dir={killed}"], tmp_path, "checkpoint:1",
        lambda: newest_checkpoint(checkpoints) is not None, CHARLAB_CACHE=cache,
    )  # fmt: skip
    assert newest_checkpoint(checkpoints).name == "step-000002"  # held after its first checkpoint (save_every=2)
    assert not (killed / "adapter").exists()
    _, resumed = run_stage([*train, "stage.resume=true", f"stage.resume_from={killed}"], name="resumed")
    rows = [r for r in metric_rows(resumed) if "loss" in r]
    total = final["step"]
    assert rows[0]["step"] == 3 and rows[-1]["step"] == total  # continued after step 2, not restarted
    assert rows[-1]["loss"] == pytest.approx(final["loss"], abs=1e-4)
    assert json.loads((resumed / "adapter" / "meta.json").read_text())["parents"]["resumed_from"] == str(killed)
    assert not list(resumed.glob("ref_logprobs-*.json"))  # the killed run's reference cache was reused


def test_the_python_api_runs_the_same_stage(tmp_path) -> None:
    from charlab.api import TrainingConfig, run_dpo_training

    pairs = write_pairs(tmp_path / "my pairs.jsonl", n=8)
    config = TrainingConfig(
        dataset_path=pairs,
        persona="pirate",
        model="tiny",
        lora_rank=4,
        epochs=1,
        batch_size=4,
        learning_rate=1e-3,
        beta=0.2,
        save_name="pirate-dpo",
        output_root=tmp_path / "runs",
        overrides=["logger=none", "stage.eval_fraction=0"],
    )
    adapter = run_dpo_training(config)
    assert adapter == tmp_path / "runs" / "pirate" / "dpo" / "pirate-dpo" / "adapter"
    assert json.loads((adapter / "adapter_config.json").read_text())["r"] == 4
    stage = json.loads((adapter / "meta.json").read_text())["config"]["stage"]
    assert (stage["pairs"], stage["beta"], stage["lr"], stage["batch_size"]) == (str(pairs), 0.2, 1e-3, 4)
    with pytest.raises(CharlabError, match="has an adapter already"):
        run_dpo_training(config)
