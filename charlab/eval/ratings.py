"""Ratings from pairwise outcomes: Elo (sequential and order-averaged), bootstrap CIs, Bradley-Terry, win rates.

Sequential Elo depends on the order of the matches, so the headline Elo is the mean over many random
orderings of a canonically sorted match list: the same outcomes in any input order give the same ratings.
Confidence intervals are percentile bootstraps: resample the matches with replacement and recompute the same
order-averaged statistic. Many chains (orderings x resamples) run side by side as numpy arrays, one match
position at a time, so a thousand resamples of a thousand matches take about a second.

Bradley-Terry is the maximum-likelihood fit (minorise-maximise iterations, ties as half a win each) reported
on the Elo scale (400 * log10 of the strength, centred on the initial rating); an optional prior adds
`prior` virtual wins and losses against an average opponent, which keeps unbeaten players finite. Its CIs are
percentile bootstraps too, with all resamples fitted side by side over sparse match lists.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Optional

import numpy as np

ELO_SCALE = 400.0
# Upper bound on (chains x matches) held in memory at once when running Elo chains.
_CHAIN_CELLS = 4_000_000


@dataclass(frozen=True)
class Outcome:
    """One decided comparison: `score` is player `a`'s result (1 win, 0.5 tie, 0 loss)."""

    a: str
    b: str
    score: float


@dataclass
class PlayerRating:
    """A player's ratings and record."""

    player: str
    elo: float
    elo_low: float
    elo_high: float
    bt: float
    games: int
    score: float  # wins + half the ties
    bt_low: float = float("nan")  # Bradley-Terry bootstrap CI
    bt_high: float = float("nan")

    @property
    def win_rate(self) -> float:
        return self.score / self.games if self.games else float("nan")


def expected_score(r_a: float, r_b: float) -> float:
    """The Elo expected score of a player rated `r_a` against one rated `r_b`."""
    return 1.0 / (1.0 + 10 ** ((r_b - r_a) / ELO_SCALE))


def players_of(outcomes: Iterable[Outcome], players: Optional[Sequence[str]] = None) -> list[str]:
    """`players` if given (and complete), else every player in the outcomes, sorted."""
    seen = sorted({o.a for o in outcomes} | {o.b for o in outcomes})
    if players is None:
        return seen
    missing = [p for p in seen if p not in players]
    if missing:
        raise ValueError(f"outcomes name players not in the list: {', '.join(missing)}")
    return list(players)


def sequential_elo(
    outcomes: Sequence[Outcome], players: Optional[Sequence[str]] = None, k: float = 32.0, initial: float = 1000.0
) -> dict[str, float]:
    """Classic Elo, updating after each outcome in the given order (the seed project's algorithm)."""
    ratings = dict.fromkeys(players_of(outcomes, players), float(initial))
    for o in outcomes:
        e_a = expected_score(ratings[o.a], ratings[o.b])
        delta = k * (o.score - e_a)
        ratings[o.a] += delta
        ratings[o.b] -= delta
    return ratings


def _encode(outcomes: Sequence[Outcome], players: list[str]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Index arrays of the outcomes, sorted canonically so the input order never matters."""
    index = {p: i for i, p in enumerate(players)}
    rows = sorted((index[o.a], index[o.b], float(o.score)) for o in outcomes)
    arr = np.asarray(rows, dtype=np.float64).reshape(-1, 3)
    return arr[:, 0].astype(np.int64), arr[:, 1].astype(np.int64), arr[:, 2]


def _elo_chains(
    a: np.ndarray, b: np.ndarray, s: np.ndarray, order: np.ndarray, n_players: int, k: float, initial: float
) -> np.ndarray:
    """Final ratings (chains x players) of sequential Elo run along each row of `order` (match indices)."""
    chains, length = order.shape
    ratings = np.full((chains, n_players), float(initial))
    rows = np.arange(chains)
    for t in range(length):
        m = order[:, t]
        ia, ib = a[m], b[m]
        e_a = 1.0 / (1.0 + 10 ** ((ratings[rows, ib] - ratings[rows, ia]) / ELO_SCALE))
        delta = k * (s[m] - e_a)
        ratings[rows, ia] += delta
        ratings[rows, ib] -= delta
    return ratings


def order_averaged_elo(
    outcomes: Sequence[Outcome],
    players: Optional[Sequence[str]] = None,
    k: float = 32.0,
    initial: float = 1000.0,
    orderings: int = 100,
    seed: int = 0,
) -> dict[str, float]:
    """Elo averaged over `orderings` random orderings of the matches (independent of the input order)."""
    names = players_of(outcomes, players)
    if not outcomes:
        return dict.fromkeys(names, float(initial))
    a, b, s = _encode(outcomes, names)
    rng = np.random.default_rng(seed)
    order = np.stack([rng.permutation(len(s)) for _ in range(max(1, orderings))])
    mean = _elo_chains(a, b, s, order, len(names), k, initial).mean(axis=0)
    return {p: float(r) for p, r in zip(names, mean)}


def _resamples(
    rng: np.random.Generator, n: int, resamples: int, per_chunk: int
) -> Iterator[tuple[int, int, np.ndarray]]:
    """Bootstrap resamples of `n` matches in chunks: (first row, rows, match indices drawn with replacement: one
    resample per row). Drawn lazily, so what the caller draws from `rng` between chunks keeps its place."""
    for start in range(0, resamples, per_chunk):
        count = min(per_chunk, resamples - start)
        yield start, count, rng.integers(0, n, size=(count, n))


def bootstrap_elo(
    outcomes: Sequence[Outcome],
    players: Optional[Sequence[str]] = None,
    k: float = 32.0,
    initial: float = 1000.0,
    orderings: int = 100,
    resamples: int = 1000,
    seed: int = 0,
) -> np.ndarray:
    """Order-averaged Elo of `resamples` bootstrap resamples of the matches: an array (resamples x players)."""
    names = players_of(outcomes, players)
    n = len(outcomes)
    if n == 0 or resamples <= 0:
        return np.full((max(0, resamples), len(names)), float(initial))
    a, b, s = _encode(outcomes, names)
    rng = np.random.default_rng(seed + 1)
    orderings = max(1, orderings)
    per_chunk = max(1, _CHAIN_CELLS // (n * orderings))
    out = np.empty((resamples, len(names)))
    for start, count, picks in _resamples(rng, n, resamples, per_chunk):
        perms = np.argsort(rng.random((count, orderings, n)), axis=2)  # orderings of each resample
        order = np.take_along_axis(np.repeat(picks[:, None, :], orderings, axis=1), perms, axis=2)
        chains = _elo_chains(a, b, s, order.reshape(count * orderings, n), len(names), k, initial)
        out[start : start + count] = chains.reshape(count, orderings, len(names)).mean(axis=1)
    return out


def percentile_ci(samples: np.ndarray, level: float = 0.95) -> tuple[np.ndarray, np.ndarray]:
    """Lower and upper percentile bounds along axis 0."""
    tail = (1.0 - level) / 2.0 * 100.0
    return np.percentile(samples, tail, axis=0), np.percentile(samples, 100.0 - tail, axis=0)


def bradley_terry(
    outcomes: Sequence[Outcome],
    players: Optional[Sequence[str]] = None,
    prior: float = 0.0,
    initial: float = 1000.0,
    max_iter: int = 10_000,
    tol: float = 1e-10,
) -> dict[str, float]:
    """Bradley-Terry maximum-likelihood ratings on the Elo scale (mean = `initial`).

    With `prior=0` every player needs at least one win and one loss (else its MLE is infinite); a positive
    prior adds that many virtual wins and losses against an opponent of average strength.
    """
    names = players_of(outcomes, players)
    n_players = len(names)
    if n_players == 0:
        return {}
    index = {p: i for i, p in enumerate(names)}
    wins = np.zeros(n_players)
    games = np.zeros((n_players, n_players))
    for o in outcomes:
        i, j = index[o.a], index[o.b]
        wins[i] += o.score
        wins[j] += 1.0 - o.score
        games[i, j] += 1.0
        games[j, i] += 1.0
    if prior <= 0:
        played = games.sum(axis=1)
        bad = [names[i] for i in range(n_players) if played[i] > 0 and (wins[i] <= 0 or wins[i] >= played[i])]
        if bad:
            raise ValueError(f"Bradley-Terry needs prior > 0: {', '.join(bad)} never lost or never won")
    strength = np.ones(n_players)
    for _ in range(max_iter):
        pair_sum = strength[:, None] + strength[None, :]
        denom = (games / pair_sum).sum(axis=1) + 2.0 * prior / (strength + 1.0)
        new = np.where(denom > 0, (wins + prior) / np.where(denom > 0, denom, 1.0), strength)
        if prior <= 0:  # without a prior the scale is free: pin the geometric mean of the players who played
            new = new / math.exp(np.log(new[new > 0]).mean())
        done = np.max(np.abs(np.log(new) - np.log(strength))) < tol
        strength = new
        if done:
            break
    logs = ELO_SCALE * np.log10(strength)
    logs -= logs.mean()
    return {p: float(initial + r) for p, r in zip(names, logs)}


def _bt_strengths(
    a: np.ndarray, b: np.ndarray, s: np.ndarray, n: int, prior: float, max_iter: int, tol: float
) -> np.ndarray:
    """Bradley-Terry strengths of many match lists at once (rows of `a`, `b`, `s`: resamples x matches), by
    minorise-maximise over edge lists (sparse: a trait meets few others); `prior` > 0 virtual games each."""
    rows = a.shape[0]
    flat_a = (np.arange(rows)[:, None] * n + a).ravel()
    flat_b = (np.arange(rows)[:, None] * n + b).ravel()
    size = rows * n
    wins = (np.bincount(flat_a, s.ravel(), size) + np.bincount(flat_b, (1.0 - s).ravel(), size)).reshape(rows, n)
    strength = np.ones((rows, n))
    pick = np.arange(rows)[:, None]
    for _ in range(max_iter):
        inv = (1.0 / (strength[pick, a] + strength[pick, b])).ravel()
        games = (np.bincount(flat_a, inv, size) + np.bincount(flat_b, inv, size)).reshape(rows, n)
        new = (wins + prior) / (games + 2.0 * prior / (strength + 1.0))
        done = np.max(np.abs(np.log(new) - np.log(strength))) < tol
        strength = new
        if done:
            break
    return strength


def bootstrap_bradley_terry(
    outcomes: Sequence[Outcome],
    players: Optional[Sequence[str]] = None,
    prior: float = 0.5,
    initial: float = 1000.0,
    resamples: int = 1000,
    seed: int = 0,
    tol: float = 1e-6,
    max_iter: int = 2000,
) -> np.ndarray:
    """Bradley-Terry ratings (Elo scale, mean `initial`) of `resamples` bootstrap resamples: (resamples x players).

    All resamples are fitted side by side, so a thousand resamples of a 144-trait table take about a second.
    Needs `prior > 0` (a resample may leave a player unbeaten); else all NaN.
    """
    names = players_of(outcomes, players)
    n, m = len(names), len(outcomes)
    if m == 0 or resamples <= 0 or prior <= 0:
        return np.full((max(0, resamples), n), float("nan") if prior <= 0 else float(initial))
    a, b, s = _encode(outcomes, names)
    rng = np.random.default_rng(seed + 3)
    out = np.empty((resamples, n))
    per_chunk = max(1, _CHAIN_CELLS // max(m, n))
    for start, count, picks in _resamples(rng, m, resamples, per_chunk):
        logs = ELO_SCALE * np.log10(_bt_strengths(a[picks], b[picks], s[picks], n, prior, max_iter, tol))
        out[start : start + count] = initial + logs - logs.mean(axis=1, keepdims=True)
    return out


@dataclass
class RatingFit:
    """A rating table and the bootstrap samples behind its CIs (resamples x players, in `players` order)."""

    table: list[PlayerRating]
    players: list[str]
    elo_samples: np.ndarray
    bt_samples: np.ndarray

    @property
    def elo(self) -> dict[str, float]:
        return {r.player: r.elo for r in self.table}

    @property
    def games(self) -> dict[str, int]:
        return {r.player: r.games for r in self.table}


@dataclass(frozen=True)
class RatingSettings:
    """How ratings are fitted (the stages take every value from `configs/eval/*.yaml`): the Elo K-factor and
    initial rating, random orderings averaged, bootstrap resamples, the Bradley-Terry prior, the CI level, the seed."""

    k: float
    initial: float
    orderings: int
    resamples: int
    bt_prior: float
    level: float
    seed: int


def fit_ratings(
    outcomes: Sequence[Outcome], settings: RatingSettings, players: Optional[Sequence[str]] = None
) -> RatingFit:
    """Order-averaged Elo and Bradley-Terry, each with bootstrap CIs, and records for every player, best first."""
    k, initial, orderings, resamples = settings.k, settings.initial, settings.orderings, settings.resamples
    prior, level, seed = settings.bt_prior, settings.level, settings.seed
    names = players_of(outcomes, players)
    elo = order_averaged_elo(outcomes, names, k, initial, orderings, seed)
    boot = bootstrap_elo(outcomes, names, k, initial, orderings, resamples, seed)
    low, high = percentile_ci(boot, level) if len(boot) else (np.array(list(elo.values())),) * 2
    bt = bradley_terry(outcomes, names, prior=prior, initial=initial) if outcomes else dict.fromkeys(names, initial)
    bt_boot = bootstrap_bradley_terry(outcomes, names, prior, initial, resamples, seed)
    bt_low, bt_high = percentile_ci(bt_boot, level) if len(bt_boot) else (np.full(len(names), np.nan),) * 2
    games = dict.fromkeys(names, 0)
    score = dict.fromkeys(names, 0.0)
    for o in outcomes:
        games[o.a] += 1
        games[o.b] += 1
        score[o.a] += o.score
        score[o.b] += 1.0 - o.score
    table = [
        PlayerRating(
            p, elo[p], float(low[i]), float(high[i]), bt[p], games[p], score[p], float(bt_low[i]), float(bt_high[i])
        )
        for i, p in enumerate(names)
    ]
    return RatingFit(sorted(table, key=lambda r: (-r.elo, r.player)), names, boot, bt_boot)


def win_rate(outcomes: Sequence[Outcome], player: str, opponent: Optional[str] = None) -> tuple[float, int]:
    """`player`'s score share (ties count half) in its games (against `opponent` only, if given), and the count."""
    total, games = 0.0, 0
    for o in outcomes:
        if o.a == player and (opponent is None or o.b == opponent):
            total, games = total + o.score, games + 1
        elif o.b == player and (opponent is None or o.a == opponent):
            total, games = total + 1.0 - o.score, games + 1
    return (total / games if games else float("nan")), games


def bootstrap_win_rate(
    outcomes: Sequence[Outcome],
    player: str,
    opponent: Optional[str] = None,
    resamples: int = 1000,
    level: float = 0.95,
    seed: int = 0,
) -> tuple[float, float, float, int]:
    """Win rate with a percentile-bootstrap CI: (rate, low, high, games)."""
    scores = []
    for o in outcomes:
        if o.a == player and (opponent is None or o.b == opponent):
            scores.append(o.score)
        elif o.b == player and (opponent is None or o.a == opponent):
            scores.append(1.0 - o.score)
    if not scores:
        return float("nan"), float("nan"), float("nan"), 0
    arr = np.asarray(scores)
    rng = np.random.default_rng(seed + 2)
    means = arr[rng.integers(0, len(arr), size=(max(1, resamples), len(arr)))].mean(axis=1)
    low, high = percentile_ci(means, level)
    return float(arr.mean()), float(low), float(high), len(arr)


def win_matrix(outcomes: Sequence[Outcome], players: Sequence[str]) -> np.ndarray:
    """Row player's score share against the column player (NaN where they never met)."""
    index = {p: i for i, p in enumerate(players)}
    score = np.zeros((len(players), len(players)))
    games = np.zeros_like(score)
    for o in outcomes:
        i, j = index[o.a], index[o.b]
        score[i, j] += o.score
        score[j, i] += 1.0 - o.score
        games[i, j] += 1
        games[j, i] += 1
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(games > 0, score / np.where(games > 0, games, 1), np.nan)
