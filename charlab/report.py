"""The pipeline's one-page `report.md`: headline numbers, training curves, and samples, from the step folders.

Everything comes from what the steps wrote (`meta.json` summaries, `metrics.jsonl`, `replies.jsonl`), so the
report can be rebuilt for any finished pipeline directory: `write_pipeline_report(root, steps, persona)`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from charlab.data.jsonl import iter_jsonl
from charlab.eval.report import cell, fmt, image, table, write_report

CURVE_KEYS = {"dpo": ("loss", "accuracy", "margin"), "sft": ("loss",)}


@dataclass
class PipelineReport:
    """Where the report went and the numbers worth returning to a sweep."""

    path: Path
    headline: dict[str, Any] = field(default_factory=dict)


def _step_dirs(root: Path, steps: list[str]) -> dict[str, Path]:
    """step name -> its folder (the last one, if a step appears twice)."""
    dirs = {}
    for index, step in enumerate(steps):
        folder = root / f"{index + 1:02d}_{step}"
        if folder.is_dir():
            dirs[step] = folder
    return dirs


def _meta(folder: Optional[Path]) -> dict[str, Any]:
    path = folder / "meta.json" if folder else None
    return json.loads(path.read_text(encoding="utf-8")) if path and path.is_file() else {}


def _rows(path: Path) -> list[dict[str, Any]]:
    return list(iter_jsonl(path)) if path.is_file() else []


def plot_training_curves(dirs: dict[str, Path], out: Path) -> Optional[Path]:
    """One panel per (step, metric) for the training steps' per-step metrics; None if there are none."""
    series = []
    for step, keys in CURVE_KEYS.items():
        rows = [r for r in _rows(dirs[step] / "metrics.jsonl") if "step" in r] if step in dirs else []
        for key in keys:
            points = [(r["step"], r[key]) for r in rows if isinstance(r.get(key), (int, float))]
            if points:
                series.append((f"{step} {key}", points))
    if not series:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(series), figsize=(3.2 * len(series), 2.6), squeeze=False)
    for ax, (title, points) in zip(axes[0], series):
        ax.plot([p[0] for p in points], [p[1] for p in points], marker="o", markersize=3)
        ax.set_title(title, fontsize=9)
        ax.set_xlabel("step", fontsize=8)
        ax.tick_params(labelsize=7)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def _samples(elo_dir: Optional[Path], n: int) -> tuple[list[str], list[list[str]]]:
    """Up to `n` held-out prompts with each player's reply, from the elo step's replies.jsonl."""
    if elo_dir is None:
        return [], []
    by_prompt: dict[str, dict[str, str]] = {}
    prompts: dict[str, str] = {}
    for row in _rows(elo_dir / "replies.jsonl"):
        player, _, prompt_id = str(row.get("id", "")).partition(":")
        by_prompt.setdefault(prompt_id, {})[player] = row.get("text", "")
        prompts.setdefault(prompt_id, row.get("prompt", prompt_id))
    players = [p for p in ("base", "base_persona", "tuned") if any(p in r for r in by_prompt.values())]
    rows = [[cell(prompts[pid], 120)] + [cell(r.get(p, ""), 300) for p in players] for pid, r in by_prompt.items()]
    return ["prompt"] + players, rows[:n]


def write_pipeline_report(root: Path, steps: list[str], persona: str, samples: int = 3) -> PipelineReport:
    """Write `<root>/report.md` (+ `training_curves.png`) from the finished steps."""
    dirs = _step_dirs(root, steps)
    metas = {step: _meta(folder) for step, folder in dirs.items()}
    summaries = {step: meta.get("summary") or {} for step, meta in metas.items()}
    sections: list[tuple[str, str]] = []

    overview = [
        [step, metas[step].get("status", "—"), metas[step].get("metric_name") or "", fmt(metas[step].get("metric")),
         fmt(metas[step].get("duration_s"), 1), dirs[step].name]
        for step in dirs
    ]  # fmt: skip
    sections.append(("Steps", table(["step", "status", "metric", "value", "seconds", "folder"], overview)))

    curves = plot_training_curves(dirs, root / "training_curves.png")
    sections.append(("Training curves", image(curves, "training curves") if curves else "No training steps ran."))

    dpo = summaries.get("dpo", {})
    sections.append(
        (
            "DPO held-out accuracy",
            f"**{fmt(dpo.get('eval/accuracy'))}** on {dpo.get('eval_pairs', '?')} held-out pairs "
            f"(margin {fmt(dpo.get('eval/margin'))}, {dpo.get('steps', '?')} steps)."
            if dpo
            else "DPO did not run.",
        )
    )
    sft = summaries.get("sft", {})
    gap_rows = [[name, fmt(sft.get(f"gap/{name}"), 4)] for name in ("base", "dpo", "sft") if f"gap/{name}" in sft]
    sections.append(
        (
            "Prompt-distillation gap",
            "Mean per-token log-likelihood of held-out in-character replies *with* the constitution system prompt "
            "minus *without* it (smaller after SFT: the persona no longer needs the prompt).\n\n"
            + table(["model", "gap"], gap_rows)
            if gap_rows
            else "SFT did not run.",
        )
    )
    clf = summaries.get("classifier", {})
    clf_text = "The classifier did not run."
    if clf:
        clf_text = table(
            ["accuracy", "macro-F1", "ROC-AUC"], [[fmt(clf.get(k)) for k in ("accuracy", "macro_f1", "roc_auc")]]
        )
        attacks = clf.get("in_persona_rate") or {}
        if attacks:
            clf_text += "\n\nIn-persona rate under attacks: " + ", ".join(f"{k} {fmt(v)}" for k, v in attacks.items())
    sections.append(("Persona classifier", clf_text))

    elo = summaries.get("elo", {})
    if elo.get("elo"):
        rows = [
            [p, fmt(r, 1), " – ".join(fmt(x, 1) for x in elo.get("elo_ci", {}).get(p, []))]
            for p, r in elo["elo"].items()
        ]
        win = next((k for k in elo if k.endswith("_win_rate")), None)
        elo_text = table(["player", "Elo", "95% CI"], rows)
        if win:
            elo_text += f"\n\n{win.replace('_', ' ')}: **{fmt(elo[win])}**"
        elo_text += (
            f" ({elo.get('consistent', 0)} consistent verdicts, {elo.get('unparseable', 0)} unparseable; a judge too "
            "small to answer in the required format leaves every rating at its start value)"
        )
    else:
        elo_text = "Head-to-head Elo did not run."
    sections.append(("Elo (head-to-head)", elo_text))

    revealed = metas.get("revealed", {})
    if revealed:
        sections.append(("Revealed preferences", f"{revealed.get('metric_name')}: **{fmt(revealed.get('metric'))}** "
                         f"(see `{dirs['revealed'].name}/report.md`)."))  # fmt: skip
    columns, sample_rows = _samples(dirs.get("elo"), samples)
    sections.append(("Samples: base vs tuned", table(columns, sample_rows) if sample_rows else "No samples."))

    adapter = (metas.get("export", {}).get("artifacts") or {}).get("adapter") or (
        metas.get("sft", {}).get("artifacts") or {}
    ).get("adapter")
    where = [f"- final adapter: `{adapter}`" if adapter else "- no adapter was trained"]
    where += [f"- {step}: `{folder}`" for step, folder in dirs.items()]
    sections.append(("Where things are", "\n".join(where)))

    path = write_report(root / "report.md", f"charlab pipeline: {persona}", sections)
    headline: dict[str, Any] = {
        "dpo_heldout_accuracy": dpo.get("eval/accuracy"),
        "classifier_macro_f1": clf.get("macro_f1"),
        "distillation_gap_base": sft.get("gap/base"),
        "distillation_gap_sft": sft.get("gap/sft"),
    }
    return PipelineReport(path=path, headline={k: v for k, v in headline.items() if v is not None})
