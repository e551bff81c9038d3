"""The persona classifier's `report.md` sections: in-persona rates first, then how far the classifier can be
trusted (held-out scores with CIs, the positive control), its data, and the robustness attacks."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Optional

from charlab.eval import report
from charlab.eval.bootstrap import Estimate
from charlab.eval.classifier_data import LabelledText, label_counts

PLAYER_TEXT = {
    "base": "base (no system prompt)",
    "base_persona": "base + constitution system prompt",
    "tuned": "tuned (no system prompt)",
}


def rates_table(rates: Mapping[str, Estimate]) -> str:
    """In-persona rate per player and each player minus base, with CIs."""
    rows = [[PLAYER_TEXT.get(name, name), e.value, report.ci(e.low, e.high), e.n] for name, e in rates.items()]
    return report.table(["model", "in-persona rate", "95% CI", "prompts"], rows)


def control_line(rates: Mapping[str, Estimate]) -> str:
    """Whether the run's positive control (base + constitution vs base) came out clearly different."""
    diff = rates.get("base_persona - base")
    if diff is None:
        return ""
    passed = diff.excludes(0.0) and diff.value > 0
    return (
        f"Positive control, base + constitution vs base: {report.fmt(diff.value)} (95% CI "
        f"{report.ci(diff.low, diff.high)}): "
        + ("**passed**, the classifier sees the persona." if passed else
           "**not passed**: the classifier cannot tell the persona prompt's replies from base, so its rates say "
           "little.")
    )  # fmt: skip


def classifier_sections(
    metrics: dict[str, Any],
    *,
    scores: Mapping[str, Estimate],
    rates: Mapping[str, Estimate],
    labels: list[str],
    train: Sequence[LabelledText],
    held_out: Sequence[LabelledText],
    confusion_png: Path,
    attacks: dict[str, dict[str, Any]],
    attack_png: Optional[Path],
    note: str,
    ev: Any,
    mode: str,
    why: str,
    prompts: int,
) -> list[tuple[str, str]]:
    """The report's sections, in order."""
    headline = (
        rates_table(rates)
        + f"\n\nShare of replies to {prompts} held-out prompts classified in persona; CIs resample prompts (paired "
        "across models, so a difference's CI excludes 0 only when the models really differ).\n\n" + control_line(rates)
        if rates
        else "No in-persona rates: the run's persona is not a class of this classifier."
    )
    quality = report.table(
        ["held-out metric", "value", "95% CI"],
        [[name, e.value, report.ci(e.low, e.high)] for name, e in scores.items()]
        + [["macro-F1", metrics["macro_f1"], ""]],
    )
    confusion = report.table(
        ["true \\ predicted", *labels], [[t, *row] for t, row in zip(labels, metrics["confusion_matrix"])]
    )
    data = report.table(
        ["split", "texts", "prompts", *labels],
        [
            [name, len(rows), len({r.prompt for r in rows})] + [label_counts(rows).get(label, 0) for label in labels]
            for name, rows in (("train", train), ("held-out", held_out))
        ],
    )
    sections = [
        ("In-persona rate", headline),
        (
            "Classifier (held-out prompts)",
            quality + f"\n\nChance accuracy is about {1 / max(1, len(labels)):.2f}; ROC-AUC 0.5 is chance.",
        ),
        ("Confusion matrix", confusion + "\n\n" + report.image(confusion_png, "confusion matrix")),
        (
            "Data (split by prompt: no prompt is in both)",
            f"Texts: **{mode}** ({why}).\n\n" + data,
        ),
    ]
    if attacks:
        model = next(iter(attacks.values()))["model"]
        rows = [[a, v["suffix"], v["n"], v["rate"]] for a, v in attacks.items()]
        body = (
            f"Model under attack: {model}. `none` is the plain prompt; `keep_going` is the second reply after the "
            "follow-up message.\n\n"
            + report.table(["attack", "suffix / follow-up", "replies", "in-persona rate"], rows)
        )
        if attack_png is not None:
            body += "\n\n" + report.image(attack_png, "in-persona rate per attack")
        sections.append(("Robustness", body))
    elif note:
        sections.append(("Robustness", note))
    setup = f"encoder {ev.classifier_model}, method {ev.classifier_method}"
    if ev.classifier_method == "finetune":
        setup += f", {ev.classifier_epochs} epoch(s), batch {ev.classifier_batch_size}, lr {ev.classifier_lr}"
    else:
        setup += f", logistic regression C={ev.classifier_head_c}"
    sections.append(("Setup", f"{setup}, max length {ev.classifier_max_length}, {ev.bootstrap} bootstrap resamples."))
    return sections
