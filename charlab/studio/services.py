"""What the Studio's interactive pages compute: drafts, sample prompts, teacher-vs-student replies, chats.

Everything goes through the same library calls the stages use: a composed config, `make_sampler` with a
role's provider config, the persona's rendered system prompt and `ChatFormat` inside the samplers. Samplers are
expensive (a local model load), so callers pass a `get_sampler` that may cache them; the default builds a new one.
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from omegaconf import DictConfig

from charlab.chat_format import make_messages
from charlab.constitution import Constitution
from charlab.errors import ProviderError
from charlab.generation.base import Sampler, SamplingParams
from charlab.settings import assets_dir
from charlab.stages._common import cache_dir, load_persona, model_config, to_plain

SamplerKey = tuple[str, str, str, Optional[str]]  # (provider json, model json, cache dir, adapter)
GetSampler = Callable[[SamplerKey], Sampler]


def sampler_key(cfg: DictConfig, role: str, adapter: Optional[str] = None) -> SamplerKey:
    """A hashable description of the sampler a role's provider config makes (equal configs share one)."""
    provider = to_plain(cfg[role])
    provider.pop("seed", None)  # sampling settings, not what is loaded
    return (
        json.dumps(provider, sort_keys=True, default=str),
        json.dumps(to_plain(cfg.model), sort_keys=True, default=str),
        str(cache_dir(cfg)),
        adapter,
    )


def build_sampler(key: SamplerKey) -> Sampler:
    """Make the sampler a `sampler_key` describes (the library's own factory)."""
    from charlab.generation.factory import make_sampler
    from charlab.schemas import ModelConfig

    provider, model, cache, adapter = key
    return make_sampler(json.loads(provider), ModelConfig(**json.loads(model)), Path(cache), adapter=adapter)


def params_for(cfg: DictConfig, role: str, **changes: Any) -> SamplingParams:
    """The role's sampling settings from its provider config, with the page's changes."""
    from charlab.generation.factory import sampling_params

    params = sampling_params(to_plain(cfg[role]))
    for name, value in changes.items():
        if value is not None:
            setattr(params, name, value)
    return params


def missing_key(cfg: DictConfig, role: str) -> Optional[str]:
    """A one-line message when a role's provider needs an API key that is not set, else None."""
    import os

    provider = cfg[role]
    env = provider.get("api_key_env")
    if not env or os.environ.get(str(env)):
        return None
    base_url = provider.get("base_url")
    if provider.get("kind") == "openai" and base_url:
        from charlab.generation.openai_compat import is_loopback

        if is_loopback(str(base_url)):
            return None
    return (
        f"{role}: provider '{provider.get('kind')}' needs the environment variable {env}; add it to the .env file "
        "in the project root (or export it) and restart the Studio"
    )


# ---------------------------------------------------------------------------------------------- drafting


def draft(
    cfg: DictConfig, role: str, description: str, name: Optional[str], get_sampler: GetSampler = build_sampler
) -> Any:
    """A validated draft (`charlab.drafting.Draft`) from the role's provider, with the stage's YAML options."""
    from charlab.drafting import DraftOptions, draft_constitution

    options = DraftOptions(**{k: cfg.stage[k] for k in DraftOptions.__dataclass_fields__}) if _is_draft(cfg) else None
    sampler = get_sampler(sampler_key(cfg, role))
    top_p = float(cfg[role].get("top_p", 1.0))
    return draft_constitution(description, sampler, name=name, options=options, top_p=top_p, seed=cfg.seed)


def _is_draft(cfg: DictConfig) -> bool:
    return cfg.stage.name == "draft_constitution"


# ---------------------------------------------------------------------------------------------- prompts


@dataclass
class PreviewPair:
    """One prompt and the teacher's (with constitution) and student's (without) replies."""

    prompt: str
    teacher: str
    student: str
    teacher_finish: str = "stop"
    student_finish: str = "stop"


def sample_prompts(cfg: DictConfig, persona: Constitution, n: int, seed: int) -> list[str]:
    """`n` user prompts, half generic and half persona-revealing, as the distill stage draws them."""
    try:
        from charlab.data import prompts as prompt_module
    except ImportError:
        prompt_module = None
    drawn = _prompts_from_module(prompt_module, cfg, persona, n, seed) if prompt_module else None
    if drawn:
        return drawn[:n]
    rng = random.Random(seed)
    generic = [p.strip() for p in (assets_dir() / "generic_prompts.txt").read_text(encoding="utf-8").splitlines()]
    generic = [p for p in generic if p and not p.startswith("#")]
    questions = [q for t in persona.traits for q in t.questions]
    persona_n = min(len(questions), n // 2)
    picked = rng.sample(questions, persona_n) + rng.sample(generic, min(len(generic), n - persona_n))
    rng.shuffle(picked)
    return picked


def _prompts_from_module(module: Any, cfg: DictConfig, persona: Constitution, n: int, seed: int) -> list[str]:
    """Template-synthesised prompts from `charlab.data.prompts`, when its synthesis function is there."""
    synth = getattr(module, "synthesize_prompts", None) or getattr(module, "template_prompts", None)
    if synth is None:
        return []
    try:
        items = synth(persona, n, seed=seed, hint_rate=float(cfg.data.hint_rate))
    except TypeError:
        return []
    return [getattr(item, "text", None) or (item.get("prompt") if isinstance(item, dict) else str(item)) for item in items]


def teacher_vs_student(
    cfg: DictConfig, prompts: list[str], get_sampler: GetSampler = build_sampler, max_new_tokens: Optional[int] = None
) -> list[PreviewPair]:
    """The distill stage's two replies per prompt: teacher with the constitution prompt, student without."""
    persona = load_persona(cfg)
    system = persona.render_system_prompt("teacher", assistant_name=cfg.persona.assistant_name)
    teacher = get_sampler(sampler_key(cfg, "teacher"))
    student = get_sampler(sampler_key(cfg, "student"))
    taught = teacher.sample(
        [make_messages(p, system=system) for p in prompts], params_for(cfg, "teacher", max_new_tokens=max_new_tokens)
    )
    plain = student.sample([make_messages(p) for p in prompts], params_for(cfg, "student", max_new_tokens=max_new_tokens))
    return [
        PreviewPair(p, t.text, s.text, t.finish_reason, s.finish_reason) for p, t, s in zip(prompts, taught, plain)
    ]


# ---------------------------------------------------------------------------------------------- chat


@dataclass
class ChatReplies:
    """One prompt answered three ways."""

    prompt: str
    base: str
    base_with_prompt: str
    tuned: Optional[str]


def chat_three_ways(
    cfg: DictConfig,
    role: str,
    prompt: str,
    adapter: Optional[str],
    get_sampler: GetSampler = build_sampler,
    max_new_tokens: Optional[int] = None,
    temperature: Optional[float] = None,
) -> ChatReplies:
    """The base model, the base model with the persona's system prompt, and the tuned adapter (no prompt)."""
    if not prompt.strip():
        raise ProviderError("the message is empty")
    persona = load_persona(cfg)
    system = persona.render_system_prompt("teacher", assistant_name=cfg.persona.assistant_name)
    params = params_for(cfg, role, max_new_tokens=max_new_tokens, temperature=temperature)
    base = get_sampler(sampler_key(cfg, role))
    plain, prompted = base.sample([make_messages(prompt), make_messages(prompt, system=system)], params)
    tuned = None
    if adapter:
        tuned = get_sampler(sampler_key(cfg, role, adapter=adapter)).sample([make_messages(prompt)], params)[0].text
    return ChatReplies(prompt, plain.text, prompted.text, tuned)


def model_label(cfg: DictConfig, role: str) -> str:
    """What a role's provider runs, in words (`hf: smollm2-135m`)."""
    provider = cfg[role]
    return f"{provider.kind}: {provider.get('model') or model_config(cfg.model).name}"
