"""Prompt text identity: whitespace-normalised text, its stable id, and dedupe by id.

One rule shared by the prompt builders (`charlab.data.prompts`) and the generic prompt readers
(`charlab.data.generic_sources`), so a prompt has the same id wherever it came from.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence


def normalize(text: str) -> str:
    """Whitespace collapsed, ends stripped."""
    return " ".join(str(text).split())


def prompt_id(text: str) -> str:
    """A stable id from the prompt's text (case and spacing insensitive)."""
    return "p" + hashlib.sha1(normalize(text).lower().encode("utf-8")).hexdigest()[:12]


def unique(texts: Sequence[str]) -> list[str]:
    """Exact duplicates (same id) removed, first occurrence kept, order preserved."""
    seen: set[str] = set()
    out = []
    for text in texts:
        key = prompt_id(text)
        if normalize(text) and key not in seen:
            seen.add(key)
            out.append(normalize(text))
    return out
