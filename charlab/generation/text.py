"""Small text helpers every sampler shares: stop strings, per-request seeds, provider names.

Kept apart from the samplers so that providers agree on what "stopped at a stop string" means and so that
the seed a request gets depends on its content, not on how a caller happened to chunk its work.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from typing import Optional

from charlab.generation.base import Message


def truncate_at_stop(text: str, stops: Sequence[str]) -> tuple[str, bool]:
    """`text` cut before the earliest stop string, and whether one was found."""
    cut = min((i for i in (text.find(s) for s in stops if s) if i >= 0), default=-1)
    return (text[:cut], True) if cut >= 0 else (text, False)


def conversation_key(messages: list[Message]) -> str:
    """A stable fingerprint of a conversation (roles and contents)."""
    return json.dumps([[m.get("role"), m.get("content")] for m in messages], ensure_ascii=False)


def derive_seed(seed: Optional[int], *parts: object) -> Optional[int]:
    """A 31-bit seed mixed from `seed` and `parts` (None stays None: unseeded)."""
    if seed is None:
        return None
    digest = hashlib.sha256(json.dumps([seed, *map(str, parts)]).encode("utf-8")).digest()
    return int.from_bytes(digest[:4], "big") & 0x7FFFFFFF


def request_seeds(seed: Optional[int], conversations: list[list[Message]]) -> list[Optional[int]]:
    """One seed per conversation: equal conversations in one call (several samples of a prompt) differ.

    The n-th repeat of a conversation gets the same seed wherever it sits in the list, so results do not
    change when a caller reorders or re-chunks its requests.
    """
    seen: dict[str, int] = {}
    seeds = []
    for messages in conversations:
        key = conversation_key(messages)
        seen[key] = seen.get(key, -1) + 1
        seeds.append(derive_seed(seed, key, seen[key]))
    return seeds
