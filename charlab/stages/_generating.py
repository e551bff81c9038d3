"""What the generating stages (distill, introspect) share: the filters that drop bad pairs and replies."""

from __future__ import annotations

from dataclasses import dataclass

from omegaconf import MISSING


@dataclass
class DistillFilters:
    """Which pairs `stage=distill` drops (see `charlab.generation.filters`)."""

    empty: bool = MISSING
    truncated: bool = MISSING
    require_terminal_punctuation: bool = MISSING
    trim_truncated: bool = MISSING
    too_long: bool = MISSING
    repetition: bool = MISSING
    min_distinct_ngrams: float = MISSING
    identity_leak: bool = MISSING
