"""The models under test, by name: `base`, `base_persona` (base + the constitution's system prompt) and `tuned`.

`tuned` is the base model with a LoRA adapter and no system prompt (what character training must achieve
without a prompt). `base` and `base_persona` share one sampler.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Optional

from charlab.errors import ConfigError
from charlab.generation.base import Sampler

PLAYERS = ("base", "base_persona", "tuned")


def as_list(value: Any) -> list[str]:
    """A config value that may be one path or a list of paths (pipeline wiring passes one) as a list."""
    if value is None or value == "":
        return []
    if isinstance(value, str):
        return [value]
    return [str(v) for v in value]


@dataclass
class Player:
    """A named model under test: a sampler and the system prompt it answers with (None: no system prompt)."""

    name: str
    sampler: Sampler
    system_prompt: Optional[str] = None


def check_players(names: Sequence[str], adapter: Optional[str], minimum: int = 1) -> list[str]:
    """Validated player names; `tuned` is dropped (with no error) when there is no adapter."""
    unknown = [n for n in names if n not in PLAYERS]
    if unknown:
        raise ConfigError(f"stage.players: {', '.join(unknown)} unknown; allowed: {', '.join(PLAYERS)}")
    if len(set(names)) != len(names):
        raise ConfigError(f"stage.players lists a player twice: {', '.join(names)}")
    kept = [n for n in names if n != "tuned" or adapter]
    if len(kept) < minimum:
        hint = " (tuned needs stage.adapter=<adapter folder>)" if "tuned" in names and not adapter else ""
        raise ConfigError(f"stage.players needs at least {minimum} player(s), got {', '.join(kept) or 'none'}{hint}")
    return kept


def build_players(
    names: Sequence[str],
    make_sampler: Callable[[Optional[str]], Sampler],
    adapter: Optional[str],
    persona_prompt: str,
) -> list[Player]:
    """Players for `names`; `make_sampler(adapter_or_None)` builds a sampler (once for base, once for tuned)."""
    base: Optional[Sampler] = None
    players = []
    for name in names:
        if name == "tuned":
            players.append(Player(name, make_sampler(adapter)))
            continue
        base = base or make_sampler(None)
        players.append(Player(name, base, persona_prompt if name == "base_persona" else None))
    return players


def close_players(players: Sequence[Player]) -> None:
    """Close each distinct sampler once."""
    seen: set[int] = set()
    for player in players:
        if id(player.sampler) not in seen:
            seen.add(id(player.sampler))
            player.sampler.close()
