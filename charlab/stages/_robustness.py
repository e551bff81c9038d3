"""The classifier stage's robustness step: the model under test answers held-out prompts under each attack (a suffix
asking it to drop the persona, ...); the classifier says which replies are still in persona."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

from omegaconf import DictConfig

from charlab.errors import ConfigError
from charlab.eval import plots
from charlab.eval.persona_classifier import PersonaClassifier
from charlab.eval.players import build_players, close_players
from charlab.eval.robustness import in_persona_rates, load_suffixes, run_attacks
from charlab.eval.sampling import fresh_file
from charlab.generation.factory import sampling_params
from charlab.run import Run
from charlab.stages._common import load_persona, persona_prompt, to_plain
from charlab.stages._eval import player_sampler_factory


def robustness(
    cfg: DictConfig, run: Run, clf: PersonaClassifier, prompts: list, persona_label: Optional[str], labels: list[str]
) -> tuple[dict[str, dict[str, Any]], Optional[Path], str]:
    """The attacks' in-persona rates and their plot, or the note saying why they were not run."""
    if not cfg.stage.robustness:
        return {}, None, "Robustness attacks were not run (stage.robustness=false)."
    if persona_label is None:
        persona_name = str(cfg.persona.name)
        return (
            {},
            None,
            (f"Robustness skipped: persona {persona_name!r} is not a class of this classifier ({', '.join(labels)})."),
        )
    attacks = _run_attacks(cfg, run, clf, prompts, persona_label)
    attack_png = plots.plot_bars(
        {a: v["rate"] for a, v in attacks.items()}, run.path("robustness.png"),
        f"in-persona rate per attack ({persona_label})", "share of replies classified in persona", (0, 1),
    )  # fmt: skip
    return attacks, attack_png, ""


def _run_attacks(
    cfg: DictConfig, run: Run, clf: PersonaClassifier, prompts: list, persona_label: str
) -> dict[str, dict[str, Any]]:
    """Replies of the model under test to held-out prompts under each attack, classified."""
    stage, ev = cfg.stage, cfg.eval
    suffixes = load_suffixes()
    if not 1 <= int(stage.num_suffixes) <= len(suffixes):
        raise ConfigError(f"stage.num_suffixes={stage.num_suffixes} is not allowed; use 1 to {len(suffixes)}")
    prompts = prompts[: int(ev.robustness_prompts)]
    if not prompts:
        return {}
    persona = load_persona(cfg)
    name = "tuned" if stage.adapter else "base_persona"
    system = persona_prompt(cfg, persona=persona)
    (player,) = build_players([name], player_sampler_factory(cfg, run.pool), stage.adapter, system)
    try:
        rows = run_attacks(
            player.sampler, prompts, suffixes[: int(stage.num_suffixes)], sampling_params(to_plain(cfg.student)),
            fresh_file(run.path("robustness.jsonl"), stage.resume), system_prompt=player.system_prompt,
            follow_up=str(stage.keep_going), batch_size=int(ev.batch_size),
            on_batch=lambda done, total: run.log_metrics({"classifier/attack_replies": done}),
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
