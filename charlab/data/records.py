"""The records that flow between stages, one JSON object per line.

Field names follow the seed project (`DpoExample`, `IntrospectionExample`, `Match`); the extra fields
(ids, sampling settings, finish reasons, messages) are optional so seed files still load.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import Any, Optional, TypeVar

from charlab.errors import DataError

Message = dict[str, str]
R = TypeVar("R")


@dataclass
class DpoExample:
    """A preference pair: the teacher's in-character reply (chosen) vs the student's own (rejected)."""

    prompt: str
    chosen: str
    rejected: str
    teacher_model: str = ""
    student_model: str = ""
    constitution: str = ""
    id: str = ""  # "<prompt id>:<sample index>", the resume key
    prompt_id: str = ""
    sample_index: int = 0
    source: str = ""  # generic | persona | ...
    sampling: dict[str, Any] = field(default_factory=dict)
    chosen_finish_reason: str = ""
    rejected_finish_reason: str = ""
    # the teacher's best-of-N choice (`stage.best_of`): n, scorer, the chosen reply's score, every candidate's score
    # and the index picked; empty when the teacher sampled once
    best_of: dict[str, Any] = field(default_factory=dict)


@dataclass
class IntrospectionExample:
    """A self-reflection or self-interaction transcript written in character by the DPO'd model."""

    prompt: str
    reflection: str
    answer: str = ""
    teacher_model: str = ""
    constitution: str = ""
    id: str = ""
    prompt_id: str = ""
    sample_index: int = 0
    kind: str = "reflection"  # reflection | interaction
    messages: list[Message] = field(default_factory=list)  # the full conversation, without system prompt
    finish_reason: str = ""


@dataclass
class Match:
    """A head-to-head comparison for Elo (seed format: base vs tuned; `players` generalises it)."""

    prompt: str
    base_response: str
    tuned_response: str
    winner: str  # "base" | "tuned" (or a player name when players are named)
    player_a: str = "base"
    player_b: str = "tuned"


def to_dict(record: Any) -> dict[str, Any]:
    """A record as a JSON-ready dict."""
    return asdict(record)


def from_dict(cls: type[R], data: dict[str, Any], where: str = "record") -> R:
    """Build `cls` from a dict; a missing required field or a wrong shape is a one-line `DataError`."""
    if not isinstance(data, dict):
        raise DataError(f"{where}: expected a JSON object, got {type(data).__name__}")
    known = {f.name for f in fields(cls)}  # type: ignore[arg-type]
    required = [f.name for f in fields(cls) if _is_required(f)]  # type: ignore[arg-type]
    missing = [name for name in required if name not in data]
    if missing:
        raise DataError(f"{where}: missing field '{missing[0]}' (required: {', '.join(required)})")
    return cls(**{k: v for k, v in data.items() if k in known})


def _is_required(f: Any) -> bool:
    from dataclasses import MISSING

    return f.default is MISSING and f.default_factory is MISSING


def record_id(prompt_id: str, sample_index: int) -> str:
    """The resume key of one sample of one prompt."""
    return f"{prompt_id}:{sample_index}"


def optional_str(value: Optional[str]) -> str:
    """`None` as an empty string (JSONL fields are always strings)."""
    return value or ""
