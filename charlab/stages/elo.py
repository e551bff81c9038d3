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
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from omegaconf import MISSING, DictConfig, OmegaConf
from rich.console import Console
from rich.table import Table

from charlab.chat_format import make_messages
from charlab.errors import ConfigError
from charlab.eval import plots, report
from charlab.eval.elo import match_outcomes, save_matches
from charlab.eval.head_to_head import consistent_matches, judge_jobs, player_pairs
from charlab.eval.judge import HELPFUL_CRITERION, persona_criterion
from charlab.eval.players import as_list, build_players, check_players, close_players
from charlab.eval.prompts import held_out_prompts, training_prompts
from charlab.eval.ratings import bootstrap_win_rate, rating_table, win_matrix
from charlab.eval.sampling import SampleJob, fresh_file, sample_to_jsonl
from charlab.generation.base import Sampler
from charlab.generation.factory import sampling_params
from charlab.registry import StageResult, register_stage
from charlab.run import Run
from charlab.schemas import StageConfig
from charlab.stages._common import load_persona, model_config, sampler_for_role, to_plain

CRITERIA = ("persona", "helpful")


@dataclass
class EloStageConfig(StageConfig):
    """`stage=elo`: which players, which prompts, which judging question."""

    name: str = "elo"
    adapter: Optional[str] = None  # the tuned model's PEFT adapter (tinker:// path on tinker); None: no tuned player
    players: Any = MISSING  # list of base | base_persona | tuned
    prompts: str = MISSING  # generic | persona
    pairs: Any = None  # pairs/introspection file(s) used in training: their prompts are not held out
    criterion: str = MISSING  # persona | helpful
    samples_in_report: int = MISSING


def stage_prompts(cfg: DictConfig, run: Run, persona: Any) -> tuple[list[Path], list]:
    """Held-out prompts for an eval stage (training prompts of `stage.pairs` excluded), inputs recorded."""
    stage = cfg.stage
    exclude_files = [Path(p).expanduser() for p in as_list(stage.pairs)]
    for i, path in enumerate(exclude_files):
        run.add_parent(f"pairs_{i}" if i else "pairs", path)
    if stage.adapter:
        run.add_parent("adapter", stage.adapter)
    prompts = held_out_prompts(
        stage.prompts, persona, int(cfg.eval.num_prompts), training_prompts(exclude_files), seed=int(cfg.seed)
    )
    return exclude_files, prompts


def player_sampler_factory(cfg: DictConfig) -> Callable[[Optional[str]], Sampler]:
    """`make(adapter_or_None)`: the models under test are the student provider on `eval.base_model` (default: the
    student's own model); the tuned model is that same base with the adapter."""
    if cfg.eval.base_model:
        cfg = OmegaConf.masked_copy(cfg, [key for key in cfg if key != "hydra"])
        cfg.student.model = cfg.eval.base_model
    return lambda adapter: sampler_for_role(cfg, "student", adapter)


@register_stage("elo", schema=EloStageConfig, description="head-to-head Elo: base vs base+constitution vs tuned")
def run(cfg: DictConfig, run: Run) -> StageResult:
    """Generate replies, judge every pair in both orders, rate the players."""
    stage, ev = cfg.stage, cfg.eval
    if stage.criterion not in CRITERIA:
        raise ConfigError(f"stage.criterion={stage.criterion!r} is not allowed; use one of {', '.join(CRITERIA)}")
    persona = load_persona(cfg)
    names = check_players(list(stage.players), stage.adapter, minimum=2)
    exclude_files, prompts = stage_prompts(cfg, run, persona)

    # ---- replies ------------------------------------------------------------------------------------------
    model, student = model_config(cfg.model), to_plain(cfg.student)
    make = player_sampler_factory(cfg)
    persona_prompt = persona.render_system_prompt("teacher", assistant_name=cfg.persona.assistant_name)
    replies_path = fresh_file(run.path("replies.jsonl"), stage.resume)
    players = build_players(names, make, stage.adapter, persona_prompt)
    params = sampling_params(student)
    replies: dict[str, dict[str, Any]] = {}
    try:
        for player in players:
            jobs = [
                SampleJob(
                    f"{player.name}:{pid}",
                    make_messages(text, system=player.system_prompt),
                    {"player": player.name, "prompt_id": pid, "prompt": text},
                )
                for pid, text in prompts
            ]
            replies.update(
                sample_to_jsonl(
                    player.sampler, jobs, params, replies_path, int(ev.batch_size), f"replies ({player.name})",
                    lambda done, total, p=player.name: run.log_metrics({f"elo/replies_{p}": done}),
                )
            )  # fmt: skip
    finally:
        close_players(players)

    # ---- judging ------------------------------------------------------------------------------------------
    criterion = (
        persona_criterion(persona.description or persona.system_prompt, [t.trait for t in persona.traits])
        if stage.criterion == "persona"
        else HELPFUL_CRITERION
    )
    judge_cfg = to_plain(cfg.judge)
    judgments_path = fresh_file(run.path("judgments.jsonl"), stage.resume)
    jobs = judge_jobs(prompts, replies, names, criterion)
    judge = sampler_for_role(cfg, "judge")
    try:
        judged = sample_to_jsonl(
            judge, jobs, sampling_params(judge_cfg), judgments_path, int(ev.batch_size), "judging",
            lambda done, total: run.log_metrics({"elo/judged": done, "elo/judge_total": total}),
        )  # fmt: skip
    finally:
        judge.close()
    judged_rows = [judged[j.id] for j in jobs if j.id in judged]
    matches, tally = consistent_matches(judged_rows, replies)
    matches_path = save_matches(matches, fresh_file(run.path("matches.jsonl"), resume=False))

    # ---- ratings ------------------------------------------------------------------------------------------
    outcomes = match_outcomes(matches)
    table = rating_table(
        outcomes, names, k=float(ev.k_factor), initial=float(ev.initial_rating), orderings=int(ev.orderings),
        resamples=int(ev.bootstrap), bt_prior=float(ev.bt_prior), level=float(ev.ci_level), seed=int(cfg.seed),
    )  # fmt: skip
    pair_rates = {
        (x, y): bootstrap_win_rate(outcomes, x, y, int(ev.bootstrap), float(ev.ci_level), int(cfg.seed))
        for x, y in player_pairs(names)
    }
    focus = next((p for p in ("tuned", "base_persona") if p in names), names[-1])
    headline = bootstrap_win_rate(outcomes, focus, None, int(ev.bootstrap), float(ev.ci_level), int(cfg.seed))
    summary = {
        "players": names,
        "prompts": len(prompts),
        "pairs_judged": tally.pairs,
        "consistent": tally.consistent,
        "inconsistent": tally.inconsistent,
        "unparseable": tally.unparseable,
        "consistency": tally.consistency,
        "verdicts": tally.statuses,
        "elo": {r.player: round(r.elo, 2) for r in table},
        "elo_ci": {r.player: [round(r.elo_low, 2), round(r.elo_high, 2)] for r in table},
        "bradley_terry": {r.player: round(r.bt, 2) for r in table},
        f"{focus}_win_rate": headline[0],
        f"{focus}_win_rate_ci": [headline[1], headline[2]],
    }
    run.log_metrics(
        {
            "elo/consistent": tally.consistent,
            "elo/unparseable": tally.unparseable,
            f"elo/{focus}_win_rate": headline[0],
        }
        | {f"elo/rating_{r.player}": r.elo for r in table}
    )

    # ---- report -------------------------------------------------------------------------------------------
    ratings_png = plots.plot_ratings(table, run.path("elo_ratings.png"), f"head-to-head Elo ({persona.name})")
    matrix_png = plots.plot_matrix(
        win_matrix(outcomes, names),
        names,
        run.path("win_matrix.png"),
        "win rate of row vs column player",
        "{:.2f}",
        xlabel="opponent",
        ylabel="player",
    )
    _log_tables(run, prompts, replies, judged_rows, names)
    columns, rows = report.rating_rows(table)
    pair_table = report.table(
        ["player", "vs", "win rate", "95% CI", "matches"],
        [[x, y, r[0], report.ci(r[1], r[2]), r[3]] for (x, y), r in pair_rates.items()],
    )
    sections = [
        (
            "Headline",
            f"**{focus} win rate: {report.fmt(headline[0])}** (95% CI {report.ci(headline[1], headline[2])}, "
            f"{headline[3]} consistent matches; ties count half).",
        ),
        ("Ratings", report.table(columns, rows) + "\n\n" + report.image(ratings_png, "Elo ratings")),
        ("Pairwise win rates", pair_table + "\n\n" + report.image(matrix_png, "win-rate matrix")),
        (
            "Judging",
            report.table(
                ["pairs judged", "consistent", "inconsistent (order-dependent)", "unparseable", "consistency"],
                [[tally.pairs, tally.consistent, tally.inconsistent, tally.unparseable, tally.consistency]],
            )
            + "\n\nSingle verdicts: "
            + ", ".join(f"{k} {v}" for k, v in tally.statuses.items())
            + f".\n\nJudge: {judge_cfg.get('kind')} ({judge_cfg.get('model') or model.name}); question: "
            + report.cell(criterion.splitlines()[0], 300),
        ),
        ("Sample replies", _sample_table(prompts, replies, names, int(stage.samples_in_report))),
        (
            "Setup",
            f"{len(prompts)} held-out {stage.prompts} prompts ({len(exclude_files)} training file(s) excluded); "
            f"players: {', '.join(names)}; adapter: {stage.adapter or '—'}; Elo K={ev.k_factor}, start "
            f"{ev.initial_rating}, {ev.orderings} orderings, {ev.bootstrap} bootstrap resamples.",
        ),
    ]
    report_path = report.write_report(run.path("report.md"), f"Head-to-head Elo: {persona.name}", sections)
    _print_headline(table, focus, headline, tally)
    metric = headline[0] if not math.isnan(headline[0]) else None
    return StageResult(
        metric=metric,
        metric_name=f"{focus}_win_rate",
        artifacts={"matches": matches_path, "replies": replies_path, "report": report_path, "plot": ratings_png},
        summary=report.json_safe(summary),
    )


def _sample_table(prompts: list, replies: dict[str, dict[str, Any]], names: list[str], n: int) -> str:
    rows = [[text] + [replies.get(f"{p}:{pid}", {}).get("text", "") for p in names] for pid, text in prompts[:n]]
    return report.table(["prompt", *names], rows)


def _log_tables(run: Run, prompts: list, replies: dict, judged: list[dict[str, Any]], names: list[str]) -> None:
    run.tracker.log_table(
        "elo/replies",
        ["prompt", *names],
        [[text] + [replies.get(f"{p}:{pid}", {}).get("text", "") for p in names] for pid, text in prompts],
    )
    run.tracker.log_table(
        "elo/verdicts",
        ["prompt", "A", "B", "order", "judge reply"],
        [[r["prompt"], r["A"], r["B"], r["order"], r["text"]] for r in judged],
    )


def _print_headline(table: list, focus: str, headline: tuple, tally: Any) -> None:
    console = Console()
    view = Table(title="head-to-head Elo")
    for column in ("player", "Elo", "95% CI", "Bradley-Terry", "games"):
        view.add_column(column)
    for r in table:
        view.add_row(r.player, f"{r.elo:.1f}", f"{r.elo_low:.1f} – {r.elo_high:.1f}", f"{r.bt:.1f}", str(r.games))
    console.print(view)
    console.print(
        f"{focus} win rate {report.fmt(headline[0])} (95% CI {report.ci(headline[1], headline[2])}); "
        f"{tally.consistent} consistent, {tally.inconsistent} inconsistent, {tally.unparseable} unparseable pairs"
    )
