"""`stage=show`: print the resolved persona, its rendered system prompt, and the model and LoRA choices.

    python -m charlab.train stage=show persona=sarcasm model=smollm2-135m
    python -m charlab.train stage=show persona=pirate stage.variant=reflection stage.show_template=false

With `stage.show_template=true` it loads the model's tokenizer (offline models are prepared on first use) and
renders a sample conversation through the chat format module: exactly what a teacher would be fed.
"""

from __future__ import annotations

from omegaconf import DictConfig
from rich.console import Console
from rich.panel import Panel
from rich.table import Table

from charlab.registry import StageResult, register_stage
from charlab.run import Run
from charlab.schemas import ShowStageConfig
from charlab.stages._common import cache_dir, load_persona, lora_config, model_config, persona_prompt


@register_stage("show", schema=ShowStageConfig, description="print the persona, its system prompt and model/LoRA")
def run(cfg: DictConfig, run: Run) -> StageResult:
    """Print the persona and the choices this config makes."""
    console = Console()
    persona = load_persona(cfg)
    role = "teacher" if cfg.stage.variant == "teacher" else "student"  # whose model the prompt names (paper style)
    system_prompt = persona_prompt(cfg, cfg.stage.variant, persona, role=role)
    model, lora = model_config(cfg.model), lora_config(cfg.lora)

    console.print(Panel(persona.description or persona.name, title=f"persona: {persona.name}"))
    console.print(Panel(system_prompt, title=f"system prompt ({cfg.stage.variant})"))
    choices = Table(title="choices", show_header=False)
    for key, value in [
        ("model", f"{model.name} ({model.name_or_path})"),
        ("lora", f"r={lora.rank} alpha={lora.alpha} dropout={lora.dropout} on {', '.join(lora.target_modules)}"),
        ("backend", cfg.backend.kind),
        ("teacher / student / judge", f"{cfg.teacher.kind} / {cfg.student.kind} / {cfg.judge.kind}"),
        ("run directory", str(run.dir)),
    ]:
        choices.add_row(key, value)
    console.print(choices)

    summary = {"persona": persona.name, "traits": len(persona.traits), "model": model.name, "lora_rank": lora.rank}
    if cfg.stage.show_template:
        from charlab.chat_format import ChatFormat, make_messages
        from charlab.models import load_tokenizer

        chat = ChatFormat(load_tokenizer(model, cache_dir(cfg)))
        question = persona.traits[0].questions[0] if persona.traits[0].questions else "Who are you?"
        rendered = chat.render(make_messages(question, system=system_prompt))
        (run.path("rendered_prompt.txt")).write_text(rendered, encoding="utf-8")
        console.print(Panel(rendered, title=f"chat template of {model.name} (generation-ready)"))
        summary["prompt_tokens"] = len(chat.encode_text(rendered))
    run.log_metrics({k: v for k, v in summary.items() if isinstance(v, (int, float))}, step=0)
    return StageResult(metric=None, summary=summary)
