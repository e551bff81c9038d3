"""`stage=elo`: head-to-head Elo of base, base + constitution, and the tuned model on held-out prompts.

    python -m charlab.train stage=elo persona=pirate stage.adapter=outputs/pirate/dpo/<run>/adapter
    python -m charlab.train stage=elo stage.pairs=outputs/pirate/distill/<run>/pairs.jsonl stage.prompts=persona \
        provider@judge=openai judge.model=gpt-4o-mini eval.num_prompts=50

Each player answers every held-out prompt (`replies.jsonl`); the judge compares every pair of players in both
orders (`judgments.jsonl`); agreeing verdicts become `Match` records (`matches.jsonl`, the seed's format)
rated by order-averaged Elo with bootstrap CIs and Bradley-Terry. The headline is the tuned model's win rate
(ties count half). Replies and verdicts are appended as they come, so an interrupted evaluation continues
where it stopped with `hydra.run.dir=<its run directory> stage.resume=true`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Optional

from omegaconf import MISSING, DictConfig
from rich.console import Console
from rich.table import Table

from charlab.errors import ConfigError
from charlab.eval import plots, report
from charlab.eval.bootstrap import Estimate
from charlab.eval.elo import match_outcomes, save_matches
from charlab.eval.head_to_head import player_pairs
from charlab.eval.judging import HELPFUL_CRITERION, persona_criterion
from charlab.eval.ratings import bootstrap_win_rate, fit_ratings, win_matrix
from charlab.eval.sampling import fresh_file
from charlab.eval.selection import training_selection
from charlab.registry import StageResult, register_stage
from charlab.run import Run
from charlab.schemas import StageConfig
from charlab.stages._common import load_persona, persona_prompt
from charlab.stages._eval import (
    check_judge_format,
    eval_replies,
    judge_description,
    make_judge,
    rating_settings,
    stage_players,
    stage_prompts,
)
from charlab.stages._judge_formats import JUDGE_FORMATS, FormatJob

CRITERIA = ("persona", "helpful")


@dataclass
class EloStageConfig(StageConfig):
    """`stage=elo`: which players, which prompts, which judging question."""

    name: str = "elo"
    adapter: Optional[str] = None  # the tuned model's PEFT adapter (tinker:// path on tinker); None: no tuned player
    players: Any = MISSING  # list of base | base_persona | tuned
    prompts: str = MISSING  # generic | persona
    pairs: Any = None  # pairs/introspection file(s) used in training: their prompts are not held out
    replies: Any = None  # earlier replies.jsonl file(s) (e.g. the classifier's) to reuse for the same prompts
    criterion: str = MISSING  # persona | helpful
    samples_in_report: int = MISSING


@register_stage("elo", schema=EloStageConfig, description="head-to-head Elo: base vs base+constitution vs tuned")
def run(cfg: DictConfig, run: Run) -> StageResult:
    """Generate (or reuse) replies, judge every pair in both orders, rate the players."""
    judge_format = _check(cfg)
    persona = load_persona(cfg)
    names = stage_players(cfg, minimum=2)
    exclude_files, prompts = stage_prompts(cfg, run, persona)
    replies_path, replies = eval_replies(cfg, run, names, prompts, persona_prompt(cfg, persona=persona), "elo")
    judged = _judge_matches(cfg, run, persona, prompts, replies, names, judge_format)
    matches_path = save_matches(judged.matches, fresh_file(run.path("matches.jsonl"), resume=False))
    ratings = _rate(cfg, judged.matches, names)
    overlap = training_selection(exclude_files).overlap(judge_format)
    summary = _summary(names, prompts, judged, ratings, overlap, judge_format)
    tally, headline = judged.tally, ratings.headline
    run.log_metrics(
        {"elo/usable": tally.usable, "elo/unparseable": tally.unparseable, f"elo/{ratings.metric_name}": headline[0]}
        | {f"elo/verdicts_{mode}": n for mode, n in tally.modes.items()}
        | {f"elo/rating_{r.player}": r.elo for r in ratings.table}
    )
    ratings_png = plots.plot_ratings(ratings.table, run.path("elo_ratings.png"), f"head-to-head Elo ({persona.name})")
    _log_tables(run, prompts, replies, judged.rows, names)
    sections = _report_sections(
        cfg, run, prompts=prompts, replies=replies, names=names, judged=judged, ratings=ratings, summary=summary,
        ratings_png=ratings_png, exclude_files=exclude_files,
    )  # fmt: skip
    report_path = report.write_report(run.path("report.md"), f"Head-to-head Elo: {persona.name}", sections)
    _print_headline(ratings.table, ratings.metric_name, headline, tally)
    metric = headline[0] if not math.isnan(headline[0]) else None
    return StageResult(
        metric=metric,
        metric_name=ratings.metric_name,
        artifacts={"matches": matches_path, "replies": replies_path, "report": report_path, "plot": ratings_png},
        summary=report.json_safe(summary),
    )


@dataclass
class Judged:
    """The judge's work: its verdict rows, the matches they became, their tally, and how it judged."""

    rows: list[dict[str, Any]]
    matches: list
    tally: Any
    judged_by: str
    criterion: str


@dataclass
class EloRatings:
    """What the matches say: the rating table, pairwise win rates, each player vs base, and the headline pair."""

    outcomes: Any
    table: list
    pair_rates: dict[tuple[str, str], tuple]
    vs_base: dict[str, Estimate]
    focus: str
    opponent: Optional[str]
    headline: tuple
    metric_name: str


def _check(cfg: DictConfig) -> str:
    """The judging question and format, checked; returns the resolved judge format."""
    stage = cfg.stage
    if stage.criterion not in CRITERIA:
        raise ConfigError(f"stage.criterion={stage.criterion!r} is not allowed; use one of {', '.join(CRITERIA)}")
    judge_format = check_judge_format(cfg)
    if JUDGE_FORMATS[judge_format].persona_only and stage.criterion != "persona":
        raise ConfigError(f"eval.judge_format={judge_format} measures the persona only; use stage.criterion=persona")
    return judge_format


def _judge_matches(
    cfg: DictConfig, run: Run, persona: Any, prompts: list, replies: dict, names: list[str], judge_format: str
) -> Judged:
    """Every pair of players judged in both orders (`judgments.jsonl`, appended as verdicts come)."""
    stage = cfg.stage
    criterion = (
        persona_criterion(persona, cfg.persona.assistant_name) if stage.criterion == "persona" else HELPFUL_CRITERION
    )
    judgments_path = fresh_file(run.path("judgments.jsonl"), stage.resume)
    judge = make_judge(cfg, run.pool)
    try:
        result = JUDGE_FORMATS[judge_format].run(
            FormatJob(cfg, run, judge, prompts, replies, names, judgments_path, criterion)
        )
        judged_by = f"{judge_description(cfg, judge)}; {result.how}"
    finally:
        judge.sampler.close()
    return Judged(result.rows, result.matches, result.tally, judged_by, criterion)


def _rate(cfg: DictConfig, matches: list, names: list[str]) -> EloRatings:
    """Order-averaged Elo and Bradley-Terry with bootstrap CIs, pairwise and vs-base win rates, the headline."""
    settings = rating_settings(cfg)
    resamples, level, seed = settings.resamples, settings.level, settings.seed
    outcomes = match_outcomes(matches)
    table = fit_ratings(outcomes, settings, names).table
    pair_rates = {
        (x, y): bootstrap_win_rate(outcomes, x, y, resamples, level, seed) for x, y in player_pairs(names)
    }  # fmt: skip
    vs_base = {
        p: Estimate(*bootstrap_win_rate(outcomes, p, "base", resamples, level, seed))
        for p in names
        if p != "base" and "base" in names
    }
    focus, opponent = headline_players(names)
    headline = bootstrap_win_rate(outcomes, focus, opponent, resamples, level, seed)
    metric_name = f"{focus}_vs_{opponent}_win_rate" if opponent else f"{focus}_win_rate"
    return EloRatings(outcomes, table, pair_rates, vs_base, focus, opponent, headline, metric_name)


def _summary(
    names: list[str], prompts: list, judged: Judged, ratings: EloRatings, overlap: Any, judge_format: str
) -> dict[str, Any]:
    """The stage's summary (meta.json, W&B): judging counts, ratings with CIs, win rates, the headline."""
    tally, table, headline, metric_name = judged.tally, ratings.table, ratings.headline, ratings.metric_name
    return {
        "players": names,
        "prompts": len(prompts),
        "pairs_judged": tally.pairs,
        "decided": tally.decided,
        "ties": tally.ties,
        "unparseable": tally.unparseable,
        "inconsistent": tally.inconsistent,
        "usable": tally.usable,
        "selection_overlap": overlap,
        "verdict_modes": tally.modes,
        "judge_format": judge_format,
        "judge": judged.judged_by,
        "elo": {r.player: round(r.elo, 2) for r in table},
        "elo_ci": {r.player: [round(r.elo_low, 2), round(r.elo_high, 2)] for r in table},
        "bradley_terry": {r.player: round(r.bt, 2) for r in table},
        "bradley_terry_ci": {r.player: [round(r.bt_low, 2), round(r.bt_high, 2)] for r in table},
        "win_rates": {
            f"{x}_vs_{y}": {"rate": r[0], "ci": [r[1], r[2]], "matches": r[3]}
            for (x, y), r in ratings.pair_rates.items()
        },
        "vs_base": {p: e.as_dict() for p, e in ratings.vs_base.items()},
        "headline": {"player": ratings.focus, "opponent": ratings.opponent, "matches": headline[3]},
        metric_name: headline[0],
        f"{metric_name}_ci": [headline[1], headline[2]],
    }


def _report_sections(
    cfg: DictConfig,
    run: Run,
    *,
    prompts: list,
    replies: dict,
    names: list[str],
    judged: Judged,
    ratings: EloRatings,
    summary: dict[str, Any],
    ratings_png: Any,
    exclude_files: list,
) -> list[tuple[str, str]]:
    """The report: headline, ratings, pairwise win rates (with the win-rate matrix plot), judging, samples, setup."""
    stage, ev, tally, headline = cfg.stage, cfg.eval, judged.tally, ratings.headline
    matrix_png = plots.plot_matrix(
        win_matrix(ratings.outcomes, names),
        names,
        run.path("win_matrix.png"),
        "win rate of row vs column player",
        "{:.2f}",
        xlabel="opponent",
        ylabel="player",
    )
    columns, rows = report.rating_rows(ratings.table)
    pair_table = report.table(
        ["player", "vs", "win rate", "95% CI", "matches"],
        [[x, y, r[0], report.ci(r[1], r[2]), r[3]] for (x, y), r in ratings.pair_rates.items()],
    )
    against = f" against {ratings.opponent}" if ratings.opponent else ""
    return [
        (
            "Headline",
            f"**{ratings.focus} win rate{against}: {report.fmt(headline[0])}** (95% CI "
            f"{report.ci(headline[1], headline[2])}, {headline[3]} matches judged in both orders; ties count half; "
            "chance is 0.5).",
        ),
        ("Ratings", report.table(columns, rows) + "\n\n" + report.image(ratings_png, "Elo ratings")),
        ("Pairwise win rates", pair_table + "\n\n" + report.image(matrix_png, "win-rate matrix")),
        (
            "Judging",
            report.table(
                ["pairs judged", "won", "tied", "orders disagree (left out)", "unparseable"],
                [[tally.pairs, tally.decided, tally.ties, tally.inconsistent, tally.unparseable]],
            )
            + "\n\nSingle verdicts by mode: "
            + ", ".join(f"{k} {v}" for k, v in tally.modes.items())
            + f".\n\nJudge: {judged.judged_by}. Question: "
            + report.cell(judged.criterion.splitlines()[0], 300)
            + (f"\n\n**Note:** {summary['selection_overlap']}." if summary["selection_overlap"] else ""),
        ),
        ("Sample replies", _sample_table(prompts, replies, names, int(stage.samples_in_report))),
        (
            "Setup",
            f"{len(prompts)} held-out {stage.prompts} prompts ({len(exclude_files)} training file(s) excluded); "
            f"players: {', '.join(names)}; adapter: {stage.adapter or '—'}; Elo K={ev.k_factor}, start "
            f"{ev.initial_rating}, {ev.orderings} orderings, {ev.bootstrap} bootstrap resamples.",
        ),
    ]


def headline_players(names: list[str]) -> tuple[str, Optional[str]]:
    """Whose win rate leads the report, against whom: tuned vs base where both play (None: against all)."""
    focus = next((p for p in ("tuned", "base_persona") if p in names), names[-1])
    opponent = "base" if "base" in names and focus != "base" else None
    return focus, opponent


def _sample_table(prompts: list, replies: dict[str, dict[str, Any]], names: list[str], n: int) -> str:
    rows = [[text] + [replies.get(f"{p}:{pid}", {}).get("text", "") for p in names] for pid, text in prompts[:n]]
    return report.table(["prompt", *names], rows)


def _log_tables(run: Run, prompts: list, replies: dict, judged: list[dict[str, Any]], names: list[str]) -> None:
    run.tracker.log_table(
        "elo/replies",
        ["prompt", *names],
        [[text] + [replies.get(f"{p}:{pid}", {}).get("text", "") for p in names] for pid, text in prompts],
    )
    if judged and "persona_score" in judged[0]:  # the likelihood format: one score per reply
        rows = [[r["player"], r["prompt_id"], r["persona_score"]] for r in judged]
        run.tracker.log_table("elo/persona_scores", ["player", "prompt id", "persona score"], rows)
        return
    run.tracker.log_table(
        "elo/verdicts",
        ["prompt", "A", "B", "order", "mode", "choice", "judge reply"],
        [[r["prompt"], r["A"], r["B"], r["order"], r["mode"], r["choice"] or "", r["text"]] for r in judged],
    )


def _print_headline(table: list, metric_name: str, headline: tuple, tally: Any) -> None:
    console = Console()
    view = Table(title="head-to-head Elo")
    for column in ("player", "Elo", "95% CI", "Bradley-Terry", "games"):
        view.add_column(column)
    for r in table:
        view.add_row(r.player, f"{r.elo:.1f}", f"{r.elo_low:.1f} – {r.elo_high:.1f}", f"{r.bt:.1f}", str(r.games))
    console.print(view)
    console.print(
        f"{metric_name} {report.fmt(headline[0])} (95% CI {report.ci(headline[1], headline[2])}); "
        f"{tally.decided} won, {tally.ties} tied, {tally.unparseable} unparseable pairs; verdicts by mode: "
        + ", ".join(f"{k} {v}" for k, v in tally.modes.items())
    )
