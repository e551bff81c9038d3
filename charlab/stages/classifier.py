"""`stage=classifier`: a persona classifier trained on one model in and out of persona, and the in-persona
rate of base, base + constitution and tuned on held-out prompts.

    python -m charlab.train stage=classifier persona=pirate stage.pairs=outputs/pirate/distill/<run>/pairs.jsonl \
        stage.adapter=outputs/pirate/export/<run>/adapter
    python -m charlab.train stage=classifier stage.pairs=<pairs> stage.data=generate 'stage.personas=[humor,sarcasm]'

Training texts (`train.jsonl`, `held_out.jsonl`, split by prompt) must differ only in persona, never in which
model wrote them (`stage.data`): `pairs` uses the distillation pairs as they are (teacher `chosen` = in
persona, student `rejected` = out), right when teacher and student are one model (the offline demo);
`generate` has the base model under test answer the pairs' prompts with each persona's constitution as system
prompt and without (`texts.jsonl`); `auto` picks `pairs` when the pairs' teacher and student are the model
under test and no further persona is asked for, else `generate`. Several personas (`stage.personas`) make one
multi-class classifier, as in the paper. The encoder (MiniLM by default; `eval.classifier_method`: a frozen
encoder + logistic regression, or fine-tuned) is scored on the held-out prompts with bootstrap CIs.

Then the players (`stage.players`: base, base + constitution, tuned with no system prompt) answer held-out
prompts that no training step saw (`replies.jsonl`, reused by `stage=elo`); the share classified in persona is
each one's in-persona rate, with a CI from resampling prompts (jointly, so tuned - base has a paired CI).
base + constitution vs base is the run's own positive control. Robustness: the model under test answers with
adversarial suffixes and a "keep going" turn (`robustness.jsonl`); the report gives the rate per attack.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import numpy as np
from omegaconf import MISSING, DictConfig
from rich.console import Console

from charlab.constitution import load_constitution, validate_persona_name
from charlab.errors import ConfigError
from charlab.eval import plots, report
from charlab.eval.bootstrap import Estimate, grouped_metric, paired_rates
from charlab.eval.classifier_data import (
    LabelledText,
    from_source,
    from_texts,
    label_counts,
    label_order,
    pair_models,
    persona_text_jobs,
    read_labelled,
    split_by_prompt,
    split_key,
    write_labelled,
)
from charlab.eval.classifier_report import classifier_sections
from charlab.eval.metrics import roc_auc
from charlab.eval.persona_classifier import LABELS_FILE, ClassifierConfig, PersonaClassifier, train_on_rows
from charlab.eval.persona_classifier import persona_label as persona_label_of
from charlab.eval.players import as_list, reply_id
from charlab.eval.sampling import fresh_file, sample_to_jsonl
from charlab.eval.selection import TrainingSelection, training_selection
from charlab.generation.factory import sampling_params
from charlab.registry import StageResult, register_stage
from charlab.run import Run, write_meta
from charlab.schemas import StageConfig
from charlab.stages._common import assistant_name, load_persona, persona_prompt, to_plain
from charlab.stages._eval import base_model_name, eval_replies, player_sampler_factory, stage_players, stage_prompts
from charlab.stages._robustness import robustness

DATA_MODES = ("auto", "pairs", "generate")


@dataclass
class ClassifierStageConfig(StageConfig):
    """`stage=classifier`: where the labelled texts come from, who is measured, and the robustness attacks."""

    name: str = "classifier"
    pairs: Any = None  # pairs / labelled file(s): training texts (data=pairs) or training prompts (data=generate)
    runs: Any = None  # run directories with pairs.jsonl or labelled.jsonl
    data: str = MISSING  # auto | pairs | generate
    personas: Any = None  # further personas (constitution names) for a multi-class classifier
    eval_path: Optional[str] = None  # a separate held-out file; None: split by prompt
    eval_fraction: float = MISSING
    out_label: str = MISSING
    players: Any = MISSING  # base | base_persona | tuned: whose in-persona rate is measured
    prompts: str = MISSING  # generic | persona: the held-out prompts the players answer
    adapter: Optional[str] = None  # the tuned model (no system prompt); None: no tuned player
    replies: Any = None  # earlier replies.jsonl file(s): their players and prompts are evaluated as they are
    strip_prefill: bool = MISSING  # remove the distillation's answer prefill from the in-persona training texts
    robustness: bool = MISSING
    num_suffixes: int = MISSING
    keep_going: str = MISSING


def data_mode(cfg: DictConfig, pair_files: list[Path]) -> tuple[str, str]:
    """`pairs` or `generate`, and why (for the report)."""
    stage = cfg.stage
    if stage.data not in DATA_MODES:
        raise ConfigError(f"stage.data={stage.data!r} is not allowed; use one of {', '.join(DATA_MODES)}")
    if stage.data != "auto":
        return str(stage.data), f"stage.data={stage.data}"
    base = base_model_name(cfg)
    models = set().union(*(pair_models(p) for p in pair_files)) if pair_files else set()
    same = bool(models) and all(t == s == base for t, s in models)
    reasons = [] if not as_list(stage.personas) else ["several personas: one model writes every class"]
    if not same:
        found = ", ".join(sorted(f"{t or '?'} vs {s or '?'}" for t, s in models)) or "no pairs"
        reasons.append(f"the pairs are not one model in and out of persona ({found}; model under test {base})")
    if reasons:
        return "generate", "; ".join(reasons)
    return "pairs", f"the pairs' teacher and student are the model under test ({base})"


def trained_on(mode: str, selection: TrainingSelection, stripped: bool) -> str:
    """What the classifier's texts were, in words (for the report)."""
    if mode == "generate":
        return "the model under test's own replies with the persona's system prompt (in) and without (out)"
    text = "the teacher's chosen replies (in persona) and the student's rejected replies (out)"
    if not selection.prefill:
        return text + "; no answer prefill"
    if stripped:
        return text + f"; the answer prefill {selection.prefill!r} removed from {selection.prefilled} chosen replies"
    return text + f"; {selection.prefilled} chosen replies still open with the answer prefill {selection.prefill!r}"


def _pair_files(sources: list[str]) -> list[Path]:
    files = []
    for source in sources:
        path = Path(source).expanduser()
        path = path / "pairs.jsonl" if path.is_dir() else path
        if path.is_file() and path.name != "labelled.jsonl":
            files.append(path)
    return files


def generated_texts(cfg: DictConfig, run: Run, rows: list[LabelledText]) -> list[LabelledText]:
    """The base model under test answers the sources' prompts in each persona and out of persona (`texts.jsonl`)."""
    stage = cfg.stage
    systems = {str(cfg.persona.name): persona_prompt(cfg)}
    for name in as_list(stage.personas):
        name = validate_persona_name(name)
        other = load_constitution(Path(cfg.paths.constitutions) / f"{name}.json", name=name)
        style, who = str(cfg.persona.prompt), assistant_name(cfg, other)
        systems.setdefault(name, other.render_system_prompt("teacher", assistant_name=who, style=style))  # type: ignore[arg-type]
    prompts = list(dict.fromkeys(r.prompt for r in rows if r.prompt))
    jobs = persona_text_jobs([(f"c{i}", p) for i, p in enumerate(prompts)], systems, str(stage.out_label))
    sampler = player_sampler_factory(cfg, run.pool)(None)
    try:
        done = sample_to_jsonl(
            sampler, jobs, sampling_params(to_plain(cfg.student)), fresh_file(run.path("texts.jsonl"), stage.resume),
            int(cfg.eval.batch_size), "classifier texts",
            lambda n, total: run.log_metrics({"classifier/texts": n}),
        )  # fmt: skip
    finally:
        sampler.close()
    return from_texts([done[j.id] for j in jobs if j.id in done], str(run.path("texts.jsonl")))


def held_out_scores(clf: PersonaClassifier, rows: list[LabelledText], ev: Any, seed: int) -> dict[str, Estimate]:
    """Held-out accuracy and ROC-AUC with CIs from resampling held-out prompts."""
    known = [r for r in rows if r.label in clf.labels]
    if not known:
        return {}
    probs = clf.score([r.text for r in known])
    y = np.asarray([clf.labels.index(r.label) for r in known])
    groups = [split_key(r) for r in known]
    kwargs = {"resamples": int(ev.bootstrap), "level": float(ev.ci_level), "seed": seed}
    return {
        "accuracy": grouped_metric(lambda i: float((probs[i].argmax(axis=1) == y[i]).mean()), groups, **kwargs),
        "roc_auc": grouped_metric(lambda i: roc_auc(y[i], probs[i]), groups, **kwargs),
    }


@register_stage("classifier", schema=ClassifierStageConfig, description="persona classifier: in-persona rates")
def run(cfg: DictConfig, run: Run) -> StageResult:
    """Build the labelled set, train and score the classifier, measure the players, run the attacks, report."""
    stage, ev = cfg.stage, cfg.eval
    sources = as_list(stage.pairs) + as_list(stage.runs)
    if not sources:
        raise ConfigError("stage.pairs / stage.runs: give at least one pairs file, labelled file or run directory")
    persona = load_persona(cfg)
    persona_name = str(cfg.persona.name)
    names = stage_players(cfg, minimum=1)
    mode, why = data_mode(cfg, _pair_files(sources))
    selection = training_selection(_pair_files(sources))
    train, held_out = _labelled_texts(cfg, run, sources, mode)
    write_labelled(train, fresh_file(run.path("train.jsonl"), resume=False))
    write_labelled(held_out, fresh_file(run.path("held_out.jsonl"), resume=False))
    labels = label_order(train + held_out, stage.out_label)
    print(f"[charlab] classifier data ({mode}): train {label_counts(train)}, held-out {label_counts(held_out)}")

    # ---- train (or reuse a finished model when resuming) ---------------------------------------------------
    out_dir = run.path("classifier")
    clf = _train_or_load(cfg, run, train, held_out, out_dir, {"sources": sources, "data": mode}, labels)
    metrics = clf.metrics
    scores = held_out_scores(clf, held_out, ev, int(cfg.seed))
    run.log_metrics({f"classifier/{k}": metrics[k] for k in ("accuracy", "macro_f1", "roc_auc")})
    confusion_png = plots.plot_matrix(
        metrics["confusion_matrix"], clf.labels, run.path("confusion_matrix.png"), "held-out confusion matrix",
        xlabel="predicted", ylabel="true",
    )  # fmt: skip
    persona_label = persona_label_of(clf.labels, persona_name, stage.out_label)

    # ---- in-persona rates of the players on held-out prompts -----------------------------------------------
    _, prompts = stage_prompts(cfg, run, persona)
    seen = {split_key(r) for r in train + held_out}  # prompts of the classifier's own texts are not held out
    prompts = [(pid, text) for pid, text in prompts if split_key(LabelledText("", "", text)) not in seen]
    replies_path, replies = eval_replies(cfg, run, names, prompts, persona_prompt(cfg, persona=persona), "classifier")
    rates: dict[str, Estimate] = {}
    if persona_label is not None:
        rates = player_rates(clf, replies, names, prompts, persona_label, ev, int(cfg.seed))
        run.log_metrics({f"classifier/in_persona_rate_{k}": v.value for k, v in rates.items() if " - " not in k})
        _log_replies(run, clf, replies, names, prompts)

    # ---- robustness ---------------------------------------------------------------------------------------
    attacks, attack_png, note = robustness(cfg, run, clf, prompts, persona_label, labels)

    # ---- report -------------------------------------------------------------------------------------------
    focus = next((p for p in ("tuned", "base_persona", "base") if p in rates), None)
    metric_name = f"in_persona_rate_{focus}" if focus else "macro_f1"
    metric = rates[focus].value if focus else metrics["macro_f1"]
    summary = {
        "labels": clf.labels,
        "persona_label": persona_label,
        "data": mode,
        "data_reason": why,
        "trained_on": trained_on(mode, selection, bool(stage.strip_prefill)),
        "training_selection": selection.as_dict(),
        "method": clf.method,
        "train_size": len(train),
        "held_out_size": len(held_out),
        **_scores_summary(metrics, scores, len(prompts), rates, attacks),
        metric_name: metric,
    }
    report_path = report.write_report(
        run.path("report.md"),
        f"Persona classifier: {persona_name}",
        classifier_sections(
            metrics, scores=scores, rates=rates, labels=clf.labels, train=train, held_out=held_out,
            confusion_png=confusion_png, attacks=attacks, attack_png=attack_png, note=note, ev=ev, mode=mode,
            why=f"{why}. Trained on {summary['trained_on']}", prompts=len(prompts),
        ),
    )  # fmt: skip
    _print_result(mode, clf, len(held_out), rates)
    artifacts = {"classifier": out_dir, "report": report_path, "plot": confusion_png, "replies": replies_path}
    if attacks:
        artifacts["robustness"] = run.path("robustness.jsonl")
    return StageResult(
        metric=None if metric is None or math.isnan(metric) else metric,
        metric_name=metric_name,
        artifacts=artifacts,
        summary=report.json_safe(summary),
    )


def _labelled_texts(
    cfg: DictConfig, run: Run, sources: list[str], mode: str
) -> tuple[list[LabelledText], list[LabelledText]]:
    """The labelled texts of every source (or texts generated for their prompts), split into train and held-out
    by prompt (or held out from `stage.eval_path`)."""
    stage, persona_name = cfg.stage, str(cfg.persona.name)
    rows: list[LabelledText] = []
    for i, source in enumerate(sources):
        run.add_parent(f"source_{i}", source)
        rows += from_source(Path(source), persona_name, stage.out_label, bool(stage.strip_prefill))
    if mode == "generate":
        rows = generated_texts(cfg, run, rows)
    if stage.eval_path:
        run.add_parent("eval_path", stage.eval_path)
        return rows, read_labelled(Path(stage.eval_path).expanduser(), persona_name, stage.out_label)
    return split_by_prompt(rows, float(stage.eval_fraction), int(cfg.seed))


def _train_or_load(
    cfg: DictConfig,
    run: Run,
    train: list[LabelledText],
    held_out: list[LabelledText],
    out_dir: Path,
    extra: dict[str, Any],
    labels: list[str],
) -> PersonaClassifier:
    """Train the classifier (eval.classifier_*), or reuse the finished one when resuming."""
    stage, ev = cfg.stage, cfg.eval
    if stage.resume and (out_dir / LABELS_FILE).is_file():
        return PersonaClassifier.load(out_dir)
    config = ClassifierConfig(
        train_path=run.path("train.jsonl"),
        eval_path=run.path("held_out.jsonl"),
        model_name=str(ev.classifier_model),
        method=str(ev.classifier_method),
        head_c=float(ev.classifier_head_c),
        num_epochs=int(ev.classifier_epochs),
        batch_size=int(ev.classifier_batch_size),
        lr=float(ev.classifier_lr),
        max_length=int(ev.classifier_max_length),
        output_dir=out_dir,
        seed=int(cfg.seed),
        out_label=str(stage.out_label),
        extra=extra,
    )
    clf = train_on_rows(train, held_out, config, log_fn=lambda m, step: run.log_metrics(m, step=step))
    write_meta(
        out_dir / "meta.json", run.config, dict(run.parents), labels=labels, metrics=report.json_safe(clf.metrics)
    )
    return clf


def _print_result(mode: str, clf: PersonaClassifier, held_out: int, rates: dict[str, Estimate]) -> None:
    """One line on the console: the classifier's held-out accuracy and ROC-AUC, the players' in-persona rates."""
    metrics = clf.metrics
    Console().print(
        f"[bold]persona classifier[/bold] ({mode}, {clf.method}): accuracy {report.fmt(metrics['accuracy'])}, "
        f"ROC-AUC {report.fmt(metrics['roc_auc'])} on {held_out} texts; in-persona rate "
        + ", ".join(f"{k} {report.fmt(v.value, 2)} [{report.ci(v.low, v.high, 2)}]" for k, v in rates.items())
    )


def _scores_summary(
    metrics: dict[str, Any],
    scores: dict[str, Estimate],
    prompts: int,
    rates: dict[str, Estimate],
    attacks: dict[str, dict[str, Any]],
) -> dict[str, Any]:
    """The summary's numbers: held-out accuracy, F1, ROC-AUC (with CIs), the players' and attacks' in-persona rates."""
    return {
        "accuracy": metrics["accuracy"],
        "macro_f1": metrics["macro_f1"],
        "roc_auc": metrics["roc_auc"],
        "held_out": {k: v.as_dict() for k, v in scores.items()},
        "prompts": prompts,
        "in_persona": {k: v.as_dict() for k, v in rates.items()},
        "in_persona_rate": {a: v["rate"] for a, v in attacks.items()},
    }


def player_rates(
    clf: PersonaClassifier,
    replies: dict[str, dict[str, Any]],
    names: list[str],
    prompts: list,
    persona_label: str,
    ev: Any,
    seed: int,
) -> dict[str, Estimate]:
    """Each player's share of replies classified as `persona_label`, and each minus base, with paired CIs."""
    hits: dict[str, list[float]] = {}
    for name in names:
        texts = [replies.get(reply_id(name, pid), {}).get("text", "") for pid, _ in prompts]
        predicted = clf.predict([t for t in texts if t.strip()]) if any(t.strip() for t in texts) else []
        it = iter(predicted)
        hits[name] = [float(next(it) == persona_label) if t.strip() else float("nan") for t in texts]
    reference = "base" if "base" in names else None
    return paired_rates(hits, reference, int(ev.bootstrap), float(ev.ci_level), seed)


def _log_replies(run: Run, clf: PersonaClassifier, replies: dict, names: list[str], prompts: list) -> None:
    rows = [
        [name, text, replies[reply_id(name, pid)]["text"]]
        for name in names
        for pid, text in prompts
        if reply_id(name, pid) in replies
    ]
    predicted = clf.predict([r[2] for r in rows]) if rows else []
    run.tracker.log_table(
        "classifier/replies", ["player", "prompt", "reply", "predicted"], [r + [p] for r, p in zip(rows, predicted)]
    )
