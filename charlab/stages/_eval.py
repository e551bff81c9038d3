"""What the evaluation stages (classifier, revealed, elo) share: held-out prompts, the models under test,
their replies (generated once, reused across stages) and the judge."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from omegaconf import DictConfig, OmegaConf

from charlab.data.jsonl import done_ids, iter_jsonl
from charlab.errors import ConfigError, DataError
from charlab.eval.judging import Judge
from charlab.eval.players import (
    PLAYERS,
    MakeSampler,
    answered_players,
    as_list,
    build_players,
    check_players,
    close_players,
    player_replies,
    reply_id,
    reply_prompts,
    reuse_replies,
)
from charlab.eval.prompts import held_out_prompts, normalise_prompt, training_prompts
from charlab.eval.ratings import RatingSettings
from charlab.eval.sampling import fresh_file
from charlab.generation.factory import sampling_params, scores_text
from charlab.run import Run
from charlab.stages._common import sampler_for_role, to_plain
from charlab.stages._judge_formats import JUDGE_FORMATS

if TYPE_CHECKING:
    from charlab.generation.vllm import ServerPool


def rating_settings(cfg: DictConfig) -> RatingSettings:
    """How the elo and revealed stages fit ratings: `eval.k_factor`, `initial_rating`, `orderings`, `bootstrap`,
    `bt_prior`, `ci_level` and the run's seed."""
    ev = cfg.eval
    return RatingSettings(
        k=float(ev.k_factor), initial=float(ev.initial_rating), orderings=int(ev.orderings),
        resamples=int(ev.bootstrap), bt_prior=float(ev.bt_prior), level=float(ev.ci_level), seed=int(cfg.seed),
    )  # fmt: skip


def base_model_name(cfg: DictConfig) -> str:
    """The name of the base model under test: `eval.base_model`, else the student provider's model, else the run's."""
    return str(cfg.eval.base_model or cfg.student.get("model") or cfg.model.name)


def replies_sources(cfg: DictConfig) -> list[Path]:
    """`stage.replies`: earlier replies.jsonl files whose players are evaluated as they are (each must exist)."""
    sources = [Path(p).expanduser() for p in as_list(cfg.stage.get("replies"))]
    for source in sources:
        if not source.is_file():
            raise ConfigError(f"stage.replies={source}: file not found; give replies.jsonl (player, prompt, text)")
    return sources


def stage_players(cfg: DictConfig, minimum: int = 1, default: Sequence[str] = PLAYERS) -> list[str]:
    """`stage.players` (null: `default`) checked against what can be evaluated: `tuned` needs an adapter or its
    replies in `stage.replies`."""
    players = cfg.stage.players
    answered = answered_players(replies_sources(cfg))
    return check_players(None if players is None else list(players), cfg.stage.adapter, minimum, answered, default)


def stage_prompts(cfg: DictConfig, run: Run, persona: Any) -> tuple[list[Path], list]:
    """Held-out prompts for an eval stage, inputs recorded: the prompts of `stage.replies` when given (a replies
    file is evaluated as it is), else `eval.num_prompts` drawn from `stage.prompts`; training prompts of
    `stage.pairs` are excluded either way."""
    stage = cfg.stage
    exclude_files = [Path(p).expanduser() for p in as_list(stage.pairs)]
    for i, path in enumerate(exclude_files):
        run.add_parent(f"pairs_{i}" if i else "pairs", path)
    if stage.adapter:
        run.add_parent("adapter", stage.adapter)
    training = training_prompts(exclude_files)
    sources = replies_sources(cfg)
    if sources:
        prompts = [(pid, text) for pid, text in reply_prompts(sources) if normalise_prompt(text) not in training]
        if not prompts:
            raise DataError(f"stage.replies: no held-out prompts in {', '.join(map(str, sources))}")
        return exclude_files, prompts
    prompts = held_out_prompts(stage.prompts, persona, int(cfg.eval.num_prompts), training, seed=int(cfg.seed))
    return exclude_files, prompts


def player_config(cfg: DictConfig) -> DictConfig:
    """The run's config with the models under test as its student: `eval.base_model` (default: the student's own)."""
    if cfg.eval.base_model:
        cfg = OmegaConf.masked_copy(cfg, [key for key in cfg if key != "hydra"])
        cfg.student.model = cfg.eval.base_model
    return cfg


def player_sampler_factory(cfg: DictConfig, pool: ServerPool) -> MakeSampler:
    """`make(adapter_or_None, serve_also)`: the models under test are the student provider on `eval.base_model`
    (default: the student's own model); the tuned model is that same base with the adapter. `pool`: `run.pool`."""
    cfg = player_config(cfg)
    return lambda adapter, serve_also=(): sampler_for_role(cfg, "student", adapter, list(serve_also), pool=pool)


def eval_replies(
    cfg: DictConfig, run: Run, names: list[str], prompts: list, persona_prompt: str, metric_prefix: str
) -> tuple[Path, dict[str, dict[str, Any]]]:
    """Every player's replies to the held-out prompts in `replies.jsonl`: rows of `stage.replies` (an earlier
    evaluation's replies to the same prompts) are reused, only missing ones are generated."""
    stage, ev = cfg.stage, cfg.eval
    path = fresh_file(run.path("replies.jsonl"), stage.resume)
    wanted = {reply_id(n, pid) for n in names for pid, _ in prompts}
    sources = replies_sources(cfg)
    for i, source in enumerate(sources):
        run.add_parent(f"replies_{i}" if i else "replies", source)
    reused = reuse_replies(path, sources, wanted)
    if reused:
        print(f"[charlab] reusing {reused} replies from {', '.join(map(str, sources))}")
    have = done_ids(path)
    missing = [n for n in names if any(reply_id(n, pid) not in have for pid, _ in prompts)]
    if "tuned" in missing and not stage.adapter:
        absent = sum(reply_id("tuned", pid) not in have for pid, _ in prompts)
        raise ConfigError(
            f"stage.players: tuned has no reply to {absent} of {len(prompts)} prompts in stage.replies and no "
            "stage.adapter to generate them; pass stage.adapter=<adapter folder> or leave tuned out of stage.players"
        )
    players = build_players(missing, player_sampler_factory(cfg, run.pool), stage.adapter, persona_prompt)
    try:
        player_replies(
            players, prompts, sampling_params(to_plain(cfg.student)), path, int(ev.batch_size),
            lambda player, done, total: run.log_metrics({f"{metric_prefix}/replies_{player}": done}),
        )  # fmt: skip
    finally:
        close_players(players)
    return path, {row["id"]: row for row in iter_jsonl(path) if row.get("id") in wanted}


def check_judge_format(cfg: DictConfig) -> str:
    """`eval.judge_format` (a `JUDGE_FORMATS` entry), checked before anything is generated (likelihood needs a
    judge whose provider scores text, `hf`); `auto` resolves to likelihood for such a judge of the persona, else to
    pairwise."""
    judge_format = str(cfg.eval.judge_format)
    local_scorer = scores_text(cfg.judge.kind)
    if judge_format == "auto":
        persona = str(cfg.stage.get("criterion", "persona")) == "persona"
        return "likelihood" if local_scorer and persona else "pairwise"
    if judge_format not in JUDGE_FORMATS:
        allowed = ", ".join([*JUDGE_FORMATS, "auto"])
        raise ConfigError(f"eval.judge_format={judge_format!r} is not allowed; use one of {allowed}")
    if JUDGE_FORMATS[judge_format].scores_text and not local_scorer:
        raise ConfigError(
            f"eval.judge_format={judge_format} needs a judge that scores text (provider@judge=hf, not "
            f"{cfg.judge.kind}); use eval.judge_format=pairwise"
        )
    return judge_format


def make_judge(cfg: DictConfig, pool: ServerPool) -> Judge:
    """The judge provider as a `Judge` in `eval.judge_mode` (auto: log-probabilities where available); `pool`:
    `run.pool`."""
    sampler = sampler_for_role(cfg, "judge", pool=pool)
    try:
        judge = Judge(
            sampler, sampling_params(to_plain(cfg.judge)), str(cfg.eval.judge_mode), int(cfg.eval.judge_top_logprobs)
        )
        judge_format = check_judge_format(cfg)
        if JUDGE_FORMATS[judge_format].scores_text and not judge.scores:
            raise ConfigError(
                f"eval.judge_format={judge_format} needs a judge that scores text; eval.judge_mode="
                f"{cfg.eval.judge_mode} does not (use auto or logprob)"
            )
    except Exception:
        sampler.close()
        raise
    return judge


def judge_description(cfg: DictConfig, judge: Judge) -> str:
    """Which judge, and how its verdicts are reached (for reports)."""
    judge_cfg = cfg.judge
    how = (
        "log-probabilities of the allowed answers"
        if judge.scores
        else "top log-probabilities where sent, else parsed text"
    )
    return f"{judge_cfg.kind} ({judge_cfg.model or cfg.model.name}), eval.judge_mode={cfg.eval.judge_mode}: {how}"
