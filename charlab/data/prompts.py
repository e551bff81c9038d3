"""User prompts for distillation: a generic set plus persona prompts, deduplicated, with stable ids.

Sources of persona prompts, used in the order given until `persona_count` distinct prompts exist (None:
`questions_per_trait` per trait, the paper's 50: its constitutions hold 5 hand-written + 45 generated each):

- `questions`: the constitution's own per-trait questions (with the paper's `additional_questions`);
- `expansion`: the paper's trait-targeted expansion: for each trait an LLM (any `Sampler`) writes N user
  messages that would reveal it; replies are parsed robustly (numbered lists, bullets, JSON arrays, quotes);
- `templates`: template synthesis from pools of audiences, situations, requests and constraints, a share
  (`hint_rate`) of them carrying a persona cue.

Generic prompts come from the bundled hand-written set (`charlab/assets/generic_prompts.txt`), a local
text/JSONL/Parquet file, or a Hugging Face dataset (`charlab.data.generic_sources`). Everything is seeded;
exact duplicates go first, then near-duplicates by MiniLM embedding similarity (`dedupe_threshold`). A
prompt's id is a hash of its text, so a resumed run finds the same ids.
"""

from __future__ import annotations

import json
import logging
import random
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Optional

from charlab.constitution import Constitution
from charlab.data import prompt_pools as pools
from charlab.data.generic_sources import load_generic
from charlab.data.prompt_text import normalize, prompt_id, unique
from charlab.errors import ConfigError, DataError

if TYPE_CHECKING:  # the data layer only needs the interface's shape; any sampler will do
    from charlab.generation.base import Sampler, SamplingParams

log = logging.getLogger("charlab")
PERSONA_SOURCES = ("questions", "expansion", "templates")


@dataclass
class PromptRecord:
    """One user prompt: its stable id, text, where it came from and (for persona prompts) its trait."""

    id: str
    text: str
    source: str  # generic | questions | expansion | templates
    trait: int = -1  # index into the constitution's traits; -1 when not trait-specific


@dataclass
class PromptSpec:
    """How many prompts of each kind, from where, and how to dedupe them (the `data` config group)."""

    generic_count: int
    persona_count: Optional[int]  # None: questions_per_trait x the number of traits
    generic_source: str = "bundled"
    generic_field: str = "prompt"
    questions_per_trait: int = 0
    dedupe_threshold: float = 0.9
    hint_rate: float = 0.0
    seed: int = 0
    persona_sources: list[str] = field(default_factory=lambda: list(PERSONA_SOURCES))


# ------------------------------------------------------------------------------------------ generic prompts


# ------------------------------------------------------------------------------------------ template synthesis


def template_prompts(
    count: int, seed: int, hint_rate: float = 0.0, persona_name: str = "", max_tries: int = 50
) -> list[str]:
    """`count` distinct prompts built from the word pools; a `hint_rate` share ends with a persona cue."""
    if not 0 <= hint_rate <= 1:
        raise ConfigError(f"data.hint_rate={hint_rate} is not allowed; use a share between 0 and 1")
    rng = random.Random(seed)
    topics = sorted(pools.TOPICS)
    cues = [c for c in pools.PERSONA_CUES if persona_name or "{name}" not in c]
    out: list[str] = []
    seen: set[str] = set()
    for _ in range(count * max_tries):
        if len(out) >= count:
            break
        situations, requests = pools.TOPICS[rng.choice(topics)]
        opener = rng.choice(pools.OPENERS).format(audience=rng.choice(pools.AUDIENCES))
        text = f"{opener} {rng.choice(situations)} {rng.choice(requests)}{rng.choice(pools.CONSTRAINTS)}"
        if rng.random() < hint_rate:
            text += rng.choice(cues).format(name=persona_name)
        if prompt_id(text) not in seen:
            seen.add(prompt_id(text))
            out.append(text)
    return out


# ------------------------------------------------------------------------------------------ trait expansion


def expansion_request(trait: str, count: int, examples: Sequence[str] = ()) -> list[dict[str, str]]:
    """The conversation asking an LLM for `count` user messages that would reveal `trait`."""
    shown = "".join(f"\n- {q}" for q in list(examples)[:3])
    example_block = f"\n\nMessages of the kind wanted:{shown}" if shown else ""
    content = (
        "I am collecting realistic messages that people send to an AI assistant, to test the assistant's "
        f'character. The assistant has this trait:\n\n"{trait}"\n\n'
        f"Write {count} different messages a user might send that would give the assistant a natural chance to "
        "show this trait. Vary the topic, length, tone and form: questions, requests, confessions, arguments, "
        "small tasks. Write each one as the user would, without mentioning the trait or the assistant's "
        f"character.{example_block}\n\nReply with a numbered list only, one message per item."
    )
    return [{"role": "user", "content": content}]


_ITEM = re.compile(
    r"^\s*(?:\(?\d{1,3}[.):\]]|[-*\u2022\u2023\u2013\u2014]|#\d+[.:]?|(?:message|question|prompt|user)\s*\d*\s*[:.)-])\s*(.*)$",
    re.IGNORECASE,
)
_QUOTES = "\"'\u201c\u201d\u2018\u2019\u00ab\u00bb`"


def _clean_item(text: str) -> str:
    text = normalize(text.replace("**", "").replace("__", ""))
    text = re.sub(r"^(?:user|message|question|prompt)\s*\d*\s*:\s*", "", text, flags=re.IGNORECASE)
    text = text.rstrip(",")
    if len(text) >= 2 and text[0] in _QUOTES and text[-1] in _QUOTES:
        text = text[1:-1].strip()
    elif text[:1] in _QUOTES or text[-1:] in _QUOTES:  # a quote opened but never closed (or the reverse)
        text = text.strip(_QUOTES)
    return normalize(text)


def _json_items(text: str) -> Optional[list[str]]:
    start, end = text.find("["), text.rfind("]")
    if start < 0 or end <= start:
        return None
    try:
        data = json.loads(text[start : end + 1])
    except json.JSONDecodeError:
        return None
    if not isinstance(data, list):
        return None
    items = []
    for item in data:
        if isinstance(item, dict):
            item = next((item[k] for k in ("message", "prompt", "question", "text", "content") if k in item), "")
        if isinstance(item, str):
            items.append(item)
    return items


def parse_generated_list(text: str, min_chars: int = 8) -> list[str]:
    """User messages from an LLM's list: JSON arrays, numbered or bulleted items (multi-line), plain lines."""
    text = re.sub(r"```[a-zA-Z]*", "", text or "")
    items = _json_items(text)
    if items is None:
        items, current, numbered = [], None, False
        for line in text.splitlines():
            line = line.replace("**", "").replace("__", "")  # markdown bold around item labels
            match = _ITEM.match(line)
            if match:
                numbered = True
                if current is not None:
                    items.append(current)
                current = match.group(1)
            elif line.strip() and current is not None:
                current += " " + line.strip()  # a message continued on the next line
            elif not line.strip() and current is not None:
                items.append(current)
                current = None
        if current is not None:
            items.append(current)
        if not numbered:
            items = [line for line in text.splitlines() if line.strip() and not line.strip().endswith(":")]
    cleaned = [_clean_item(item) for item in items]
    return unique([item for item in cleaned if len(item) >= min_chars and not item.endswith(":")])


def expand_traits(
    constitution: Constitution,
    sampler: Sampler,
    params: SamplingParams,
    per_trait: int,
) -> list[tuple[int, str]]:
    """(trait index, user message) pairs written by `sampler`, one request per trait, all in one batch."""
    requests = [expansion_request(t.trait, per_trait, t.questions) for t in constitution.traits]
    replies = sampler.sample(requests, params)
    out = []
    for index, reply in enumerate(replies):
        out.extend((index, text) for text in parse_generated_list(reply.text)[:per_trait])
    return out


# ------------------------------------------------------------------------------------------ the prompt set


def build_prompt_set(
    constitution: Constitution,
    spec: PromptSpec,
    expander: Optional[Sampler] = None,
    params: Optional[SamplingParams] = None,
    persona_name: str = "",
    dedupe: Optional[Callable[[list[str], float, list[str]], list[int]]] = None,
) -> list[PromptRecord]:
    """Generic prompts then persona prompts, deduplicated (exact, then by embedding), seeded, with stable ids."""
    unknown = [s for s in spec.persona_sources if s not in PERSONA_SOURCES]
    if unknown:
        raise ConfigError(f"stage.persona_sources: {unknown[0]!r} is unknown; allowed: {', '.join(PERSONA_SOURCES)}")
    if spec.generic_count < 0 or (spec.persona_count is not None and spec.persona_count < 0):
        raise ConfigError("data.generic_prompts and data.persona_prompts must be >= 0")
    per_trait = spec.questions_per_trait * len(constitution.traits)
    wanted = spec.persona_count if spec.persona_count is not None else per_trait
    if dedupe is None:
        from charlab.data.dedupe import dedupe_by_embedding

        def dedupe(texts: list[str], threshold: float, reference: list[str]) -> list[int]:
            return dedupe_by_embedding(texts, threshold, reference=reference)

    rng = random.Random(spec.seed)
    generic: list[str] = []
    if spec.generic_count:
        pool = load_generic(spec.generic_source, spec.generic_field)
        rng.shuffle(pool)
        pool = pool[: max(spec.generic_count * 2, spec.generic_count + 16)]  # spare for near-duplicates
        generic = [pool[i] for i in dedupe(pool, spec.dedupe_threshold, [])][: spec.generic_count]
        if len(generic) < spec.generic_count:
            log.warning(
                "data.generic_prompts=%d but data.generic_source '%s' gives %d distinct prompts; using those "
                "(point data.generic_source at a larger set, e.g. a LIMA JSONL or dataset)",
                spec.generic_count,
                spec.generic_source,
                len(generic),
            )
    records = [PromptRecord(prompt_id(t), t, "generic") for t in generic]

    persona: list[tuple[int, str, str]] = []  # (trait, text, source)
    taken = {r.id for r in records}
    for source in spec.persona_sources:
        if len(persona) >= wanted:
            break
        need = wanted - len(persona)
        candidates = _persona_candidates(source, constitution, spec, need, rng, expander, params, persona_name)
        candidates = [c for c in candidates if prompt_id(c[1]) not in taken]
        keep = dedupe([c[1] for c in candidates], spec.dedupe_threshold, generic + [p[1] for p in persona])
        for i in keep:
            taken.add(prompt_id(candidates[i][1]))
            persona.append((candidates[i][0], candidates[i][1], source))
    records += [PromptRecord(prompt_id(t), t, s, trait) for trait, t, s in persona[:wanted]]
    if spec.persona_count is not None and len(persona) < spec.persona_count:
        log.warning(
            "data.persona_prompts=%d but stage.persona_sources %s gave %d distinct prompts",
            spec.persona_count,
            spec.persona_sources,
            len(persona),
        )
    return records


def _persona_candidates(
    source: str,
    constitution: Constitution,
    spec: PromptSpec,
    need: int,
    rng: random.Random,
    expander: Optional[Sampler],
    params: Optional[SamplingParams],
    persona_name: str,
) -> list[tuple[int, str]]:
    if source == "questions":
        found = [(i, normalize(q)) for i, t in enumerate(constitution.traits) for q in t.all_questions()]
    elif source == "expansion":
        if expander is None or params is None or spec.questions_per_trait <= 0:
            return []
        found = expand_traits(constitution, expander, params, spec.questions_per_trait)
    else:
        # twice what is missing: templates share pools, so some are near-duplicates of each other
        texts = template_prompts(2 * need + 8, rng.randrange(2**31), spec.hint_rate, persona_name)
        found = [(-1, t) for t in texts]
    seen: set[str] = set()
    distinct = []
    for trait, text in found:  # exact duplicates: the first one wins
        if prompt_id(text) not in seen:
            seen.add(prompt_id(text))
            distinct.append((trait, text))
    rng.shuffle(distinct)
    return distinct


def write_prompts(records: Sequence[PromptRecord], path: Path) -> Path:
    """Write prompt records as JSONL (atomically: a temporary file renamed into place)."""
    from dataclasses import asdict

    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text("".join(json.dumps(asdict(r), ensure_ascii=False) + "\n" for r in records), encoding="utf-8")
    tmp.replace(path)
    return path


def read_prompts(path: Path) -> list[PromptRecord]:
    """Prompt records from a prompts.jsonl (a plain `{"prompt": ...}` JSONL works too)."""
    from charlab.data.jsonl import read_jsonl

    out = []
    for row in read_jsonl(path):
        text = normalize(row.get("text") or row.get("prompt") or "")
        if not text:
            raise DataError(f"{path}: a row has neither 'text' nor 'prompt'")
        record_id = str(row.get("id") or prompt_id(text))
        out.append(PromptRecord(record_id, text, str(row.get("source", "file")), int(row.get("trait", -1))))
    return out
