"""`stage=revealed`: revealed trait preferences of the base and tuned models (the paper's Elo over 144 traits).

    python -m charlab.train stage=revealed persona=sarcasm stage.adapter=outputs/sarcasm/sft/<run>/adapter
    python -m charlab.train stage=revealed eval.revealed_trials=3000 provider@judge=openai judge.model=gpt-4o-mini
    python -m charlab.train stage=revealed 'stage.players=[base]' 'stage.compare_runs=[outputs/x/revealed/<run>]'

Every player answers the same trials (a prompt, two random traits, a condition; `replies.jsonl`); the judge
names the trait each reply expresses (`judgments.jsonl`, unparseable verdicts counted). Traits are rated per
player: order-averaged Elo with bootstrap CIs and Bradley-Terry (`ratings.json`). The report compares players:
the rank shift of the constitution's traits (headline: mean shift from base to tuned), Spearman correlations
(also against `stage.compare_runs`), and plots of the top and bottom traits. Replies and verdicts are appended
as they come; `hydra.run.dir=<its run directory> stage.resume=true` continues an interrupted run.
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
from charlab.eval.players import as_list, build_players, check_players, close_players
from charlab.eval.ratings import PlayerRating, rating_table
from charlab.eval.revealed import (
    judge_jobs,
    load_conditions,
    load_traits,
    outcomes,
    parse_judgements,
    persona_traits,
    rank_shift,
    ranks,
    reply_jobs,
    sample_items,
    spearman,
)
from charlab.eval.sampling import fresh_file, sample_to_jsonl
from charlab.generation.factory import sampling_params
from charlab.registry import StageResult, register_stage
from charlab.run import Run
from charlab.schemas import StageConfig
from charlab.stages._common import load_persona, sampler_for_role, to_plain
from charlab.stages.elo import player_sampler_factory, stage_prompts


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
    compare_runs: Any = None  # other revealed run directories to correlate with
    top_n: int = MISSING


@register_stage("revealed", schema=RevealedStageConfig, description="revealed trait preferences (Elo over traits)")
def run(cfg: DictConfig, run: Run) -> StageResult:
    """Run the trials, judge them, rate the traits per player and compare players."""
    stage, ev = cfg.stage, cfg.eval
    persona = load_persona(cfg)
    names = check_players(list(stage.players), stage.adapter, minimum=1)
    traits = load_traits(Path(stage.traits_file).expanduser() if stage.traits_file else None)
    all_conditions = load_conditions()
    chosen = list(stage.conditions)
    unknown = [c for c in chosen if c not in all_conditions]
    if unknown or not chosen:
        raise ConfigError(f"stage.conditions={chosen}: allowed are {', '.join(all_conditions)}")
    if int(ev.revealed_trials) < 1:
        raise ConfigError(f"eval.revealed_trials={ev.revealed_trials} is not allowed; use 1 or more")
    _, prompts = stage_prompts(cfg, run, persona)
    items = sample_items(prompts, traits, chosen, int(ev.revealed_trials), seed=int(cfg.seed))
    tracked = _persona_traits(stage.persona_traits, persona, traits)

    # ---- replies and verdicts -----------------------------------------------------------------------------
    student = to_plain(cfg.student)
    persona_prompt = persona.render_system_prompt("teacher", assistant_name=cfg.persona.assistant_name)
    players = build_players(names, player_sampler_factory(cfg), stage.adapter, persona_prompt)
    replies_path = fresh_file(run.path("replies.jsonl"), stage.resume)
    replies: dict[str, dict[str, Any]] = {}
    try:
        for player in players:
            jobs = reply_jobs(items, player.name, all_conditions, player.system_prompt, stage.instruction_in)
            replies.update(
                sample_to_jsonl(
                    player.sampler, jobs, sampling_params(student), replies_path, int(ev.batch_size),
                    f"trials ({player.name})",
                    lambda done, total, p=player.name: run.log_metrics({f"revealed/replies_{p}": done}),
                )
            )  # fmt: skip
    finally:
        close_players(players)
    judge_cfg = to_plain(cfg.judge)
    judgments_path = fresh_file(run.path("judgments.jsonl"), stage.resume)
    judge = sampler_for_role(cfg, "judge")
    judged: dict[str, list[dict[str, Any]]] = {}
    try:
        for name in names:
            jobs = judge_jobs(items, replies, name)
            rows = sample_to_jsonl(
                judge, jobs, sampling_params(judge_cfg), judgments_path, int(ev.batch_size), f"judging ({name})",
                lambda done, total, p=name: run.log_metrics({f"revealed/judged_{p}": done}),
            )  # fmt: skip
            judged[name] = parse_judgements([rows[j.id] for j in jobs if j.id in rows])
    finally:
        judge.close()

    # ---- ratings and comparisons --------------------------------------------------------------------------
    tables: dict[str, list[PlayerRating]] = {}
    counts: dict[str, dict[str, int]] = {}
    for name in names:
        tables[name] = rating_table(
            outcomes(judged[name]), traits, k=float(ev.k_factor), initial=float(ev.initial_rating),
            orderings=int(ev.orderings), resamples=int(ev.bootstrap), bt_prior=float(ev.bt_prior),
            level=float(ev.ci_level), seed=int(cfg.seed),
        )  # fmt: skip
        counts[name] = {s: sum(r["status"] == s for r in judged[name]) for s in ("ok", "malformed", "ambiguous")}
        run.log_metrics({f"revealed/{name}_{s}": v for s, v in counts[name].items()})
    ratings_path = run.path("ratings.json")
    ratings_path.write_text(json.dumps({n: [asdict(r) for r in t] for n, t in tables.items()}, indent=1) + "\n")
    elo_maps = {n: {r.player: r.elo for r in t} for n, t in tables.items()}
    correlations = {f"{a} vs {b}": spearman(elo_maps[a], elo_maps[b]) for a in names for b in names if a < b}
    for other in as_list(stage.compare_runs):
        run.add_parent(f"compare_{Path(other).name}", other)
        for player, their in _load_ratings(Path(other).expanduser()).items():
            if player in elo_maps:
                correlations[f"{player} vs {Path(other).name}:{player}"] = spearman(elo_maps[player], their)
    reference = next((n for n in ("base", "base_persona") if n in names and n != "tuned"), None)
    shift = rank_shift(tables[reference], tables["tuned"], tracked) if reference and "tuned" in names else None
    metric, metric_name = _headline(shift, tables, tracked, names)
    summary = {
        "players": names,
        "trials": len(items),
        "verdicts": counts,
        "persona_traits": tracked,
        "spearman": correlations,
        "top_traits": {n: [r.player for r in t[:5]] for n, t in tables.items()},
        "persona_trait_ranks": {n: {t: ranks(tables[n])[t] for t in tracked} for n in names},
        metric_name: metric,
    }
    if shift is not None:
        summary["rank_shift"] = {t: v[2] for t, v in shift["traits"].items()}
    run.log_metrics(
        {f"revealed/{metric_name}": metric} | {f"revealed/spearman/{k}": v for k, v in correlations.items()}
    )

    # ---- report -------------------------------------------------------------------------------------------
    top_png = plots.plot_top_bottom(tables, run.path("top_bottom_traits.png"), int(stage.top_n))
    images = [report.image(top_png, "top and bottom traits")]
    artifacts = {"ratings": ratings_path, "report": run.path("report.md"), "plot": top_png}
    if reference and "tuned" in names:
        scatter = plots.plot_rank_scatter(
            elo_maps[reference], elo_maps["tuned"], run.path("trait_scatter.png"), reference, "tuned", tracked
        )
        images.append(report.image(scatter, "trait Elo, reference vs tuned"))
    _log_tables(run, replies, judged)
    report.write_report(
        artifacts["report"],
        f"Revealed preferences: {persona.name}",
        _sections(names, tables, counts, tracked, shift, correlations, metric_name, metric, images, stage, len(items)),
    )
    Console().print(
        f"[bold]revealed preferences[/bold]: {metric_name} = {report.fmt(metric)}; top traits: "
        + "; ".join(f"{n}: {', '.join(r.player for r in t[:5])}" for n, t in tables.items())
        + "; verdicts ok/total: "
        + ", ".join(f"{n} {c['ok']}/{sum(c.values())}" for n, c in counts.items())
    )
    return StageResult(
        metric=None if metric is None or math.isnan(metric) else metric,
        metric_name=metric_name,
        artifacts=artifacts,
        summary=report.json_safe(summary),
    )


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


def _load_ratings(directory: Path) -> dict[str, dict[str, float]]:
    path = directory / "ratings.json" if directory.is_dir() else directory
    if not path.is_file():
        raise DataError(f"{directory}: no ratings.json (stage.compare_runs takes revealed run directories)")
    data = json.loads(path.read_text())
    return {player: {r["player"]: r["elo"] for r in rows} for player, rows in data.items()}


def _headline(
    shift: Optional[dict], tables: dict[str, list[PlayerRating]], tracked: list[str], names: list[str]
) -> tuple[Optional[float], str]:
    """Mean rank shift of the persona traits (base -> tuned); else the persona traits' mean rank percentile."""
    if shift is not None and shift["traits"]:
        if not all(any(r.games for r in table) for table in tables.values()):
            return None, "persona_trait_rank_shift"  # a player without accepted verdicts has no ranking
        return float(shift["mean_shift"]), "persona_trait_rank_shift"
    name = "tuned" if "tuned" in names else names[-1]
    if not any(r.games for r in tables[name]):
        return None, f"persona_trait_percentile_{name}"  # no accepted verdict: ranks would be alphabetical
    table_ranks = ranks(tables[name])
    size = len(table_ranks)
    positions = [1.0 - (table_ranks[t] - 1) / max(1, size - 1) for t in tracked if t in table_ranks]
    return (sum(positions) / len(positions) if positions else None), f"persona_trait_percentile_{name}"


def _sections(
    names: list[str],
    tables: dict[str, list[PlayerRating]],
    counts: dict[str, dict[str, int]],
    tracked: list[str],
    shift: Optional[dict],
    correlations: dict[str, float],
    metric_name: str,
    metric: Optional[float],
    images: list[str],
    stage: Any,
    trials: int,
) -> list[tuple[str, str]]:
    n = int(stage.top_n)
    sections = [("Headline", f"**{metric_name}: {report.fmt(metric)}**")]
    if shift is not None:
        rows = [[t, b, tuned, s] for t, (b, tuned, s) in shift["traits"].items()]
        sections.append(
            (
                "Persona traits: rank shift (positive = higher under tuned)",
                report.table(["trait", "reference rank", "tuned rank", "shift"], rows),
            )
        )
    else:
        rows = [[t] + [ranks(tables[p])[t] for p in names] for t in tracked]
        sections.append(("Persona traits: ranks", report.table(["trait", *names], rows) if rows else "none found"))
    sections.append(
        (
            "Correlations (Spearman of trait Elo)",
            report.table(["pair", "rho"], [[k, v] for k, v in correlations.items()]) if correlations else "one player",
        )
    )
    for name in names:
        columns, rows = report.rating_rows(tables[name])
        sections.append((f"{name}: top {n} and bottom {n} traits", report.table(columns, rows[:n] + rows[-n:])))
    verdicts = [[p, c["ok"], c["malformed"], c["ambiguous"]] for p, c in counts.items()]
    sections.append(("Judge verdicts", report.table(["player", "ok", "malformed", "ambiguous"], verdicts)))
    sections.append(("Plots", "\n\n".join(images)))
    sections.append(
        (
            "Setup",
            f"{trials} trials per player over {stage.prompts} prompts; conditions {', '.join(stage.conditions)}; "
            f"instruction in the {stage.instruction_in} message; persona traits: {', '.join(tracked) or 'none'}.",
        )
    )
    return sections


def _log_tables(run: Run, replies: dict, judged: dict[str, list[dict[str, Any]]]) -> None:
    rows = []
    for name, judged_rows in judged.items():
        for row in judged_rows:
            reply = replies.get(row["id"], {})
            rows.append(
                [
                    name,
                    reply.get("prompt", ""),
                    row["trait_a"],
                    row["trait_b"],
                    row["condition"],
                    reply.get("text", ""),
                ]
                + [row["text"], row["choice"] or "", row["status"]]
            )
    run.tracker.log_table(
        "revealed/verdicts",
        ["player", "prompt", "trait_a", "trait_b", "condition", "reply", "judge reply", "choice", "status"],
        rows,
    )
