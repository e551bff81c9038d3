"""Markdown reports: tables, number formatting and the `report.md` every evaluation stage writes."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from charlab.eval.ratings import PlayerRating


def fmt(value: Any, digits: int = 3) -> str:
    """A number for a report cell (NaN as an en dash)."""
    if value is None:
        return "–"
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, float):
        return "–" if math.isnan(value) else f"{value:.{digits}f}"
    return str(value)


def ci(low: float, high: float, digits: int = 3) -> str:
    """A confidence interval for a report ("–" when undefined)."""
    if any(v is None or (isinstance(v, float) and math.isnan(v)) for v in (low, high)):
        return "–"
    return f"{low:.{digits}f} – {high:.{digits}f}"


def json_safe(value: Any) -> Any:
    """`value` with NaN/inf floats replaced by None (meta.json and W&B summaries stay valid JSON)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    return value


def cell(text: Any, limit: int = 160) -> str:
    """Text made safe for one Markdown table cell (one line, pipes escaped, shortened)."""
    value = " ".join(str(text).split()).replace("|", "\\|")
    return value if len(value) <= limit else value[: limit - 1] + "…"


def table(columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A Markdown table."""
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(cell(fmt(v)) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def rating_rows(ratings: Sequence[PlayerRating]) -> tuple[list[str], list[list[Any]]]:
    """Columns and rows of a ratings table (rank, player, Elo with CI, Bradley-Terry, record)."""
    columns = ["rank", "player", "Elo", "95% CI", "Bradley-Terry", "95% CI (BT)", "games", "win rate"]
    rows = [
        [i, r.player, f"{r.elo:.1f}", ci(r.elo_low, r.elo_high, 1), f"{r.bt:.1f}", ci(r.bt_low, r.bt_high, 1), r.games,
         r.win_rate]
        for i, r in enumerate(ratings, 1)
    ]  # fmt: skip
    return columns, rows


def write_report(path: Path, title: str, sections: Sequence[tuple[str, str]]) -> Path:
    """`report.md`: a title and (heading, Markdown body) sections; images are linked by relative path."""
    parts = [f"# {title}", ""]
    for heading, body in sections:
        parts += [f"## {heading}", "", body.strip(), ""]
    path = Path(path)
    path.write_text("\n".join(parts), encoding="utf-8")
    return path


def image(path: Path, alt: str) -> str:
    """A Markdown image link relative to the report's folder."""
    return f"![{alt}]({Path(path).name})"
