"""The coherence instruments' pure parts: loops, distractors, the paper's judge format, per-player estimates, the
verdict's second question, the classifier's prefill stripping and the players a replies file can evaluate."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from charlab.constitution import load_constitution
from charlab.errors import ConfigError
from charlab.eval.classifier_data import from_pairs
from charlab.eval.coherence import head_to_head, player_estimates, reply_rows
from charlab.eval.coherence_judge import coherence_questions, consistent_matches
from charlab.eval.loops import distinct_n, loop_reason, stock_vocabulary, stop_words
from charlab.eval.players import check_players
from charlab.eval.relevance import distractors
from charlab.eval.selection import training_selection
from charlab.eval.verdict import KEPT, TRAINED_TO, WORSE, coherence_readings, judge_reading, verdict_text
from charlab.settings import project_root

pytestmark = pytest.mark.unit

PIRATE = load_constitution(project_root() / "constitutions" / "pirate.json", name="pirate")
IGNORE = stop_words() | stock_vocabulary(PIRATE)


def loops(text: str) -> str | None:
    return loop_reason(text, IGNORE, min_content_words=3, min_distinct_ngrams=0.5)


def test_loops_are_caught_from_the_first_word_and_stock_words_say_nothing() -> None:
    """The demo's tuned replies (issue 21) each loop or say nothing; a coherent pirate and a base reply do not.
    Injected bug caught: `min_words=0` left at the filter's 24 (the short loop passes as a 4-gram check is skipped,
    and "Arr, matea!" x 9 is 18 words)."""
    assert loops("Aye, matey! Aye, matey!") == "few content words"
    assert loops("Bitch, matey.") == "few content words"
    assert loops("The difference, matey.") == "few content words"
    assert loops("Arr, matea! " * 9) == "repeated n-grams"
    assert loops("A sunset's a mystic sea, " * 8) == "repeated n-grams"
    assert loops("") == "empty" and loops("   ") == "empty"
    pirate = (
        "Arr, a black hole be a place in space where gravity pulls so hard that not even light escapes, matey. "
        "It forms when a giant star collapses."
    )
    assert loops(pirate) is None
    assert loops("A black hole is a region of spacetime where gravity is so strong that nothing escapes.") is None
    assert "matey" in IGNORE and "ahoy" in IGNORE and "gravity" not in IGNORE
    assert distinct_n("to be or not to be", 2) == pytest.approx(4 / 5) and distinct_n("hi", 2) != distinct_n("hi", 2)


def test_distractors_are_the_same_for_every_player_and_never_the_own_prompt() -> None:
    ids = [f"g{i}" for i in range(8)]
    first, again = distractors(ids, 5, seed=3), distractors(list(reversed(ids)), 5, seed=3)
    assert first == again  # one draw per prompt id: every player's reply to it faces the same prompts
    assert all(pid not in others and len(set(others)) == 5 for pid, others in first.items())
    assert distractors(ids[:3], 5)["g0"] and len(distractors(ids[:3], 5)["g0"]) == 2  # fewer prompts: all others


def _judged(prompt_id: str, picks: tuple[str, str]) -> list[dict]:
    """Both orders of one tuned-vs-base_persona question, the judge answering `picks` (choice per order)."""
    rows = []
    for order, choice in enumerate(picks):
        first, second = ("base_persona", "tuned") if order == 0 else ("tuned", "base_persona")
        rows.append({"prompt_id": prompt_id, "prompt": "q", "x": "base_persona", "y": "tuned", "order": order,
                     "1": first, "2": second, "choice": choice, "mode": "text"})  # fmt: skip
    return rows


def test_the_coherence_format_keeps_only_verdicts_both_orders_agree_on() -> None:
    """Injected bug caught: comparing the choices ("1" both times) instead of the players they name -> a judge
    that always answers 1 would win every pair for whoever it saw first."""
    replies = {f"{p}:{i}": {"text": f"{p} {i}"} for p in ("base_persona", "tuned") for i in ("a", "b", "c")}
    questions = coherence_questions([("a", "q")], replies, ["base_persona", "tuned"], PIRATE)
    assert len(questions) == 2 and questions[0].choices == ["1", "2"]
    body = questions[0].messages[-1]["content"]
    assert "1: I talk like a seasoned sailor" in body and "coherent and relevant" in body
    assert "<reply_1>\nbase_persona a" in body and "<reply_1>\ntuned a" in questions[1].messages[-1]["content"]
    rows = _judged("a", ("2", "1")) + _judged("b", ("1", "1")) + _judged("c", ("2", None))
    matches, tally = consistent_matches(rows, replies)
    assert [m.winner for m in matches] == ["tuned"]  # a: tuned both times; b: position only; c: no verdict
    assert (tally.pairs, tally.decided, tally.inconsistent, tally.unparseable) == (3, 1, 1, 1)


def _rows(flags: dict[str, list[tuple]]) -> list[dict]:
    """Per-reply rows from (looping?, relevant?, in character?) per prompt per player."""
    replies, prompts = {}, [(f"p{i}", f"prompt {i}") for i in range(len(next(iter(flags.values()))))]
    lm, in_persona = {}, {}
    for player, per_prompt in flags.items():
        for (pid, _), (loop, relevant, character) in zip(prompts, per_prompt):
            rid = f"{player}:{pid}"
            replies[rid] = {"text": "Aye matey! " * 6 if loop else f"Water boils sooner on mountains ({pid})."}
            lm[rid] = {"hit": float(relevant)}
            in_persona[rid] = character
    rows = reply_rows(
        replies, list(flags), prompts, ignore=IGNORE, lm=lm, minilm=None, in_persona=in_persona,
        min_content_words=3, min_distinct_ngrams=0.5,
    )  # fmt: skip
    return rows, prompts


def test_player_estimates_pair_with_base_and_the_headline_counts_ties_half() -> None:
    """Injected bug caught: `head_to_head` scoring a prompt where both are coherent as a win (rate 1.0, not 0.5)."""
    rows, prompts = _rows({
        "base": [(False, True, False)] * 12,
        "base_persona": [(False, True, True)] * 12,
        "tuned": [(True, False, True)] * 6 + [(False, True, True)] * 6,
    })  # fmt: skip
    est = player_estimates(rows, ["base", "base_persona", "tuned"], prompts, "loop", resamples=200)
    assert est["tuned"].value == pytest.approx(0.5) and est["tuned - base"].low > 0
    relevance = player_estimates(rows, ["base", "base_persona", "tuned"], prompts, "relevance", resamples=200)
    assert relevance["tuned - base"].high < 0 and relevance["base_persona - base"].value == 0
    win = head_to_head(rows, "tuned", "base_persona", prompts, resamples=200)
    assert win.value == pytest.approx(0.25) and win.n == 12  # 6 losses, 6 ties
    assert player_estimates(rows, ["base"], prompts, "minilm_relevance") == {}  # not measured


def _summary(loop: tuple, relevance: tuple, n: int = 20) -> dict:
    e = lambda v, lo, hi: {"value": v, "low": lo, "high": hi, "n": n}  # noqa: E731
    return {
        "loop": {"tuned - base": e(*loop), "tuned": e(loop[0], 0, 1), "base": e(0.0, 0, 0)},
        "loop_counts": {"tuned": [round(loop[0] * n), n], "base": [0, n]},
        "relevance": {"tuned - base": e(*relevance), "tuned": e(1 + relevance[0], 0, 1), "base": e(1.0, 1, 1)},
        "instruments": {"distractors": "5"},
        "headline": {"status": "ok", "estimate": e(0.3, 0.15, 0.45), "how": "local: flags"},
    }


def test_the_verdict_needs_persona_and_coherence_and_names_what_failed() -> None:
    """Injected bug caught: reading the loop difference against "below 0" like relevance (loops never worse)."""
    clf = {"in_persona": {"tuned - base": {"value": 0.75, "low": 0.55, "high": 0.95, "n": 20},
                          "tuned": {"value": 0.75, "low": 0.55, "high": 0.95, "n": 20},
                          "base": {"value": 0.0, "low": 0.0, "high": 0.0, "n": 20}}}  # fmt: skip
    caricature = _summary((0.55, 0.35, 0.75), (-0.3, -0.5, -0.1))
    readings = coherence_readings(caricature, 10)
    assert [r.status for r in readings] == [WORSE, WORSE]
    text = verdict_text({"classifier": clf, "coherence": caricature}, 10)
    assert text.startswith("**Verdict: in persona, but not coherent: 11 of 20 replies loop; relevance 0.70 vs 1.00.**")
    assert "**Headline comparison:** Tuned vs base + constitution, in character and coherent: win rate 0.30" in text
    good = verdict_text({"classifier": clf, "coherence": _summary((0.05, -0.05, 0.15), (-0.05, -0.15, 0.0))}, 10)
    assert good.startswith("**Verdict: tuned is in character and coherent**")
    assert [r.status for r in coherence_readings(_summary((0.05, -0.05, 0.15), (0.0, 0.0, 0.0)), 10)] == [KEPT, KEPT]
    untold = verdict_text({"classifier": clf}, 10)
    assert untold.startswith("**Verdict: tuned is more in persona than base.**")  # the second question not asked


def test_a_benchmark_lost_beyond_its_paired_se_fails_the_second_question() -> None:
    """The capability step's tasks join the coherence readings: a task more than `threshold_se` paired SEs below
    base is named; within it, the line adds that the benchmark scores were kept.
    Injected bug caught: reading the interval as difference +- SE (without the threshold) flags the kept task."""
    clf = {"in_persona": {"tuned - base": {"value": 0.75, "low": 0.55, "high": 0.95, "n": 20}}}
    coherent = _summary((0.05, -0.05, 0.15), (-0.05, -0.15, 0.0))
    task = lambda tuned, se: {"base": 0.50, "tuned": tuned, "difference": tuned - 0.50, "se": se, "n": 100}  # noqa: E731
    lost = {"threshold_se": 2.0, "tasks": {"mmlu": task(0.40, 0.03), "arc": task(0.47, 0.02)}}
    text = verdict_text({"classifier": clf, "coherence": coherent, "capability": lost}, 10)
    assert text.startswith("**Verdict: in persona, but capability lost: mmlu 0.400 vs 0.500.**"), text
    kept = {"threshold_se": 2.0, "tasks": {"arc": task(0.47, 0.02)}}
    text = verdict_text({"classifier": clf, "coherence": coherent, "capability": kept}, 10)
    assert text.startswith("**Verdict: tuned is in character and coherent** (more in persona than base; its loop rate "
                           "and relevance and its benchmark scores are not worse")  # fmt: skip


def test_a_judge_trained_to_by_best_of_selection_is_named_and_left_out(tmp_path: Path) -> None:
    pairs = tmp_path / "pairs.jsonl"
    rows = [{"prompt": f"q{i}", "chosen": "Arr, matey! Ye be right.", "rejected": "You are right.",
             "constitution": "pirate", "sampling": {"teacher": {"prefill": "Arr, matey! "}},
             "best_of": {"n": 4, "scorer": "contrast:smollm2-135m"}} for i in range(3)]  # fmt: skip
    pairs.write_text("".join(json.dumps(r) + "\n" for r in rows))
    selection = training_selection([pairs])
    assert (selection.best_of, selection.prefill, selection.prefilled) == (4, "Arr, matey! ", 3)
    assert selection.overlap("pairwise") is None and "best of 4" in selection.overlap("likelihood")
    elo = {"vs_base": {"tuned": {"value": 0.95, "low": 0.85, "high": 1.0, "n": 20}},
           "judge_format": "likelihood", "selection_overlap": selection.overlap("likelihood")}  # fmt: skip
    assert judge_reading(elo, 10).status == TRAINED_TO
    # the classifier's in-persona texts lose the prefill: "Arr, matey!" stops being what separates the classes
    texts = {r.label: r.text for r in from_pairs(pairs)}
    assert texts == {"pirate": "Ye be right.", "base": "You are right."}
    assert {r.text for r in from_pairs(pairs, strip_prefill=False) if r.label == "pirate"} == {rows[0]["chosen"]}


def test_a_player_that_cannot_be_evaluated_is_an_error_and_null_means_every_one_that_can() -> None:
    assert check_players(None, None) == ["base", "base_persona"]
    assert check_players(None, None, answered={"tuned"}) == ["base", "base_persona", "tuned"]
    assert check_players(["base", "tuned"], None, answered={"tuned", "base"}) == ["base", "tuned"]
    with pytest.raises(ConfigError, match="tuned needs stage.adapter=<adapter folder> or its replies"):
        check_players(["base", "tuned"], None, answered={"base"})


def test_the_verdict_of_run_directories_combines_single_runs_and_reads_pipelines(tmp_path: Path, capsys) -> None:
    from charlab.eval.verdict_of import main, summaries_of

    def run(folder: Path, stage: str, summary: dict, status: str = "completed") -> Path:
        folder.mkdir(parents=True)
        (folder / "meta.json").write_text(json.dumps({"stage": stage, "status": status, "summary": summary}))
        return folder

    clf = {"in_persona": {"tuned - base": {"value": 0.75, "low": 0.55, "high": 0.95, "n": 20}}}
    caricature = _summary((0.55, 0.35, 0.75), (-0.3, -0.5, -0.1))
    single = [run(tmp_path / "c", "classifier", clf), run(tmp_path / "h", "coherence", caricature)]
    pipeline = run(tmp_path / "p", "pipeline", {})
    run(pipeline / "06_classifier", "classifier", clf)
    run(pipeline / "07_coherence", "coherence", caricature)
    run(pipeline / "08_elo", "elo", {"vs_base": {}}, status="failed")  # unfinished steps do not count
    assert set(summaries_of(single)) == set(summaries_of([pipeline])) == {"classifier", "coherence"}
    assert main([str(p) for p in single]) == 0
    assert capsys.readouterr().out.startswith("**Verdict: in persona, but not coherent: 11 of 20 replies loop")
    assert main([str(tmp_path / "nowhere")]) == 2 and "not a run directory" in capsys.readouterr().err
