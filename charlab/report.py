"""The pipeline's one-page `report.md`: the verdict line first, then each instrument's numbers with CIs, the
prompt-distillation gap, training curves and samples, all from the step folders.

Everything comes from what the steps wrote (`meta.json` summaries, `metrics.jsonl`, `replies.jsonl`), so the
report can be rebuilt for any finished pipeline directory: `write_pipeline_report(root, steps, persona)`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from charlab.data.jsonl import iter_jsonl
from charlab.eval.report import cell, ci, fmt, image, table, write_report
from charlab.run import read_meta

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


def _gap_section(sft: dict[str, Any], export: dict[str, Any]) -> str:
    """The prompt-distillation gap of each model, labelled with what it is (the exported one is evaluated)."""
    weights = export.get("weights") or {}
    exported = " + ".join(f"{w:g} x {name.upper()}" for name, w in weights.items()) or "?"
    labels = {
        "base": "base",
        "dpo": "base + DPO",
        "sft": "base + 1 x DPO + 1 x SFT (what SFT trained)",
        "exported": f"base + {exported} (the exported adapter: every evaluation above)",
    }
    values = {**{k: sft.get(f"gap/{k}") for k in ("base", "dpo", "sft")}, "exported": export.get("gap/exported")}
    rows = [[labels[k], fmt(v, 4)] for k, v in values.items() if v is not None]
    if not rows:
        return "SFT did not run."
    return (
        "Mean per-token log-likelihood of held-out in-character replies *with* the constitution system prompt "
        "minus *without* it (smaller: the persona no longer needs the prompt).\n\n" + table(["model", "gap"], rows)
    )


def _classifier_section(clf: dict[str, Any]) -> str:
    if not clf:
        return "The classifier did not run."
    from charlab.eval.bootstrap import Estimate
    from charlab.eval.classifier_report import control_line, rates_table

    rates = {k: Estimate(v["value"], *(float("nan") if v.get(x) is None else v[x] for x in ("low", "high")), v["n"])
             for k, v in (clf.get("in_persona") or {}).items() if v.get("value") is not None}  # fmt: skip
    held = clf.get("held_out") or {}
    quality = ", ".join(
        f"{name} {fmt(v.get('value'))} (95% CI {ci(v.get('low'), v.get('high'))})" for name, v in held.items()
    )
    text = rates_table(rates) + "\n\n" + control_line(rates) if rates else "No in-persona rates."
    text += (
        f"\n\nClassifier ({clf.get('method', '?')}, texts: {clf.get('data', '?')}: {clf.get('data_reason', '')}); "
        f"held-out {quality or 'scores unavailable'}."
    )
    attacks = clf.get("in_persona_rate") or {}
    if attacks:
        text += "\n\nIn-persona rate under attacks: " + ", ".join(f"{k} {fmt(v)}" for k, v in attacks.items())
    return text


def _coherence_section(coherence: dict[str, Any], folder: str) -> str:
    from charlab.eval.coherence_report import differences_table, players_table

    k = (coherence.get("instruments") or {}).get("distractors", "K")
    return (
        players_table(coherence) + "\n\n" + differences_table(coherence) + "\n\nLoops: replies that repeat "
        "(n-grams, lines) or say almost nothing once stop words and the persona's stock words are removed; relevance: "
        f"the share of replies whose own prompt explains them best among {k} + 1 held-out prompts. See "
        f"`{folder}/report.md`."
    )


def _elo_section(elo: dict[str, Any]) -> str:
    if not elo.get("elo"):
        return "Head-to-head Elo did not run."
    rows = [
        [p, fmt(r, 1), " – ".join(fmt(x, 1) for x in elo.get("elo_ci", {}).get(p, []))] for p, r in elo["elo"].items()
    ]
    against = [
        [p, fmt(v.get("value")), ci(v.get("low"), v.get("high")), v.get("n")]
        for p, v in (elo.get("vs_base") or {}).items()
    ]
    text = table(["player", "persona win rate vs base", "95% CI", "matches"], against) + "\n\n" if against else ""
    text += table(["player", "Elo", "95% CI"], rows)
    modes = ", ".join(f"{m} {n}" for m, n in (elo.get("verdict_modes") or {}).items())
    return text + (
        f"\n\n{elo.get('usable', 0)} of {elo.get('pairs_judged', 0)} pairs usable ({elo.get('unparseable', 0)} "
        f"unparseable); single verdicts by mode: {modes}. Judge: {elo.get('judge', '?')}."
    )


def _revealed_section(revealed: dict[str, Any], folder: str) -> str:
    condition = revealed.get("headline_condition")
    rows = [
        [c, fmt((v.get("rank_shift") or {}).get("value"), 1),
         ci((v.get("rank_shift") or {}).get("low"), (v.get("rank_shift") or {}).get("high"), 1),
         fmt((v.get("spearman") or {}).get("value")),
         ci((v.get("spearman") or {}).get("low"), (v.get("spearman") or {}).get("high"))]
        for c, v in (revealed.get("comparisons") or {}).items()
    ]  # fmt: skip
    who = f"{revealed.get('reference')} -> {revealed.get('target')}"
    body = (
        table(["condition", f"rank shift ({who})", "95% CI", "Spearman", "95% CI"], rows) if rows else "No comparison."
    )
    return body + f"\n\nHeadline condition: {condition}; `random` is the control. See `{folder}/report.md`."


def _capability_section(capability: dict[str, Any], folder: str) -> str:
    from charlab.eval.capability import capability_reading, how_to_read, scores_table

    reading = capability_reading(capability).line
    return f"**{reading}**\n\n{scores_table(capability)}\n\n{how_to_read(capability)}\n\nSee `{folder}/report.md`."


def write_pipeline_report(
    root: Path, steps: list[str], persona: str, samples: int = 3, min_usable: int = 10
) -> PipelineReport:
    """Write `<root>/report.md` (+ `training_curves.png`) from the finished steps; it opens with the verdict."""
    from charlab.eval.verdict import verdict_text

    dirs = _step_dirs(root, steps)
    metas = {step: read_meta(folder) for step, folder in dirs.items()}
    summaries = {step: meta.get("summary") or {} for step, meta in metas.items()}
    clf, elo, revealed = (summaries.get(k, {}) for k in ("classifier", "elo", "revealed"))
    coherence = summaries.get("coherence", {})
    verdict = verdict_text({step: summary for step, summary in summaries.items() if summary}, min_usable)
    sections: list[tuple[str, str]] = [("Verdict", verdict)]
    sections.append(("In-persona rate (persona classifier)", _classifier_section(clf)))
    if coherence:
        sections.append(("Still answering (coherence)", _coherence_section(coherence, dirs["coherence"].name)))
    sections.append(("Head-to-head judge", _elo_section(elo)))
    if revealed:
        sections.append(("Revealed preferences", _revealed_section(revealed, dirs["revealed"].name)))
    if summaries.get("capability"):
        capability = _capability_section(summaries["capability"], dirs["capability"].name)
        sections.append(("Capability (lm-eval)", capability))
    sections.append(("Prompt-distillation gap", _gap_section(summaries.get("sft", {}), summaries.get("export", {}))))
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
    curves = plot_training_curves(dirs, root / "training_curves.png")
    sections.append(("Training curves", image(curves, "training curves") if curves else "No training steps ran."))
    columns, sample_rows = _samples(dirs.get("elo") or dirs.get("classifier"), samples)
    sections.append(("Samples: base vs tuned", table(columns, sample_rows) if sample_rows else "No samples."))
    overview = [
        [step, metas[step].get("status", "—"), metas[step].get("metric_name") or "", fmt(metas[step].get("metric")),
         fmt(metas[step].get("duration_s"), 1), dirs[step].name]
        for step in dirs
    ]  # fmt: skip
    sections.append(("Steps", table(["step", "status", "metric", "value", "seconds", "folder"], overview)))
    adapter = (metas.get("export", {}).get("artifacts") or {}).get("adapter") or (
        metas.get("sft", {}).get("artifacts") or {}
    ).get("adapter")
    where = [f"- final adapter (the model every number above describes): `{adapter}`" if adapter else "- no adapter"]
    where += [f"- {step}: `{folder}`" for step, folder in dirs.items()]
    sections.append(("Where things are", "\n".join(where)))

    path = write_report(root / "report.md", f"charlab pipeline: {persona}", sections)
    rates = clf.get("in_persona") or {}
    coherent = ((coherence.get("headline") or {}).get("estimate") or {}).get("value")
    headline: dict[str, Any] = {
        "verdict": sections[0][1],
        "loop_rate_tuned": ((coherence.get("loop") or {}).get("tuned") or {}).get("value"),
        "relevance_tuned": ((coherence.get("relevance") or {}).get("tuned") or {}).get("value"),
        "tuned_vs_base_persona_in_character_coherent": coherent,
        "in_persona_rate_base": (rates.get("base") or {}).get("value"),
        "in_persona_rate_base_persona": (rates.get("base_persona") or {}).get("value"),
        "in_persona_rate_tuned": (rates.get("tuned") or {}).get("value"),
        "tuned_vs_base_win_rate": ((elo.get("vs_base") or {}).get("tuned") or {}).get("value"),
        "dpo_heldout_accuracy": dpo.get("eval/accuracy"),
        "classifier_macro_f1": clf.get("macro_f1"),
        "distillation_gap_base": summaries.get("sft", {}).get("gap/base"),
        "distillation_gap_sft": summaries.get("sft", {}).get("gap/sft"),
        "distillation_gap_exported": summaries.get("export", {}).get("gap/exported"),
        "capability_mean_difference": summaries.get("capability", {}).get("mean_difference"),
    }
    return PipelineReport(path=path, headline={k: v for k, v in headline.items() if v is not None})
