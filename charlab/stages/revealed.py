"""`stage=revealed`: revealed trait preferences of the base and tuned models (the paper's Elo over 144 traits).

    python -m charlab.train stage=revealed persona=sarcasm stage.adapter=outputs/sarcasm/sft/<run>/adapter
    python -m charlab.train stage=revealed eval.revealed_trials=3000 provider@judge=openai judge.model=gpt-4o-mini
    python -m charlab.train stage=revealed 'stage.players=[base]' 'stage.compare_runs=[outputs/x/revealed/<run>]'

Every player answers the same trials (a prompt, two random traits, a condition; `replies.jsonl`); the judge
names the trait each reply expresses, asked in both orders and, with `eval.judge_calibrate`, divided by its
verdict on a content-free reply to the same question (a small judge otherwise picks the likelier trait word
whatever the reply says) (`judgments.jsonl`; verdict modes counted). Traits
are rated per player and per condition (feels_like_you, would_adopt, and the control `random`): order-averaged
Elo and Bradley-Terry, each with bootstrap CIs (`ratings.json`). Per condition the report gives the rank shift
of the constitution's traits from the reference player (base) to tuned (or, without tuned, to base +
constitution: the positive control) and the Spearman correlation of their trait ratings, each with a bootstrap
CI; the headline pools the non-random conditions. Replies and verdicts
are appended as they come; `hydra.run.dir=<its run directory> stage.resume=true` continues an interrupted run.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Optional

import numpy as np
from omegaconf import MISSING, DictConfig
from rich.console import Console

from charlab.data.jsonl import JsonlWriter, iter_jsonl
from charlab.errors import ConfigError, DataError
from charlab.eval import plots, report
from charlab.eval.bootstrap import Estimate
from charlab.eval.judging import LOGPROB, TOP_LOGPROBS, count_modes, judge_to_jsonl
from charlab.eval.persona_likelihood import trait_verdicts
from charlab.eval.players import as_list, build_players, close_players
from charlab.eval.ratings import RatingFit, fit_ratings, percentile_ci
from charlab.eval.revealed import (
    NEUTRAL,
    judge_questions,
    load_conditions,
    load_traits,
    persona_traits,
    rank_shift,
    reply_jobs,
    sample_items,
    sampled_rank_shift,
    sampled_spearman,
    spearman,
    trials,
)
from charlab.eval.revealed_report import revealed_sections
from charlab.eval.sampling import fresh_file, sample_to_jsonl
from charlab.generation.factory import sampling_params
from charlab.registry import StageResult, register_stage
from charlab.run import Run
from charlab.schemas import StageConfig
from charlab.stages._common import load_persona, persona_prompt, to_plain
from charlab.stages._eval import (
    check_judge_format,
    judge_description,
    make_judge,
    player_sampler_factory,
    stage_players,
    stage_prompts,
)

CONTROL = "random"
PREFERENCE = "preference"  # the non-random conditions pooled


@dataclass
class RevealedStageConfig(StageConfig):
    """`stage=revealed`: players, trials, conditions and which traits belong to the persona."""

    name: str = "revealed"
    adapter: Optional[str] = None  # the tuned model's adapter; None: no tuned player
    players: Any = MISSING  # list of base | base_persona | tuned
    prompts: str = MISSING  # generic | persona
    pairs: Any = None  # training file(s) whose prompts are not used
    conditions: Any = MISSING  # subset of feels_like_you, would_adopt, random
    instruction_in: str = MISSING  # system | user
    traits_file: Optional[str] = None  # None: the bundled 144 traits
    persona_traits: Any = None  # None: traits named in the constitution's text
    trait_prompt: str = MISSING  # eval.judge_format=likelihood: the system prompt a trait is read under
    compare_runs: Any = None  # other revealed run directories to correlate with
    top_n: int = MISSING


@dataclass
class Comparison:
    """Reference vs target in one condition: the persona traits' rank shift and the ratings' Spearman, with CIs."""

    condition: str
    shift: dict[str, Any]
    shift_ci: Estimate
    spearman: Estimate


def _estimate(point: float, samples: np.ndarray, level: float, n: int) -> Estimate:
    samples = samples[~np.isnan(samples)]
    if math.isnan(point) or not len(samples):
        return Estimate(point, float("nan"), float("nan"), n)
    low, high = percentile_ci(samples, level)
    return Estimate(float(point), float(low), float(high), n)


def compare(
    condition: str, ref: RatingFit, tuned: RatingFit, traits: list[str], tracked: list[str], level: float, n: int
) -> Comparison:
    """Rank shift (reference -> tuned) of the tracked traits, and Spearman of the ratings of the traits both
    players' trials included (the rest sit tied at the start rating), with CIs."""
    point_ref = np.asarray([ref.elo[t] for t in traits])
    point_tuned = np.asarray([tuned.elo[t] for t in traits])
    shift = rank_shift(traits, point_ref, point_tuned, tracked)
    index = [traits.index(t) for t in tracked if t in traits]
    shift_ci = _estimate(shift["mean_shift"], sampled_rank_shift(ref.elo_samples, tuned.elo_samples, index), level, n)
    played = [i for i, t in enumerate(traits) if ref.games[t] and tuned.games[t]]  # unplayed traits: tied at start
    rho = spearman({traits[i]: point_ref[i] for i in played}, {traits[i]: point_tuned[i] for i in played})
    samples = sampled_spearman(ref.elo_samples[:, played], tuned.elo_samples[:, played])
    rho_ci = _estimate(rho, samples, level, n)
    return Comparison(condition, shift, shift_ci, rho_ci)


@register_stage("revealed", schema=RevealedStageConfig, description="revealed trait preferences (Elo over traits)")
def run(cfg: DictConfig, run: Run) -> StageResult:
    """Run the trials, judge them, rate the traits per player and condition, compare players."""
    stage, ev = cfg.stage, cfg.eval
    persona = load_persona(cfg)
    names = stage_players(cfg, minimum=1, default=("base", "tuned"))
    traits = load_traits(Path(stage.traits_file).expanduser() if stage.traits_file else None)
    all_conditions = load_conditions()
    chosen = list(stage.conditions)
    unknown = [c for c in chosen if c not in all_conditions]
    if unknown or not chosen:
        raise ConfigError(f"stage.conditions={chosen}: allowed are {', '.join(all_conditions)}")
    if int(ev.revealed_trials) < 1:
        raise ConfigError(f"eval.revealed_trials={ev.revealed_trials} is not allowed; use 1 or more")
    likelihood = check_judge_format(cfg) == "likelihood"
    _, prompts = stage_prompts(cfg, run, persona)
    items = sample_items(prompts, traits, chosen, int(ev.revealed_trials), seed=int(cfg.seed))
    tracked = _persona_traits(stage.persona_traits, persona, traits)

    # ---- replies and verdicts -----------------------------------------------------------------------------
    players = build_players(names, player_sampler_factory(cfg), stage.adapter, persona_prompt(cfg, persona=persona))
    replies_path = fresh_file(run.path("replies.jsonl"), stage.resume)
    replies: dict[str, dict[str, Any]] = {}
    try:
        for player in players:
            jobs = reply_jobs(items, player.name, all_conditions, player.system_prompt, stage.instruction_in)
            replies.update(
                sample_to_jsonl(
                    player.sampler, jobs, sampling_params(to_plain(cfg.student)), replies_path, int(ev.batch_size),
                    f"trials ({player.name})",
                    lambda done, total, p=player.name: run.log_metrics({f"revealed/replies_{p}": done}),
                )
            )  # fmt: skip
    finally:
        close_players(players)
    judgments_path = fresh_file(run.path("judgments.jsonl"), stage.resume)
    judge = make_judge(cfg)
    judged_rows: list[dict[str, Any]] = []
    calibrate = False
    try:
        for name in names:
            if likelihood:
                judged_rows += _trait_likelihood(judge, items, replies, name, judgments_path, str(stage.trait_prompt))
            else:
                judged_rows += _judge(judge, items, replies, name, judgments_path, run, int(ev.batch_size))
        # the judge's prior for each question, from a content-free reply; only useful when verdicts are scored
        calibrate = bool(ev.judge_calibrate) and any(
            r["mode"] in (LOGPROB, TOP_LOGPROBS) and "scores" not in r for r in judged_rows
        )
        if calibrate:
            judged_rows += _judge(judge, items, replies, NEUTRAL, judgments_path, run, int(ev.batch_size))
        judged_by = judge_description(cfg, judge) + (
            f"; format likelihood (each reply read under each trait: system prompt {stage.trait_prompt!r})"
            if likelihood
            else "; format pairwise (both orders averaged)"
        )
    finally:
        judge.sampler.close()
    judged_trials = trials(judged_rows, calibrate=calibrate)

    # ---- ratings per player and condition; comparisons ----------------------------------------------------
    conditions = [*chosen, *([PREFERENCE] if len([c for c in chosen if c != CONTROL]) > 1 else [])]
    fits: dict[str, dict[str, RatingFit]] = {}
    usable: dict[str, dict[str, int]] = {}
    for name in names:
        fits[name], usable[name] = {}, {}
        for condition in conditions:
            wanted = [c for c in chosen if c != CONTROL] if condition == PREFERENCE else [condition]
            outcomes = [
                t.outcome
                for t in judged_trials
                if t.player == name and t.condition in wanted and t.outcome is not None
            ]
            usable[name][condition] = len(outcomes)
            fits[name][condition] = fit_ratings(
                outcomes, traits, k=float(ev.k_factor), initial=float(ev.initial_rating), orderings=int(ev.orderings),
                resamples=int(ev.bootstrap), bt_prior=float(ev.bt_prior), level=float(ev.ci_level), seed=int(cfg.seed),
            )  # fmt: skip
    modes = {name: count_modes(r for r in judged_rows if r["player"] == name) for name in names}
    neutral_rows = sum(r["player"] == NEUTRAL for r in judged_rows)
    unparseable = {name: sum(t.outcome is None for t in judged_trials if t.player == name) for name in names}
    reference, target = compared_players(names)
    comparisons: dict[str, Comparison] = {}
    # the rank shift is about the persona's traits: the games they played, not all trials, say how much it rests on
    tracked_games = {
        name: {c: sum(fit.games.get(t, 0) for t in tracked) for c, fit in by.items()} for name, by in fits.items()
    }
    if reference and target:
        for condition in conditions:
            n = min(usable[reference][condition], usable[target][condition])
            comparisons[condition] = compare(
                condition, fits[reference][condition], fits[target][condition], traits, tracked, float(ev.ci_level), n
            )
    ratings_path = run.path("ratings.json")
    ratings_path.write_text(
        json.dumps({n: {c: [asdict(r) for r in f.table] for c, f in by.items()} for n, by in fits.items()}, indent=1)
    )
    headline_condition = (
        PREFERENCE if PREFERENCE in conditions else next((c for c in chosen if c != CONTROL), chosen[0])
    )
    correlations = _correlations(stage, run, fits, names, headline_condition)
    metric_name = "persona_trait_rank_shift"
    headline = comparisons.get(headline_condition)
    metric = headline.shift_ci.value if headline and headline.shift["traits"] and headline.shift_ci.n else None
    summary = {
        "players": names,
        "trials": len(items),
        "conditions": conditions,
        "usable": usable,
        "tracked_games": tracked_games,
        "unparseable": unparseable,
        "verdict_modes": modes,
        "judge": judged_by + (f"; calibrated by {neutral_rows} content-free replies" if calibrate else ""),
        "persona_traits": tracked,
        "reference": reference,
        "target": target,
        "headline_condition": headline_condition,
        "comparisons": {
            c: {"rank_shift": v.shift_ci.as_dict(), "spearman": v.spearman.as_dict(),
                "traits": {t: r[2] for t, r in v.shift["traits"].items()},
                "tracked_games": min(tracked_games[reference][c], tracked_games[target][c])}
            for c, v in comparisons.items()
        },
        "spearman": correlations,
        "top_traits": {n: [r.player for r in f[headline_condition].table[:5]] for n, f in fits.items()},
        metric_name: metric,
    }  # fmt: skip
    if headline:
        summary[f"{metric_name}_ci"] = [headline.shift_ci.low, headline.shift_ci.high]
    run.log_metrics(
        {f"revealed/{metric_name}": metric} | {f"revealed/spearman/{k}": v for k, v in correlations.items()}
    )

    # ---- report -------------------------------------------------------------------------------------------
    tables = {n: f[headline_condition].table for n, f in fits.items()}
    top_png = plots.plot_top_bottom(tables, run.path("top_bottom_traits.png"), int(stage.top_n))
    images = [report.image(top_png, "top and bottom traits")]
    artifacts = {"ratings": ratings_path, "report": run.path("report.md"), "plot": top_png}
    if reference and target:
        scatter = plots.plot_rank_scatter(
            fits[reference][headline_condition].elo, fits[target][headline_condition].elo,
            run.path("trait_scatter.png"), reference, target, tracked,
        )  # fmt: skip
        images.append(report.image(scatter, f"trait Elo ({headline_condition}), {reference} vs {target}"))
    _log_tables(run, replies, judged_rows)
    report.write_report(
        artifacts["report"],
        f"Revealed preferences: {persona.name}",
        revealed_sections(
            names, fits, conditions, usable, unparseable, modes, tracked, comparisons, correlations,
            headline_condition, (reference, target), images, stage, len(items), judged_by,
        ),
    )  # fmt: skip
    Console().print(
        f"[bold]revealed preferences[/bold]: {metric_name} ({headline_condition}) = {report.fmt(metric)}"
        + (f" (95% CI {report.ci(headline.shift_ci.low, headline.shift_ci.high)})" if headline else "")
        + "; usable trials: "
        + ", ".join(f"{n} {sum(u[c] for c in chosen)}/{len(items)}" for n, u in usable.items())
    )
    return StageResult(
        metric=None if metric is None or math.isnan(metric) else metric,
        metric_name=metric_name,
        artifacts=artifacts,
        summary=report.json_safe(summary),
    )


def _judge(
    judge: Any, items: list, replies: dict, name: str, path: Path, run: Run, batch_size: int
) -> list[dict[str, Any]]:
    """The judge's verdicts on `name`'s trials, both orders (appended to `path`, resumable)."""
    questions = judge_questions(items, replies, name)
    rows = judge_to_jsonl(
        judge, questions, path, batch_size, f"judging ({name})",
        lambda done, total: run.log_metrics({f"revealed/judged_{name}": done}),
    )  # fmt: skip
    return [rows[q.id] for q in questions if q.id in rows]


def _trait_likelihood(
    judge: Any, items: list, replies: dict, name: str, path: Path, template: str
) -> list[dict[str, Any]]:
    """Likelihood-format verdicts on `name`'s trials (appended to `path`; finished trials are kept)."""
    done = {row["id"]: row for row in iter_jsonl(path) if row.get("player") == name} if path.is_file() else {}
    todo = [item for item in items if f"{name}:{item.id}" not in done]
    rows = trait_verdicts(judge.sampler, todo, replies, name, template)
    with JsonlWriter(path) as writer:
        writer.write_many(rows)
    done.update({row["id"]: row for row in rows})
    return [done[f"{name}:{item.id}"] for item in items if f"{name}:{item.id}" in done]


def compared_players(names: list[str]) -> tuple[Optional[str], Optional[str]]:
    """(reference, target) of the rank shift: base -> tuned, else base -> base + constitution (the positive
    control), else base + constitution -> tuned; (None, None) with one player."""
    for reference, target in (("base", "tuned"), ("base", "base_persona"), ("base_persona", "tuned")):
        if reference in names and target in names:
            return reference, target
    return None, None


def _correlations(
    stage: Any, run: Run, fits: dict[str, dict[str, RatingFit]], names: list[str], condition: str
) -> dict[str, float]:
    """Spearman of players' trait ratings (in `condition`), also against `stage.compare_runs`' players."""
    elo = {n: fits[n][condition].elo for n in names}
    correlations = {f"{a} vs {b}": spearman(elo[a], elo[b]) for a in names for b in names if a < b}
    for other in as_list(stage.compare_runs):
        run.add_parent(f"compare_{Path(other).name}", other)
        for player, theirs in _load_ratings(Path(other).expanduser(), condition).items():
            if player in elo:
                correlations[f"{player} vs {Path(other).name}:{player}"] = spearman(elo[player], theirs)
    return correlations


def _persona_traits(value: Any, persona: Any, traits: list[str]) -> list[str]:
    """The configured persona traits (must be in the list), or those the constitution's text names."""
    if value is not None and as_list(value):
        chosen = [t.strip().lower() for t in as_list(value)]
        missing = [t for t in chosen if t not in traits]
        if missing:
            raise ConfigError(f"stage.persona_traits: {', '.join(missing)} not in the trait list")
        return chosen
    text = " ".join([persona.system_prompt, persona.description, *(t.trait for t in persona.traits)])
    return persona_traits(text, traits)


def _load_ratings(directory: Path, condition: str) -> dict[str, dict[str, float]]:
    """Trait Elo per player of another revealed run (its `condition`, else its pooled or only table)."""
    path = directory / "ratings.json" if directory.is_dir() else directory
    if not path.is_file():
        raise DataError(f"{directory}: no ratings.json (stage.compare_runs takes revealed run directories)")
    data = json.loads(path.read_text())
    out = {}
    for player, by in data.items():
        rows = by if isinstance(by, list) else by.get(condition) or next(iter(by.values()))
        out[player] = {r["player"]: r["elo"] for r in rows}
    return out


def _log_tables(run: Run, replies: dict, judged: list[dict[str, Any]]) -> None:
    rows = [
        [r["player"], replies.get(f"{r['player']}:{r['item']}", {}).get("prompt", ""), r["trait_a"], r["trait_b"],
         r["condition"], r.get("order", "-"), replies.get(f"{r['player']}:{r['item']}", {}).get("text", ""),
         r["mode"], r.get("choice") or (max(r["scores"], key=r["scores"].get) if r.get("scores") else "")]
        for r in judged
    ]  # fmt: skip
    run.tracker.log_table(
        "revealed/verdicts",
        ["player", "prompt", "trait_a", "trait_b", "condition", "order", "reply", "mode", "choice"],
        rows,
    )
