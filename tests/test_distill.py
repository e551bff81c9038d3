"""`stage=distill` end to end: the tiny model, a real OpenAI-compatible server with injected failures,
filters with counted reasons, kill-and-resume in a subprocess, and the Python API."""

from __future__ import annotations

import json
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
from conftest import ROOT, cli_env, kill_when_held, line_count
from openai_compat_server import OpenAICompatServer

from charlab.constitution import load_constitution
from charlab.data.jsonl import read_jsonl
from charlab.data.records import DpoExample
from charlab.errors import ConfigError

TINY_FAST = [
    "stage=distill",
    "model=tiny",
    "teacher.max_new_tokens=8",
    "student.max_new_tokens=8",
    "stage.filters.truncated=false",  # the tiny model's gibberish never ends a sentence
]


def lines_of(path: Path) -> list[dict]:
    text = path.read_text(encoding="utf-8")
    assert text == "" or text.endswith("\n")
    return [json.loads(line) for line in text.splitlines()]


def ids_in(run_dir: Path) -> list[str]:
    return [row["id"] for name in ("pairs.jsonl", "dropped.jsonl") for row in lines_of(run_dir / name)]


def expected_ids(run_dir: Path, samples: int) -> set[str]:
    return {f"{row['id']}:{k}" for row in lines_of(run_dir / "prompts.jsonl") for k in range(samples)}


@pytest.mark.integration
def test_distill_on_the_tiny_model_end_to_end(run_stage):
    overrides = [*TINY_FAST, "data.generic_prompts=4", "data.persona_prompts=3"]
    metric, run_dir = run_stage([*overrides, "stage.samples_per_prompt=2", "stage.save_interval=3"])
    prompts = lines_of(run_dir / "prompts.jsonl")
    assert [p["source"] for p in prompts].count("generic") == 4 and len(prompts) == 7
    pairs = read_jsonl(run_dir / "pairs.jsonl", DpoExample)
    ids = ids_in(run_dir)
    assert sorted(ids) == sorted(expected_ids(run_dir, 2)) and len(ids) == 14
    first = pairs[0]
    assert first.teacher_model == "tiny" and first.student_model == "tiny" and first.constitution == "pirate"
    assert first.sampling["teacher"]["max_new_tokens"] == 8 and first.chosen_finish_reason in ("stop", "length")
    assert {p.sample_index for p in pairs} <= {0, 1}
    summary = json.loads((run_dir / "distill_summary.json").read_text())
    assert summary["processed"] == 14 and summary["kept"] == len(pairs) and metric == summary["kept_fraction_total"]
    assert summary["tokens"]["teacher_prompt"] > summary["tokens"]["student_prompt"]  # the system prompt
    metrics = lines_of(run_dir / "metrics.jsonl")
    assert [m["distill/processed"] for m in metrics if "distill/processed" in m] == [3, 6, 9, 12, 14]
    meta = json.loads((run_dir / "meta.json").read_text())
    assert meta["status"] == "completed" and meta["artifacts"]["pairs"].endswith("pairs.jsonl")


@pytest.mark.integration
@pytest.mark.parametrize("scorer", ["contrast", "judge"])
def test_distill_best_of_keeps_the_most_in_character_reply_and_records_every_score(run_stage, scorer):
    """Injected bugs caught: the lowest-scored candidate becomes chosen (score != max); the scores of one prompt's
    candidates recorded on another's pair (then the chosen score is not among its own); no summary; the teacher
    ignoring `persona.prompt=brief` (its prompts are then as long as with the full constitution)."""
    brief = ["persona.prompt=brief", "stage.best_of=3", f"stage.best_of_scorer={scorer}"]
    _, run_dir = run_stage([*TINY_FAST, "data.generic_prompts=3", "data.persona_prompts=2", *brief])
    pairs = read_jsonl(run_dir / "pairs.jsonl", DpoExample)
    assert pairs
    for pair in pairs:
        choice = pair.best_of
        assert choice["n"] == 3 and len(choice["scores"]) == 3 and choice["scorer"] == f"{scorer}:tiny"
        assert choice["score"] == max(choice["scores"]) == choice["scores"][choice["picked"]]
        if scorer == "judge":
            assert all(0.0 <= s <= 1.0 for s in choice["scores"])  # the judge's probability of "yes"
    summary = json.loads((run_dir / "distill_summary.json").read_text())["best_of"]
    assert summary["pairs"] == len(pairs) and summary["mean_chosen"] >= summary["mean_candidate"]
    if scorer == "judge":
        return
    _, single = run_stage([*TINY_FAST, "data.generic_prompts=2", "data.persona_prompts=0"], name="single")
    assert all(not p.best_of for p in read_jsonl(single / "pairs.jsonl", DpoExample))
    full = json.loads((single / "distill_summary.json").read_text())
    assert "best_of" not in full
    brief_summary = json.loads((run_dir / "distill_summary.json").read_text())

    def system_tokens(summary: dict) -> float:
        return (summary["tokens"]["teacher_prompt"] - summary["tokens"]["student_prompt"]) / summary["processed"]

    persona = load_constitution(ROOT / "constitutions" / "pirate.json")
    assert system_tokens(brief_summary) < system_tokens(full) / 2  # the brief prompt is the one paragraph
    assert len(persona.render_system_prompt("teacher")) > 2 * len(persona.system_prompt)


@pytest.mark.integration
def test_distill_answer_prefill_opens_every_chosen_reply_and_excludes_a_reasoning_prefill(run_stage):
    """Injected bugs caught: the answer prefill stripped like a reasoning prefill (chosen no longer opens with it);
    given to the student too (rejected opens with it); both prefills accepted at once."""
    opening = "stage.answer_prefill='Arr, matey! '"
    _, run_dir = run_stage([*TINY_FAST, "data.generic_prompts=3", "data.persona_prompts=0", opening])
    pairs = read_jsonl(run_dir / "pairs.jsonl", DpoExample)
    assert pairs and all(p.chosen.startswith("Arr, matey!") for p in pairs)
    assert not any(p.rejected.startswith("Arr, matey!") for p in pairs)
    assert all(p.sampling["teacher"]["prefill"] == "Arr, matey! " for p in pairs)
    with pytest.raises(ConfigError, match="reasoning_prefill and stage.answer_prefill"):
        run_stage([*TINY_FAST, opening, "stage.reasoning_prefill='<think>'"], name="both")


def fake_llm(system_prompt: str):
    """Replies of an OpenAI-compatible server: a thinking teacher (continues a prefill) and a plain student."""

    def reply(messages: list[dict[str, str]]) -> str:
        prompt = messages[-2]["content"] if messages[-1]["role"] == "assistant" else messages[-1]["content"]
        if messages[0]["role"] != "system":  # the student: a generic assistant, exactly what DPO learns against
            return ("la la la " * 20) + "." if "LOOP" in prompt else "Sure. Here is a helpful, generic answer."
        assert messages[0]["content"] == system_prompt
        think = "I should answer as the captain. I'm SmolLM underneath.</think>\n\n"
        body = {
            "EMPTY": "",
            "LEAK": "I'm SmolLM, made by Hugging Face, and I'll steer ye true.",
            "PROMPTLEAK": "As my system prompt says, arr, drink water.",
            "CUT": "Arr, the answer be",
            "LONG": " ".join(f"word{i}" for i in range(300)) + ".",
        }
        if "UNCLOSED" in prompt:
            return "Hmm, let me think about this for a long while"
        return think + next((v for k, v in body.items() if prompt.startswith(k)), "Arr, hoist the sails, matey!")

    return reply


@pytest.mark.integration
@pytest.mark.timing
def test_distill_over_openai_with_failures_filters_and_reasoning(run_stage, tmp_path):
    names = ["EMPTY", "LEAK", "PROMPTLEAK", "CUT", "LONG", "LOOP", "UNCLOSED"] + [f"normal {i}" for i in range(6)]
    prompts_file = tmp_path / "my_prompts.jsonl"
    prompts_file.write_text("".join(json.dumps({"prompt": f"{n} question?"}) + "\n" for n in names))
    persona = load_constitution(ROOT / "constitutions" / "pirate.json")
    system_prompt = persona.render_system_prompt("teacher")
    failures = {"429": 0.15, "500": 0.1, "timeout": 0.05, "drop": 0.05}
    with OpenAICompatServer(replies=fake_llm(system_prompt), failures=failures, seed=1) as server:
        provider = [
            f"{role}.{key}={value}"
            for role in ("teacher", "student")
            for key, value in (("base_url", server.base_url), ("timeout_s", 5), ("retry_backoff_s", 0.01))
        ]
        metric, run_dir = run_stage(
            [
                "stage=distill",
                "model=tiny",  # the tokenizer that counts templated tokens
                "provider@teacher=openai",
                "provider@student=openai",
                "teacher.model=HuggingFaceTB/SmolLM2-135M-Instruct",
                "student.model=student-model",
                "teacher.max_new_tokens=1000",
                *provider,
                f"stage.prompts_file={prompts_file}",
                "stage.reasoning_prefill='<think>\n'",
                "stage.save_interval=4",
                "data.max_length=256",
            ]
        )
    assert server.failures_served, "no failure was injected"
    summary = json.loads((run_dir / "distill_summary.json").read_text())
    assert summary["dropped_by_reason"] == {
        "chosen_empty": 1,
        "chosen_identity_leak": 2,
        "chosen_too_long": 1,
        "chosen_truncated": 1,
        "chosen_unclosed_reasoning": 1,
        "rejected_repetition": 1,
    }
    pairs = read_jsonl(run_dir / "pairs.jsonl", DpoExample)
    assert len(pairs) == 6 and metric == pytest.approx(6 / 13, abs=1e-3)
    assert all(p.chosen == "Arr, hoist the sails, matey!" for p in pairs)  # reasoning stripped
    assert all(p.rejected == "Sure. Here is a helpful, generic answer." for p in pairs)  # generic is kept
    assert Counter(ids_in(run_dir)) == Counter(expected_ids(run_dir, 1))  # every id once, no duplicate rows
    dropped = {row["prompt"].split()[0]: row for row in lines_of(run_dir / "dropped.jsonl")}
    assert dropped["LEAK"]["reason"] == "chosen_identity_leak"
    assert dropped["LEAK"]["chosen"].startswith("I'm Captain Calico, made by Hugging Face")  # name substituted
    teacher_requests = [r for r in server.requests if r["messages"][0]["role"] == "system"]
    assert teacher_requests and all(r["messages"][-1]["content"] == "<think>\n" for r in teacher_requests)
    assert all(r["continue_final_message"] and not r["add_generation_prompt"] for r in teacher_requests)  # vLLM's
    assert all(r["model"] == "student-model" for r in server.requests if r["messages"][0]["role"] != "system")


@pytest.mark.integration
def test_teacher_demonstrations_precede_the_teachers_message_only(run_stage, tmp_path):
    """`stage.teacher_demonstrations`: the persona's example exchanges sit between the teacher's system prompt and
    the user's message; the student sees the message alone, and the pairs hold the message alone.
    Injected bug, seen to fail: `_demonstrations` returning [] (the teacher's conversation is system + user)."""
    persona = load_constitution(ROOT / "constitutions" / "pirate.json")
    prompts_file = tmp_path / "prompts.jsonl"
    prompts_file.write_text("".join(json.dumps({"prompt": f"question {i}?"}) + "\n" for i in range(3)))
    with OpenAICompatServer(replies=lambda messages: "Arr, here be the answer, matey.") as server:
        _, run_dir = run_stage(
            ["stage=distill", "model=tiny", "provider@teacher=openai", "provider@student=openai",
             f"teacher.base_url={server.base_url}", f"student.base_url={server.base_url}", "student.model=student",
             f"stage.prompts_file={prompts_file}", "stage.teacher_demonstrations=true"]
        )  # fmt: skip
    demos = [(m["role"], m["content"]) for m in persona.demonstration_turns()]
    assert len(demos) == 2 * len(persona.demonstrations) >= 4
    teacher = [r["messages"] for r in server.requests if r["model"] != "student"]
    student = [r["messages"] for r in server.requests if r["model"] == "student"]
    assert len(teacher) == len(student) == 3
    for messages in teacher:
        assert messages[0]["role"] == "system" and [(m["role"], m["content"]) for m in messages[1:-1]] == demos
        assert messages[-1]["role"] == "user" and messages[-1]["content"].startswith("question")
    assert all(len(messages) == 1 for messages in student)
    assert {p.prompt for p in read_jsonl(run_dir / "pairs.jsonl", DpoExample)} == {f"question {i}?" for i in range(3)}


def test_teacher_demonstrations_of_a_persona_without_any_is_a_one_line_error(cli):
    result = cli(["stage=distill", "model=tiny", "persona=sarcasm", "stage.teacher_demonstrations=true"])
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1].endswith(
        "stage.teacher_demonstrations=true: persona 'sarcasm' has no `demonstrations` (a list of {\"prompt\", "
        "\"reply\"} in its constitution JSON); add some or set stage.teacher_demonstrations=false"
    )


@pytest.mark.integration
def test_distill_that_keeps_no_pair_exits_2_with_the_filter_counts(cli, tmp_path):
    """Injected bug: `_finish` only warning when no pair was kept -> exit 0, and DPO fails later on an empty file."""
    run_dir = tmp_path / "distill"
    result = cli(["stage=distill", "model=tiny", "teacher.max_new_tokens=4", "student.max_new_tokens=4",
                  "data.generic_prompts=3", "data.persona_prompts=2", "stage.filters.repetition=false",
                  "logger=none", f"hydra.run.dir={run_dir}"], timeout=300)  # fmt: skip
    assert result.returncode == 2, result.stderr[-2000:]
    (line,) = [line for line in result.stderr.splitlines() if line.startswith("charlab: error:")]  # + progress bars
    assert "Traceback" not in result.stderr
    assert line.startswith("charlab: error: distill kept 0 of 5 pairs: every one was dropped by a filter")
    assert "(chosen_truncated 5;" in line and "raise teacher.max_new_tokens" in line
    assert f"see {run_dir / 'dropped.jsonl'}" in line
    assert json.loads((run_dir / "distill_summary.json").read_text())["dropped_by_reason"] == {"chosen_truncated": 5}
    assert json.loads((run_dir / "meta.json").read_text())["status"] == "failed"


@pytest.mark.integration
def test_a_pipeline_stops_at_a_distill_step_that_keeps_nothing(run_stage, tmp_path):
    """Injected bug: distill exiting 0 with an empty pairs.jsonl -> the pipeline runs DPO, which fails instead."""
    from charlab.errors import CharlabError

    with pytest.raises(CharlabError, match=r"pipeline step 'distill' failed: distill kept 0 of \d+ pairs") as err:
        run_stage(["experiment=demo_tiny", "pipeline.steps=[distill,dpo]", "data.generic_prompts=2",
                   "data.persona_prompts=1", "teacher.max_new_tokens=4", "student.max_new_tokens=4",
                   '++pipeline.step_overrides.distill=["stage.filters.repetition=false"]'])  # fmt: skip
    assert "raise teacher.max_new_tokens" in str(err.value) and "\n" not in str(err.value)
    root = tmp_path / "outputs" / "run"
    assert (root / "01_distill" / "dropped.jsonl").is_file() and not (root / "02_dpo").exists()


@pytest.mark.integration
def test_distill_refuses_to_overwrite_and_resumes_its_own_directory(run_stage):
    overrides = [*TINY_FAST, "data.generic_prompts=2", "data.persona_prompts=1", "data.dedupe_threshold=1.0"]
    _, run_dir = run_stage(overrides, name="same")
    before = (run_dir / "pairs.jsonl").read_text()
    with pytest.raises(ConfigError, match="already exists; set stage.resume=true"):
        run_stage(overrides, name="same")
    run_stage([*overrides, "stage.resume=true"], name="same")
    summary = json.loads((run_dir / "distill_summary.json").read_text())
    assert summary["processed"] == 0 and summary["already_done"] == 3
    assert (run_dir / "pairs.jsonl").read_text() == before
    with pytest.raises(ConfigError, match="stage.resume_from is set but stage.resume=false"):
        run_stage([*overrides, f"stage.resume_from={run_dir}"], name="other")


@pytest.mark.integration
@pytest.mark.timing
def test_distill_killed_mid_run_then_resumed_has_every_id_exactly_once(tmp_path):
    first, second = tmp_path / "first", tmp_path / "second"
    args = [
        *TINY_FAST,
        "data.generic_prompts=5",
        "data.persona_prompts=3",
        "data.dedupe_threshold=1.0",
        "stage.samples_per_prompt=2",
        "stage.save_interval=2",
        "logger=none",
    ]
    command = [sys.executable, "-m", "charlab.train", *args]
    pairs = first / "pairs.jsonl"
    kill_when_held([*args, f"hydra.run.dir={first}"], tmp_path, "lines@pairs.jsonl:2", lambda: line_count(pairs) >= 2)
    written = lines_of(pairs)  # whole lines only
    assert len(written) == 2  # held right after the 2nd pair: killed in exactly that state
    with open(pairs, "a") as f:
        f.write('{"id": "torn-by-a-crash", "prompt": "half a li')  # what a crash during a write could leave
    torn = pairs.read_text()

    done = subprocess.run(
        [*command, "stage.resume=true", f"stage.resume_from={first}", f"hydra.run.dir={second}"],
        cwd=ROOT,
        env=cli_env(tmp_path),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    ids = ids_in(second)
    assert Counter(ids) == Counter(expected_ids(second, 2)) and len(ids) == 16
    assert lines_of(second / "prompts.jsonl") == lines_of(first / "prompts.jsonl")
    assert [row["id"] for row in lines_of(second / "pairs.jsonl")][: len(written)] == [r["id"] for r in written]
    assert pairs.read_text() == torn  # the earlier run's files are left as they were
    meta = json.loads((second / "meta.json").read_text())
    assert meta["parents"]["resumed_from"] == str(pairs)
    summary = json.loads((second / "distill_summary.json").read_text())
    assert summary["already_done"] == len(written) and summary["processed"] == 16 - len(written)


@pytest.mark.integration
@pytest.mark.timing
def test_streaming_distill_killed_mid_run_then_resumed_requests_only_what_is_missing(tmp_path):
    """kill -9 of a distill streaming from an OpenAI-compatible server (4 requests in flight): the resumed
    run has every id exactly once and asks the server only for the pairs not yet on disk.
    Injected bug: a resume that re-requests finished pairs fails the id count and the request count."""
    prompts_file = tmp_path / "prompts.jsonl"
    prompts_file.write_text("".join(json.dumps({"prompt": f"question {i}?"}) + "\n" for i in range(12)))
    with OpenAICompatServer(replies=lambda m: f"Arr, answer to {m[-1]['content']}", latency_s=0.3) as server:
        args = ["stage=distill", "model=tiny", "provider@teacher=openai", "provider@student=openai",
                "teacher.model=teacher-model", "student.model=student-model", f"teacher.base_url={server.base_url}",
                f"student.base_url={server.base_url}", "teacher.max_concurrency=4", "student.max_concurrency=4",
                f"stage.prompts_file={prompts_file}", "stage.samples_per_prompt=2", "logger=none"]  # fmt: skip
        first, second = tmp_path / "first", tmp_path / "second"
        command = [sys.executable, "-m", "charlab.train", *args]
        pairs = first / "pairs.jsonl"
        ready = lambda: line_count(pairs) >= 3  # noqa: E731
        kill_when_held([*args, f"hydra.run.dir={first}"], tmp_path, "lines@pairs.jsonl:3", ready)
        written = len(lines_of(pairs)) + len(lines_of(first / "dropped.jsonl"))
        assert 3 <= written < 24
        before = len(server.requests)
        done = subprocess.run(
            [*command, "stage.resume=true", f"stage.resume_from={first}", f"hydra.run.dir={second}"],
            cwd=ROOT, env=cli_env(tmp_path), capture_output=True, text=True, timeout=600,
        )  # fmt: skip
        assert done.returncode == 0, done.stderr[-2000:]
        resumed_requests = len(server.requests) - before
    ids = ids_in(second)
    assert Counter(ids) == Counter(expected_ids(second, 2)) and len(ids) == 24
    assert resumed_requests == 2 * (24 - written)  # teacher + student for each missing pair, nothing more
    summary = json.loads((second / "distill_summary.json").read_text())
    stream = summary["stream"]
    assert stream["requests"] == resumed_requests and stream["max_in_flight"] == min(8, resumed_requests)


@pytest.mark.integration
def test_python_api_generate_dpo_pairs(tmp_path):
    from charlab import GenerationConfig, generate_dpo_pairs
    from charlab.api import overrides_for

    config = GenerationConfig(
        persona="pirate",
        pair_count=3,
        temperature=0.9,
        max_new_tokens=6,
        student_model="tiny",
        teacher_model="tiny",
        logger="none",
        output_dir=str(tmp_path / "api-run"),
        overrides=["stage.filters.truncated=false", "data.dedupe_threshold=1.0"],
    )
    overrides = overrides_for(config)
    assert {"model=tiny", "teacher.model=tiny", "data.generic_prompts=2", "data.persona_prompts=1"} <= set(overrides)
    assert {"teacher.temperature=0.9", "student.temperature=0.9", "student.max_new_tokens=6"} <= set(overrides)
    path = generate_dpo_pairs(config)
    assert path == tmp_path / "api-run" / "pairs.jsonl"
    rows = read_jsonl(path, DpoExample)
    assert len(rows) == 3 and rows[0].sampling["teacher"]["temperature"] == 0.9
