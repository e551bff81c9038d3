"""`stage=coherence`: does each player still answer? Loops, relevance and "in character and coherent", with CIs.

    python -m charlab.train stage=coherence stage.replies=<classifier run>/replies.jsonl \
        stage.classifier=<classifier run>/classifier stage.pairs=<distill run>/pairs.jsonl
    python -m charlab.train stage=coherence stage.adapter=<adapter> provider@judge=openai judge.model=gpt-4o-mini

The players' replies to held-out prompts (`stage.replies`, as they are; missing ones generated like `stage=elo`)
are measured reply by reply (`coherence.jsonl`, see `charlab.eval.coherence`): loops and replies that say almost
nothing once the persona's stock words are gone, distinct-2, relevance (the judge model, else the base model,
picks the reply's own prompt out of `stage.distractors` + 1; the same by MiniLM, and MiniLM's cosine), and,
with the persona classifier of the classifier step (`stage.classifier`), whether each reply is in character and
coherent. Each player's rates get CIs from resampling prompts, and each minus base a paired CI: the verdict
calls tuned coherent only when its loop rate and relevance are not worse than base's beyond them.

The paper's headline comparison, tuned vs base + constitution on "in character and coherent": with a judge that
is not local (`stage.head_to_head=auto`), the paper's coherence question in both orders, order-consistent verdicts
only (`eval.judge_format=coherence`); with the local judge, from the per-reply flags (the reply in character and
coherent wins; both or neither: a tie).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Optional

from omegaconf import MISSING, DictConfig
from rich.console import Console

from charlab.data.jsonl import JsonlWriter
from charlab.errors import ConfigError
from charlab.eval import report
from charlab.eval.bootstrap import Estimate
from charlab.eval.coherence import head_to_head, player_estimates, reply_rows
from charlab.eval.coherence_report import coherence_sections, headline_text
from charlab.eval.elo import match_outcomes
from charlab.eval.loops import stock_vocabulary, stop_words
from charlab.eval.players import reply_id
from charlab.eval.ratings import bootstrap_win_rate
from charlab.eval.relevance import ReplyItem, distractors, embedding_relevance, lm_identification
from charlab.eval.sampling import fresh_file
from charlab.generation.base import ChoiceScorer
from charlab.generation.factory import scores_text
from charlab.registry import StageResult, register_stage
from charlab.run import Run
from charlab.schemas import StageConfig
from charlab.stages._common import load_persona, persona_prompt, sampler_for_role
from charlab.stages._eval import (
    eval_replies,
    judge_description,
    make_judge,
    player_sampler_factory,
    stage_players,
    stage_prompts,
)
from charlab.stages._judge_formats import JUDGE_FORMATS, FormatJob

if TYPE_CHECKING:
    from charlab.generation.vllm import ServerPool

HEAD_TO_HEAD = ("auto", "true", "false")
MEASURED = ("loop", "distinct_2", "relevance", "minilm_relevance", "minilm_cosine", "in_character",
            "in_character_coherent")  # fmt: skip


@dataclass
class CoherenceStageConfig(StageConfig):
    """`stage=coherence`: whose replies, the classifier that says "in character", and the instruments' settings."""

    name: str = "coherence"
    adapter: Optional[str] = None  # the tuned model (no system prompt), for replies not in stage.replies
    players: Any = None  # base | base_persona | tuned; None: each that can be evaluated
    prompts: str = MISSING  # generic | persona: held-out prompts when there is no stage.replies
    pairs: Any = None  # training pairs file(s): their prompts are not held out
    replies: Any = None  # earlier replies.jsonl file(s), evaluated as they are
    classifier: Optional[str] = None  # a persona classifier folder (the classifier step's `classifier` artifact)
    distractors: int = MISSING  # K: other held-out prompts each reply's own prompt must beat
    min_content_words: int = MISSING
    min_distinct_ngrams: float = MISSING
    encoder: str = MISSING  # the sentence encoder of the MiniLM relevance
    head_to_head: str = MISSING  # auto | true | false: the paper's coherence judge format


def _scorer(cfg: DictConfig, pool: ServerPool) -> tuple[Optional[Any], str]:
    """The language model that reads each reply after each prompt: the judge if local, else the base model under
    test if local, else none (with the reason)."""
    if scores_text(cfg.judge.kind):
        sampler, who = sampler_for_role(cfg, "judge", pool=pool), f"the judge ({cfg.judge.model or cfg.model.name})"
    elif scores_text(cfg.student.kind):
        who = f"the base model ({cfg.student.model or cfg.model.name})"
        sampler = player_sampler_factory(cfg, pool)(None)
    else:
        return None, "not measured: no local model scores text (judge and student are not hf); MiniLM only"
    if not isinstance(sampler, ChoiceScorer):
        sampler.close()
        return None, f"not measured: {who} cannot score text; MiniLM only"
    return sampler, who


def _in_persona(cfg: DictConfig, replies: dict, ids: list[str]) -> tuple[dict[str, bool], str]:
    """Per reply id whether the classifier puts it in character ({} without `stage.classifier`)."""
    folder = cfg.stage.classifier
    if not folder:
        return {}, "no classifier (stage.classifier): in character not measured"
    from charlab.eval.persona_classifier import PersonaClassifier, persona_label

    clf = PersonaClassifier.load(folder)
    label = persona_label(clf.labels, str(cfg.persona.name), "base")
    if label is None:
        raise ConfigError(f"stage.classifier={folder}: persona {cfg.persona.name!r} is not one of {clf.labels}")
    texts = [str(replies[rid].get("text", "")) for rid in ids]
    predicted = clf.predict([t for t in texts if t.strip()]) if any(t.strip() for t in texts) else []
    found = iter(predicted)
    flags = {rid: (next(found) == label) if t.strip() else False for rid, t in zip(ids, texts)}
    return flags, f"persona classifier {folder} (class {label!r})"


def measure(
    cfg: DictConfig, replies: dict, names: list[str], prompts: list, pool: ServerPool
) -> tuple[list[dict], dict[str, str]]:
    """Every reply's measurements, and how each instrument was run (for the report)."""
    stage, persona = cfg.stage, load_persona(cfg)
    if int(stage.distractors) < 1:
        raise ConfigError(f"stage.distractors={stage.distractors} is not allowed; use 1 or more")
    if len(prompts) < 2:
        raise ConfigError(f"stage=coherence needs 2 or more held-out prompts to tell relevance, got {len(prompts)}")
    ids = [(reply_id(n, pid), pid) for n in names for pid, _ in prompts]
    items = [ReplyItem(rid, pid, str(replies[rid].get("text", ""))) for rid, pid in ids if rid in replies]
    texts, others = dict(prompts), distractors([pid for pid, _ in prompts], int(stage.distractors), int(cfg.seed))
    scorer, scored_by = _scorer(cfg, pool)
    lm = None
    if scorer is not None:
        try:
            lm = lm_identification(scorer, items, texts, others, int(cfg.eval.batch_size))
        finally:
            scorer.close()
    from charlab.eval.persona_classifier import load_encoder

    encoder, tokenizer = load_encoder(str(stage.encoder))
    minilm = embedding_relevance(encoder, tokenizer, items, texts, others)
    in_persona, classified_by = _in_persona(cfg, replies, [item.id for item in items])
    ignore = stop_words() | stock_vocabulary(persona, cfg.persona.assistant_name)
    rows = reply_rows(
        replies, names, prompts, ignore=ignore, lm=lm, minilm=minilm, in_persona=in_persona,
        min_content_words=int(stage.min_content_words), min_distinct_ngrams=float(stage.min_distinct_ngrams),
    )  # fmt: skip
    how = {"relevance": scored_by, "minilm": str(stage.encoder), "in_character": classified_by,
           "distractors": str(min(int(stage.distractors), len(prompts) - 1))}  # fmt: skip
    return rows, how


def judged_coherence(cfg: DictConfig, run: Run, prompts: list, replies: dict, names: list[str]) -> Optional[dict]:
    """The paper's coherence question over every pair of players (both orders, consistent verdicts only), or None
    when `stage.head_to_head` says not to ask it (auto: only a judge that is not local)."""
    wanted = str(cfg.stage.head_to_head).lower()
    if wanted not in HEAD_TO_HEAD:
        raise ConfigError(f"stage.head_to_head={wanted!r} is not allowed; use one of {', '.join(HEAD_TO_HEAD)}")
    if wanted == "false" or (wanted == "auto" and scores_text(cfg.judge.kind)) or len(names) < 2:
        return None
    judge = make_judge(cfg, run.pool)
    try:
        path = fresh_file(run.path("judgments.jsonl"), cfg.stage.resume)
        job = FormatJob(cfg, run, judge, prompts, replies, names, path, "", metric_prefix="coherence")
        result = JUDGE_FORMATS["coherence"].run(job)
        how = f"{judge_description(cfg, judge)}; {result.how}"
    finally:
        judge.sampler.close()
    outcomes, ev = match_outcomes(result.matches), cfg.eval
    rates = {
        f"{x}_vs_{y}": Estimate(*bootstrap_win_rate(outcomes, x, y, int(ev.bootstrap), float(ev.ci_level),
                                                    int(cfg.seed))).as_dict()
        for x in names for y in names if x != y
    }  # fmt: skip
    tally = result.tally
    return {"how": how, "pairs": tally.pairs, "consistent": tally.decided, "inconsistent": tally.inconsistent,
            "unparseable": tally.unparseable, "verdict_modes": tally.modes, "win_rates": rates}  # fmt: skip


def headline(rows: list[dict], names: list[str], prompts: list, judged: Optional[dict], ev: Any, seed: int) -> dict:
    """Tuned vs base + constitution on "in character and coherent": from the coherence judge where it ran, else
    from the per-reply flags."""
    if "tuned" not in names or "base_persona" not in names:
        return {"status": "absent", "how": "needs the tuned and base_persona players"}
    if judged is not None:
        rate = judged["win_rates"].get("tuned_vs_base_persona")
        return {"status": "ok", "estimate": rate, "how": "coherence judge: " + judged["how"]}
    estimate = head_to_head(rows, "tuned", "base_persona", prompts, int(ev.bootstrap), float(ev.ci_level), seed)
    how = ("local: per prompt, the reply that is in character (classifier), does not loop and picks its own prompt "
           "wins; both or neither tie")  # fmt: skip
    if estimate is None:
        return {"status": "absent", "how": how + " (not measured: no classifier)"}
    return {"status": "ok", "estimate": estimate.as_dict(), "how": how}


@register_stage("coherence", schema=CoherenceStageConfig, description="coherence: loops, relevance, in character")
def run(cfg: DictConfig, run: Run) -> StageResult:
    """Measure every reply, summarise per player with CIs, give the headline comparison, report."""
    stage, ev = cfg.stage, cfg.eval
    persona = load_persona(cfg)
    names = stage_players(cfg, minimum=1)
    _, prompts = stage_prompts(cfg, run, persona)
    if stage.classifier:
        run.add_parent("classifier", stage.classifier)
    replies_path, replies = eval_replies(cfg, run, names, prompts, persona_prompt(cfg, persona=persona), "coherence")
    rows, how = measure(cfg, replies, names, prompts, run.pool)
    with JsonlWriter(fresh_file(run.path("coherence.jsonl"), resume=False)) as writer:
        for row in rows:
            writer.write(row)
    judged = judged_coherence(cfg, run, prompts, replies, names)
    kwargs = {"resamples": int(ev.bootstrap), "level": float(ev.ci_level), "seed": int(cfg.seed)}
    estimates = {m: player_estimates(rows, names, prompts, m, **kwargs) for m in MEASURED}
    loops = {n: [sum(r["loop"] is not None for r in rows if r["player"] == n),
                 sum(r["player"] == n for r in rows)] for n in names}  # fmt: skip
    summary = {
        "players": names, "prompts": len(prompts), "instruments": how,
        **{m: {k: v.as_dict() for k, v in e.items()} for m, e in estimates.items() if e},
        "loop_counts": loops, "coherence_judge": judged,
        "headline": headline(rows, names, prompts, judged, ev, int(cfg.seed)),
    }  # fmt: skip
    coherent = (estimates["in_character_coherent"] or {}).get("tuned")
    metric_name = "in_character_coherent_rate_tuned"
    summary[metric_name] = coherent.value if coherent else None
    report_path = report.write_report(
        run.path("report.md"), f"Coherence: {persona.name}", coherence_sections(summary, rows, replies, prompts)
    )
    Console().print(f"[bold]coherence[/bold]: {headline_text(summary)}")
    return StageResult(
        metric=summary[metric_name],
        metric_name=metric_name,
        artifacts={"coherence": run.path("coherence.jsonl"), "replies": replies_path, "report": report_path},
        summary=report.json_safe(summary),
    )
