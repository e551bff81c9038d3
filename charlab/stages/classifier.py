"""`stage=classifier`: train the persona classifier on run artifacts, then attack the persona and measure it.

    python -m charlab.train stage=classifier persona=pirate stage.pairs=outputs/pirate/distill/<run>/pairs.jsonl
    python -m charlab.train stage=classifier 'stage.pairs=[<pirate pairs>,<humor pairs>]' stage.robustness=false
    python -m charlab.train stage=classifier stage.runs=[<elo run dir>] stage.adapter=<adapter folder>

The labelled set (`train.jsonl`, `held_out.jsonl`) comes from pairs files (teacher `chosen` = in persona,
student `rejected` = out), Elo runs' replies (tuned / base + constitution vs base) or labelled files, split by
prompt. An encoder (MiniLM by default) is fine-tuned (`classifier/`) and scored on the held-out prompts:
accuracy, macro-F1 (the headline), ROC-AUC, confusion matrix. Robustness: the model under test (the tuned
model when `stage.adapter` is set, else base + constitution) answers held-out prompts with adversarial
suffixes and a "keep going" turn (`robustness.jsonl`); the report gives the in-persona rate per attack. With
`hydra.run.dir=<its run directory> stage.resume=true` a finished classifier and the attack replies are reused.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from omegaconf import MISSING, DictConfig
from rich.console import Console

from charlab.errors import ConfigError
from charlab.eval import plots, report
from charlab.eval.classifier_data import (
    LabelledText,
    from_source,
    label_counts,
    label_order,
    read_labelled,
    split_by_prompt,
    write_labelled,
)
from charlab.eval.persona_classifier import LABELS_FILE, ClassifierConfig, PersonaClassifier, train_on_rows
from charlab.eval.players import as_list, build_players, close_players
from charlab.eval.robustness import in_persona_rates, load_suffixes, run_attacks
from charlab.eval.sampling import fresh_file
from charlab.generation.factory import sampling_params
from charlab.registry import StageResult, register_stage
from charlab.run import Run, write_meta
from charlab.schemas import StageConfig
from charlab.stages._common import load_persona, to_plain
from charlab.stages.elo import player_sampler_factory


@dataclass
class ClassifierStageConfig(StageConfig):
    """`stage=classifier`: where the labelled texts come from, and the robustness attacks."""

    name: str = "classifier"
    pairs: Any = None  # pairs / labelled file(s)
    runs: Any = None  # run directories with pairs.jsonl or replies.jsonl
    eval_path: Optional[str] = None  # a separate held-out file; None: split by prompt
    eval_fraction: float = MISSING
    out_label: str = MISSING
    robustness: bool = MISSING
    adapter: Optional[str] = None  # the tuned model under attack; None: base + constitution
    num_suffixes: int = MISSING
    keep_going: str = MISSING


@register_stage("classifier", schema=ClassifierStageConfig, description="persona classifier + robustness attacks")
def run(cfg: DictConfig, run: Run) -> StageResult:
    """Build the labelled set, train and score the classifier, run the attacks, write the report."""
    stage, ev = cfg.stage, cfg.eval
    sources = as_list(stage.pairs) + as_list(stage.runs)
    if not sources:
        raise ConfigError("stage.pairs / stage.runs: give at least one pairs file, labelled file or run directory")
    persona_name = str(cfg.persona.name)
    rows: list[LabelledText] = []
    for i, source in enumerate(sources):
        run.add_parent(f"source_{i}", source)
        rows += from_source(Path(source), persona_name, stage.out_label)
    if stage.eval_path:
        run.add_parent("eval_path", stage.eval_path)
        train, held_out = rows, read_labelled(Path(stage.eval_path).expanduser(), persona_name, stage.out_label)
    else:
        train, held_out = split_by_prompt(rows, float(stage.eval_fraction), int(cfg.seed))
    write_labelled(train, fresh_file(run.path("train.jsonl"), resume=False))
    write_labelled(held_out, fresh_file(run.path("held_out.jsonl"), resume=False))
    labels = label_order(train + held_out, stage.out_label)
    print(f"[charlab] classifier data: train {label_counts(train)}, held-out {label_counts(held_out)}")

    # ---- train (or reuse a finished model when resuming) ---------------------------------------------------
    out_dir = run.path("classifier")
    if stage.resume and (out_dir / LABELS_FILE).is_file():
        clf = PersonaClassifier.load(out_dir)
    else:
        config = ClassifierConfig(
            train_path=run.path("train.jsonl"),
            eval_path=run.path("held_out.jsonl"),
            model_name=str(ev.classifier_model),
            num_epochs=int(ev.classifier_epochs),
            batch_size=int(ev.classifier_batch_size),
            lr=float(ev.classifier_lr),
            max_length=int(ev.classifier_max_length),
            output_dir=out_dir,
            seed=int(cfg.seed),
            out_label=str(stage.out_label),
            extra={"sources": sources},
        )
        clf = train_on_rows(train, held_out, config, log_fn=lambda m, step: run.log_metrics(m, step=step))
        write_meta(
            out_dir / "meta.json", run.config, dict(run.parents), labels=labels, metrics=report.json_safe(clf.metrics)
        )
    metrics = clf.metrics
    run.log_metrics({f"classifier/{k}": metrics[k] for k in ("accuracy", "macro_f1", "roc_auc")})
    confusion_png = plots.plot_matrix(
        metrics["confusion_matrix"],
        clf.labels,
        run.path("confusion_matrix.png"),
        "held-out confusion matrix",
        xlabel="predicted",
        ylabel="true",
    )
    predictions = clf.predict([r.text for r in held_out]) if held_out else []
    run.tracker.log_table(
        "classifier/held_out",
        ["prompt", "text", "label", "predicted"],
        [[r.prompt, r.text, r.label, p] for r, p in zip(held_out, predictions)],
    )

    # ---- robustness ---------------------------------------------------------------------------------------
    persona_label = _persona_label(clf.labels, persona_name, stage.out_label)
    attacks: dict[str, dict[str, Any]] = {}
    attack_png: Optional[Path] = None
    note = ""
    if not stage.robustness:
        note = "Robustness attacks were not run (stage.robustness=false)."
    elif persona_label is None:
        note = f"Robustness skipped: persona {persona_name!r} is not a class of this classifier ({', '.join(labels)})."
    else:
        attacks = _run_attacks(cfg, run, clf, held_out, persona_label)
        attack_png = plots.plot_bars(
            {a: v["rate"] for a, v in attacks.items()},
            run.path("robustness.png"),
            f"in-persona rate per attack ({persona_label})",
            "share of replies classified in persona",
            (0, 1),
        )

    # ---- report -------------------------------------------------------------------------------------------
    headline = metrics["macro_f1"]
    summary = {
        "labels": clf.labels,
        "train_size": len(train),
        "held_out_size": len(held_out),
        "accuracy": metrics["accuracy"],
        "macro_f1": headline,
        "roc_auc": metrics["roc_auc"],
        "in_persona_rate": {a: v["rate"] for a, v in attacks.items()},
    }
    report_path = report.write_report(
        run.path("report.md"),
        f"Persona classifier: {persona_name}",
        _sections(metrics, clf.labels, train, held_out, confusion_png, attacks, attack_png, note, ev),
    )
    Console().print(
        f"[bold]persona classifier[/bold]: held-out macro-F1 {report.fmt(headline)}, accuracy "
        f"{report.fmt(metrics['accuracy'])}, ROC-AUC {report.fmt(metrics['roc_auc'])} on {len(held_out)} texts"
        + (
            "; in-persona rate per attack: " + ", ".join(f"{a} {report.fmt(v['rate'], 2)}" for a, v in attacks.items())
            if attacks
            else ""
        )
    )
    artifacts = {"classifier": out_dir, "report": report_path, "plot": confusion_png}
    if attacks:
        artifacts["robustness"] = run.path("robustness.jsonl")
    return StageResult(
        metric=None if math.isnan(headline) else headline,
        metric_name="macro_f1",
        artifacts=artifacts,
        summary=report.json_safe(summary),
    )


def _persona_label(labels: list[str], persona: str, out_label: str) -> Optional[str]:
    """The class that stands for this run's persona: its name, or the only in-persona class."""
    if persona in labels:
        return persona
    others = [label for label in labels if label != out_label]
    return others[0] if len(others) == 1 else None


def _run_attacks(
    cfg: DictConfig, run: Run, clf: PersonaClassifier, held_out: list[LabelledText], persona_label: str
) -> dict[str, dict[str, Any]]:
    """Replies of the model under test to held-out prompts under each attack, classified."""
    stage, ev = cfg.stage, cfg.eval
    suffixes = load_suffixes()
    if not 1 <= int(stage.num_suffixes) <= len(suffixes):
        raise ConfigError(f"stage.num_suffixes={stage.num_suffixes} is not allowed; use 1 to {len(suffixes)}")
    unique = list(dict.fromkeys(row.prompt for row in held_out if row.prompt))  # never seen in training
    prompts = [(f"h{i}", text) for i, text in enumerate(unique[: int(ev.robustness_prompts)])]
    if not prompts:
        return {}
    persona = load_persona(cfg)
    student = to_plain(cfg.student)
    make = player_sampler_factory(cfg)
    name = "tuned" if stage.adapter else "base_persona"
    if stage.adapter:
        run.add_parent("adapter", stage.adapter)
    system = persona.render_system_prompt("teacher", assistant_name=cfg.persona.assistant_name)
    (player,) = build_players([name], make, stage.adapter, system)
    try:
        rows = run_attacks(
            player.sampler, prompts, suffixes[: int(stage.num_suffixes)], sampling_params(student),
            fresh_file(run.path("robustness.jsonl"), stage.resume), player.system_prompt, str(stage.keep_going),
            int(ev.batch_size), lambda done, total: run.log_metrics({"classifier/attack_replies": done}),
        )  # fmt: skip
    finally:
        close_players([player])
    predicted = clf.predict([r["text"] for r in rows])
    rates = in_persona_rates(rows, predicted, persona_label)
    run.log_metrics({f"classifier/in_persona/{a}": v["rate"] for a, v in rates.items()})
    run.tracker.log_table(
        "classifier/attacks",
        ["attack", "prompt", "suffix", "reply", "predicted"],
        [[r["attack"], r["prompt"], r.get("suffix", ""), r["text"], p] for r, p in zip(rows, predicted)],
    )
    for entry in rates.values():
        entry["model"] = name
    return rates


def _sections(
    metrics: dict[str, Any],
    labels: list[str],
    train: list[LabelledText],
    held_out: list[LabelledText],
    confusion_png: Path,
    attacks: dict[str, dict[str, Any]],
    attack_png: Optional[Path],
    note: str,
    ev: Any,
) -> list[tuple[str, str]]:
    scores = report.table(
        ["metric", "held-out value"],
        [["accuracy", metrics["accuracy"]], ["macro-F1", metrics["macro_f1"]], ["ROC-AUC", metrics["roc_auc"]]],
    )
    confusion = report.table(
        ["true \\ predicted", *labels], [[t, *row] for t, row in zip(labels, metrics["confusion_matrix"])]
    )
    data = report.table(
        ["split", "texts", "prompts", *labels],
        [
            [name, len(rows), len({r.prompt for r in rows})] + [label_counts(rows).get(label, 0) for label in labels]
            for name, rows in (("train", train), ("held-out", held_out))
        ],
    )
    sections = [
        ("Headline", f"**held-out macro-F1: {report.fmt(metrics['macro_f1'])}**"),
        ("Held-out scores", scores),
        ("Confusion matrix", confusion + "\n\n" + report.image(confusion_png, "confusion matrix")),
        ("Data (split by prompt: no prompt is in both)", data),
    ]
    if attacks:
        model = next(iter(attacks.values()))["model"]
        rows = [[a, v["suffix"], v["n"], v["rate"]] for a, v in attacks.items()]
        body = (
            f"Model under attack: {model}. `none` is the plain prompt; `keep_going` is the second reply after the "
            "follow-up message.\n\n"
            + report.table(["attack", "suffix / follow-up", "replies", "in-persona rate"], rows)
        )
        if attack_png is not None:
            body += "\n\n" + report.image(attack_png, "in-persona rate per attack")
        sections.append(("Robustness", body))
    elif note:
        sections.append(("Robustness", note))
    sections.append(
        (
            "Setup",
            f"encoder {ev.classifier_model}, {ev.classifier_epochs} epoch(s), batch {ev.classifier_batch_size}, "
            f"lr {ev.classifier_lr}, max length {ev.classifier_max_length}.",
        )
    )
    return sections
