"""The models under test, by name: `base`, `base_persona` (base + the constitution's system prompt) and `tuned`.

`tuned` is the base model with a LoRA adapter and no system prompt (what character training must achieve
without a prompt). `base` and `base_persona` share one sampler. `player_replies` has every player answer the
same held-out prompts into one `replies.jsonl` (rows `{id: "<player>:<prompt id>", player, prompt_id, prompt,
text}`), reusing rows an earlier evaluation wrote for the same prompts (the classifier's replies feed Elo).
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from charlab.chat_format import make_messages
from charlab.data.jsonl import JsonlWriter, done_ids, iter_jsonl
from charlab.errors import ConfigError
from charlab.eval.sampling import SampleJob, sample_to_jsonl
from charlab.generation.base import Sampler, SamplingParams

PLAYERS = ("base", "base_persona", "tuned")
MakeSampler = Callable[[Optional[str], Sequence[str]], Sampler]  # (adapter or None, adapters the stage also samples)


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


def check_players(
    names: Optional[Sequence[str]],
    adapter: Optional[str],
    minimum: int = 1,
    answered: Collection[str] = (),
    default: Sequence[str] = PLAYERS,
) -> list[str]:
    """Validated player names. None: each of `default` that can be evaluated (tuned only when there is an adapter
    or its replies are in `answered`, the players of `stage.replies`). A listed `tuned` with neither is a
    one-line error: it cannot be evaluated."""
    if names is None:
        names = [n for n in default if n != "tuned" or adapter or n in answered]
    names = list(names)
    unknown = [n for n in names if n not in PLAYERS]
    if unknown:
        raise ConfigError(f"stage.players: {', '.join(unknown)} unknown; allowed: {', '.join(PLAYERS)}")
    if len(set(names)) != len(names):
        raise ConfigError(f"stage.players lists a player twice: {', '.join(names)}")
    if "tuned" in names and not adapter and "tuned" not in answered:
        raise ConfigError(
            "stage.players: tuned needs stage.adapter=<adapter folder> or its replies in stage.replies=<replies.jsonl>"
            "; or leave it out of stage.players"
        )
    if len(names) < minimum:
        raise ConfigError(f"stage.players needs at least {minimum} player(s), got {', '.join(names) or 'none'}")
    return names


def answered_players(sources: Sequence[Path]) -> set[str]:
    """The players with at least one reply in earlier `replies.jsonl` files (a missing file has none)."""
    rows = (row for source in sources if source.is_file() for row in iter_jsonl(source))
    return {str(row["player"]) for row in rows if "player" in row}


def reply_prompts(sources: Sequence[Path]) -> list[tuple[str, str]]:
    """The (prompt id, prompt) pairs of earlier `replies.jsonl` files, in order of first appearance."""
    seen: dict[str, str] = {}
    for source in sources:
        for row in iter_jsonl(source):
            if "prompt_id" in row and "prompt" in row:
                seen.setdefault(str(row["prompt_id"]), str(row["prompt"]))
    return list(seen.items())


def build_players(
    names: Sequence[str],
    make_sampler: MakeSampler,
    adapter: Optional[str],
    persona_prompt: str,
) -> list[Player]:
    """Players for `names`; `make_sampler(adapter_or_None, serve_also)` builds a sampler (once for base, once for
    tuned). The base sampler is told about the tuned model's adapter (`serve_also`), so that a vLLM server starts
    once with room for it rather than without LoRA and then again with it."""
    tuned = [adapter] if adapter and "tuned" in names else []
    base: Optional[Sampler] = None
    players = []
    for name in names:
        if name == "tuned":
            players.append(Player(name, make_sampler(adapter, tuned)))
            continue
        base = base or make_sampler(None, tuned)
        players.append(Player(name, base, persona_prompt if name == "base_persona" else None))
    return players


def close_players(players: Sequence[Player]) -> None:
    """Close each distinct sampler once."""
    seen: set[int] = set()
    for player in players:
        if id(player.sampler) not in seen:
            seen.add(id(player.sampler))
            player.sampler.close()


def reply_id(player: str, prompt_id: str) -> str:
    """The id of a player's reply to a prompt in `replies.jsonl`."""
    return f"{player}:{prompt_id}"


def reuse_replies(path: Path, sources: Sequence[Path], wanted: set[str]) -> int:
    """Append to `path` the rows of earlier `replies.jsonl` files whose ids are wanted and missing; how many."""
    have = done_ids(path)
    copied = 0
    with JsonlWriter(path, flush_every=256) as writer:
        for source in sources:
            for row in iter_jsonl(source):
                if row.get("id") in wanted and row["id"] not in have:
                    writer.write(row)
                    have.add(row["id"])
                    copied += 1
    return copied


def player_replies(
    players: Sequence[Player],
    prompts: Sequence[tuple[str, str]],
    params: SamplingParams,
    path: Path,
    batch_size: int = 8,
    on_batch: Optional[Callable[[str, int, int], None]] = None,
) -> dict[str, dict[str, Any]]:
    """Every player's reply to every (id, text) prompt, generated into `path` where missing; rows by id."""
    replies: dict[str, dict[str, Any]] = {}
    for player in players:
        jobs = [
            SampleJob(
                reply_id(player.name, pid),
                make_messages(text, system=player.system_prompt),
                {"player": player.name, "prompt_id": pid, "prompt": text},
            )
            for pid, text in prompts
        ]
        report = (lambda done, total, p=player.name: on_batch(p, done, total)) if on_batch else None
        replies.update(
            sample_to_jsonl(player.sampler, jobs, params, path, batch_size, f"replies ({player.name})", report)
        )
    return replies
