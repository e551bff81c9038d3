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
from typing import Any, Optional

from omegaconf import DictConfig

from charlab.chat_format import make_messages
from charlab.constitution import Constitution
from charlab.errors import ProviderError
from charlab.generation.base import Sampler, SamplingParams
from charlab.stages._common import cache_dir, load_persona, model_config, persona_prompt, sampler_for_role, to_plain

SamplerKey = tuple[str, str, str, Optional[str]]  # (provider json, model json, cache dir, adapter)
# (key, build) -> sampler: a caller may return a cached sampler for an equal key instead of building one
GetSampler = Callable[[SamplerKey, Callable[[], Sampler]], Sampler]


def build_sampler(key: SamplerKey, build: Callable[[], Sampler]) -> Sampler:
    """No caching: build the sampler."""
    return build()


def role_sampler(cfg: DictConfig, role: str, get_sampler: GetSampler, adapter: Optional[str] = None) -> Sampler:
    """The sampler a stage would use for `role` (`sampler_for_role`), through the caller's cache."""
    def build() -> Sampler:
        from charlab.app import setup

        return sampler_for_role(cfg, role, adapter=adapter, pool=setup().vllm)  # the process's pool (no run scope)

    return get_sampler(sampler_key(cfg, role, adapter), build)


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
    sampler = role_sampler(cfg, role, get_sampler)
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
    """`n` user prompts drawn like the distill stage draws them: half generic, half revealing the persona.

    The config's `data` group decides the generic source and hint rate; near-duplicate removal by embedding is
    skipped here (a preview of a few prompts, without loading MiniLM), exact duplicates still go.
    """
    from charlab.data.prompts import PromptSpec, build_prompt_set

    data = cfg.data
    spec = PromptSpec(
        generic_count=n // 2,
        persona_count=n - n // 2,
        generic_source=str(data.generic_source),
        generic_field=str(data.generic_field),
        hint_rate=float(data.hint_rate),
        seed=seed,
        persona_sources=["questions", "templates"],
    )
    records = build_prompt_set(
        persona,
        spec,
        persona_name=persona.display_name(),
        dedupe=lambda texts, threshold, ref: list(range(len(texts))),
    )
    texts = [r.text for r in records]
    random.Random(seed).shuffle(texts)
    return texts[:n]


def teacher_vs_student(
    cfg: DictConfig, prompts: list[str], get_sampler: GetSampler = build_sampler, max_new_tokens: Optional[int] = None
) -> list[PreviewPair]:
    """The distill stage's two replies per prompt: teacher with the constitution prompt, student without."""
    persona = load_persona(cfg)
    system = persona_prompt(cfg, persona=persona)
    teacher = role_sampler(cfg, "teacher", get_sampler)
    student = role_sampler(cfg, "student", get_sampler)
    taught = teacher.sample(
        [make_messages(p, system=system) for p in prompts], params_for(cfg, "teacher", max_new_tokens=max_new_tokens)
    )
    plain = student.sample(
        [make_messages(p) for p in prompts], params_for(cfg, "student", max_new_tokens=max_new_tokens)
    )
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
    system = persona_prompt(cfg, persona=persona)
    params = params_for(cfg, role, max_new_tokens=max_new_tokens, temperature=temperature)
    base = role_sampler(cfg, role, get_sampler)
    plain, prompted = base.sample([make_messages(prompt), make_messages(prompt, system=system)], params)
    tuned = None
    if adapter:
        tuned = role_sampler(cfg, role, get_sampler, adapter).sample([make_messages(prompt)], params)[0].text
    return ChatReplies(prompt, plain.text, prompted.text, tuned)


def model_label(cfg: DictConfig, role: str) -> str:
    """What a role's provider runs, in words (`hf: smollm2-135m`)."""
    provider = cfg[role]
    return f"{provider.kind}: {provider.get('model') or model_config(cfg.model).name}"
