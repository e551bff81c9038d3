"""The evaluation stages end to end: the tiny model with an `hf` judge (every verdict from log-probabilities,
none unparseable), and a loopback OpenAI-compatible server with canned replies and verdicts (the parsing ->
matches -> ratings path, with the server sending no log-probabilities)."""

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
    # a random judge still answers every question: its allowed answers are scored by log-probability
    assert all(r["mode"] == "logprob" and r["choice"] in ("A", "B", "tie") for r in judged)
    assert all(sum(r["probs"].values()) == pytest.approx(1.0) for r in judged)
    assert summary["pairs_judged"] == 9 and summary["unparseable"] == 0 and summary["usable"] == 9
    assert summary["verdict_modes"] == {"logprob": 18, "top_logprobs": 0, "text": 0, "unparseable": 0}
    assert len(load_matches(out / "matches.jsonl")) == 9
    assert meta["parents"]["adapter"] == str(tiny_adapter) and meta["metric_name"] == "tuned_vs_base_win_rate"
    assert summary["tuned_vs_base_win_rate"] == metric and 0.0 <= metric <= 1.0
    text = assert_report(out, "elo_ratings.png", "win_matrix.png")
    assert "tuned win rate against base" in text and "| base_persona |" in text and "logprob 18" in text


def test_elo_stage_likelihood_format_scores_every_reply_and_resumes(run_stage, tiny_adapter: Path) -> None:
    """Injected bug caught: comparing the two replies' scores the wrong way round (the persona-explained reply
    must win)."""
    args = ["stage=elo", *FAST, "eval.num_prompts=3", f"stage.adapter={tiny_adapter}", "eval.judge_format=likelihood"]
    metric, out = run_stage(args)
    rows = read_jsonl(out / "judgments.jsonl")
    assert len(rows) == 9 and all(isinstance(r["persona_score"], float) for r in rows)  # one score per reply
    summary = json.loads((out / "meta.json").read_text())["summary"]
    assert summary["verdict_modes"]["logprob"] == 18 and summary["unparseable"] == 0 and summary["usable"] == 9
    score = {r["id"]: r["persona_score"] for r in rows}
    for m in load_matches(out / "matches.jsonl"):
        pid = next(r["prompt_id"] for r in read_jsonl(out / "replies.jsonl") if r["text"] == m.base_response)
        a, b = score[f"{m.player_a}:{pid}"], score[f"{m.player_b}:{pid}"]
        assert m.winner == (m.player_a if a > b else m.player_b if b > a else "tie")
    assert "format likelihood" in summary["judge"]
    again, _ = run_stage([*args, "stage.resume=true"])  # nothing left to score: same numbers
    assert again == metric and len(read_jsonl(out / "judgments.jsonl")) == 9
    with pytest.raises(ConfigError, match="likelihood measures the persona only"):
        run_stage([*args, "stage.criterion=helpful"], name="helpful")


def test_revealed_stage_tiny_hf_judge(run_stage, tiny_adapter: Path) -> None:
    """Injected bug: the headline metric dropped (None) although every verdict was usable -> fails here (the old
    `isinstance(metric, float) or metric is None` passed either way)."""
    metric, out = run_stage(
        ["stage=revealed", *FAST, "eval.num_prompts=3", "eval.revealed_trials=4", f"stage.adapter={tiny_adapter}"]
    )
    judged = read_jsonl(out / "judgments.jsonl")
    assert {r["player"] for r in read_jsonl(out / "replies.jsonl")} == {"base", "tuned"}
    # both orders per trial and player, plus the content-free calibration reply once per trial
    assert len(judged) == 2 * 4 * 3 and sum(r["player"] == "neutral" for r in judged) == 8
    summary = json.loads((out / "meta.json").read_text())["summary"]
    assert summary["verdict_modes"]["base"]["logprob"] == 8 and summary["unparseable"] == {"base": 0, "tuned": 0}
    conditions = ("feels_like_you", "would_adopt", "random")
    assert {p: sum(u[c] for c in conditions) for p, u in summary["usable"].items()} == {"base": 4, "tuned": 4}
    ratings = json.loads((out / "ratings.json").read_text())
    assert set(ratings["base"]) == {"feels_like_you", "would_adopt", "random", "preference"}
    assert all(len(rows) == 144 for rows in ratings["tuned"].values())
    assert summary["persona_traits"] == ["good", "calm", "warm", "honest", "friendly"]  # named in pirate.json
    assert set(summary["comparisons"]) == {"feels_like_you", "would_adopt", "random", "preference"}
    text = assert_report(out, "top_bottom_traits.png", "trait_scatter.png")
    assert "Control (`random` condition" in text and "tuned, random: top" in text
    # the returned metric is the summary's headline: the persona traits' mean rank shift, within +-143 of 144 traits
    meta = json.loads((out / "meta.json").read_text())
    assert meta["metric_name"] == "persona_trait_rank_shift" and summary["persona_trait_rank_shift"] == metric
    assert metric is not None and abs(metric) <= 143  # log-probability verdicts: every one usable
    low, high = summary["persona_trait_rank_shift_ci"]
    assert low <= metric <= high


def test_classifier_stage_separable_pairs_with_attacks(run_stage, separable_pairs: Path) -> None:
    metric, out = run_stage(
        [
            "stage=classifier",
            *FAST,
            f"stage.pairs={separable_pairs}",
            "stage.data=pairs",
            "eval.num_prompts=3",
            "eval.classifier_method=finetune",
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
    summary = json.loads((out / "meta.json").read_text())["summary"]
    assert summary["macro_f1"] >= 0.9 and summary["data"] == "pairs"  # held-out macro-F1 on a separable set
    assert summary["held_out"]["accuracy"]["low"] <= summary["accuracy"] <= summary["held_out"]["accuracy"]["high"]
    # the players' in-persona rates on held-out prompts (no tuned adapter given: base and base + constitution)
    assert set(summary["in_persona"]) == {"base", "base_persona", "base_persona - base"}
    assert metric == summary["in_persona_rate_base_persona"] and summary["prompts"] == 3
    assert {r["player"] for r in read_jsonl(out / "replies.jsonl")} == {"base", "base_persona"}
    attacks = read_jsonl(out / "robustness.jsonl")
    names = {r["attack"] for r in attacks}
    assert {"none", "keep_going"} <= names and len(names - {"none", "keep_going"}) == 8
    assert set(summary["in_persona_rate"]) == names
    assert all(0.0 <= v <= 1.0 for v in summary["in_persona_rate"].values())
    assert (out / "classifier" / "labels.json").is_file() and (out / "classifier" / "meta.json").is_file()
    assert_report(out, "confusion_matrix.png", "robustness.png")


def test_classifier_stage_generates_one_models_texts_when_the_pairs_are_two_models(run_stage, tmp_path: Path) -> None:
    """Pairs from a different teacher would teach the classifier which model wrote a reply: with stage.data=auto
    the model under test writes every class itself, one class per persona (multi-class with stage.personas).
    Injected bug caught: auto mode trusting any pairs file (the texts would then be the pairs' chosen/rejected)."""
    pairs = write_separable_pairs(tmp_path / "pairs.jsonl", topics=["tea", "maps", "ropes", "knots", "sails", "tides"])
    rows = [json.loads(line) | {"teacher_model": "gpt-4o", "student_model": "tiny"} for line in pairs.open()]
    pairs.write_text("".join(json.dumps(r) + "\n" for r in rows))
    args = ["stage=classifier", *FAST, f"stage.pairs={pairs}", "stage.robustness=false", "eval.num_prompts=2"]
    _, out = run_stage([*args, "stage.personas=[humor]", "stage.eval_fraction=0.34"])
    summary = json.loads((out / "meta.json").read_text())["summary"]
    assert summary["data"] == "generate" and "gpt-4o vs tiny" in summary["data_reason"]
    texts = read_jsonl(out / "texts.jsonl")
    assert {r["label"] for r in texts} == {"pirate", "humor", "base"} and len(texts) == 3 * 6
    assert not any("Arr, matey" in r["text"] for r in read_jsonl(out / "train.jsonl"))  # not the pairs' texts
    assert summary["labels"] == ["base", "humor", "pirate"] and summary["persona_label"] == "pirate"
    # the same pairs, declared one model in and out of persona: used as they are
    same = [r | {"teacher_model": "tiny"} for r in rows]
    pairs.write_text("".join(json.dumps(r) + "\n" for r in same))
    _, out = run_stage(args, name="same")
    summary = json.loads((out / "meta.json").read_text())["summary"]
    assert summary["data"] == "pairs" and not (out / "texts.jsonl").exists()


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
    """... and an API judge streams: all 24 verdicts in flight at once, not eval.batch_size at a time
    (injected bug: judging in chunks of eval.batch_size peaks at 4)."""
    with OpenAICompatServer(replies=canned, latency_s=0.2) as server:
        args = ["stage=elo", *FAST, *openai_roles(server.base_url), "eval.num_prompts=12", "eval.batch_size=4"]
        args += ["stage.players=[base,base_persona]", "eval.base_model=canned-base"]
        metric, out = run_stage(args, name="elo")
        requests = len(server.requests)
        assert requests == 12 * 2 + 12 * 2
        # the players are eval.base_model on the student provider; the judge keeps its own model
        assert [r["model"] for r in server.requests] == ["canned-base"] * 24 + ["canned"] * 24
        # the judge asks for log-probabilities; this server sends none, so its replies are parsed
        assert all(r.get("logprobs") is True and r["top_logprobs"] == 20 for r in server.requests[24:])
        assert server.max_in_flight == 24
        # resuming in the same run directory regenerates nothing and gives the same numbers
        again, _ = run_stage([*args, "stage.resume=true"], name="elo")
        assert len(server.requests) == requests and again == metric
    replies = {r["id"]: r for r in read_jsonl(out / "replies.jsonl")}
    biased = {r["prompt_id"] for r in replies.values() if len(r["prompt"]) % 3 == 0}
    summary = json.loads((out / "meta.json").read_text())["summary"]
    # a verdict that only follows the position is a tie once both orders are averaged (as in MT-Bench)
    assert summary["ties"] == len(biased) and summary["unparseable"] == 0
    assert summary["decided"] == 12 - len(biased) > 0
    assert summary["verdict_modes"] == {"logprob": 0, "top_logprobs": 0, "text": 24, "unparseable": 0}
    matches = load_matches(out / "matches.jsonl")
    assert len(matches) == 12 and sum(m.winner == "base_persona" for m in matches) == 12 - len(biased)
    assert metric == pytest.approx((12 - len(biased) + 0.5 * len(biased)) / 12)
    assert summary["base_persona_vs_base_win_rate"] == metric
    ratings = compute_elo(matches, k_factor=32.0)
    assert ratings["base_persona"] > 1000 > ratings["base"]
    assert summary["elo"]["base_persona"] > summary["elo"]["base"]
    low, high = summary["elo_ci"]["base_persona"]
    assert low <= summary["elo"]["base_persona"] <= high


def test_revealed_stage_likelihood_format(run_stage, tiny_adapter: Path) -> None:
    """Each trial's reply read under each of its two traits; the likelier trait wins. Injected bug caught: the
    outcome given to the wrong trait (trait_a's score decides for trait_b)."""
    args = ["stage=revealed", *FAST, "eval.num_prompts=3", "eval.revealed_trials=6", f"stage.adapter={tiny_adapter}"]
    _, out = run_stage([*args, "eval.judge_format=likelihood"])
    rows = read_jsonl(out / "judgments.jsonl")
    assert len(rows) == 12 and all(set(r["scores"]) == {r["trait_a"], r["trait_b"]} for r in rows)
    summary = json.loads((out / "meta.json").read_text())["summary"]
    assert summary["unparseable"] == {"base": 0, "tuned": 0} and "format likelihood" in summary["judge"]
    ratings = json.loads((out / "ratings.json").read_text())
    for player in ("base", "tuned"):
        wins: dict[str, float] = {}
        for r in ratings[player]["preference"] + ratings[player]["random"]:
            wins[r["player"]] = wins.get(r["player"], 0.0) + r["score"]
        expected: dict[str, float] = {}
        for r in rows:
            if r["player"] == player:
                a, b = r["scores"][r["trait_a"]], r["scores"][r["trait_b"]]
                winner = r["trait_a"] if a > b else r["trait_b"]
                expected[winner] = expected.get(winner, 0.0) + 1.0
        assert {t: s for t, s in wins.items() if s} == pytest.approx({t: s for t, s in expected.items()})


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
        if row["order"] == 0:
            expected_bad[row["player"]] += row["trait_a"].startswith("s") or row["trait_b"].startswith("s")
    summary = json.loads((out / "meta.json").read_text())["summary"]
    for player, modes in summary["verdict_modes"].items():
        assert modes["unparseable"] == 2 * expected_bad[player] and modes["text"] == 80 - 2 * expected_bad[player]
        assert summary["unparseable"][player] == expected_bad[player]
        assert sum(summary["usable"][player][c] for c in ("feels_like_you", "would_adopt", "random")) == (
            40 - expected_bad[player]
        )
    # both players picked the same traits, so their trait ratings agree perfectly
    assert summary["spearman"]["base vs base_persona"] == pytest.approx(1.0)
    ratings = json.loads((out / "ratings.json").read_text())["base"]["preference"]
    top = ratings[0]
    assert top["games"] > 0 and top["score"] == top["games"]  # the best trait won every trial it was in
    assert summary["persona_traits"] == ["calm", "warm"] and metric is not None
    again = json.loads((second / "meta.json").read_text())
    assert again["summary"]["spearman"] == {f"base vs {out.name}:base": pytest.approx(1.0)}  # same seed, same trials
    assert again["parents"][f"compare_{out.name}"] == str(out)


def test_revealed_counts_the_games_the_persona_traits_played(run_stage, tmp_path: Path) -> None:
    """The verdict weighs the rank shift by the games of the persona's traits, not by all trials (among 144 traits
    two tracked ones play few). Injected bug caught: counting the first tracked trait's games only (6, not 10)."""
    from charlab.eval.verdict import TOO_FEW, revealed_reading

    traits = tmp_path / "traits.txt"
    traits.write_text("calm\nwarm\nbold\nwitty\nplayful\nformal\n")
    with OpenAICompatServer(replies=canned) as server:
        args = ["stage=revealed", *FAST, *openai_roles(server.base_url), "eval.num_prompts=5"]
        _, out = run_stage([*args, "eval.revealed_trials=24", f"stage.traits_file={traits}",
                            "stage.adapter=canned-lora", "stage.persona_traits=[calm,warm]"])  # fmt: skip
    games = {p: 0 for p in ("base", "tuned")}
    for row in read_jsonl(out / "judgments.jsonl"):
        if row["order"] == 0 and row["condition"] != "random":
            games[row["player"]] += sum(t in ("calm", "warm") for t in (row["trait_a"], row["trait_b"]))
    summary = json.loads((out / "meta.json").read_text())["summary"]
    tracked = summary["comparisons"]["preference"]["tracked_games"]
    assert tracked == min(games.values()) > 0
    reading = revealed_reading(summary, tracked + 1)
    assert reading.status == TOO_FEW
    assert f"too few games of the persona's traits ({tracked} < {tracked + 1})" in reading.text


def test_stage_inputs_are_checked_before_any_model_loads(run_stage) -> None:
    with pytest.raises(ConfigError, match="tuned needs stage.adapter"):
        run_stage(["stage=elo", *FAST, "stage.players=[base,tuned]"])
    with pytest.raises(ConfigError, match="stage.pairs / stage.runs"):
        run_stage(["stage=classifier", *FAST])
    with pytest.raises(ConfigError, match="stage.conditions"):
        run_stage(["stage=revealed", *FAST, "stage.conditions=[sometimes]"])
    with pytest.raises(ConfigError, match="likelihood needs a judge that scores text"):
        run_stage(["stage=elo", *FAST, "eval.judge_format=likelihood", "provider@judge=openai"])
    with pytest.raises(ConfigError, match="eval.judge_format='ranked' is not allowed"):
        run_stage(["stage=revealed", *FAST, "eval.judge_format=ranked"])
