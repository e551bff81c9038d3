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

from omegaconf import MISSING, DictConfig
from rich.console import Console

from charlab.errors import ConfigError, DataError
from charlab.eval import plots, report
from charlab.eval.judging import count_modes
from charlab.eval.players import as_list
from charlab.eval.ratings import RatingFit, fit_ratings
from charlab.eval.revealed import (
    NEUTRAL,
    Comparison,
    compare,
    load_conditions,
    load_traits,
    persona_traits,
    sample_items,
    spearman,
    trials,
)
from charlab.eval.revealed_report import revealed_sections
from charlab.registry import StageResult, register_stage
from charlab.run import Run
from charlab.schemas import StageConfig
from charlab.stages._common import load_persona
from charlab.stages._eval import (
    check_judge_format,
    rating_settings,
    stage_players,
    stage_prompts,
)
from charlab.stages._revealed_trials import trial_replies, trial_verdicts

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


@register_stage("revealed", schema=RevealedStageConfig, description="revealed trait preferences (Elo over traits)")
def run(cfg: DictConfig, run: Run) -> StageResult:
    """Run the trials, judge them, rate the traits per player and condition, compare players."""
    stage, ev = cfg.stage, cfg.eval
    persona = load_persona(cfg)
    names = stage_players(cfg, minimum=1, default=("base", "tuned"))
    traits = load_traits(Path(stage.traits_file).expanduser() if stage.traits_file else None)
    all_conditions = load_conditions()
    chosen = _chosen_conditions(cfg, all_conditions)
    likelihood = check_judge_format(cfg) == "likelihood"
    _, prompts = stage_prompts(cfg, run, persona)
    items = sample_items(prompts, traits, chosen, int(ev.revealed_trials), seed=int(cfg.seed))
    tracked = _persona_traits(stage.persona_traits, persona, traits)

    replies = trial_replies(cfg, run, names, items, all_conditions, persona)
    judged_rows, calibrate, judged_by = trial_verdicts(cfg, run, names, items, replies, likelihood)
    judged_trials = trials(judged_rows, calibrate=calibrate)

    conditions = [*chosen, *([PREFERENCE] if len([c for c in chosen if c != CONTROL]) > 1 else [])]
    fits, usable = _rate_traits(cfg, names, conditions, chosen, judged_trials, traits)
    modes = {name: count_modes(r for r in judged_rows if r["player"] == name) for name in names}
    neutral_rows = sum(r["player"] == NEUTRAL for r in judged_rows)
    unparseable = {name: sum(t.outcome is None for t in judged_trials if t.player == name) for name in names}
    reference, target = compared_players(names)
    # the rank shift is about the persona's traits: the games they played, not all trials, say how much it rests on
    tracked_games = {
        name: {c: sum(fit.games.get(t, 0) for t in tracked) for c, fit in by.items()} for name, by in fits.items()
    }
    comparisons = _comparisons(cfg, fits, usable, conditions, traits, tracked, (reference, target))
    ratings_path = _write_ratings(run.path("ratings.json"), fits)
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
        "comparisons": _comparison_summary(comparisons, tracked_games, (reference, target)),
        "spearman": correlations,
        "top_traits": {n: [r.player for r in f[headline_condition].table[:5]] for n, f in fits.items()},
        metric_name: metric,
    }  # fmt: skip
    if headline:
        summary[f"{metric_name}_ci"] = [headline.shift_ci.low, headline.shift_ci.high]
    run.log_metrics(
        {f"revealed/{metric_name}": metric} | {f"revealed/spearman/{k}": v for k, v in correlations.items()}
    )

    artifacts = {"ratings": ratings_path, "report": run.path("report.md")}
    artifacts["plot"], images = _plots(run, fits, headline_condition, (reference, target), tracked, int(stage.top_n))
    _log_tables(run, replies, judged_rows)
    report.write_report(
        artifacts["report"],
        f"Revealed preferences: {persona.name}",
        revealed_sections(
            names, fits=fits, conditions=conditions, usable=usable, unparseable=unparseable, modes=modes,
            tracked=tracked, comparisons=comparisons, correlations=correlations, headline_condition=headline_condition,
            compared=(reference, target), images=images, stage=stage, trials=len(items), judged_by=judged_by,
        ),
    )  # fmt: skip
    _print_headline(f"{metric_name} ({headline_condition})", metric, headline, usable, chosen, len(items))
    return StageResult(
        metric=None if metric is None or math.isnan(metric) else metric,
        metric_name=metric_name,
        artifacts=artifacts,
        summary=report.json_safe(summary),
    )


def _chosen_conditions(cfg: DictConfig, all_conditions: dict[str, str]) -> list[str]:
    """`stage.conditions`, checked against the bundled ones; `eval.revealed_trials` checked too."""
    chosen = list(cfg.stage.conditions)
    unknown = [c for c in chosen if c not in all_conditions]
    if unknown or not chosen:
        raise ConfigError(f"stage.conditions={chosen}: allowed are {', '.join(all_conditions)}")
    if int(cfg.eval.revealed_trials) < 1:
        raise ConfigError(f"eval.revealed_trials={cfg.eval.revealed_trials} is not allowed; use 1 or more")
    return chosen


def _rate_traits(
    cfg: DictConfig, names: list[str], conditions: list[str], chosen: list[str], judged_trials: list, traits: list[str]
) -> tuple[dict[str, dict[str, RatingFit]], dict[str, dict[str, int]]]:
    """Trait ratings per player and condition (`preference` pools the non-random conditions), and usable trials."""
    settings = rating_settings(cfg)
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
            fits[name][condition] = fit_ratings(outcomes, settings, traits)
    return fits, usable


def _comparisons(
    cfg: DictConfig,
    fits: dict[str, dict[str, RatingFit]],
    usable: dict[str, dict[str, int]],
    conditions: list[str],
    traits: list[str],
    tracked: list[str],
    compared: tuple[Optional[str], Optional[str]],
) -> dict[str, Comparison]:
    """Reference vs target in every condition (none with a single player)."""
    reference, target = compared
    comparisons: dict[str, Comparison] = {}
    if reference and target:
        for condition in conditions:
            n = min(usable[reference][condition], usable[target][condition])
            comparisons[condition] = compare(
                condition, fits[reference][condition], fits[target][condition], traits, tracked,
                float(cfg.eval.ci_level), n,
            )  # fmt: skip
    return comparisons


def _plots(
    run: Run,
    fits: dict[str, dict[str, RatingFit]],
    headline_condition: str,
    compared: tuple[Optional[str], Optional[str]],
    tracked: list[str],
    top_n: int,
) -> tuple[Path, list[str]]:
    """The top/bottom traits plot (and, with two players, the trait-Elo scatter); their report images."""
    reference, target = compared
    tables = {n: f[headline_condition].table for n, f in fits.items()}
    top_png = plots.plot_top_bottom(tables, run.path("top_bottom_traits.png"), top_n)
    images = [report.image(top_png, "top and bottom traits")]
    if reference and target:
        scatter = plots.plot_rank_scatter(
            fits[reference][headline_condition].elo, fits[target][headline_condition].elo,
            run.path("trait_scatter.png"), reference, target, tracked,
        )  # fmt: skip
        images.append(report.image(scatter, f"trait Elo ({headline_condition}), {reference} vs {target}"))
    return top_png, images


def _write_ratings(path: Path, fits: dict[str, dict[str, RatingFit]]) -> Path:
    """Every player's trait ratings per condition (`ratings.json`, what `stage.compare_runs` reads)."""
    path.write_text(
        json.dumps({n: {c: [asdict(r) for r in f.table] for c, f in by.items()} for n, by in fits.items()}, indent=1)
    )
    return path


def _comparison_summary(
    comparisons: dict[str, Comparison], tracked_games: dict[str, dict[str, int]], compared: tuple
) -> dict[str, Any]:
    """Per condition: the rank shift and Spearman with CIs, the persona traits' shifts, the games they rest on."""
    reference, target = compared
    return {
        c: {"rank_shift": v.shift_ci.as_dict(), "spearman": v.spearman.as_dict(),
            "traits": {t: r[2] for t, r in v.shift["traits"].items()},
            "tracked_games": min(tracked_games[reference][c], tracked_games[target][c])}
        for c, v in comparisons.items()
    }  # fmt: skip


def _print_headline(
    what: str, metric: Optional[float], headline: Optional[Comparison], usable: dict, chosen: list[str], trials: int
) -> None:
    """One console line: the headline rank shift (with its CI) and each player's usable trials."""
    Console().print(
        f"[bold]revealed preferences[/bold]: {what} = {report.fmt(metric)}"
        + (f" (95% CI {report.ci(headline.shift_ci.low, headline.shift_ci.high)})" if headline else "")
        + "; usable trials: "
        + ", ".join(f"{n} {sum(u[c] for c in chosen)}/{trials}" for n, u in usable.items())
    )


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
