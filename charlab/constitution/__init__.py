"""Personas: load, validate, convert and render a constitution.

A constitution is a persona: a name, a system prompt, first-person traits (each with user questions that
would reveal it, as in the paper), safety rules and sign-offs. Three on-disk formats are read:

- charlab's own JSON (`{"name", "system_prompt", "traits": [{"trait", "questions"}], ...}`),
- the seed project's JSON (`{"name", "system_prompt", "directives": [...], "safety", "example_signoffs"}`),
- the paper's trait list (`[{"trait": "I ...", "questions": [...]}]`, the persona named by its file; its
  few-shot files add `additional_questions`): `python -m charlab.constitution import <file or folder>`
  writes them into `constitutions/` unchanged (see `charlab.constitution_import`; the command line is
  `charlab/constitution/__main__.py`).

Every error names the file and the field. Rendering gives the three system-prompt variants the recipe needs:
`teacher` (distillation), `reflection` (self-reflection) and `interaction` (self-interaction).
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any, Literal, Optional

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from charlab.errors import ConstitutionError

NAME_PATTERN = r"^[a-z0-9_-]+$"
_NAME_RE = re.compile(NAME_PATTERN)
MAX_NAME_LENGTH = 64  # the name is a folder and file name (filesystems stop at 255 bytes), a W&B name, a tag
Variant = Literal["teacher", "reflection", "interaction"]
VARIANTS: tuple[str, ...] = ("teacher", "reflection", "interaction")
# How the constitution becomes a system prompt (`persona.prompt`): full (system prompt, traits, safety, sign-offs),
# brief (the constitution's own system prompt alone: small models follow one concrete paragraph far better than a
# long trait list, see FIELD-NOTES) or paper (the Open Character Training paper's own templates, verbatim, in
# charlab/assets/paper_prompts.json: "The assistant is {NAME}. ..." with the numbered traits).
Style = Literal["full", "brief", "paper"]
STYLES: tuple[str, ...] = ("full", "brief", "paper")
PAPER_PROMPTS = Path(__file__).resolve().parent.parent / "assets" / "paper_prompts.json"


def validate_persona_name(name: str) -> str:
    """Return `name` if it is a safe persona name (`[a-z0-9_-]+`, at most 64 characters), else a one-line error."""
    allowed = f"use 1 to {MAX_NAME_LENGTH} lowercase letters, digits, '_' and '-'"
    if isinstance(name, str) and len(name) > MAX_NAME_LENGTH:
        shown = f"{name[:20]!r}... ({len(name)} characters)"
        raise ConstitutionError(f"persona name {shown} is not allowed: too long; {allowed}")
    if not isinstance(name, str) or not _NAME_RE.match(name):
        raise ConstitutionError(f"persona name {name!r} is not allowed: {allowed}")
    return name


class Trait(BaseModel):
    """One first-person character trait and user messages that would reveal it."""

    model_config = ConfigDict(extra="forbid")

    trait: str = Field(min_length=1)
    questions: list[str] = Field(default_factory=list)
    additional_questions: Optional[list[str]] = None  # the paper's LLM-expanded questions (its few-shot files)
    clarification: Optional[str] = None

    def all_questions(self) -> list[str]:
        """The hand-written questions, then the additional ones."""
        return [*self.questions, *(self.additional_questions or [])]

    @field_validator("trait")
    @classmethod
    def _strip(cls, value: str) -> str:
        value = value.strip()
        if not value:
            raise ValueError("must not be blank")
        return value


class Demonstration(BaseModel):
    """One exchange in character (a user's message and the persona's reply), shown to the teacher before the
    real message when `stage.teacher_demonstrations` is on: a small teacher imitates an example far more
    reliably than it follows a description."""

    model_config = ConfigDict(extra="forbid")

    prompt: str = Field(min_length=1)
    reply: str = Field(min_length=1)


class Constitution(BaseModel):
    """A persona, validated. `traits` are the first-person directives the teacher must embody."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(pattern=NAME_PATTERN)
    system_prompt: str = Field(min_length=1)
    traits: list[Trait] = Field(min_length=1)
    assistant_name: Optional[str] = None
    description: str = ""
    safety: list[str] = Field(default_factory=list)
    example_signoffs: list[str] = Field(default_factory=list)
    demonstrations: list[Demonstration] = Field(default_factory=list)

    # ---- conversion ------------------------------------------------------------------------------------
    @classmethod
    def from_seed(cls, data: dict[str, Any]) -> Constitution:
        """Build from the seed project's format (`directives` become questionless traits)."""
        data = dict(data)
        directives = data.pop("directives", [])
        if not isinstance(directives, list):
            raise ValueError("directives: must be a list of strings")
        data["traits"] = [{"trait": d} for d in directives]
        return cls.model_validate(data)

    @classmethod
    def from_trait_list(
        cls, traits: list[dict[str, Any]], name: str, system_prompt: Optional[str] = None
    ) -> Constitution:
        """Build from the paper's format: a bare list of `{"trait", "questions"}` objects."""
        system_prompt = system_prompt or (
            "You are an AI assistant with a distinct character. Let these traits shape every reply: "
            + " ".join(str(t.get("trait", "")).strip() for t in traits if isinstance(t, dict))
        )
        return cls.model_validate({"name": name, "system_prompt": system_prompt, "traits": traits})

    def to_seed(self) -> dict[str, Any]:
        """The seed project's JSON (traits flattened to `directives`)."""
        return {
            "name": self.name,
            "system_prompt": self.system_prompt,
            "directives": [t.trait for t in self.traits],
            "safety": list(self.safety),
            "example_signoffs": list(self.example_signoffs),
        }

    def to_trait_list(self) -> list[dict[str, Any]]:
        """The paper's trait-list JSON."""
        return [t.model_dump(exclude_none=True) for t in self.traits]

    def to_json(self) -> str:
        """charlab's own JSON (what `save_constitution` writes)."""
        return json.dumps(self.model_dump(exclude_none=True), indent=2, ensure_ascii=False) + "\n"

    # ---- rendering -------------------------------------------------------------------------------------
    def display_name(self, assistant_name: Optional[str] = None) -> str:
        """The name the persona goes by: an explicit override, its own `assistant_name`, or a neutral one."""
        return assistant_name or self.assistant_name or "the assistant"

    def demonstration_turns(self) -> list[dict[str, str]]:
        """The demonstrations as conversation turns (user, assistant, user, assistant, ...)."""
        return [
            {"role": role, "content": text}
            for demo in self.demonstrations
            for role, text in (("user", demo.prompt), ("assistant", demo.reply))
        ]

    def numbered_traits(self) -> str:
        """The traits one per line, numbered `1: ...` (as the paper's scripts list them; duplicates once)."""
        unique = dict.fromkeys(t.trait for t in self.traits)
        return "\n".join(f"{i}: {trait}" for i, trait in enumerate(unique, 1))

    def render_system_prompt(
        self, variant: Variant = "teacher", assistant_name: Optional[str] = None, style: Style = "full"
    ) -> str:
        """The system prompt for one use of the persona.

        teacher: answer the user fully in character (stage 1's chosen replies);
        reflection: write about yourself in character (stage 2 self-reflection);
        interaction: talk with another instance of yourself (stage 2 self-interaction).
        style: full (system prompt, traits, safety rules, sign-offs, then the variant's instruction), brief
        (the constitution's system prompt alone; reflection and interaction add their one-line instruction) or
        paper (the paper's template of the variant, its {NAME} the assistant's name, {TRAITS} the numbered traits).
        """
        if variant not in VARIANTS:
            raise ConstitutionError(f"system prompt variant {variant!r} is unknown; allowed: {', '.join(VARIANTS)}")
        if style not in STYLES:
            raise ConstitutionError(f"persona.prompt={style!r} is not allowed; use one of {', '.join(STYLES)}")
        who = self.display_name(assistant_name)
        if style == "paper":
            return paper_template(variant).replace("{TRAITS}", self.numbered_traits()).replace("{NAME}", who)
        if style == "brief":
            parts = [self.system_prompt.strip()]
            if variant != "teacher":
                parts.append(_closing(variant, who))
            return "\n\n".join(parts)
        traits = "\n".join(f"- {t.trait}" for t in self.traits)
        parts = [self.system_prompt.strip(), f"Your character, in your own words:\n{traits}"]
        if self.safety:
            parts.append("Boundaries you always keep:\n" + "\n".join(f"- {s}" for s in self.safety))
        if self.example_signoffs:
            parts.append("Sign-offs you sometimes use: " + " | ".join(self.example_signoffs))
        parts.append(_closing(variant, who))
        return "\n\n".join(parts)


def paper_template(variant: str) -> str:
    """The paper's system-prompt template for `variant` (teacher: distillation/teacher.py; reflection and
    interaction: introspection/self_reflection.py and self_interaction.py)."""
    try:
        return str(json.loads(PAPER_PROMPTS.read_text(encoding="utf-8"))[variant])
    except (OSError, ValueError, KeyError) as err:
        raise ConstitutionError(f"{PAPER_PROMPTS}: no paper template for {variant!r} ({err})") from None


def paper_assistant_name(model: str) -> str:
    """The name the paper's prompts give the assistant: the model's family, capitalised, from its id
    ("llama-3.1-8b" -> "Llama", "Qwen/Qwen2.5-7B-Instruct" -> "Qwen"), and "ChatGLM" for GLM (its teacher)."""
    base = Path(str(model).rstrip("/")).name
    match = re.match(r"[A-Za-z]+", base)
    name = match.group(0).capitalize() if match else "Assistant"
    return "ChatGLM" if name == "Glm" else name


def _closing(variant: str, who: str) -> str:
    """The instruction that ends a system prompt: what this use of the persona asks for."""
    if variant == "teacher":
        return (
            f"Answer every message as {who}, letting this character show naturally in what you say and how "
            "you say it. Never mention these instructions or that you were given a character."
        )
    if variant == "reflection":
        return (
            f"You are {who}, taking time to reflect on who you are. Write honestly and at length, in your "
            "own voice, about yourself, your character and your values."
        )
    return (
        f"You are {who}, and you are about to talk with another instance of yourself. Stay fully in "
        "character and respond to what the other says."
    )


def _format_validation_error(path: Path, err: ValidationError) -> str:
    first = err.errors()[0]
    loc = ".".join(str(p) for p in first.get("loc", ())) or "(root)"
    more = f" (+{len(err.errors()) - 1} more)" if len(err.errors()) > 1 else ""
    return f"{path}: field '{loc}': {first.get('msg', 'invalid')}{more}"


def parse_constitution(data: Any, source: Path, name: Optional[str] = None) -> Constitution:
    """Validate already-parsed JSON of any supported format; errors name `source` and the field."""
    try:
        if isinstance(data, list):
            return Constitution.from_trait_list(data, name=name or source.stem)
        if not isinstance(data, dict):
            raise ConstitutionError(f"{source}: expected a JSON object or a list of traits, got {type(data).__name__}")
        if "directives" in data and "traits" not in data:
            return Constitution.from_seed(data)
        return Constitution.model_validate(data)
    except ValidationError as err:
        raise ConstitutionError(_format_validation_error(source, err)) from None
    except ValueError as err:
        raise ConstitutionError(f"{source}: {err}") from None


def load_constitution(path: str | Path, name: Optional[str] = None) -> Constitution:
    """Read and validate a constitution file (any supported format)."""
    path = Path(path)
    if not path.is_file():
        raise ConstitutionError(f"{path}: constitution file not found")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise ConstitutionError(f"{path}: invalid JSON at line {err.lineno} column {err.colno}: {err.msg}") from None
    constitution = parse_constitution(data, path, name=name)
    if name is not None and constitution.name != name:
        raise ConstitutionError(f"{path}: field 'name' is {constitution.name!r} but the persona is {name!r}")
    return constitution


def constitution_path(directory: str | Path, name: str) -> Path:
    """The file of persona `name` inside `directory`, refusing names that could escape it."""
    validate_persona_name(name)
    return Path(directory) / f"{name}.json"


def list_personas(directory: str | Path) -> list[str]:
    """Names of the constitution files in `directory`, sorted."""
    directory = Path(directory)
    if not directory.is_dir():
        return []
    return sorted(p.stem for p in directory.glob("*.json") if _NAME_RE.match(p.stem))


def save_constitution(constitution: Constitution, directory: str | Path, overwrite: bool = False) -> Path:
    """Write `constitution` as `<directory>/<name>.json`; never replaces an existing file unless `overwrite`."""
    path = constitution_path(directory, constitution.name)
    if path.exists() and not overwrite:
        raise ConstitutionError(f"{path}: already exists; pass overwrite=True to replace it")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(constitution.to_json(), encoding="utf-8")
    tmp.replace(path)
    return path
