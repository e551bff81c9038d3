"""Strict judge parsing (well-formed, malformed, ambiguous), consistent head-to-head matches, trait sampling."""

from __future__ import annotations

import pytest

from charlab.eval.head_to_head import consistent_matches, judge_jobs
from charlab.eval.judge import (
    AMBIGUOUS,
    MALFORMED,
    OK,
    PAIR_CHOICES,
    count_statuses,
    parse_verdict,
    trait_judge_messages,
)
from charlab.eval.ratings import PlayerRating
from charlab.eval.revealed import (
    item_messages,
    load_conditions,
    load_traits,
    outcomes,
    parse_judgements,
    persona_traits,
    rank_shift,
    sample_items,
    spearman,
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


def _judged(prompt_id: str, x: str, y: str, first: str, second: str) -> list[dict]:
    base = {"prompt_id": prompt_id, "prompt": f"prompt {prompt_id}", "x": x, "y": y}
    return [
        {**base, "order": 0, "A": x, "B": y, "text": f"ANSWER: {first}"},
        {**base, "order": 1, "A": y, "B": x, "text": f"ANSWER: {second}"},
    ]


def test_only_consistent_pair_verdicts_become_matches() -> None:
    replies = {f"{p}:{i}": {"text": f"{p} reply {i}"} for p in ("base", "tuned") for i in ("1", "2", "3", "4", "5")}
    judged = (
        _judged("1", "base", "tuned", "B", "A")  # tuned both times: consistent
        + _judged("2", "base", "tuned", "A", "A")  # position bias: inconsistent
        + _judged("3", "base", "tuned", "tie", "tie")  # consistent tie
        + _judged("4", "base", "tuned", "A", "garbage")  # unparseable
        + _judged("5", "base", "tuned", "A", "B")[:1]  # the other order not judged yet: skipped
    )
    matches, tally = consistent_matches(judged, replies)
    assert [(m.prompt, m.winner) for m in matches] == [("prompt 1", "tuned"), ("prompt 3", "tie")]
    assert matches[0].base_response == "base reply 1" and matches[0].tuned_response == "tuned reply 1"
    assert (tally.pairs, tally.consistent, tally.inconsistent, tally.unparseable) == (4, 2, 1, 1)
    assert tally.statuses == {"ok": 7, "malformed": 1, "ambiguous": 0}
    assert tally.consistency == pytest.approx(2 / 3)


def test_judge_jobs_show_both_orders() -> None:
    replies = {f"{p}:g1": {"text": f"{p} says hi"} for p in ("base", "base_persona", "tuned")}
    jobs = judge_jobs([("g1", "Hi")], replies, ["base", "base_persona", "tuned"], "Which is better?")
    assert len(jobs) == 6  # 3 pairs x 2 orders
    first, second = jobs[0], jobs[1]
    assert (first.meta["A"], first.meta["B"]) == ("base", "base_persona")
    assert (second.meta["A"], second.meta["B"]) == ("base_persona", "base")
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


def test_revealed_verdicts_to_outcomes_rank_shift_and_spearman() -> None:
    rows = [
        {"trait_a": "warm", "trait_b": "cold", "text": "ANSWER: cold"},
        {"trait_a": "warm", "trait_b": "cold", "text": "no idea"},
    ]
    judged = parse_judgements(rows)
    assert [j["status"] for j in judged] == [OK, MALFORMED]
    assert [(o.a, o.b, o.score) for o in outcomes(judged)] == [("warm", "cold", 0.0)]
    assert persona_traits("I am warm, witty and never cold-hearted.", ["warm", "witty", "cold", "kind"]) == [
        "warm",
        "witty",
        "cold",
    ]

    def table(order: list[str]) -> list[PlayerRating]:
        return [PlayerRating(t, 1100 - 10 * i, 0, 0, 0, 1, 1) for i, t in enumerate(order)]

    base, tuned = table(["a", "b", "c", "d"]), table(["c", "a", "b", "d"])
    shift = rank_shift(base, tuned, ["c", "d"])
    assert shift["traits"] == {"c": (3, 1, 2), "d": (4, 4, 0)} and shift["mean_shift"] == 1.0
    as_map = lambda t: {r.player: r.elo for r in t}  # noqa: E731
    assert spearman(as_map(base), as_map(base)) == pytest.approx(1.0)
    assert spearman(as_map(base), as_map(tuned)) == pytest.approx(0.4)
