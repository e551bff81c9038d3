"""Elo, Bradley-Terry, bootstrap CIs and the seed's `compute_elo` API against hand-computed values."""

from __future__ import annotations

import math
import random
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from charlab.data.records import Match
from charlab.errors import DataError
from charlab.eval.elo import compute_elo, load_matches, match_outcome, save_matches
from charlab.eval.ratings import (
    Outcome,
    RatingSettings,
    bootstrap_elo,
    bootstrap_win_rate,
    bradley_terry,
    expected_score,
    fit_ratings,
    order_averaged_elo,
    percentile_ci,
    sequential_elo,
    win_matrix,
    win_rate,
)

pytestmark = pytest.mark.unit

# configs/eval/default.yaml's values
SETTINGS = RatingSettings(k=32.0, initial=1000.0, orderings=100, resamples=1000, bt_prior=0.5, level=0.95, seed=0)


def test_expected_score_hand_values() -> None:
    assert expected_score(1000, 1000) == 0.5
    assert expected_score(1400, 1000) == pytest.approx(10 / 11)  # 400 points = 10:1 odds
    assert expected_score(1000, 1400) == pytest.approx(1 / 11)


def test_sequential_elo_two_matches_by_hand() -> None:
    # A beats B at 1000/1000: E=0.5, so A=1016, B=984. Then B beats A:
    # E_B = 1/(1+10^(32/400)) = 0.454020..., B += 32*(1-E_B) = 17.4714 -> 1001.4714, A -> 998.5286.
    ratings = sequential_elo([Outcome("A", "B", 1.0), Outcome("A", "B", 0.0)], k=32.0)
    e_b = 1 / (1 + 10 ** (32 / 400))
    assert ratings["B"] == pytest.approx(984 + 32 * (1 - e_b))
    assert ratings["A"] == pytest.approx(1016 - 32 * (1 - e_b))
    assert ratings["A"] + ratings["B"] == pytest.approx(2000)  # Elo is zero-sum
    tie = sequential_elo([Outcome("A", "B", 0.5)])
    assert tie == {"A": 1000.0, "B": 1000.0}


def test_seed_compute_elo_api_two_players(tmp_path: Path) -> None:
    matches = [
        Match("p1", "base reply", "tuned reply", "tuned"),
        Match("p2", "base reply", "tuned reply", "tuned"),
        Match("p3", "base reply", "tuned reply", "base"),
    ]
    path = save_matches(matches, tmp_path / "matches.jsonl")
    loaded = load_matches(path)
    assert loaded == matches
    ratings = compute_elo(loaded, k_factor=32.0)
    assert set(ratings) == {"base", "tuned"}
    # by hand: tuned 1016, then E_tuned = 1/(1+10^(-32/400)) -> tuned gains 32*(1-E); then base wins one back
    r = sequential_elo([Outcome("base", "tuned", 0.0)] * 2 + [Outcome("base", "tuned", 1.0)])
    assert ratings == pytest.approx(r)
    assert ratings["tuned"] > 1000 > ratings["base"]
    assert compute_elo([]) == {"base": 1000.0, "tuned": 1000.0}
    assert compute_elo(loaded, k_factor=16.0)["tuned"] - 1000 < ratings["tuned"] - 1000


def test_match_outcomes_with_named_players_and_ties() -> None:
    assert match_outcome(Match("p", "x", "y", "tuned", "base", "tuned")).score == 0.0
    assert match_outcome(Match("p", "x", "y", "base_persona", "base_persona", "tuned")).score == 1.0
    assert match_outcome(Match("p", "x", "y", "tie", "base", "tuned")).score == 0.5
    with pytest.raises(DataError, match="winner 'nobody'"):
        match_outcome(Match("p", "x", "y", "nobody", "base", "tuned"))


def test_bradley_terry_hand_computed() -> None:
    # A beats B 3:1 -> p_A/p_B = 3, so the Elo-scale gap is 400*log10(3) = 190.85, centred on 1000.
    two = [Outcome("A", "B", 1.0)] * 3 + [Outcome("A", "B", 0.0)]
    bt = bradley_terry(two)
    assert bt["A"] - bt["B"] == pytest.approx(400 * math.log10(3), abs=1e-6)
    assert (bt["A"] + bt["B"]) / 2 == pytest.approx(1000)
    # A:B 3:1, B:C 3:1, A:C 9:1 is exactly Bradley-Terry with strengths 9:3:1 (each MLE equation holds).
    three = two + [Outcome("B", "C", 1.0)] * 3 + [Outcome("B", "C", 0.0)]
    three += [Outcome("A", "C", 1.0)] * 9 + [Outcome("A", "C", 0.0)]
    bt3 = bradley_terry(three)
    gap = 400 * math.log10(3)
    assert bt3["A"] - bt3["B"] == pytest.approx(gap, abs=1e-6)
    assert bt3["B"] - bt3["C"] == pytest.approx(gap, abs=1e-6)
    assert bt3["B"] == pytest.approx(1000, abs=1e-6)


def test_bradley_terry_ties_and_prior() -> None:
    ties = [Outcome("A", "B", 0.5)] * 4
    assert bradley_terry(ties) == pytest.approx({"A": 1000.0, "B": 1000.0})
    unbeaten = [Outcome("A", "B", 1.0)] * 5
    with pytest.raises(ValueError, match="prior > 0"):
        bradley_terry(unbeaten)
    with_prior = bradley_terry(unbeaten, prior=0.5)
    assert with_prior["A"] > with_prior["B"] and math.isfinite(with_prior["A"])
    # a stronger prior pulls the two towards each other
    assert bradley_terry(unbeaten, prior=5.0)["A"] < with_prior["A"]


def _matches(n: int, p_win: float, seed: int) -> list[Outcome]:
    rng = random.Random(seed)
    return [Outcome("A", "B", 1.0 if rng.random() < p_win else 0.0) for _ in range(n)]


def test_order_averaged_elo_is_order_independent() -> None:
    outcomes = _matches(60, 0.7, 1) + [Outcome("B", "C", 1.0), Outcome("C", "A", 0.5)] * 5
    shuffled = list(outcomes)
    random.Random(7).shuffle(shuffled)
    a = order_averaged_elo(outcomes, orderings=50, seed=3)
    b = order_averaged_elo(shuffled, orderings=50, seed=3)
    assert a == b  # exactly: the match list is sorted canonically before the random orderings
    # sequential Elo, by contrast, depends on the order
    assert sequential_elo(outcomes) != pytest.approx(sequential_elo(shuffled))
    assert sum(a.values()) == pytest.approx(3000)


def test_bootstrap_ci_contains_point_and_shrinks_with_more_matches() -> None:
    small = _matches(40, 0.7, 2)
    large = small * 8  # the same win share, eight times the evidence
    widths = []
    for outcomes in (small, large):
        table = {r.player: r for r in fit_ratings(outcomes, replace(SETTINGS, orderings=30, resamples=300)).table}
        a = table["A"]
        assert a.elo_low <= a.elo <= a.elo_high
        assert table["B"].elo_low <= table["B"].elo <= table["B"].elo_high
        widths.append(a.elo_high - a.elo_low)
    assert widths[1] < 0.75 * widths[0]
    rate, low, high, games = bootstrap_win_rate(small, "A", resamples=500)
    assert low <= rate <= high and games == 40
    assert bootstrap_win_rate(large, "A", resamples=500)[2] - bootstrap_win_rate(large, "A", resamples=500)[1] < (
        high - low
    )


def test_bootstrap_shapes_and_percentiles() -> None:
    boot = bootstrap_elo(_matches(20, 0.5, 0), ["A", "B"], orderings=5, resamples=64)
    assert boot.shape == (64, 2)
    assert np.allclose(boot.sum(axis=1), 2000)
    low, high = percentile_ci(np.arange(101, dtype=float)[:, None])
    assert (low[0], high[0]) == pytest.approx((2.5, 97.5))


def test_fit_ratings_win_rates_and_matrix() -> None:
    outcomes = [Outcome("x", "y", 1.0), Outcome("x", "y", 1.0), Outcome("y", "x", 0.5), Outcome("y", "z", 1.0)]
    table = fit_ratings(outcomes, replace(SETTINGS, orderings=10, resamples=50)).table
    assert [r.player for r in table][0] == "x"
    record = {r.player: (r.games, r.score) for r in table}
    assert record == {"x": (3, 2.5), "y": (4, 1.5), "z": (1, 0.0)}
    assert win_rate(outcomes, "x") == (pytest.approx(2.5 / 3), 3)
    assert win_rate(outcomes, "y", "z") == (1.0, 1)
    m = win_matrix(outcomes, ["x", "y", "z"])
    assert m[0, 1] == pytest.approx(2.5 / 3) and m[1, 0] == pytest.approx(0.5 / 3)
    assert np.isnan(m[0, 2])


@pytest.mark.integration
def test_seed_elo_command_line(tmp_path: Path) -> None:
    import subprocess
    import sys

    matches = [Match("p", "b", "t", "tuned"), Match("p", "b", "t", "tuned"), Match("p", "b", "t", "base")]
    path = save_matches(matches, tmp_path / "m.jsonl")
    cmd = [sys.executable, "-m", "charlab.eval.elo", "score", "--matches", str(path), "--k-factor", "32"]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    expected = compute_elo(matches, k_factor=32.0)
    assert done.stdout.splitlines() == [f"tuned: {expected['tuned']:.1f}", f"base: {expected['base']:.1f}"]
    (tmp_path / "bad.jsonl").write_text('{"prompt": "p"}\n')
    bad = subprocess.run([*cmd[:4], "--matches", str(tmp_path / "bad.jsonl")], capture_output=True, text=True)
    assert bad.returncode == 2 and "missing field 'base_response'" in bad.stderr
