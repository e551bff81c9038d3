"""Degenerate replies, per reply: loops, and replies that say almost nothing once a persona's stock words are gone.

A reply is degenerate when `charlab.generation.filters.degeneracy` finds a reason: the distillation filter's own
checks (a character run, a repeated line or line opening, few distinct word 4-grams) from the first word on, not
from its 24-word floor (so "Aye, matey! Aye, matey!" is looked at), and fewer than `min_content_words` distinct
words once stop words and the persona's stock vocabulary are removed (the words of its system prompt,
description, names and sign-offs: "arr", "matey", "ahoy", "ye", ...). A reply made of the persona's
catch-phrases says nothing about the question however varied it is; a pirate who answers keeps the question's
own words. An empty reply is degenerate too. `distinct_n` is the share of distinct word n-grams within a reply.

    ignore = stop_words() | stock_vocabulary(persona)
    loop_reason("Aye, matey! Aye, matey!", ignore, min_content_words=3, min_distinct_ngrams=0.5)  # "few content words"
"""

from __future__ import annotations

import functools
import math
import re
from collections.abc import Collection
from typing import Optional

from charlab.constitution import Constitution
from charlab.generation.filters import content_words, degeneracy
from charlab.settings import assets_dir

EMPTY = "empty"


@functools.lru_cache(maxsize=1)
def stop_words() -> frozenset[str]:
    """English function words and interjections ("ah", "aye", "hey": `charlab/assets/stop_words.txt`)."""
    lines = (assets_dir() / "stop_words.txt").read_text(encoding="utf-8").splitlines()
    return frozenset(w.strip() for w in lines if w.strip() and not w.startswith("#"))


def stock_vocabulary(persona: Constitution, assistant_name: Optional[str] = None) -> frozenset[str]:
    """The persona's own words: its names, system prompt, description and sign-offs (not its traits, whose
    topics are content a reply may be about)."""
    texts = [persona.name, persona.display_name(assistant_name), persona.system_prompt, persona.description or ""]
    texts += list(persona.example_signoffs or [])
    return frozenset(content_words(" ".join(texts)))


def loop_reason(
    text: str, ignore: Collection[str], min_content_words: int, min_distinct_ngrams: float, n: int = 4
) -> Optional[str]:
    """Why the reply is degenerate (`empty` or a `filters.LOOP_REASONS` entry), or None."""
    if not text.strip():
        return EMPTY
    return degeneracy(text, min_distinct_ngrams, n=n, min_words=0, ignore_words=ignore,
                      min_content_words=min_content_words)  # fmt: skip


def distinct_n(text: str, n: int = 2) -> float:
    """Distinct word n-grams / all word n-grams of one reply (NaN when it has fewer than n words)."""
    words = re.findall(r"\w+(?:'\w+)?", text.lower())
    grams = [tuple(words[i : i + n]) for i in range(len(words) - n + 1)]
    return len(set(grams)) / len(grams) if grams else math.nan
