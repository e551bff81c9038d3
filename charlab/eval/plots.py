"""PNG plots for the evaluation reports (matplotlib, Agg backend: no display needed).

Every function takes plain numbers and a path, writes one PNG and returns its path.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Optional

import numpy as np

from charlab.eval.ratings import PlayerRating


def _pyplot():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    _pyplot().close(fig)
    return path


def plot_ratings(table: Sequence[PlayerRating], path: Path, title: str, initial: float = 1000.0) -> Path:
    """Horizontal bars of Elo with 95% CI whiskers, best at the top."""
    plt = _pyplot()
    rows = list(table)[::-1]
    fig, ax = plt.subplots(figsize=(7, 0.5 * len(rows) + 1.5))
    y = np.arange(len(rows))
    elo = np.array([r.elo for r in rows])
    err = np.array([[r.elo - r.elo_low for r in rows], [r.elo_high - r.elo for r in rows]]).clip(min=0)
    ax.barh(y, elo - initial, left=initial, xerr=err, color="#4C72B0", capsize=4)
    ax.axvline(initial, color="grey", lw=0.8)
    ax.set_yticks(y, [r.player for r in rows])
    ax.set_xlabel("Elo (order-averaged; whiskers: 95% bootstrap CI)")
    ax.set_title(title)
    return _save(fig, path)


def plot_top_bottom(tables: Mapping[str, Sequence[PlayerRating]], path: Path, n: int = 10) -> Path:
    """For each model, the `n` highest- and lowest-rated traits (Elo with CI whiskers)."""
    plt = _pyplot()
    fig, axes = plt.subplots(1, len(tables), figsize=(6 * len(tables), 0.32 * 2 * n + 1.8), squeeze=False)
    for ax, (name, table) in zip(axes[0], tables.items()):
        rows = list(table)
        shown = rows if len(rows) <= 2 * n else rows[:n] + rows[-n:]
        shown = shown[::-1]
        y = np.arange(len(shown))
        colours = ["#55A868" if i >= len(shown) - min(n, len(rows)) else "#C44E52" for i in range(len(shown))]
        err = np.array([[r.elo - r.elo_low for r in shown], [r.elo_high - r.elo for r in shown]]).clip(min=0)
        ax.barh(y, [r.elo for r in shown], xerr=err, color=colours, capsize=2)
        ax.set_yticks(y, [r.player for r in shown], fontsize=8)
        low = min(r.elo_low for r in shown) if shown else 0.0
        ax.set_xlim(left=low - 20)
        ax.set_title(f"{name}: top and bottom {n} traits")
        ax.set_xlabel("Elo")
    return _save(fig, path)


def plot_rank_scatter(
    x: Mapping[str, float], y: Mapping[str, float], path: Path, x_name: str, y_name: str, highlight: Sequence[str] = ()
) -> Path:
    """Each trait's Elo under two models; the persona's traits labelled and highlighted."""
    plt = _pyplot()
    common = sorted(set(x) & set(y))
    fig, ax = plt.subplots(figsize=(6, 6))
    ax.scatter([x[t] for t in common], [y[t] for t in common], s=12, color="#8C8C8C")
    for trait in highlight:
        if trait in x and trait in y:
            ax.scatter([x[trait]], [y[trait]], s=36, color="#C44E52")
            ax.annotate(trait, (x[trait], y[trait]), fontsize=8, xytext=(3, 3), textcoords="offset points")
    if common:
        lo = min(min(x[t] for t in common), min(y[t] for t in common))
        hi = max(max(x[t] for t in common), max(y[t] for t in common))
        ax.plot([lo, hi], [lo, hi], color="grey", lw=0.8, ls="--")
    ax.set_xlabel(f"Elo ({x_name})")
    ax.set_ylabel(f"Elo ({y_name})")
    ax.set_title("trait Elo: persona traits in red")
    return _save(fig, path)


def plot_matrix(
    matrix: np.ndarray,
    labels: Sequence[str],
    path: Path,
    title: str,
    fmt: str = "{:.0f}",
    xlabel: str = "",
    ylabel: str = "",
) -> Path:
    """A labelled square heatmap (confusion matrix, win-rate matrix); NaN cells left blank."""
    plt = _pyplot()
    matrix = np.asarray(matrix, dtype=float)
    filled = np.nan_to_num(matrix, nan=0.0)
    fig, ax = plt.subplots(figsize=(1.2 * len(labels) + 2.5, 1.0 * len(labels) + 1.8))
    ax.imshow(filled, cmap="Blues", vmin=0)
    ax.set_xticks(range(len(labels)), labels, rotation=30, ha="right")
    ax.set_yticks(range(len(labels)), labels)
    dark = 0.6 * filled.max() if filled.size else 0.0
    for i in range(matrix.shape[0]):
        for j in range(matrix.shape[1]):
            if not np.isnan(matrix[i, j]):
                colour = "white" if matrix[i, j] > dark > 0 else "black"
                ax.text(j, i, fmt.format(matrix[i, j]), ha="center", va="center", color=colour)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    return _save(fig, path)


def plot_bars(values: Mapping[str, float], path: Path, title: str, xlabel: str, xlim: Optional[tuple] = None) -> Path:
    """Horizontal bars of named values (e.g. in-persona rate per attack)."""
    plt = _pyplot()
    names = list(values)[::-1]
    fig, ax = plt.subplots(figsize=(7, 0.4 * len(names) + 1.5))
    ax.barh(range(len(names)), [values[n] for n in names], color="#4C72B0")
    ax.set_yticks(range(len(names)), names, fontsize=8)
    if xlim:
        ax.set_xlim(*xlim)
    ax.set_xlabel(xlabel)
    ax.set_title(title)
    return _save(fig, path)
