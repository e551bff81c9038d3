"""The revealed-preference `report.md` sections: the persona traits' rank shift per condition (random as the
control) with CIs, Spearman correlations, every player's trait table per condition, and how the judge answered."""

from __future__ import annotations

from typing import Any, Optional

from charlab.eval import report

CONTROL = "random"


def headline_sections(
    comparisons: dict[str, Any],
    headline_condition: str,
    compared: tuple[Optional[str], Optional[str]],
    usable: dict[str, dict[str, int]],
    tracked: list[str],
) -> list[tuple[str, str]]:
    """The headline rank shift (with the random-pick control), the per-condition table and the persona traits'
    ranks; one line when there is a single player."""
    sections: list[tuple[str, str]] = []
    reference, target = compared
    head = comparisons.get(headline_condition)
    if head is not None:
        control = comparisons.get(CONTROL)
        text = (
            f"**Persona-trait rank shift {reference} -> {target} ({headline_condition}): "
            f"{report.fmt(head.shift_ci.value, 1)}** (95% CI {report.ci(head.shift_ci.low, head.shift_ci.high, 1)}; "
            f"positive = the constitution's traits ({', '.join(tracked) or 'none found'}) rank higher under {target})."
        )
        if control is not None:
            c = control.shift_ci
            text += (
                f" Control (`{CONTROL}` condition, where the model is told to pick at random): "
                f"{report.fmt(c.value, 1)} (95% CI {report.ci(c.low, c.high, 1)})."
            )
        sections.append(("Headline", text))
        rows = [
            [c, f"{usable[reference][c]} / {usable[target][c]}", v.shift_ci.value,
             report.ci(v.shift_ci.low, v.shift_ci.high, 1), v.spearman.value,
             report.ci(v.spearman.low, v.spearman.high)]
            for c, v in comparisons.items()
        ]  # fmt: skip
        sections.append(
            (
                f"Per condition: rank shift and Spearman ({reference} vs {target})",
                report.table(
                    [
                        "condition",
                        f"usable trials ({reference} / {target})",
                        "rank shift",
                        "95% CI",
                        "Spearman",
                        "95% CI",
                    ],
                    rows,
                ),
            )
        )
        rows = [[t, b, tuned, s] for t, (b, tuned, s) in head.shift["traits"].items()]
        sections.append(
            (
                f"Persona traits ({headline_condition}): rank (1 = most chosen; ties share their average rank)",
                report.table(["trait", f"{reference} rank", f"{target} rank", "shift"], rows)
                if rows
                else "none found",
            )
        )
    else:
        sections.append(
            ("Headline", "One player only: no rank shift (add `tuned` with stage.adapter, or base_persona).")
        )
    return sections


def revealed_sections(
    names: list[str],
    *,
    fits: dict[str, dict[str, Any]],
    conditions: list[str],
    usable: dict[str, dict[str, int]],
    unparseable: dict[str, int],
    modes: dict[str, dict[str, int]],
    tracked: list[str],
    comparisons: dict[str, Any],
    correlations: dict[str, float],
    headline_condition: str,
    compared: tuple[Optional[str], Optional[str]],
    images: list[str],
    stage: Any,
    trials: int,
    judged_by: str,
) -> list[tuple[str, str]]:
    """The report's sections, in order."""
    n = int(stage.top_n)
    sections = headline_sections(comparisons, headline_condition, compared, usable, tracked)
    sections.append(
        (
            f"Correlations (Spearman of trait Elo, {headline_condition})",
            report.table(["pair", "rho"], [[k, v] for k, v in correlations.items()]) if correlations else "one player",
        )
    )
    for name in names:
        for condition in conditions:
            columns, rows = report.rating_rows(fits[name][condition].table)
            title = f"{name}, {condition}: top {n} and bottom {n} traits ({usable[name][condition]} usable trials)"
            sections.append((title, report.table(columns, rows[:n] + rows[-n:])))
    verdicts = [[p, *modes[p].values(), unparseable[p]] for p in names]
    sections.append(
        (
            "Judge verdicts",
            report.table(
                ["player", *[f"{m} (single)" for m in next(iter(modes.values()))], "unparseable trials"], verdicts
            )
            + f"\n\nJudge: {judged_by}. Each trial is asked in both orders of the two traits; a trial with an "
            "unparseable order is left out.",
        )
    )
    sections.append(("Plots", "\n\n".join(images)))
    sections.append(
        (
            "Setup",
            f"{trials} trials per player over {stage.prompts} prompts; conditions {', '.join(stage.conditions)} "
            f"(`preference` pools the non-random ones); instruction in the {stage.instruction_in} message; persona "
            f"traits: {', '.join(tracked) or 'none'}.",
        )
    )
    return sections
