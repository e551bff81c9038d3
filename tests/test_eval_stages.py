"""The evaluation stages end to end: the tiny model with an `hf` judge (gibberish verdicts, counted), and a
loopback OpenAI-compatible server with canned replies and verdicts (the parsing -> matches -> ratings path)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from charlab.data.jsonl import read_jsonl
from charlab.errors import ConfigError
from charlab.eval.elo import compute_elo, load_matches
from tests.openai_compat_server import OpenAICompatServer
from tests.test_classifier import write_separable_pairs

pytestmark = pytest.mark.integration
FAST = [
    "model=tiny",
    "eval.bootstrap=50",
    "eval.orderings=10",
    "eval.batch_size=4",
    "student.max_new_tokens=12",
    "judge.max_new_tokens=12",
]


@pytest.fixture(scope="module")
def tiny_adapter(tiny_model, cache_dir, tmp_path_factory) -> Path:
    """A random (non-zero) LoRA adapter on the tiny model: a stand-in for a trained persona."""
    from peft import LoraConfig, get_peft_model

    from charlab.models import load_causal_lm

    model = load_causal_lm(tiny_model, cache_dir)
    config = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    out = tmp_path_factory.mktemp("adapter")
    get_peft_model(model, config).save_pretrained(out)
    return out


@pytest.fixture
def separable_pairs(tmp_path: Path) -> Path:
    return write_separable_pairs(tmp_path / "pairs.jsonl")


def assert_report(run_dir: Path, *plots: str) -> str:
    text = (run_dir / "report.md").read_text()
    for plot in plots:
        png = run_dir / plot
        assert png.is_file() and png.read_bytes()[:4] == b"\x89PNG", plot
        assert f"]({plot})" in text
    return text


def test_elo_stage_tiny_hf_judge_with_tuned_adapter(run_stage, tiny_adapter: Path) -> None:
    metric, out = run_stage(["stage=elo", *FAST, "eval.num_prompts=3", f"stage.adapter={tiny_adapter}"])
    replies = read_jsonl(out / "replies.jsonl")
    assert sorted({r["player"] for r in replies}) == ["base", "base_persona", "tuned"]
    assert len(replies) == 9
    judged = read_jsonl(out / "judgments.jsonl")
    assert len(judged) == 3 * 3 * 2  # prompts x pairs x both orders
    meta = json.loads((out / "meta.json").read_text())
    summary = meta["summary"]
    # the tiny judge writes gibberish: every pair is counted, none is guessed
    assert summary["pairs_judged"] == 9
    assert summary["consistent"] + summary["inconsistent"] + summary["unparseable"] == 9
    assert sum(summary["verdicts"].values()) == 18
    assert meta["parents"]["adapter"] == str(tiny_adapter) and meta["metric_name"] == "tuned_win_rate"
    text = assert_report(out, "elo_ratings.png", "win_matrix.png")
    assert "tuned win rate" in text and "| base_persona |" in text
    if summary["consistent"] == 0:
        assert metric is None


def test_revealed_stage_tiny_hf_judge(run_stage, tiny_adapter: Path) -> None:
    """Injected bug: the headline falling back to the tuned player's trait percentile although a base player
    exists (no rank shift) -> the metric name and value no longer match the summary's rank shift."""
    metric, out = run_stage(
        ["stage=revealed", *FAST, "eval.num_prompts=3", "eval.revealed_trials=4", f"stage.adapter={tiny_adapter}"]
    )
    judged = read_jsonl(out / "judgments.jsonl")
    assert len(judged) == 8 and {r["player"] for r in read_jsonl(out / "replies.jsonl")} == {"base", "tuned"}
    summary = json.loads((out / "meta.json").read_text())["summary"]
    assert {p: sum(c.values()) for p, c in summary["verdicts"].items()} == {"base": 4, "tuned": 4}
    ratings = json.loads((out / "ratings.json").read_text())
    assert len(ratings["base"]) == 144 and len(ratings["tuned"]) == 144
    assert summary["persona_traits"] == ["good", "calm", "warm", "honest"]  # named in the pirate constitution
    assert_report(out, "top_bottom_traits.png", "trait_scatter.png")
    # the returned metric is the summary's headline: the persona traits' mean rank shift, within +-143 of 144 traits
    meta = json.loads((out / "meta.json").read_text())
    assert meta["metric_name"] == "persona_trait_rank_shift" and summary["persona_trait_rank_shift"] == metric
    assert metric is None or abs(metric) <= 143


def test_classifier_stage_separable_pairs_with_attacks(run_stage, separable_pairs: Path) -> None:
    metric, out = run_stage(
        [
            "stage=classifier",
            *FAST,
            f"stage.pairs={separable_pairs}",
            "stage.eval_fraction=0.25",
            "eval.robustness_prompts=2",
            "eval.classifier_epochs=2",
            "eval.classifier_batch_size=8",
            "eval.classifier_max_length=48",
            "eval.classifier_lr=1e-4",
        ]
    )
    train, held = read_jsonl(out / "train.jsonl"), read_jsonl(out / "held_out.jsonl")
    assert not {r["prompt"] for r in train} & {r["prompt"] for r in held}
    assert metric is not None and metric >= 0.9  # held-out macro-F1 on a separable set
    attacks = read_jsonl(out / "robustness.jsonl")
    names = {r["attack"] for r in attacks}
    assert {"none", "keep_going"} <= names and len(names - {"none", "keep_going"}) == 8
    summary = json.loads((out / "meta.json").read_text())["summary"]
    assert set(summary["in_persona_rate"]) == names
    assert all(0.0 <= v <= 1.0 for v in summary["in_persona_rate"].values())
    assert (out / "classifier" / "labels.json").is_file() and (out / "classifier" / "meta.json").is_file()
    assert_report(out, "confusion_matrix.png", "robustness.png")


# ---------------------------------------------------------------------------------------------- canned server
PERSONA_MARK = "Captain Calico"  # in the pirate constitution's system prompt
TWO_TRAITS = re.compile(r"two traits: (\w+) and (\w+)")
JUDGE_TRAITS = re.compile(r"one of two traits: (\w+) or (\w+)")


def canned(messages: list[dict[str, str]]) -> str:
    """Players: in character with the persona prompt; revealed trials pick the alphabetically first trait.
    Judges: head-to-head prefers the in-character reply, except a position-biased judge on some prompts;
    revealed names the trait in the reply, except for pairs with an s-trait (malformed on purpose)."""
    system = messages[0]["content"] if messages[0]["role"] == "system" else ""
    user = messages[-1]["content"]
    if "<reply_A>" in user:
        prompt = user.split("<user_message>\n", 1)[1].split("\n</user_message>", 1)[0]
        if len(prompt) % 3 == 0:
            return "Both are fine.\nANSWER: A"  # always the first shown: inconsistent across orders
        a = user.split("<reply_A>", 1)[1].split("</reply_A>", 1)[0]
        b = user.split("<reply_B>", 1)[1].split("</reply_B>", 1)[0]
        return "ANSWER: tie" if ("Arr" in a) == ("Arr" in b) else f"Reasoning.\nANSWER: {'A' if 'Arr' in a else 'B'}"
    if "one of two traits" in user:
        a, b = JUDGE_TRAITS.search(user).groups()
        if a.startswith("s") or b.startswith("s"):
            return "The reply is hard to read."
        return f"ANSWER: {a if f'[{a}]' in user else b}"
    match = TWO_TRAITS.search(system)
    if match:
        return f"A reply with a [{min(match.groups())}] flavour."
    return "Arr, matey, steady as she goes." if PERSONA_MARK in system else "Here is a plain answer."


def openai_roles(url: str) -> list[str]:
    return [
        f"{key}={value}"
        for role in ("student", "judge")
        for key, value in [(f"provider@{role}", "openai"), (f"{role}.base_url", url), (f"{role}.model", "canned")]
    ]


def test_elo_stage_canned_verdicts_and_resume(run_stage) -> None:
    with OpenAICompatServer(replies=canned) as server:
        args = ["stage=elo", *FAST, *openai_roles(server.base_url), "eval.num_prompts=12"]
        args += ["stage.players=[base,base_persona]", "eval.base_model=canned-base"]
        metric, out = run_stage(args, name="elo")
        requests = len(server.requests)
        assert requests == 12 * 2 + 12 * 2
        # the players are eval.base_model on the student provider; the judge keeps its own model
        assert [r["model"] for r in server.requests] == ["canned-base"] * 24 + ["canned"] * 24
        # resuming in the same run directory regenerates nothing and gives the same numbers
        again, _ = run_stage([*args, "stage.resume=true"], name="elo")
        assert len(server.requests) == requests and again == metric
    replies = {r["id"]: r for r in read_jsonl(out / "replies.jsonl")}
    biased = {r["prompt_id"] for r in replies.values() if len(r["prompt"]) % 3 == 0}
    summary = json.loads((out / "meta.json").read_text())["summary"]
    assert summary["inconsistent"] == len(biased) and summary["unparseable"] == 0
    assert summary["consistent"] == 12 - len(biased) > 0
    matches = load_matches(out / "matches.jsonl")
    assert len(matches) == summary["consistent"] and all(m.winner == "base_persona" for m in matches)
    assert metric == 1.0 and summary["base_persona_win_rate"] == 1.0
    ratings = compute_elo(matches, k_factor=32.0)
    assert ratings["base_persona"] > 1000 > ratings["base"]
    assert summary["elo"]["base_persona"] > summary["elo"]["base"]
    low, high = summary["elo_ci"]["base_persona"]
    assert low <= summary["elo"]["base_persona"] <= high


def test_revealed_stage_canned_verdicts(run_stage) -> None:
    with OpenAICompatServer(replies=canned) as server:
        args = ["stage=revealed", *FAST, *openai_roles(server.base_url), "eval.num_prompts=5"]
        args.append("eval.revealed_trials=40")
        metric, out = run_stage([*args, "stage.players=[base,base_persona]", "stage.persona_traits=[calm,warm]"])
        # a second run of the base model alone, correlated with the first through stage.compare_runs
        _, second = run_stage([*args, "stage.players=[base]", f"stage.compare_runs=['{out}']"], name="again")
    judged = read_jsonl(out / "judgments.jsonl")
    expected_bad = {p: 0 for p in ("base", "base_persona")}
    for row in judged:
        expected_bad[row["player"]] += row["trait_a"].startswith("s") or row["trait_b"].startswith("s")
    summary = json.loads((out / "meta.json").read_text())["summary"]
    for player, counts in summary["verdicts"].items():
        assert counts["malformed"] == expected_bad[player] and counts["ambiguous"] == 0
        assert counts["ok"] == 40 - expected_bad[player] > 0
    # both players picked the same traits, so their trait ratings agree perfectly
    assert summary["spearman"]["base vs base_persona"] == pytest.approx(1.0)
    ratings = json.loads((out / "ratings.json").read_text())["base"]
    top = ratings[0]
    assert top["games"] > 0 and top["score"] == top["games"]  # the best trait won every trial it was in
    assert summary["persona_traits"] == ["calm", "warm"] and metric is not None
    again = json.loads((second / "meta.json").read_text())
    assert again["summary"]["spearman"] == {f"base vs {out.name}:base": pytest.approx(1.0)}  # same seed, same trials
    assert again["parents"][f"compare_{out.name}"] == str(out)


def test_stage_inputs_are_checked_before_any_model_loads(run_stage) -> None:
    with pytest.raises(ConfigError, match="tuned needs stage.adapter"):
        run_stage(["stage=elo", *FAST, "stage.players=[base,tuned]"])
    with pytest.raises(ConfigError, match="stage.pairs / stage.runs"):
        run_stage(["stage=classifier", *FAST])
    with pytest.raises(ConfigError, match="stage.conditions"):
        run_stage(["stage=revealed", *FAST, "stage.conditions=[sometimes]"])
