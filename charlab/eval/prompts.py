"""Held-out evaluation prompts: the bundled generic prompts or the persona's trait questions, minus training prompts.

Ids are stable (the position in the source), so a resumed evaluation finds the same prompts.
"""

from __future__ import annotations

import random
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Optional

from charlab.constitution import Constitution
from charlab.data.jsonl import iter_jsonl
from charlab.errors import ConfigError, DataError
from charlab.settings import assets_dir

SOURCES = ("generic", "persona")


def normalise_prompt(text: str) -> str:
    """A prompt compared with others: whitespace collapsed, lowercased."""
    return " ".join(text.split()).lower()


def generic_prompts(path: Optional[Path] = None) -> list[tuple[str, str]]:
    """(id, text) of the bundled generic prompts (one per line)."""
    path = Path(path) if path else assets_dir() / "generic_prompts.txt"
    if not path.is_file():
        raise DataError(f"{path}: prompt file not found")
    lines = [line.strip() for line in path.read_text(encoding="utf-8").splitlines()]
    return [(f"g{i}", text) for i, text in enumerate(lines) if text]


def persona_prompts(persona: Constitution) -> list[tuple[str, str]]:
    """(id, text) of the constitution's trait questions."""
    return [
        (f"t{i}q{j}", question) for i, trait in enumerate(persona.traits) for j, question in enumerate(trait.questions)
    ]


def training_prompts(paths: Iterable[Path]) -> set[str]:
    """Normalised `prompt` fields of JSONL files (pairs or introspection files used in training)."""
    seen: set[str] = set()
    for path in paths:
        for row in iter_jsonl(path):
            if isinstance(row.get("prompt"), str):
                seen.add(normalise_prompt(row["prompt"]))
    return seen


def held_out_prompts(
    source: str,
    persona: Constitution,
    n: int,
    exclude: Sequence[str] | set[str] = (),
    seed: int = 0,
) -> list[tuple[str, str]]:
    """Up to `n` (id, text) prompts from `source` not in `exclude`, in a seeded random order."""
    if source not in SOURCES:
        raise ConfigError(f"stage.prompts={source!r} is not allowed; use one of {', '.join(SOURCES)}")
    pool = generic_prompts() if source == "generic" else persona_prompts(persona)
    excluded = {normalise_prompt(text) for text in exclude}
    pool = [(pid, text) for pid, text in pool if normalise_prompt(text) not in excluded]
    if not pool:
        raise DataError(f"no held-out {source} prompts left after excluding {len(excluded)} training prompts")
    random.Random(seed).shuffle(pool)
    return pool[: max(1, n)]
