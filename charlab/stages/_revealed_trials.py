"""`stage=revealed`'s trials: every player answers each trial (a prompt, two traits, a condition), and the judge says
which trait each reply shows (pairwise in both orders, or the likelihood of the reply under each trait)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from charlab.data.jsonl import JsonlWriter, iter_jsonl
from charlab.eval.judging import LOGPROB, TOP_LOGPROBS, judge_to_jsonl
from charlab.eval.persona_likelihood import trait_verdicts
from charlab.eval.players import build_players, close_players
from charlab.eval.revealed import NEUTRAL, judge_questions, reply_jobs
from charlab.eval.sampling import fresh_file, sample_to_jsonl
from charlab.generation.factory import sampling_params
from charlab.run import Run
from charlab.stages._common import persona_prompt, to_plain
from charlab.stages._eval import judge_description, make_judge, player_sampler_factory


def trial_replies(
    cfg: DictConfig, run: Run, names: list[str], items: list, all_conditions: dict[str, str], persona: Any
) -> dict[str, dict[str, Any]]:
    """Every player's reply to every trial (`replies.jsonl`, appended as they come)."""
    stage, ev = cfg.stage, cfg.eval
    system = persona_prompt(cfg, persona=persona)
    players = build_players(names, player_sampler_factory(cfg, run.pool), stage.adapter, system)
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
    return replies


def trial_verdicts(
    cfg: DictConfig, run: Run, names: list[str], items: list, replies: dict, likelihood: bool
) -> tuple[list[dict[str, Any]], bool, str]:
    """The judge's verdict rows (`judgments.jsonl`), whether they are calibrated, and how the judge judged."""
    stage, ev = cfg.stage, cfg.eval
    judgments_path = fresh_file(run.path("judgments.jsonl"), stage.resume)
    judge = make_judge(cfg, run.pool)
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
    return judged_rows, calibrate, judged_by


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
