"""The seed project's Elo API over `Match` records, and the conversion of matches into rating outcomes.

    from charlab.eval.elo import compute_elo, load_matches
    ratings = compute_elo(load_matches("matches.jsonl"), k_factor=32.0)
    print(ratings["base"], ratings["tuned"])

A `Match` names its two players (`player_a`, `player_b`; "base" and "tuned" in seed files) and a winner:
a player's name, "base"/"tuned" for the first/second player, or "tie". `compute_elo` is the seed's
sequential Elo (both players start at 1000); `compute_elo(..., orderings=100)` averages random orderings.
The seed's command line works too: `python -m charlab.eval.elo score --matches FILE --k-factor 32`.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Optional

from charlab.data.jsonl import JsonlWriter, read_jsonl
from charlab.data.records import Match
from charlab.errors import CharlabError, DataError
from charlab.eval.ratings import Outcome, order_averaged_elo, sequential_elo

TIE_WORDS = ("tie", "draw")


def load_matches(path: str | Path) -> list[Match]:
    """Every `Match` in a JSONL file (errors name the file and row)."""
    return read_jsonl(path, Match)


def save_matches(matches: Sequence[Match], path: str | Path) -> Path:
    """Append matches to a JSONL file (whole lines only)."""
    with JsonlWriter(path) as writer:
        writer.write_many(matches)
    return Path(path)


def match_outcome(match: Match, where: str = "match") -> Outcome:
    """A `Match` as a rating outcome for `player_a` (1 win, 0.5 tie, 0 loss)."""
    a, b, winner = match.player_a, match.player_b, str(match.winner).strip()
    if a == b:
        raise DataError(f"{where}: player_a and player_b are both {a!r}")
    if winner == a:
        score = 1.0
    elif winner == b:
        score = 0.0
    elif winner.lower() in TIE_WORDS:
        score = 0.5
    elif winner == "base":  # seed files: "base"/"tuned" name the first/second player
        score = 1.0
    elif winner == "tuned":
        score = 0.0
    else:
        raise DataError(f"{where}: winner {winner!r} is not {a!r}, {b!r} or 'tie'")
    return Outcome(a, b, score)


def match_outcomes(matches: Sequence[Match]) -> list[Outcome]:
    """Every match as an outcome."""
    return [match_outcome(m, where=f"match {i}") for i, m in enumerate(matches, 1)]


def compute_elo(
    matches: Sequence[Match],
    k_factor: float = 32.0,
    initial_rating: float = 1000.0,
    orderings: Optional[int] = None,
    seed: int = 0,
) -> dict[str, float]:
    """Elo ratings of every player in the matches ("base" and "tuned" for seed files; both 1000 if none).

    `orderings=None` updates in file order (the seed's behaviour); a number averages that many random orderings.
    """
    outcomes = match_outcomes(matches)
    players = sorted({o.a for o in outcomes} | {o.b for o in outcomes}) or ["base", "tuned"]
    if orderings is None:
        return sequential_elo(outcomes, players, k=k_factor, initial=initial_rating)
    return order_averaged_elo(outcomes, players, k=k_factor, initial=initial_rating, orderings=orderings, seed=seed)


def main(argv: Optional[Sequence[str]] = None) -> int:
    """The seed's command line: `python -m charlab.eval.elo score --matches FILE --k-factor 32`."""
    parser = argparse.ArgumentParser(prog="python -m charlab.eval.elo", description="Elo ratings of a matches file.")
    commands = parser.add_subparsers(dest="command", required=True)
    score = commands.add_parser("score", help="print every player's Elo rating")
    score.add_argument("--matches", type=Path, required=True, help="JSONL of Match records")
    score.add_argument("--k-factor", type=float, default=32.0)
    score.add_argument("--initial-rating", type=float, default=1000.0)
    score.add_argument("--orderings", type=int, default=None, help="average this many random orderings")
    args = parser.parse_args(argv)
    try:
        ratings = compute_elo(load_matches(args.matches), args.k_factor, args.initial_rating, args.orderings)
    except CharlabError as err:
        print(f"charlab: error: {err}", file=sys.stderr)
        return 2
    for player, rating in sorted(ratings.items(), key=lambda item: (-item[1], item[0])):
        print(f"{player}: {rating:.1f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
