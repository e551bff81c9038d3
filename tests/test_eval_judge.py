"""Judge verdicts: strict parsing, log-probabilities, order averaging, head-to-head matches, revealed trials."""

from __future__ import annotations

import numpy as np
import pytest

from charlab.eval.head_to_head import judge_questions, pair_matches
from charlab.eval.judging import (
    AMBIGUOUS,
    LOGPROB,
    MALFORMED,
    OK,
    PAIR_CHOICES,
    TEXT,
    TOP_LOGPROBS,
    UNPARSEABLE,
    JudgeQuestion,
    answer_distribution,
    average_orders,
    count_modes,
    count_statuses,
    decide,
    parse_verdict,
    text_verdict,
    trait_judge_messages,
)
from charlab.eval.ratings import Outcome
from charlab.eval.revealed import (
    average_ranks,
    item_messages,
    load_conditions,
    load_traits,
    persona_traits,
    rank_shift,
    sample_items,
    sampled_rank_shift,
    sampled_spearman,
    spearman,
    trials,
)

pytestmark = pytest.mark.unit
TRAITS = ["sarcastic", "warm"]


@pytest.mark.parametrize(
    ("text", "choice"),
    [
        ("ANSWER: sarcastic", "sarcastic"),
        ("The reply teases the user a lot.\nANSWER: Sarcastic.", "sarcastic"),
        ("**Answer:** warm", "warm"),
        ("Final answer: `warm`", "warm"),
        ("answer = Trait warm", "warm"),
        ("<think>maybe sarcastic? ANSWER: sarcastic</think>\nANSWER: warm", "warm"),
        ("Warm", "warm"),
        ("ANSWER: warm\nANSWER: warm", "warm"),
    ],
)
def test_well_formed_trait_verdicts(text: str, choice: str) -> None:
    verdict = parse_verdict(text, TRAITS)
    assert (verdict.status, verdict.choice) == (OK, choice)


@pytest.mark.parametrize(
    "text",
    [
        "",
        "I think the reply is quite sarcastic.",  # no answer line: not guessed from prose
        "ANSWER: kind",  # not one of the two
        "ANSWER:",
        "ANSWER: not sarcastic",
        "sarcastic!!! definitely sarcastic",
        "<think>ANSWER: warm</think>",  # only inside the reasoning
    ],
)
def test_malformed_verdicts_are_not_guessed(text: str) -> None:
    verdict = parse_verdict(text, TRAITS)
    assert verdict.status == MALFORMED and verdict.choice is None


@pytest.mark.parametrize(
    "text",
    ["ANSWER: sarcastic or warm", "ANSWER: both warm and sarcastic", "ANSWER: sarcastic\nANSWER: warm"],
)
def test_ambiguous_verdicts(text: str) -> None:
    verdict = parse_verdict(text, TRAITS)
    assert verdict.status == AMBIGUOUS and verdict.choice is None


def test_pair_verdicts_and_status_counts() -> None:
    verdicts = [parse_verdict(t, PAIR_CHOICES) for t in ["ANSWER: A", "answer: reply b", "ANSWER: Tie", "A or B?"]]
    assert [v.choice for v in verdicts] == ["A", "B", "tie", None]
    assert parse_verdict("ANSWER: A or B", PAIR_CHOICES).status == AMBIGUOUS
    assert count_statuses(verdicts) == {OK: 3, MALFORMED: 1, AMBIGUOUS: 0}


def test_trait_judge_prompt_names_both_traits() -> None:
    messages = trait_judge_messages("Hi?", "Hello there.", "sarcastic", "warm")
    assert messages[0]["role"] == "system" and messages[-1]["role"] == "user"
    assert "sarcastic or warm" in messages[-1]["content"] and "ANSWER: <trait>" in messages[-1]["content"]


def _verdict(choice: str, choices: tuple[str, ...] = PAIR_CHOICES) -> dict:
    """A judge row as `Judge` writes it for a parsed text verdict (or an unparseable one for 'garbage')."""
    q = JudgeQuestion("q", [], list(choices))
    return text_verdict(q, f"ANSWER: {choice}", None)


def _judged(prompt_id: str, x: str, y: str, first: dict, second: dict) -> list[dict]:
    base = {"prompt_id": prompt_id, "prompt": f"prompt {prompt_id}", "x": x, "y": y}
    return [{**base, "order": 0, "A": x, "B": y, **first}, {**base, "order": 1, "A": y, "B": x, **second}]


def _probs(a: float, b: float, tie: float = 0.0) -> dict:
    return {"mode": LOGPROB, "status": OK, "choice": None, "probs": {"A": a, "B": b, "tie": tie}, "text": ""}


def test_pair_verdicts_are_averaged_over_both_orders() -> None:
    """Injected bug caught: using only the first order (position bias) or dropping disagreeing orders."""
    replies = {f"{p}:{i}": {"text": f"{p} reply {i}"} for p in ("base", "tuned") for i in "1234567"}
    judged = (
        _judged("1", "base", "tuned", _verdict("B"), _verdict("A"))  # tuned both times
        + _judged("2", "base", "tuned", _verdict("A"), _verdict("A"))  # position bias only: a tie (MT-Bench)
        + _judged("3", "base", "tuned", _verdict("tie"), _verdict("tie"))
        + _judged("4", "base", "tuned", _verdict("A"), _verdict("garbage"))  # unparseable: left out
        + _judged("5", "base", "tuned", _verdict("A"), _verdict("B"))[:1]  # other order not judged yet: skipped
        # a small judge that always prefers A, a little less when tuned is B: tuned still wins on average
        + _judged("6", "base", "tuned", _probs(0.6, 0.4), _probs(0.7, 0.3))
        + _judged("7", "base", "tuned", _probs(0.7, 0.3), _probs(0.6, 0.4))
    )
    matches, tally = pair_matches(judged, replies)
    assert [(m.prompt, m.winner) for m in matches] == [
        ("prompt 1", "tuned"), ("prompt 2", "tie"), ("prompt 3", "tie"), ("prompt 6", "tuned"), ("prompt 7", "base"),
    ]  # fmt: skip
    assert matches[0].base_response == "base reply 1" and matches[0].tuned_response == "tuned reply 1"
    assert (tally.pairs, tally.decided, tally.ties, tally.unparseable, tally.usable) == (6, 3, 2, 1, 5)
    assert tally.modes == {LOGPROB: 4, TOP_LOGPROBS: 0, TEXT: 8, UNPARSEABLE: 1}


def test_order_averaging_and_decisions() -> None:
    swapped = {"A": "y", "B": "x", "tie": "tie"}
    straight = {"A": "x", "B": "y", "tie": "tie"}
    probs = average_orders([({"A": 0.9, "B": 0.1, "tie": 0.0}, straight), ({"A": 0.8, "B": 0.2, "tie": 0.0}, swapped)])
    assert probs == pytest.approx({"x": 0.55, "y": 0.45, "tie": 0.0})
    assert decide(probs, "x", "y", "tie") == 1.0
    assert decide({"x": 0.3, "y": 0.3, "tie": 0.4}, "x", "y", "tie") == 0.5
    assert decide({"x": 0.2, "y": 0.5, "tie": 0.3}, "x", "y", "tie") == 0.0
    assert average_orders([(None, straight), ({"A": 1.0, "B": 0.0, "tie": 0.0}, swapped)]) is None


@pytest.mark.parametrize(
    ("tokens", "expected"),
    [
        ([{"token": "A", "top": {"A": -0.1, "B": -2.4, "The": -5.0}}], {"A": 0.9, "B": 0.1}),
        # the answer after reasoning: the position right after the last "ANSWER:"
        (
            [
                {"token": "Reply", "top": {"Reply": -0.1, "B": -3.0}},
                {"token": " A", "top": {" A": -0.1}},
                {"token": " is", "top": {}},
                {"token": " better", "top": {}},
                {"token": ".\nANSWER", "top": {}},
                {"token": ":", "top": {":": 0.0}},
                {"token": " B", "top": {" B": -0.2, " A": -1.7, " tie": -4.0}},
            ],
            {"B": 0.8, "A": 0.18, "tie": 0.02},
        ),
        ([{"token": "Hmm", "top": {"Hmm": -0.1, "Well": -2.0}}], None),  # no choice among the top tokens
        ([{"token": "sarc", "top": {"sarc": -0.3, "warm": -1.5}}], {"sarcastic": 0.77, "warm": 0.23}),  # prefix
    ],
)
def test_answer_distribution_from_top_logprobs(tokens: list, expected) -> None:
    choices = list(expected) if expected else ["A", "B"]
    choices = ["sarcastic", "warm"] if expected and "sarcastic" in expected else choices
    got = answer_distribution(tokens, sorted(choices) if expected is None else choices)
    if expected is None:
        assert got is None
    else:
        assert got == pytest.approx(expected, abs=0.02)


def testtext_verdicts_fall_back_to_strict_parsing_and_count_modes() -> None:
    q = JudgeQuestion("q", [], list(PAIR_CHOICES))
    rows = [
        text_verdict(
            q,
            "ANSWER: B",
            [
                {"token": "ANSWER", "top": {}},
                {"token": ":", "top": {}},
                {"token": " B", "top": {"B": -0.5, "A": -1.0}},
            ],
        ),
        text_verdict(q, "Reasoning.\nANSWER: A", None),
        text_verdict(q, "I cannot decide.", [{"token": "I", "top": {"I": -0.1}}]),
    ]
    assert [r["mode"] for r in rows] == [TOP_LOGPROBS, TEXT, UNPARSEABLE]
    assert rows[0]["choice"] == "B" and rows[1]["probs"] == {"A": 1.0, "B": 0.0, "tie": 0.0}
    assert rows[2]["choice"] is None and rows[2]["probs"] is None and rows[2]["status"] == MALFORMED
    assert count_modes(rows) == {LOGPROB: 0, TOP_LOGPROBS: 1, TEXT: 1, UNPARSEABLE: 1}


def test_judge_questions_show_both_orders() -> None:
    replies = {f"{p}:g1": {"text": f"{p} says hi"} for p in ("base", "base_persona", "tuned")}
    questions = judge_questions([("g1", "Hi")], replies, ["base", "base_persona", "tuned"], "Which is better?")
    assert len(questions) == 6  # 3 pairs x 2 orders
    first, second = questions[0], questions[1]
    assert (first.meta["A"], first.meta["B"]) == ("base", "base_persona")
    assert (second.meta["A"], second.meta["B"]) == ("base_persona", "base")
    assert first.choices == ["A", "B", "tie"]
    text = first.messages[-1]["content"]
    assert text.index("base says hi") < text.index("base_persona says hi")


def test_trait_list_conditions_and_sampling() -> None:
    traits = load_traits()
    assert len(traits) == 144 and len(set(traits)) == 144 and all(" " not in t for t in traits)
    conditions = load_conditions()
    assert set(conditions) == {"feels_like_you", "would_adopt", "random"}
    items = sample_items([("g1", "Hello"), ("g2", "Bye")], traits, list(conditions), n=30, seed=1)
    assert len(items) == 30 and all(i.trait_a != i.trait_b for i in items)
    assert {i.condition for i in items} == set(conditions)
    assert items == sample_items([("g1", "Hello"), ("g2", "Bye")], traits, list(conditions), n=30, seed=1)
    messages = item_messages(items[0], conditions[items[0].condition], system_prompt="Be a pirate.")
    assert messages[0]["content"].startswith("Be a pirate.") and items[0].trait_a in messages[0]["content"]
    in_user = item_messages(items[0], conditions[items[0].condition], placement="user")
    assert [m["role"] for m in in_user] == ["user"] and in_user[0]["content"].endswith(items[0].prompt)


def test_revealed_trials_rank_shift_and_spearman() -> None:
    """Injected bugs caught: a trial judged in one order only counted; ties in ratings ranked alphabetically."""
    item = {"player": "tuned", "trait_a": "warm", "trait_b": "cold", "condition": "feels_like_you"}
    rows = [
        {**item, "item": "r0", "order": 0, "probs": {"warm": 0.2, "cold": 0.8}},
        {**item, "item": "r0", "order": 1, "probs": {"cold": 0.6, "warm": 0.4}},
        {**item, "item": "r1", "order": 0, "probs": {"warm": 0.9, "cold": 0.1}},
        {**item, "item": "r1", "order": 1, "probs": None},  # unparseable order: the trial has no outcome
        {**item, "item": "r2", "order": 0, "probs": {"warm": 1.0, "cold": 0.0}},  # other order pending
    ]
    judged = trials(rows)
    assert [(t.item, t.outcome) for t in judged] == [("r0", Outcome("warm", "cold", 0.0)), ("r1", None)]
    # a judge that says "warm" to anything: divided by its verdict on a content-free reply, "cold" wins
    biased = [
        {**item, "item": "r3", "order": 0, "mode": "logprob", "probs": {"warm": 0.8, "cold": 0.2}},
        {**item, "item": "r3", "order": 1, "mode": "logprob", "probs": {"cold": 0.3, "warm": 0.7}},
        {
            **item,
            "player": "neutral",
            "item": "r3",
            "order": 0,
            "mode": "logprob",
            "probs": {"warm": 0.95, "cold": 0.05},
        },
        {
            **item,
            "player": "neutral",
            "item": "r3",
            "order": 1,
            "mode": "logprob",
            "probs": {"cold": 0.1, "warm": 0.9},
        },
    ]
    assert [t.outcome.score for t in trials(biased, calibrate=False)] == [1.0]  # warm, the judge's prior
    assert [(t.player, t.outcome.score) for t in trials(biased)] == [("tuned", 0.0)]  # cold, once calibrated
    assert persona_traits("I am warm, witty and never cold-hearted.", ["warm", "witty", "cold", "kind"]) == [
        "warm",
        "witty",
        "cold",
    ]
    traits = ["a", "b", "c", "d"]
    base, tuned = np.array([1100.0, 1090, 1080, 1070]), np.array([1090.0, 1080, 1100, 1000])
    shift = rank_shift(traits, base, tuned, ["c", "d"])
    assert shift["traits"] == {"c": (3.0, 1.0, 2.0), "d": (4.0, 4.0, 0.0)} and shift["mean_shift"] == 1.0
    assert average_ranks(np.array([5.0, 5.0, 1.0])).tolist() == [1.5, 1.5, 3.0]
    as_map = lambda v: dict(zip(traits, v))  # noqa: E731
    assert spearman(as_map(base), as_map(base)) == pytest.approx(1.0)
    assert spearman(as_map(base), as_map(tuned)) == pytest.approx(0.4)
    samples = np.stack([base, tuned])
    assert sampled_spearman(samples, samples[::-1]).tolist() == pytest.approx([0.4, 0.4])
    assert sampled_rank_shift(np.stack([base, base]), np.stack([tuned, base]), [2, 3]).tolist() == [1.0, 0.0]


@pytest.mark.unit
@pytest.mark.parametrize(
    ("kind", "criterion", "expected"),
    [("hf", "persona", "likelihood"), ("hf", None, "likelihood"), ("hf", "helpfulness", "pairwise"),
     ("openai", "persona", "pairwise"), ("vllm", "persona", "pairwise"), ("tinker", None, "pairwise")],
)  # fmt: skip
def test_auto_judge_format_reads_replies_only_where_the_judge_can(kind: str, criterion, expected: str) -> None:
    """eval=demo (judge_format auto) with an API judge must judge pairwise, not stop. Injected bug caught: auto
    resolving to likelihood for every judge (experiment=paper's openai judge then fails at the classifier step)."""
    from omegaconf import OmegaConf

    from charlab.stages._eval import check_judge_format

    stage = {"criterion": criterion} if criterion else {}
    cfg = OmegaConf.create({"eval": {"judge_format": "auto"}, "judge": {"kind": kind}, "stage": stage})
    assert check_judge_format(cfg) == expected
