"""Every Studio page driven headless with Streamlit's AppTest: real configs, real run directories, a real
launched run, the real loopback OpenAI-compatible server, and the real tiny model for the chat playground."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from openai_compat_server import OpenAICompatServer
from streamlit.testing.v1 import AppTest
from test_drafting import GOOD
from test_studio_logic import make_run

from charlab.constitution import load_constitution
from charlab.settings import project_root
from charlab.studio import launcher
from tests.conftest import random_adapter, wait_until

APP = str(project_root() / "charlab" / "studio" / "app.py")
pytestmark = pytest.mark.integration


@pytest.fixture
def studio(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, Path]:
    """A constitutions folder (pirate + humor) and an empty runs folder, wired in through the environment."""
    folder = tmp_path / "constitutions"
    folder.mkdir()
    for name in ("pirate", "humor"):
        shutil.copy(project_root() / "constitutions" / f"{name}.json", folder)
    runs = tmp_path / "outputs"
    runs.mkdir()
    monkeypatch.setenv("CHARACTER_CONSTITUTION_PATH", str(folder))
    monkeypatch.setenv("CHARLAB_OUTPUT_DIR", str(runs))
    monkeypatch.setenv("CHARLAB_STUDIO_DEBUG", "1")  # a bug in a page fails the test (users get one line instead)
    for name in (
        "OPENAI_API_KEY",
        "OPENAI_BASE_URL",
        "CHARACTER_TEACHER_MODEL",
        "CHARACTER_STUDENT_MODEL",
        "LLM_MODEL",
    ):
        monkeypatch.delenv(name, raising=False)
    return {"constitutions": folder, "runs": runs, "tmp": tmp_path}


def open_page(page: str) -> AppTest:
    at = AppTest.from_file(APP, default_timeout=600).run()
    assert not at.exception, at.exception
    if page != "home":
        at.switch_page(f"views/{page}.py").run()
    assert not at.exception, at.exception
    return at


def texts(elements) -> str:  # noqa: ANN001 (AppTest element lists)
    return "\n".join(str(e.value) for e in elements)


# ---------------------------------------------------------------------------------------------- constitution


def test_home_page_counts_personas_and_says_when_there_are_no_runs(studio: dict[str, Path]) -> None:
    at = open_page("home")
    assert [m.value for m in at.metric] == ["2", "0"]
    assert "No runs yet" in texts(at.info)


def test_constitution_edit_validate_and_save(studio: dict[str, Path]) -> None:
    folder = studio["constitutions"]
    at = open_page("constitution")
    assert at.selectbox(key="persona_choice").value == "humor"  # first in the folder
    at.selectbox(key="persona_choice").set_value("pirate").run()
    assert "Valid: 10 traits" in texts(at.success)

    text = at.text_area(key="text::pirate").value
    at.text_area(key="text::pirate").set_value(text.replace('"system_prompt"', '"system_promt"')).run()
    assert "field 'system_prompt': Field required" in texts(at.error)  # the field, inline, not a stack trace
    at.button(key="save").click().run()
    assert "Not saved" in texts(at.error) and json.loads((folder / "pirate.json").read_text())["system_prompt"]

    edited = json.loads(text)
    edited["description"] = "Edited in the Studio."
    at.text_area(key="text::pirate").set_value(json.dumps(edited, indent=2))
    at.text_input(key="save_as::pirate").set_value("pirate_v2").run()
    at.button(key="save").click().run()
    assert "Saved" in texts(at.success) and "persona=custom persona.name=pirate_v2" in texts(at.success)
    assert load_constitution(folder / "pirate_v2.json", name="pirate_v2").description == "Edited in the Studio."
    assert at.selectbox(key="persona_choice").value == "pirate_v2"  # the editor now shows the new file
    edited["description"] = "Edited twice."
    at.text_area(key="text::pirate_v2").set_value(json.dumps(edited)).run()
    at.button(key="save").click().run()
    assert "already exists" in texts(at.error)
    at.checkbox(key="replace::pirate_v2").check().run()
    at.button(key="save").click().run()
    assert "Saved" in texts(at.success)
    assert load_constitution(folder / "pirate_v2.json").description == "Edited twice."
    assert json.loads((folder / "pirate.json").read_text())["description"] != "Edited twice."


def test_constitution_editor_rejects_traversal_and_odd_names(studio: dict[str, Path]) -> None:
    tmp = studio["tmp"]
    before = sorted(str(p) for p in tmp.rglob("*"))
    at = open_page("constitution")
    at.selectbox(key="persona_choice").set_value("pirate").run()
    for name in ("../../x", "../outside", "Captain Py", "a/b"):
        at.text_input(key="save_as::pirate").set_value(name).run()
        at.button(key="save").click().run()
        assert "not allowed" in texts(at.error), name
    at.selectbox(key="persona_choice").set_value("+ new persona").run()
    at.text_input(key="new_name").set_value("../../evil").run()
    at.button(key="save").click().run()
    assert "not allowed" in texts(at.error)
    assert sorted(str(p) for p in tmp.rglob("*")) == before  # nothing written anywhere

    at.text_input(key="new_name").set_value("fresh_persona").run()
    at.button(key="save").click().run()
    assert load_constitution(studio["constitutions"] / "fresh_persona.json").name == "fresh_persona"


def test_constitution_drafts_with_an_llm_compares_and_uses_a_draft(studio: dict[str, Path]) -> None:
    at = open_page("constitution")
    at.selectbox(key="draftgroup:provider@judge").set_value("openai").run()
    assert "OPENAI_API_KEY" in texts(at.warning)  # api.openai.com needs a key: said up front
    assert at.button(key="draft_go").disabled

    with OpenAICompatServer(replies=["not json at all", json.dumps(GOOD)]) as server:
        at.text_input(key="draftjudgemodel").set_value("drafter")
        at.text_input(key="draftjudgeurl").set_value(server.base_url)
        at.text_input(key="draft_description").set_value("a sarcastic pirate captain who teaches Python").run()
        assert not at.warning
        at.button(key="draft_go").click().run()
        assert len(server.requests) == 2
    assert "Drafted in 2 tries" in texts(at.success)
    assert at.session_state["drafts"][0]["json"].startswith("{")
    assert "Captain Calico" in texts(at.markdown)  # the compare tab shows the draft, readable
    at.selectbox(key="cmpB").set_value("draft 1: captain_py").run()
    at.button(key="useB").click().run()
    assert at.selectbox(key="persona_choice").value == "+ new persona"
    assert at.text_input(key="new_name").value == "captain_py"
    assert json.loads(at.text_area(key="text::new").value)["assistant_name"] == "Captain Calico"
    at.button(key="save").click().run()
    assert load_constitution(studio["constitutions"] / "captain_py.json").assistant_name == "Captain Calico"


# ---------------------------------------------------------------------------------------------- training + runs


def test_training_form_has_every_dpo_and_lora_setting_from_the_yaml(studio: dict[str, Path]) -> None:
    at = open_page("train")
    at.selectbox(key="trainstage").set_value("dpo").run()
    assert at.selectbox(key="traindpogroup:lora").value == "dpo"
    assert at.number_input(key="traindpodpolora.rank").value == 32
    assert at.number_input(key="traindpostage.batch_size").value == 16
    assert at.number_input(key="traindpostage.lr").value == pytest.approx(1e-4)
    for key in ("beta", "nll_coef", "epochs", "max_length", "warmup_ratio"):
        assert at.number_input(key=f"traindpostage.{key}") is not None
    assert "stage.pairs" in texts(at.warning)  # required input: said, and nothing launches
    at.selectbox(key="traindpostage.pairs").set_value("(type a path)").run()
    at.text_input(key="traindpostage.pairstyped").set_value("/data/pairs.jsonl").run()
    at.number_input(key="traindpodpolora.rank").set_value(8).run()
    command = texts(at.code)
    assert "python -m charlab.train stage=dpo stage.pairs=/data/pairs.jsonl lora.rank=8" in command
    if "sft" in at.selectbox(key="trainstage").options:  # the SFT stage starts at its own LoRA shape
        at.selectbox(key="trainstage").set_value("sft").run()
        assert at.selectbox(key="trainsftgroup:lora").value == "sft"
        assert at.number_input(key="trainsftsftlora.rank").value == 256
        assert at.number_input(key="trainsftstage.batch_size").value == 16
        assert at.number_input(key="trainsftstage.lr").value == pytest.approx(1e-4)


def test_every_stage_yaml_gets_a_form_on_the_training_or_evaluation_page(studio: dict[str, Path]) -> None:
    shown = []
    for page, key in (("train", "trainstage"), ("evaluate", "evalstage")):
        at = open_page(page)
        for stage in at.selectbox(key=key).options:
            at.selectbox(key=key).set_value(stage).run()
            assert not at.exception and not at.error, (stage, texts(at.error))
            missing = texts(at.warning)
            assert missing.startswith("Fill in: stage.") or f"python -m charlab.train stage={stage}" in texts(at.code)
            shown.append(stage)
    assert sorted(shown) == sorted(_stages())


@pytest.mark.timing
def test_launch_a_tiny_run_and_see_it_listed(studio: dict[str, Path]) -> None:
    at = open_page("train")
    at.selectbox(key="trainstage").set_value("show").run()
    at.selectbox(key="trainshowgroup:model").set_value("tiny")
    at.selectbox(key="trainshowgroup:logger").set_value("none")
    at.selectbox(key="trainpersona").set_value("humor").run()
    at.checkbox(key="trainshowstage.show_template").uncheck().run()
    command = "python -m charlab.train stage=show persona=humor model=tiny logger=none stage.show_template=false"
    assert command in texts(at.code)
    at.button(key="trainlaunch").click().run()
    assert "Started" in texts(at.success)
    started = launcher.list_launches(studio["runs"])[0]
    wait_until(lambda: launcher.poll(started) is not None, what="the launched run's end")
    assert launcher.poll(started) == 0, Path(started.log).read_text()

    at.run()
    assert any("finished" in m.value for m in at.markdown)
    runs_page = open_page("runs")
    table = runs_page.dataframe[0].value
    assert list(table["stage"]) == ["show"] and list(table["persona"]) == ["humor"]
    assert "completed" in table["status"].iloc[0]
    assert "stage=show persona=humor model=tiny" in texts(runs_page.code)


def test_runs_page_explains_a_failed_run_with_its_log_tail(studio: dict[str, Path]) -> None:
    run = make_run(studio["runs"], "pirate", "dpo", status="failed", error="DataError: pairs.jsonl: file is empty")
    (run / "train.log").write_text("starting\nloading pairs\nDataError: pairs.jsonl: file is empty\n")
    at = open_page("runs")
    assert "The run failed: DataError: pairs.jsonl: file is empty" in texts(at.error)
    assert "loading pairs" in texts(at.code)
    assert not at.exception


def test_runs_page_gives_serving_and_export_commands_for_an_adapter(studio: dict[str, Path]) -> None:
    run = make_run(studio["runs"], "pirate", "dpo", metric=0.9, metric_name="eval/accuracy")
    (run / "adapter").mkdir()
    (run / "adapter" / "adapter_config.json").write_text(json.dumps({"r": 32, "base_model_name_or_path": "x"}))
    (run / "metrics.jsonl").write_text("".join(json.dumps({"step": i, "loss": 1 / i}) + "\n" for i in range(1, 6)))
    at = open_page("runs")
    code = texts(at.code)
    assert f"--max-lora-rank 32 \\\n    --lora-modules pirate-dpo={run / 'adapter'}" in code
    assert f'PeftModel.from_pretrained(base, "{run / "adapter"}")' in code
    if "export" in _stages():
        assert f"stage=export persona=pirate stage.dpo_adapter={run / 'adapter'}" in code
    assert "loss · last 0.2" in texts(at.caption)  # the metrics tab's chart
    assert "eval/accuracy = 0.9" in list(at.dataframe[0].value["metric"])


def test_runs_page_on_an_empty_folder_says_so(studio: dict[str, Path]) -> None:
    at = open_page("runs")
    assert "No runs yet" in texts(at.info) and not at.dataframe


# ---------------------------------------------------------------------------------------------- evaluation


def test_evaluation_page_shows_a_report_its_plots_and_tables(studio: dict[str, Path]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    run = make_run(studio["runs"], "pirate", "elo", metric=0.8, metric_name="tuned_win_rate", summary={"matches": 12})
    (run / "report.md").write_text(
        "# Elo: pirate\n\n| player | rating |\n| --- | --- |\n| tuned | 1040 |\n| base | 960 |\n"
        "\n![ratings](elo.png)\n"
    )
    plt.figure(figsize=(2, 2))
    plt.bar(["base", "tuned"], [960, 1040])
    plt.savefig(run / "elo.png")
    plt.close()
    (run / "ratings.csv").write_text("player,rating\ntuned,1040\nbase,960\n")
    at = open_page("evaluate")
    markdown = texts(at.markdown)
    assert "| tuned | 1040 |" in markdown and "elo.png" not in markdown
    assert at.image[0].captions == ["elo.png"]
    assert {m.label: m.value for m in at.metric} == {"tuned_win_rate": "0.8", "matches": "12"}
    assert list(at.dataframe[0].value["player"]) == ["tuned", "base"]
    wanted = [s for s in ("classifier", "coherence", "elo", "revealed") if s in _stages()]
    assert at.selectbox(key="evalstage").options == wanted


def test_evaluation_and_runs_pages_lead_with_the_verdict_and_in_persona_rates(studio: dict[str, Path]) -> None:
    """Injected bugs caught: the pages showing a pipeline run without its steps' verdict (or a stale one); the
    coherence step left out of the steps the pages read (the verdict then calls the caricature a success)."""
    run = make_run(studio["runs"], "pirate", "pipeline", metric=0.8, metric_name="elo/tuned_vs_base_win_rate")
    (run / "report.md").write_text("# charlab pipeline: pirate\n\n## Steps\n")
    rates = {
        "base": {"value": 0.1, "low": 0.0, "high": 0.2, "n": 30},
        "base_persona": {"value": 0.7, "low": 0.5, "high": 0.85, "n": 30},
        "tuned": {"value": 0.6, "low": 0.45, "high": 0.75, "n": 30},
        "tuned - base": {"value": 0.5, "low": 0.3, "high": 0.65, "n": 30},
        "base_persona - base": {"value": 0.6, "low": 0.4, "high": 0.75, "n": 30},
    }
    loops = {"tuned - base": {"value": 0.55, "low": 0.35, "high": 0.75, "n": 20}}
    relevance = {"tuned - base": {"value": -0.3, "low": -0.5, "high": -0.1, "n": 20}, "tuned": {"value": 0.7, "n": 20},
                 "base": {"value": 1.0, "n": 20}}  # fmt: skip
    coherence = {"loop": loops, "loop_counts": {"tuned": [11, 20], "base": [0, 20]}, "relevance": relevance,
                 "headline": {"status": "ok", "how": "local", "estimate": {"value": 0.3, "low": 0.1, "high": 0.5}}}
    steps = {"06_classifier": {"in_persona": rates}, "07_coherence": coherence,
             "09_elo": {"vs_base": {"tuned": rates["tuned"] | {"value": 0.8}}}}  # fmt: skip
    for folder, summary in steps.items():
        (run / folder).mkdir()
        (run / folder / "meta.json").write_text(json.dumps({"status": "completed", "summary": summary}))
    for page in ("evaluate", "runs"):
        at = open_page(page)
        markdown = texts(at.markdown)
        assert "**Verdict: in persona, but not coherent: 11 of 20 replies loop; relevance 0.70 vs 1.00.**" in markdown
        assert "difference +0.50, 95% CI +0.30 – +0.65" in markdown and "0.80 of 30 matches" in markdown
        assert "in character and coherent: win rate 0.30 (95% CI 0.10 – 0.50" in markdown, page
        shown = next(d.value for d in at.dataframe if "in-persona rate" in d.value.columns)
        assert list(shown["model"]) == ["base (no system prompt)", "base + constitution system prompt",
                                        "tuned (no system prompt)"]  # fmt: skip
        assert list(shown["95% CI"]) == ["0.000 – 0.200", "0.500 – 0.850", "0.450 – 0.750"]


def _stages() -> list[str]:
    return [p.stem for p in (project_root() / "configs" / "stage").glob("*.yaml")]


# ---------------------------------------------------------------------------------------------- data + chat


def test_data_preview_teacher_vs_student_and_browsing_pairs(studio: dict[str, Path]) -> None:
    def reply(messages: list[dict[str, str]]) -> str:
        return "Arr, in character!" if messages[0]["role"] == "system" else "A plain answer."

    at = open_page("data")
    at.button(key="data_draw").click().run()
    prompts = at.text_area(key="data_prompts").value.splitlines()
    assert len(prompts) == at.slider(key="data_n").value and len(set(prompts)) == len(prompts)
    with OpenAICompatServer(replies=reply) as server:
        for role in ("teacher", "student"):
            at.selectbox(key=f"datagroup:provider@{role}").set_value("openai").run()
            at.text_input(key=f"data{role}url").set_value(server.base_url)
            at.text_input(key=f"data{role}model").set_value(f"{role}-model")
        at.run()
        at.button(key="data_go").click().run()
        models = {r["model"] for r in server.requests}
    assert models == {"teacher-model", "student-model"}
    shown = texts(at.markdown)
    assert shown.count("Arr, in character!") == len(prompts) and shown.count("A plain answer.") == len(prompts)

    run = make_run(studio["runs"], "pirate", "distill")
    rows = [{"prompt": f"q{i}", "chosen": f"arr {i}", "rejected": f"plain {i}"} for i in range(7)]
    (run / "pairs.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    at = open_page("data")
    assert at.selectbox(key="browsepick").value == str(run / "pairs.jsonl")
    assert "arr 0" in texts(at.markdown) and "plain 4" in texts(at.markdown) and "arr 5" not in texts(at.markdown)
    at.number_input(key="browse_page").set_value(2).run()
    assert "arr 6" in texts(at.markdown)


def test_provider_pickers_offer_vllm_and_say_where_its_server_starts_from(studio: dict[str, Path], monkeypatch):
    """Injected bug this catches: a provider list that leaves out vllm (a hard-coded hf | openai | tinker)."""
    monkeypatch.setenv("CHARLAB_VLLM_PYTHON", str(studio["tmp"] / "no-vllm" / "bin" / "python"))
    at = open_page("data")
    picker = at.selectbox(key="datagroup:provider@teacher")
    assert "vllm" in picker.options
    picker.set_value("vllm").run()
    assert "No vLLM at" in texts(at.warning) and "scripts/setup_vllm.sh" in texts(at.warning)
    at = open_page("evaluate")
    at.selectbox(key="evalstage").set_value("elo").run()
    at.selectbox(key="evalelogroup:provider@student").set_value("vllm").run()
    assert "provider@student=vllm" in texts(at.code)


def test_chat_playground_answers_three_ways_with_a_tuned_adapter(
    studio: dict[str, Path], tiny_model, cache_dir
) -> None:
    """Greedy replies: the tuned adapter (random, non-zero) answers differently from the base model.

    Injected bug: `chat_three_ways` sampling the tuned reply without the adapter -> tuned == base.
    """
    run = make_run(studio["runs"], "pirate", "dpo")
    random_adapter(tiny_model, cache_dir, run / "adapter")
    at = open_page("playground")
    at.selectbox(key="chatgroup:model").set_value("tiny")
    at.selectbox(key="chat_adapter").set_value(str(run / "adapter"))
    at.number_input(key="chat_max").set_value(8).run()
    at.slider(key="chat_t").set_value(0.0).run()
    at.text_area(key="chat_message").set_value("Who are you?")
    at.button(key="chat_send").click().run()
    assert not at.error, texts(at.error)
    captions = texts(at.caption)
    assert "Base model" in captions and "Base + pirate system prompt" in captions and "Tuned adapter" in captions
    replies = at.session_state["chat_history"][0]
    assert replies.prompt == "Who are you?" and replies.tuned is not None
    assert all(isinstance(t, str) for t in (replies.base, replies.base_with_prompt, replies.tuned))
    assert replies.tuned != replies.base, replies
