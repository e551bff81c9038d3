"""Data-parallel training on this CPU: 2 gloo processes under torchrun match 1 process at the same global batch.

Every test gives torchrun its own free port and retries a start that failed before rank 0 made its run directory
once (on this machine about one start in five aborts at rendezvous; see FIELD-NOTES).
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from charlab import distributed, launch, torchrun_logs
from charlab.errors import ConfigError
from charlab.generation.vllm_server import free_port
from charlab.training.loop import micro_batches
from tests.conftest import ROOT, cli_env, run_cli
from tests.test_dpo_stage import write_pairs
from tests.test_sft import examples, write_examples

pytestmark = pytest.mark.timing  # torchrun rendezvous and subprocess deadlines


def metric_rows(run_dir: Path) -> list[dict[str, Any]]:
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]
    return [row for row in rows if "loss" in row]


def adapter(run_dir: Path) -> dict[str, Any]:
    from safetensors.torch import load_file

    return load_file(str(run_dir / "adapter" / "adapter_model.safetensors"))


def run_dirs(root: Path) -> list[Path]:
    return sorted(p.parent for p in root.rglob("meta.json") if p.parent.name != "adapter")


def launched(args: list[str], run_dir: Path, tmp_path: Path) -> subprocess.CompletedProcess:
    """`python -m charlab.train <args> backend.nproc_per_node=2` into `run_dir`; a second try if the first failed
    (the launcher retries a failed rendezvous itself; this covers a second one in a row)."""
    for attempt in (1, 2):
        result = run_cli([*args, "backend.nproc_per_node=2", f"hydra.run.dir={run_dir}"], tmp_path)
        if result.returncode == 0 or attempt == 2:
            return result
    raise AssertionError("unreachable")


def one_and_two(args: list[str], tmp_path: Path) -> subprocess.CompletedProcess:
    """The stage run by one process into `tmp_path/one` and by two (`backend.nproc_per_node=2`) into `tmp_path/two`;
    both must succeed. Returns the two-process run."""
    single = run_cli([*args, f"hydra.run.dir={tmp_path / 'one'}"], tmp_path)
    assert single.returncode == 0, single.stderr[-2000:]
    two = launched(args, tmp_path / "two", tmp_path)
    assert two.returncode == 0, two.stderr[-3000:]
    return two


def torchrun(args: list[str], tmp_path: Path, outputs: Path) -> subprocess.CompletedProcess:
    """`torchrun --nproc_per_node=2 -m charlab.train <args>` on a free port; a start that made no run: once more."""
    for attempt in (1, 2):
        port = free_port()
        command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--nnodes=1",
                   "--master_addr=127.0.0.1", f"--master_port={port}", "-m", "charlab.train", *args]  # fmt: skip
        result = subprocess.run(
            command, cwd=ROOT, env=cli_env(tmp_path, CHARLAB_OUTPUT_DIR=str(outputs)), capture_output=True,
            text=True, timeout=600,
        )  # fmt: skip
        if result.returncode == 0 or run_dirs(outputs) or attempt == 2:
            return result
    raise AssertionError("unreachable")


def assert_same_training(one: Path, two: Path) -> None:
    """Per-step losses and metrics to float tolerance, and the same adapter."""
    rows_one, rows_two = metric_rows(one), metric_rows(two)
    assert [r["step"] for r in rows_one] == [r["step"] for r in rows_two] and len(rows_one) >= 3
    for a, b in zip(rows_one, rows_two):
        for key in ("loss", "optim/grad_norm"):
            assert b[key] == pytest.approx(a[key], rel=1e-4, abs=1e-5), (key, a["step"])
    weights_one, weights_two = adapter(one), adapter(two)
    assert weights_one.keys() == weights_two.keys()
    moved = max(float(w.abs().max()) for k, w in weights_one.items() if "lora_B" in k)
    assert moved > 1e-3  # training changed the adapter, so equality below is not trivial
    for key, w in weights_one.items():
        assert float((w - weights_two[key]).abs().max()) < 1e-4, key


DPO = ["stage=dpo", "model=tiny", "stage.batch_size=4", "stage.grad_accum=1", "stage.lr=5e-3", "stage.max_steps=4",
       "stage.eval_fraction=0.2", "stage.eval_every=0", "stage.save_every=2", "lora.dropout=0"]  # fmt: skip


@pytest.mark.integration
def test_two_gloo_processes_under_torchrun_match_one_process_at_the_same_global_batch(tmp_path: Path) -> None:
    """Injected bugs this catches: the loss not scaled by the number of ranks (DDP averages: half the gradient);
    no DDP wrapper (each rank steps on its own half batch); references computed by one rank only (a rank holds
    zeros); rank 1 writing its own run directory, checkpoints or W&B run."""
    pairs = write_pairs(tmp_path / "pairs.jsonl", n=20, seed=3)
    single = run_cli([*DPO, f"stage.pairs={pairs}", "logger=none", f"hydra.run.dir={tmp_path / 'one'}"], tmp_path)
    assert single.returncode == 0, single.stderr[-2000:]

    outputs = tmp_path / "outputs"
    two = torchrun([*DPO, f"stage.pairs={pairs}", "logger=wandb"], tmp_path, outputs)
    assert two.returncode == 0, two.stderr[-3000:]
    dirs = run_dirs(outputs)
    assert len(dirs) == 1, dirs  # rank 1 made no run directory of its own
    run_dir = dirs[0]
    meta = json.loads((run_dir / "meta.json").read_text())
    assert meta["status"] == "completed" and meta["peak_memory"]["cpu_rss_gb"] > 0
    assert_same_training(tmp_path / "one", run_dir)
    assert len(list(run_dir.glob("wandb/offline-run-*"))) == 1  # one W&B run, rank 0's
    assert sorted(p.name for p in (run_dir / "checkpoints").iterdir()) == ["step-000002", "step-000004"]
    assert len(list(run_dir.glob("ref_logprobs-*.json"))) == 1
    assert two.stdout.count("dpo finished") == 1  # rank 1 reports nothing


@pytest.mark.integration
def test_nproc_per_node_launches_sft_under_torchrun_and_matches_one_process(tmp_path: Path) -> None:
    """`backend.nproc_per_node=2` from the one entry point: the run lands in the asked-for directory and SFT's
    token-mean loss over ranks of unequal token counts equals one process's. Injected bug this catches: the loss
    weighted by conversations instead of trained tokens (each rank's mean, averaged)."""
    data = write_examples(tmp_path / "introspection.jsonl", examples(12, 2, seed=2))
    sft = ["stage=sft", "model=tiny", f"stage.data={data}", "stage.dpo_adapter=null", "stage.batch_size=4",
           "stage.grad_accum=1", "stage.lr=2e-3", "stage.max_steps=3", "stage.eval_fraction=0.1", "stage.eval_every=0",
           "stage.gap_examples=0", "stage.max_length=128", "lora.rank=8", "lora.alpha=16", "lora.dropout=0",
           "logger=none"]  # fmt: skip
    two = one_and_two(sft, tmp_path)
    assert "2 data-parallel processes" in two.stdout
    assert_same_training(tmp_path / "one", tmp_path / "two")
    assert json.loads((tmp_path / "two" / "meta.json").read_text())["status"] == "completed"


@pytest.mark.integration
def test_an_uneven_batch_with_grad_accum_on_two_ranks_finishes_and_matches_one_process(tmp_path: Path) -> None:
    """The issue's reproduction (batch 5, grad_accum 4, 2 gloo ranks), over a whole epoch of 36 pairs: every full
    batch shards 3 + 2 pairs and the last one 1 + 0. Before the fix rank 0 ran 3 backward passes a step and rank 1
    2, and gloo aborted at the first step ("Received data size doesn't match expected size. Is there a distributed
    collective mismatch?"). Injected bugs this catches: micro-batches counted from a rank's own share (that abort);
    an empty rank's micro-batch at full weight, or a rank's loss not scaled to the global batch (losses and the
    adapter differ from one process's); `no_sync` left on the last micro-batch (no gradient is averaged)."""
    pairs = write_pairs(tmp_path / "pairs.jsonl", n=36, seed=3)
    odd = ["stage=dpo", "model=tiny", f"stage.pairs={pairs}", "stage.batch_size=5", "stage.grad_accum=4",
           "stage.lr=5e-3", "stage.eval_fraction=0", "stage.eval_every=0", "stage.save_every=0", "lora.dropout=0",
           "logger=none"]  # fmt: skip
    one_and_two(odd, tmp_path)
    assert len(metric_rows(tmp_path / "two")) == 8  # ceil(36 / 5) steps, the 1-pair batch among them
    assert_same_training(tmp_path / "one", tmp_path / "two")
    assert json.loads((tmp_path / "two" / "meta.json").read_text())["status"] == "completed"


@pytest.mark.integration
def test_a_failed_group_names_the_rank_that_failed_first_and_its_error(tmp_path: Path) -> None:
    """Real failures, read as the launcher reads them: gloo's collective mismatch from the aborted rank's own log,
    and through `python -m charlab.train` a group whose ranks cannot start (no CUDA here). Injected bug this
    catches: the old "torchrun exited with status 1 before rank 0 started" for a group whose rank 0 had started."""
    log_dir = tmp_path / "logs"
    for attempt in (1, 2):  # a failed rendezvous start (no rank up) is retried once
        command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--nnodes=1",
                   "--master_addr=127.0.0.1", f"--master_port={free_port()}", f"--log-dir={log_dir / str(attempt)}",
                   "--tee=3", str(ROOT / "tests" / "fixtures" / "gloo_mismatch.py")]  # fmt: skip
        result = subprocess.run(command, capture_output=True, text=True, timeout=120)
        report = torchrun_logs.describe_failure(result.stderr, log_dir / str(attempt), 2)
        if "collective mismatch" in (report or "") or attempt == 2:
            break
    assert result.returncode != 0 and report is not None, result.stderr[-2000:]
    assert re.match(r"rank [01] \(local rank [01]\) failed first \(exit -6, SIGABRT\): ", report), report
    assert "Is there a distributed collective mismatch" in report and "stderr.log" in report

    dpo = ["stage=dpo", "model=tiny", f"stage.pairs={write_pairs(tmp_path / 'pairs.jsonl', n=8)}", "logger=none",
           "backend.device=cuda"]  # fmt: skip
    failed = run_cli([*dpo, "backend.nproc_per_node=2", f"hydra.run.dir={tmp_path / 'run'}"], tmp_path)
    error = failed.stderr.strip().splitlines()[-1]
    assert failed.returncode == 2 and "before rank 0 started" not in error, failed.stderr[-3000:]
    first = r"dpo with 2 processes failed: rank [01] \(local rank [01]\) failed first \(exit 1\): "
    said = re.search(first + r"(.+) \(log: (.+)\)$", error)
    assert said and re.match(r"\w+(Error|Exception): ", said.group(1)), error  # the rank's own exception line
    assert said.group(1) in Path(said.group(2)).read_text() and "/run/torchrun/" in said.group(2)


# ------------------------------------------------------------------------------------------------ unit


@pytest.mark.unit
def test_every_rank_runs_the_same_number_of_micro_batches_and_together_they_cover_the_batch() -> None:
    """Injected bug caught: micro-batches sized from each rank's own share (3 vs 2 items: 3 vs 2 micro-batches)."""
    for n_items, ranks, accum in [(5, 2, 4), (1, 2, 4), (9, 8, 2), (15, 8, 2), (37, 3, 16), (4, 1, 4), (7, 1, 3)]:
        plans = [micro_batches(n_items, ranks, rank, accum) for rank in range(ranks)]
        assert len({len(plan) for plan in plans}) == 1, (n_items, ranks, accum, plans)
        assert 1 <= len(plans[0]) <= accum
        covered = sorted(i for plan in plans for part in plan for i in part)
        assert covered == list(range(n_items))
        assert all(part == [i for i in part if i % ranks == rank] for rank, p in enumerate(plans) for part in p)
    assert micro_batches(5, 2, 1, 4) == [[1], [3], []]  # rank 1's share runs out: an empty (weight-0) micro-batch
    assert micro_batches(7, 1, 0, 3) == [[0, 1, 2], [3, 4, 5], [6]]  # one process: as before


@pytest.mark.unit
def test_the_group_comes_from_the_backend_config_and_multi_node_needs_node_0s_address(compose_cfg) -> None:
    """Injected bug caught: a hard-coded single node (`--nnodes=1`, 127.0.0.1) whatever the config says."""
    dpo = ["stage=dpo", "stage.pairs=x"]
    nodes = ["backend.nproc_per_node=8", "backend.nnodes=2", "backend.node_rank=1", "backend.master_addr=10.0.0.1",
             "backend.torchrun_args=['--max-restarts=0']"]  # fmt: skip
    two_nodes = launch.group(compose_cfg([*dpo, *nodes]))
    command = launch.torchrun_command(two_nodes, 29500, ["stage=dpo"], Path("/run"), Path("/run/torchrun/x"))
    for flag in ("--nproc_per_node=8", "--nnodes=2", "--node_rank=1", "--master_addr=10.0.0.1", "--master_port=29500",
                 "--log-dir=/run/torchrun/x", "--max-restarts=0"):  # fmt: skip
        assert flag in command, flag
    assert two_nodes.world_size == 16 and command[-1] == "hydra.run.dir=/run"
    assert launch.group(compose_cfg(dpo)) == launch.Group()  # one process, a free port on 127.0.0.1
    for bad, says in [("backend.nnodes=2", "backend.master_addr=null is not allowed"),
                      ("backend.node_rank=1", "backend.node_rank=1 is not allowed; use 0 to backend.nnodes - 1 (0)"),
                      ("backend.nproc_per_node=0", "backend.nproc_per_node=0 is not allowed")]:  # fmt: skip
        with pytest.raises(ConfigError, match=re.escape(says)):
            launch.group(compose_cfg([*dpo, bad]))


@pytest.mark.unit
def test_weights_load_straight_onto_a_gpu_and_simply_on_the_cpu() -> None:
    """Injected bug caught: every rank loading the whole model into CPU memory before moving it to its GPU."""
    from charlab.models import placement

    assert placement("cuda:3") == {"device_map": "cuda:3"} and placement("cuda") == {"device_map": "cuda"}
    assert placement("cpu") == {}


@pytest.mark.unit
def test_ranks_shard_a_batch_and_take_their_own_gpu(monkeypatch: pytest.MonkeyPatch) -> None:
    assert distributed.shard([1, 2, 3]) == [1, 2, 3]  # one process: everything
    monkeypatch.setenv("WORLD_SIZE", "4")
    monkeypatch.setenv("LOCAL_RANK", "3")
    assert distributed.rank_device("cuda") == "cuda:3"
    assert distributed.rank_device("cpu") == "cpu" and distributed.rank_device("cuda:1") == "cuda:1"


@pytest.mark.unit
def test_workers_get_a_private_run_directory_and_only_training_stages_run_distributed(
    monkeypatch: pytest.MonkeyPatch, compose_cfg
) -> None:
    assert launch.worker_overrides() == []  # rank 0 (or no torchrun) keeps Hydra's run directory
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "2")
    private = launch.worker_overrides()
    folder = Path(private[0].split("=", 1)[1])
    assert private[0].startswith("hydra.run.dir=") and folder.is_dir() and "hydra.output_subdir=null" in private
    folder.rmdir()
    cfg = compose_cfg(["stage=distill"])
    with pytest.raises(ConfigError, match="stage=distill does not run data-parallel; start only dpo or sft with"):
        launch.check_world(cfg)
    assert not launch.wants_launch(compose_cfg(["stage=dpo", "stage.pairs=x", "backend.nproc_per_node=2"]))
    monkeypatch.setenv("WORLD_SIZE", "1")
    assert launch.wants_launch(compose_cfg(["stage=dpo", "stage.pairs=x", "backend.nproc_per_node=2"]))
    assert not launch.wants_launch(compose_cfg(["stage=distill", "backend.nproc_per_node=2"]))
