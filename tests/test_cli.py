"""The real entry point in subprocesses: show, multirun, --cfg job, one-line errors, secret redaction."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from charlab import registry
from charlab.registry import StageResult, get_stage, register_stage, registered_stages

ENV_SECRET = "sk-env-SECRET-0123456789abcdef"
CLI_SECRET = "sk-cli-SECRET-fedcba9876543210"


def run_dirs(root: Path) -> list[Path]:
    return sorted(p.parent for p in root.rglob("meta.json") if "wandb" not in p.parts)


@pytest.mark.unit
def test_unknown_stage_lists_the_registered_ones() -> None:
    assert "show" in registered_stages()
    with pytest.raises(Exception) as err:
        get_stage("nope")
    assert "registered stages:" in str(err.value) and "show" in str(err.value)


@pytest.fixture
def scratch_registry(monkeypatch: pytest.MonkeyPatch) -> dict:
    """The registry emptied for one test and restored after it."""
    stages: dict = {}
    monkeypatch.setattr(registry, "_STAGES", stages)
    return stages


def _stage_fn(module: str):
    """A stage function named `run`, as every stage's is, defined in `module`."""

    def run(cfg, run) -> StageResult:  # noqa: ANN001
        return StageResult()

    run.__module__, run.__qualname__ = module, "run"
    return run


@pytest.mark.unit
def test_registering_a_stage_name_twice_is_an_error(scratch_registry: dict) -> None:
    first, second = _stage_fn("charlab.stages.first"), _stage_fn("charlab.stages.second")
    register_stage("x")(first)
    with pytest.raises(ValueError, match="stage 'x' is registered twice: by charlab.stages.first.run and by "):
        register_stage("x")(second)
    assert scratch_registry["x"].run is first  # the first registration stays
    register_stage("x")(first)  # the same function again (a module imported twice) is no clash
    register_stage("x")(_stage_fn("charlab.stages.first"))  # nor the same module reloaded (Streamlit, importlib)
    assert list(scratch_registry) == ["x"]


@pytest.mark.integration
def test_show_prints_persona_and_the_models_real_chat_template(cli, tmp_path: Path) -> None:
    result = cli(["stage=show", "persona=sarcasm", "model=smollm2-135m"])
    assert result.returncode == 0, result.stderr
    assert "persona: sarcasm" in result.stdout
    assert "<|im_start|>system" in result.stdout and "<|im_start|>assistant" in result.stdout
    (run,) = run_dirs(tmp_path / "outputs")
    assert run.relative_to(tmp_path / "outputs").parts[:2] == ("sarcasm", "show")
    rendered = (run / "rendered_prompt.txt").read_text()
    assert rendered.rstrip().endswith("<|im_start|>assistant")
    meta = json.loads((run / "meta.json").read_text())
    assert meta["status"] == "completed" and meta["summary"]["traits"] == 10


@pytest.mark.integration
def test_multirun_makes_one_complete_run_directory_per_job(cli, tmp_path: Path) -> None:
    result = cli(["-m", "stage=show", "persona=pirate,humor", "lora=dpo,sft", "stage.show_template=false"])
    assert result.returncode == 0, result.stderr
    runs = run_dirs(tmp_path / "outputs")
    assert len(runs) == 4 and len({r.name for r in runs}) == 4
    seen = set()
    for run in runs:
        for name in ("config.yaml", "meta.json", "metrics.jsonl", ".hydra/config.yaml"):
            assert (run / name).is_file(), f"{run}/{name}"
        assert list((run / "wandb").glob("offline-run-*/run-*.wandb")), f"{run} has no offline W&B run"
        config = (run / "config.yaml").read_text()
        seen.add((json.loads((run / "meta.json").read_text())["status"], "rank: 256" in config, "humor" in run.name))
    assert seen == {("completed", a, b) for a in (True, False) for b in (True, False)}


@pytest.mark.integration
def test_cfg_job_prints_the_composed_config(cli) -> None:
    result = cli(["stage=show", "lora=sft", "--cfg", "job"])
    assert result.returncode == 0, result.stderr
    assert "rank: 256" in result.stdout and "name: show" in result.stdout


@pytest.mark.integration
@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["stage=show", "lora.rnak=8"], "Key 'rnak' not in 'LoraConfig'"),
        (["stage=show", "lora.rank=abc"], "could not be converted to Integer"),
        (["persona=nobody"], "Could not find 'persona/nobody'"),
        (["stage=nostage"], "Could not find 'stage/nostage'"),
        (["stage=show", "lora.rank=0"], "charlab: error: lora.rank=0 is not allowed; use a positive integer"),
    ],
)
def test_bad_overrides_fail_at_start_naming_the_problem(cli, args: list[str], expected: str) -> None:
    result = cli(args)
    assert result.returncode != 0
    assert expected in result.stderr
    if expected.startswith("charlab: error:"):  # charlab's own checks: status 2, one line, nothing else
        assert result.returncode == 2 and len(result.stderr.strip().splitlines()) == 1, result.stderr


@pytest.mark.integration
def test_bad_constitution_and_bad_values_are_one_line_errors(cli, tmp_path: Path) -> None:
    constitutions = tmp_path / "constitutions"
    constitutions.mkdir()
    (constitutions / "broken.json").write_text('{"name": "broken", "system_prompt": "x", "traits": [{"trait": ""}]}')
    result = cli(["persona=custom", "persona.name=broken", f"paths.constitutions={constitutions}"])
    assert result.returncode == 2
    error_lines = [line for line in result.stderr.splitlines() if line.startswith("charlab: error:")]
    assert len(error_lines) == 1
    assert "broken.json: field 'traits.0.trait'" in error_lines[0]
    assert "Traceback" not in result.stderr
    bad_name = cli(["persona=custom", "persona.name=../../etc", "stage.show_template=false"])
    assert bad_name.returncode == 2 and "is not allowed" in bad_name.stderr
    assert not (tmp_path / "etc").exists()


@pytest.mark.integration
@pytest.mark.parametrize("args", [["persona.name=" + "a" * 5000], ["-m", "persona.name=pirate," + "b" * 300]])
def test_an_over_long_persona_name_is_one_line_and_writes_nothing(cli, tmp_path: Path, args: list[str]) -> None:
    """Injected bug: no length limit in `validate_persona_name` -> Hydra's `OSError: File name too long` traceback."""
    result = cli(["persona=custom", "stage.show_template=false", *args], timeout=120)
    assert result.returncode == 2, result.stderr[-2000:]
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith("charlab: error: persona name") and "too long" in line and "64" in line
    assert len(line) < 200 and not (tmp_path / "outputs").exists()


@pytest.mark.integration
def test_secrets_never_reach_any_file_of_the_run_directory(cli, tmp_path: Path) -> None:
    result = cli(
        ["stage=show", "stage.show_template=false", "logger=wandb", f"+teacher.api_key={CLI_SECRET}"],
        OPENAI_API_KEY=ENV_SECRET,
    )
    assert result.returncode == 0, result.stderr
    (run,) = run_dirs(tmp_path / "outputs")
    files = [p for p in run.rglob("*") if p.is_file()]
    assert any(p.suffix == ".wandb" for p in files)
    for path in files:
        data = path.read_bytes()
        assert ENV_SECRET.encode() not in data, path
        assert CLI_SECRET.encode() not in data, path
    assert "***REDACTED***" in (run / "config.yaml").read_text()


@pytest.mark.integration
@pytest.mark.slow
def test_joblib_launcher_runs_jobs_in_parallel_processes_into_one_sweep(cli, tmp_path: Path) -> None:
    result = cli(["-m", "stage=show", "persona=pirate,humor", "launcher=joblib", "stage.show_template=false",
                  "logger=wandb"])  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    (sweep,) = (tmp_path / "outputs" / "multirun").iterdir()
    jobs = sorted(p.name for p in sweep.iterdir() if (p / "meta.json").is_file())
    assert jobs == ["0_pirate_show", "1_humor_show"]
    assert all(list((sweep / job / "wandb").glob("offline-run-*")) for job in jobs)
    assert "completed" in (sweep / "sweep_summary.md").read_text()
