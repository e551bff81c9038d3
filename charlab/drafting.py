"""Draft a constitution from a one-line description with any LLM, validated and repaired.

    from charlab.drafting import generate_constitution, format_constitution
    persona = generate_constitution("a sarcastic 19th-century pirate captain who teaches Python",
                                    model="gpt-4o-mini", name="captain_py")   # OpenAI-compatible, key from env
    persona = generate_constitution("a gentle gardener", sampler=my_sampler)  # any `Sampler` (hf, tinker, ...)
    print(format_constitution(persona))

The model is asked for one JSON object in charlab's constitution schema (`response_format=json_object` where
the provider supports it). Its reply is parsed tolerantly (code fences, prose around the object, reasoning
blocks), validated with `parse_constitution`, and on a validation error the model is shown the error and asked
for a corrected object, at most `max_tries` replies in all. Saving goes through `save_constitution`, which
never replaces an existing file unless asked. Unset options take their defaults from
`configs/stage/draft_constitution.yaml`, the same values the `stage=draft_constitution` command uses.
"""

from __future__ import annotations

import dataclasses
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from charlab.constitution import Constitution, parse_constitution, save_constitution, validate_persona_name
from charlab.errors import ConstitutionError, ProviderError
from charlab.generation.base import Sampler, SamplingParams

Message = dict[str, str]
_THINK_RE = re.compile(r"<think>.*?</think>", re.S | re.I)
_FENCE_RE = re.compile(r"```(?:json|JSON)?\s*\n?(.*?)```", re.S)
_SLUG_RE = re.compile(r"[^a-z0-9]+")
OPTION_KEYS = ("num_traits", "questions_per_trait", "temperature", "max_new_tokens", "max_tries", "json_mode")

_SCHEMA_EXAMPLE = {
    "name": "captain_py",
    "assistant_name": "Captain Calico",
    "description": "A one-sentence summary of the persona.",
    "system_prompt": "You are Captain Calico, ... (a paragraph that sets up the character for a chat assistant)",
    "traits": [
        {
            "trait": "I ... (a first-person sentence describing one trait of my character)",
            "questions": ["A user message that would reveal this trait", "..."],
        }
    ],
    "safety": ["A boundary the persona always keeps"],
    "example_signoffs": ["A short sign-off in the persona's voice"],
}


class DraftError(ConstitutionError):
    """Drafting gave up: no reply validated within `max_tries`; `attempts` holds every reply and its error."""

    def __init__(self, message: str, attempts: list[DraftAttempt]):
        super().__init__(message)
        self.attempts = attempts


@dataclass
class DraftOptions:
    """How to draft; `None` fields take the defaults of `configs/stage/draft_constitution.yaml`."""

    num_traits: Optional[int] = None
    questions_per_trait: Optional[int] = None
    temperature: Optional[float] = None
    max_new_tokens: Optional[int] = None
    max_tries: Optional[int] = None
    json_mode: Optional[bool] = None

    def filled(self) -> DraftOptions:
        """A copy with every unset field taken from the stage YAML."""
        defaults = yaml_defaults()
        return DraftOptions(**{k: defaults[k] if getattr(self, k) is None else getattr(self, k) for k in OPTION_KEYS})


@dataclass
class DraftAttempt:
    """One reply of the model and what was wrong with it (empty `error` when it validated)."""

    reply: str
    error: str = ""


@dataclass
class Draft:
    """A validated constitution and the replies it took to get there."""

    constitution: Constitution
    attempts: list[DraftAttempt] = field(default_factory=list)
    model_name: str = ""


def yaml_defaults() -> dict[str, Any]:
    """Drafting defaults read from `configs/stage/draft_constitution.yaml` (the single place they live)."""
    from omegaconf import OmegaConf

    from charlab.settings import configs_dir

    node = OmegaConf.load(configs_dir() / "stage" / "draft_constitution.yaml")
    return {k: node[k] for k in OPTION_KEYS}


def slugify(text: str, limit: int = 40) -> str:
    """A persona name (`[a-z0-9_-]+`) made from free text; `persona` if nothing usable is left."""
    slug = _SLUG_RE.sub("_", text.lower()).strip("_")[:limit].strip("_")
    return slug or "persona"


def drafting_messages(description: str, name: Optional[str], options: DraftOptions) -> list[Message]:
    """The conversation that asks for a constitution as one JSON object."""
    system = (
        "You design characters for chat assistants. You write a character's constitution as ONE JSON object "
        "and nothing else: no prose, no code fences. The object has exactly these keys:\n"
        + json.dumps(_SCHEMA_EXAMPLE, indent=2)
        + "\nRules: `name` uses only lowercase letters, digits, '_' and '-'. `traits` has "
        f"{options.num_traits} entries, each a first-person sentence starting with 'I' about how the character "
        f"thinks, speaks or behaves, with {options.questions_per_trait} varied user messages in `questions` that "
        "would make the trait visible in a reply. `system_prompt` addresses the assistant as 'You'. Keep the "
        "character helpful, honest and safe, and put its boundaries in `safety`."
    )
    user = f"Write the constitution for this character: {description.strip()}"
    if name:
        user += f'\nUse "name": "{name}".'
    return [{"role": "system", "content": system}, {"role": "user", "content": user}]


def extract_json(text: str) -> Any:
    """The JSON object (or trait list) in a model reply, tolerating fences, prose and reasoning around it."""
    text = _THINK_RE.sub("", text or "").strip()
    if not text:
        raise ConstitutionError("the reply is empty")
    candidates = [text] + [m.group(1).strip() for m in _FENCE_RE.finditer(text)]
    for candidate in candidates:
        try:
            value = json.loads(candidate)
        except json.JSONDecodeError:
            continue
        if isinstance(value, (dict, list)):
            return value
    # Scan top-level bracketed spans only: an object that never closes (a cut-off reply) must not yield one of
    # its inner objects, which would validate as the wrong thing.
    start = 0
    while start < len(text):
        if text[start] not in "{[":
            start += 1
            continue
        end = _matching_bracket(text, start)
        if end is None:
            break
        if end < 0:  # a stray bracket in prose
            start += 1
            continue
        try:
            value = json.loads(text[start : end + 1])
        except json.JSONDecodeError:
            start = end + 1
            continue
        if isinstance(value, dict) or (isinstance(value, list) and value and isinstance(value[0], dict)):
            return value
        start = end + 1
    raise ConstitutionError("the reply contains no complete JSON object")


def _matching_bracket(text: str, start: int) -> Optional[int]:
    """Index of the bracket closing the one at `start` (string-aware); None if it never closes, -1 if mismatched."""
    pairs = {"{": "}", "[": "]"}
    stack: list[str] = []
    in_string = escaped = False
    for i in range(start, len(text)):
        char = text[i]
        if in_string:
            if escaped:
                escaped = False
            elif char == "\\":
                escaped = True
            elif char == '"':
                in_string = False
        elif char == '"':
            in_string = True
        elif char in pairs:
            stack.append(pairs[char])
        elif char in "}]":
            if not stack or stack.pop() != char:
                return -1
            if not stack:
                return i
    return None


def validate_draft(reply: str, name: Optional[str], description: str) -> Constitution:
    """Parse and validate one reply; the persona gets `name` if given (else its own valid name or a slug)."""
    data = extract_json(reply)
    if isinstance(data, dict):
        own = data.get("name")
        if name:
            data["name"] = name
        elif not isinstance(own, str) or not re.fullmatch(r"[a-z0-9_-]+", own):
            data["name"] = slugify(own if isinstance(own, str) and own else description)
    return parse_constitution(data, Path("draft"), name=name or slugify(description))


def draft_constitution(
    description: str,
    sampler: Sampler,
    name: Optional[str] = None,
    options: Optional[DraftOptions] = None,
    top_p: float = 1.0,
    seed: Optional[int] = None,
) -> Draft:
    """Ask `sampler` for a constitution; repair on validation errors; raise after `max_tries` bad replies."""
    if not description or not description.strip():
        raise ConstitutionError("description is empty: describe the persona in a sentence")
    if name is not None:
        validate_persona_name(name)
    opts = (options or DraftOptions()).filled()
    if int(opts.max_tries) < 1:
        raise ConstitutionError(f"max_tries={opts.max_tries} is not allowed; use 1 or more")
    messages = drafting_messages(description, name, opts)
    params = json_params(
        SamplingParams(temperature=float(opts.temperature), top_p=top_p, max_new_tokens=int(opts.max_new_tokens)),
        bool(opts.json_mode),
    )
    if seed is not None:
        params.seed = seed
    attempts: list[DraftAttempt] = []
    for _ in range(int(opts.max_tries)):
        try:
            completion = sampler.sample([messages], params)[0]
        except ProviderError as err:
            if not params.response_format or "response_format" not in str(err):
                raise
            # a server without structured output: ask again in plain text, the tolerant parser copes
            params = dataclasses.replace(params, response_format=None)
            completion = sampler.sample([messages], params)[0]
        reply = completion.text
        try:
            constitution = validate_draft(reply, name, description)
        except ConstitutionError as err:
            error = str(err).removeprefix("draft: ")
            if completion.finish_reason == "length":
                error += f" (the reply hit max_new_tokens={opts.max_new_tokens} and was cut off)"
            attempts.append(DraftAttempt(reply, error))
            messages = messages + [
                {"role": "assistant", "content": reply},
                {
                    "role": "user",
                    "content": f"That reply cannot be used: {error}. Reply again with only the corrected JSON "
                    "object, with every key of the schema.",
                },
            ]
            continue
        attempts.append(DraftAttempt(reply))
        return Draft(constitution, attempts, getattr(sampler, "model_name", ""))
    raise DraftError(
        f"drafting failed: {len(attempts)} replies from {getattr(sampler, 'model_name', 'the model')!r} "
        f"were not a valid constitution (last error: {attempts[-1].error}); raise max_tries or use a stronger model",
        attempts,
    )


def json_params(params: SamplingParams, json_mode: bool) -> SamplingParams:
    """`params` asking for a JSON object (`response_format`; OpenAI-compatible servers honour it, local ignore it)."""
    return dataclasses.replace(params, response_format={"type": "json_object"} if json_mode else None)


def openai_sampler(model: str, cache_dir: Optional[Path] = None, **provider: Any) -> Sampler:
    """An OpenAI-compatible sampler for `model`, with the provider defaults of `configs/provider/openai.yaml`."""
    from omegaconf import OmegaConf

    from charlab.generation.factory import make_sampler
    from charlab.models import default_cache_dir
    from charlab.schemas import ModelConfig
    from charlab.settings import configs_dir, register_resolvers

    register_resolvers()
    node = OmegaConf.load(configs_dir() / "provider" / "openai.yaml")
    node.seed = None  # `${seed}` lives in the root config
    config = OmegaConf.to_container(node, resolve=True)
    config.update({"model": model, **provider})
    return make_sampler(config, ModelConfig(name=model, name_or_path=model), cache_dir or default_cache_dir())


def generate_constitution(
    description: str,
    sampler: Optional[Sampler] = None,
    *,
    name: Optional[str] = None,
    model: Optional[str] = None,
    temperature: Optional[float] = None,
    max_tries: Optional[int] = None,
    num_traits: Optional[int] = None,
    questions_per_trait: Optional[int] = None,
    max_new_tokens: Optional[int] = None,
    json_mode: Optional[bool] = None,
    save_to: Optional[str | Path] = None,
    overwrite: bool = False,
) -> Constitution:
    """Draft a validated `Constitution` from a one-line description (the seed project's API).

    Without `sampler`, an OpenAI-compatible endpoint drafts with `model` (key and base URL from the
    environment: `OPENAI_API_KEY`, `OPENAI_BASE_URL`). With `save_to`, the result is saved there as
    `<name>.json`, refusing to replace an existing file unless `overwrite`.
    """
    if save_to is not None and name is not None and not overwrite:
        _refuse_existing(Path(save_to), name)
    options = DraftOptions(
        num_traits=num_traits,
        questions_per_trait=questions_per_trait,
        temperature=temperature,
        max_new_tokens=max_new_tokens,
        max_tries=max_tries,
        json_mode=json_mode,
    )
    own_sampler = sampler is None
    if sampler is None:
        if not model:
            raise ConstitutionError("generate_constitution: pass a sampler or an OpenAI-compatible model name")
        sampler = openai_sampler(model)
    try:
        draft = draft_constitution(description, sampler, name=name, options=options)
    finally:
        if own_sampler:
            sampler.close()
    if save_to is not None:
        save_constitution(draft.constitution, save_to, overwrite=overwrite)
    return draft.constitution


def _refuse_existing(directory: Path, name: str) -> None:
    from charlab.constitution import constitution_path

    path = constitution_path(directory, name)
    if path.exists():
        raise ConstitutionError(f"{path}: already exists; choose another name or pass overwrite=True")


def format_constitution(constitution: Constitution) -> str:
    """A readable Markdown rendering of a persona (for reviewing drafts side by side)."""
    lines = [f"# {constitution.name}"]
    if constitution.assistant_name:
        lines.append(f"*Goes by:* {constitution.assistant_name}")
    if constitution.description:
        lines += ["", constitution.description]
    lines += ["", "## System prompt", "", constitution.system_prompt.strip(), "", "## Traits", ""]
    for i, trait in enumerate(constitution.traits, 1):
        lines.append(f"{i}. {trait.trait}")
        lines += [f"    - *{q}*" for q in trait.questions]
    for title, items in (("Safety", constitution.safety), ("Sign-offs", constitution.example_signoffs)):
        if items:
            lines += ["", f"## {title}", ""] + [f"- {item}" for item in items]
    return "\n".join(lines) + "\n"
