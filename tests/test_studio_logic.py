"""The Studio's plain modules: config forms and overrides, safe constitution saving, run directories, launches."""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from hydra.core.override_parser.overrides_parser import OverridesParser

from charlab.constitution import load_constitution
from charlab.errors import ConfigError, ConstitutionError
from charlab.settings import configs_dir, project_root
from charlab.studio import configs, editor, launcher
from charlab.studio.runs import (
    adapter_info,
    find_adapters,
    list_runs,
    numeric_series,
    read_metrics,
    split_report,
    tail,
    vllm_command,
)
from tests.conftest import wait_until

PIRATE = project_root() / "constitutions" / "pirate.json"


def make_run(root: Path, persona: str, stage: str, status: str = "completed", **meta: object) -> Path:
    """A run directory as `python -m charlab.train` writes it (meta.json + config.yaml)."""
    directory = root / persona / stage / f"2026-01-01_00-00-0{len(list(root.rglob('meta.json')))}_abc"
    directory.mkdir(parents=True)
    config = {"persona": {"name": persona}, "stage": {"name": stage}, "model": {"name": "tiny", "name_or_path": "x"}}
    (directory / "config.yaml").write_text(yaml.safe_dump(config))
    record = {"stage": stage, "status": status, "started_at": "2026-01-01T00:00:00+00:00", **meta}
    (directory / "meta.json").write_text(json.dumps(record))
    return directory


# ---------------------------------------------------------------------------------------------- configs


@pytest.mark.unit
@pytest.mark.parametrize(
    "value",
    [
        "plain",
        "a b, c",
        "it's",
        'say "hi"',
        "back\\slash'",
        "true",
        "1e-4",
        "",
        "k=v",
        "Qwen/Qwen3-8B",
        5e-05,
        3,
        None,
    ],
)
def test_override_values_parse_back_to_the_same_value(value: object) -> None:
    parsed = OverridesParser.create().parse_override(configs.override("stage.x", value)).value()
    assert parsed == value


@pytest.mark.unit
def test_lists_and_interpolation_text_survive_composition() -> None:
    composed = configs.compose(
        ["stage=show", configs.override("lora.target_modules", ["q_proj", "v_proj"]), "tags=" + "['a ${x}']"]
    )
    assert list(composed.cfg.lora.target_modules) == ["q_proj", "v_proj"]
    described = configs.compose(["stage=draft_constitution", configs.override("stage.description", "a ${x} pirate")])
    assert described.cfg.stage.description == "a ${x} pirate"


@pytest.mark.unit
def test_field_specs_take_defaults_types_and_help_from_the_yaml() -> None:
    composed = configs.compose(["stage=draft_constitution", "lora=sft"])
    stage = {s.name: s for s in configs.field_specs(composed, "stage")}
    assert stage["description"].required and stage["description"].kind == "str"
    assert stage["role"].choices == ["teacher", "student", "judge"] and stage["role"].value == "judge"
    assert stage["max_tries"].kind == "int" and stage["max_tries"].value == composed.cfg.stage.max_tries
    assert "validation error" in stage["max_tries"].help
    lora = {s.name: s for s in configs.field_specs(composed, "lora")}
    expected = yaml.safe_load((configs_dir() / "lora" / "sft.yaml").read_text())
    assert lora["rank"].value == expected["rank"] and lora["alpha"].interpolation == expected["alpha"]
    assert lora["alpha"].value == 2 * expected["rank"]  # locally 2 x rank (on Tinker its fixed alpha)
    assert lora["target_modules"].kind == "list" and lora["target_modules"].value == expected["target_modules"]
    teacher = {s.name: s for s in configs.field_specs(composed, "teacher")}
    assert teacher["seed"].interpolation == "${seed}"
    backend = {s.name: s for s in configs.field_specs(composed, "backend")}
    assert backend["num_threads"].optional and backend["num_threads"].kind == "int"
    assert backend["device"].choices == []  # "auto | cpu | cuda | cuda:N" names a placeholder: free text


@pytest.mark.unit
def test_only_changed_values_become_overrides() -> None:
    composed = configs.compose(["stage=draft_constitution"])
    specs = configs.field_specs(composed, "stage") + configs.field_specs(composed, "lora")
    values = {s.key: s.value for s in specs}
    values["stage.description"] = "a gentle gardener"
    values["lora.rank"] = 8
    values["stage.temperature"] = float(composed.cfg.stage.temperature)  # unchanged (int vs float equal)
    assert configs.changed_overrides(specs, values) == ["stage.description='a gentle gardener'", "lora.rank=8"]
    assert configs.group_overrides({"model": "smollm2-135m", "lora": "dpo"}, {"model": "tiny", "lora": "dpo"}) == [
        "model=tiny"
    ]
    assert configs.persona_overrides("pirate") == ["persona=pirate"]
    assert configs.persona_overrides("my_new") == ["persona=custom", "persona.name=my_new"]
    assert configs.command_line(["stage=show", "stage.description='a b'"]) == (
        "python -m charlab.train stage=show \"stage.description='a b'\""
    )
    tricky = ["stage.description='say \"$HOME\" \\ it'", "a b"]
    assert shlex.split(configs.command_line(tricky))[3:] == tricky  # what the shell passes is what was built


@pytest.mark.unit
def test_every_stage_and_group_option_is_offered_and_bad_overrides_are_one_line() -> None:
    assert configs.stage_names() == sorted(p.stem for p in (configs_dir() / "stage").glob("*.yaml"))
    providers = sorted(p.stem for p in (configs_dir() / "provider").glob("*.yaml"))
    assert configs.group_options("provider@teacher") == providers and "openai" in providers
    composed = configs.compose([])
    assert {"persona", "model", "lora", "provider@teacher", "stage", "logger"} <= set(composed.choices)
    with pytest.raises(ConfigError) as caught:
        configs.compose(["lora.rnak=3"])
    assert "\n" not in str(caught.value) and "rnak" in str(caught.value)


# ---------------------------------------------------------------------------------------------- editor


@pytest.mark.unit
@pytest.mark.parametrize(
    "name", ["../../x", "../escape", "a/b", "Pirate", "with space", "", ".hidden", "x.json", "x" * 300]
)
def test_editor_rejects_odd_names_and_writes_nothing(tmp_path: Path, name: str) -> None:
    folder = tmp_path / "constitutions"
    folder.mkdir()
    with pytest.raises(ConstitutionError, match="not allowed"):
        editor.save_text(PIRATE.read_text(), name, folder)
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["constitutions"]


@pytest.mark.unit
def test_editor_saves_inside_the_folder_and_only_overwrites_when_asked(tmp_path: Path) -> None:
    folder = tmp_path / "constitutions"
    path = editor.save_text(PIRATE.read_text(), "sea_dog", folder)
    assert path == folder / "sea_dog.json" and load_constitution(path, name="sea_dog").assistant_name
    changed = json.loads(path.read_text())
    changed["description"] = "changed"
    with pytest.raises(ConstitutionError, match="already exists"):
        editor.save_text(json.dumps(changed), "sea_dog", folder)
    assert "changed" not in path.read_text()
    editor.save_text(json.dumps(changed), "sea_dog", folder, overwrite=True)
    assert load_constitution(path).description == "changed"


@pytest.mark.unit
def test_editor_refuses_a_symlink_that_points_outside(tmp_path: Path) -> None:
    folder = tmp_path / "constitutions"
    folder.mkdir()
    outside = tmp_path / "outside.json"
    outside.write_text("{}")
    (folder / "trap.json").symlink_to(outside)
    with pytest.raises(ConstitutionError, match="refusing"):
        editor.save_text(PIRATE.read_text(), "trap", folder, overwrite=True)
    assert outside.read_text() == "{}"


@pytest.mark.unit
def test_editor_validation_errors_name_the_line_or_field() -> None:
    with pytest.raises(ConstitutionError, match="line 1 column"):
        editor.parse_text('{"name": ')
    with pytest.raises(ConstitutionError, match="traits"):
        editor.parse_text(json.dumps({"name": "x", "system_prompt": "You are x."}))
    assert editor.parse_text(editor.template("fresh")).name == "fresh"
    assert editor.parse_text(PIRATE.read_text(), "renamed").name == "renamed"


# ---------------------------------------------------------------------------------------------- runs


@pytest.mark.unit
def test_run_directories_are_found_with_their_metrics_report_and_adapters(tmp_path: Path) -> None:
    root = tmp_path / "outputs"
    dpo = make_run(root, "pirate", "dpo", metric=0.75, metric_name="eval/accuracy")
    make_run(root, "humor", "elo", status="failed", error="ValueError: boom")
    (dpo / "wandb" / "nested").mkdir(parents=True)
    (dpo / "wandb" / "nested" / "meta.json").write_text("{}")  # not a run
    (dpo / "metrics.jsonl").write_text('{"step": 1, "loss": 0.7}\n{"step": 2, "loss": 0.5, "note": "x"}\n{"step": 3')
    adapter = dpo / "adapter"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text(json.dumps({"r": 32, "base_model_name_or_path": str(tmp_path)}))
    runs = list_runs(root)
    assert sorted(r.stage for r in runs) == ["dpo", "elo"]
    run = next(r for r in runs if r.stage == "dpo")
    assert run.persona == "pirate" and run.metric == 0.75 and run.status == "completed"
    assert numeric_series(read_metrics(dpo)) == {"loss": [(1.0, 0.7), (2.0, 0.5)]}  # torn last line skipped
    assert find_adapters(run) == [adapter]
    info = adapter_info(run, adapter)
    assert info.rank == 32 and info.base_model == str(tmp_path)  # the local base it was trained on
    assert f"--lora-modules pirate-dpo={adapter}" in vllm_command(info) and "--max-lora-rank 32" in vllm_command(info)
    text, images = split_report("# Elo\n![curve](elo.png)\n| a | b |\n")
    assert images == ["elo.png"] and "elo.png" not in text and "| a | b |" in text
    assert list_runs(tmp_path / "missing") == []
    stopped = make_run(root, "pirate", "sft", status="failed", error="KeyboardInterrupt: ")
    assert next(r for r in list_runs(root) if r.dir == stopped).status == "stopped"


@pytest.mark.unit
def test_tail_reads_the_end_of_a_log(tmp_path: Path) -> None:
    log = tmp_path / "train.log"
    log.write_text("\n".join(f"line {i}" for i in range(100)))
    assert tail(log, 3) == "line 97\nline 98\nline 99"
    assert tail(tmp_path / "nope.log") == ""


# ---------------------------------------------------------------------------------------------- launches


@pytest.mark.integration
@pytest.mark.timing
def test_a_launch_runs_the_cli_command_and_finds_its_run_directory(tmp_path: Path) -> None:
    root = tmp_path / "outputs"
    overrides = ["stage=show", "stage.show_template=false", "logger=none", "persona=humor"]
    started = launcher.launch(overrides, root, env={"CHARLAB_OUTPUT_DIR": str(root)})
    assert started.argv == [sys.executable, "-m", "charlab.train", *overrides]
    wait_until(lambda: launcher.poll(started) is not None, what="the launched run's end")
    assert launcher.poll(started) == 0, Path(started.log).read_text()
    run = launcher.run_of(started, root)
    assert run is not None and run.stage == "show" and run.persona == "humor" and run.status == "completed"
    again = launcher.list_launches(root)[0]
    assert again.id == started.id and again.returncode == 0 and again.run_dir == str(run.dir)
    assert "show finished" in Path(started.log).read_text()


@pytest.mark.integration
@pytest.mark.timing
def test_stop_interrupts_a_running_launch(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # A real process that runs until interrupted, started through the launcher's own code path.
    sleeper = [sys.executable, "-c", "import time\nwhile True: time.sleep(0.1)"]
    monkeypatch.setattr(launcher, "train_argv", lambda overrides: sleeper)
    started = launcher.launch(["stage=show"], tmp_path)
    assert launcher.is_running(started)
    assert launcher.stop(started, grace_s=5)
    assert not launcher.is_running(started) and launcher.load_launch(started.record).stopped
    with pytest.raises(ProcessLookupError):
        os.killpg(started.pid, 0)


@pytest.mark.unit
def test_cli_binds_to_localhost_by_default() -> None:
    from charlab.studio.cli import streamlit_argv

    argv = streamlit_argv("127.0.0.1", 8600, True, [])
    assert argv[argv.index("--server.address") + 1] == "127.0.0.1"
    assert argv[argv.index("--server.port") + 1] == "8600" and argv[4].endswith("app.py")
    help_text = subprocess.run(
        [sys.executable, "-m", "charlab.studio.cli", "--help"], capture_output=True, text=True, timeout=60
    ).stdout
    assert "default 127.0.0.1" in help_text
