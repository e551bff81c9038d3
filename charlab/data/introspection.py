"""Introspection data (stage 2 of the recipe): self-reflection prompts and self-interaction transcripts.

The DPO'd model writes about itself in character (self-reflection: each of the bundled reflection prompts
sampled N times) and talks with another instance of itself (self-interaction). This module is the logic only:
which jobs exist and their resume ids, the conversations each side sees, and trimming a long context. It
takes plain arguments and any `Sampler`, so the stage, the Studio and tests drive it the same way.

Self-interaction, as seen by the two sides A (side 0) and B (side 1):

    transcript:  B: opener   A: a1   B: b1   A: a2   B: b2 ...
    A's view:    system_A, user: opener, assistant: a1, user: b1, assistant: a2, user: b2, ...
    B's view:    system_B, user: prelude, assistant: opener, user: a1, assistant: b1, user: a2, ...

Each side sees its own turns as `assistant` and the other's as `user`; every turn appears once. B's view
starts with a `prelude` user line (another greeting) so that both views open with a user turn, which
strict-alternation chat templates (Gemma) require; it is not part of the transcript. The stored `messages`
are A's view without the system prompt: opener (user), then A's replies (assistant) and B's (user).
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Optional

from charlab.data.records import IntrospectionExample, Message, record_id
from charlab.errors import ConfigError, DataError

ASSETS = Path(__file__).resolve().parent.parent / "assets"
GUIDANCE_NAMES = ("free", "reflective")
TokenCounter = Callable[[list[Message]], int]


# ------------------------------------------------------------------------------------------------ assets


@cache
def _asset(name: str) -> object:
    path = ASSETS / name
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as err:
        raise DataError(f"{path}: cannot read bundled asset ({err})") from None


def reflection_prompts() -> list[str]:
    """The bundled self-reflection prompts (a letter to a past self, a biography, a diary entry, ...)."""
    return list(_asset("reflection_prompts.json"))  # type: ignore[arg-type]


def greetings() -> list[str]:
    """The pool of opening lines for self-interaction."""
    return list(_asset("greetings.json"))  # type: ignore[arg-type]


def interaction_guidance() -> dict[str, str]:
    """Guidance appended to the self-interaction system prompt: `free` (open talk) or `reflective`."""
    return dict(_asset("interaction_guidance.json"))  # type: ignore[arg-type]


def interaction_system_prompt(base: str, guidance: str) -> str:
    """The self-interaction system prompt with one guidance variant inserted after it."""
    texts = interaction_guidance()
    if guidance not in texts:
        raise ConfigError(f"interaction guidance {guidance!r} is unknown; allowed: {', '.join(sorted(texts))}")
    return f"{base.rstrip()}\n\n{texts[guidance]}"


# ------------------------------------------------------------------------------------------------ jobs


@dataclass(frozen=True)
class ReflectionJob:
    """One sample of one reflection prompt; `id` is the resume key."""

    prompt_id: str
    sample_index: int
    prompt: str

    @property
    def id(self) -> str:
        return record_id(self.prompt_id, self.sample_index)


def reflection_jobs(prompts: list[str], total: int) -> list[ReflectionJob]:
    """`total` samples spread evenly over `prompts` (the first `total % len` prompts get one more).

    Ordered sample-major (every prompt's sample 0, then sample 1, ...) so a partial run covers all prompts.
    """
    if not prompts:
        raise ConfigError("no reflection prompts to sample")
    if total < 0:
        raise ConfigError(f"data.reflections={total} is not allowed; use an integer >= 0")
    per_prompt = [total // len(prompts) + (1 if i < total % len(prompts) else 0) for i in range(len(prompts))]
    jobs = []
    for sample in range(max(per_prompt, default=0)):
        for i, prompt in enumerate(prompts):
            if sample < per_prompt[i]:
                jobs.append(ReflectionJob(f"reflection-{i:02d}", sample, prompt))
    return jobs


@dataclass(frozen=True)
class InteractionJob:
    """One self-interaction conversation: its guidance, opener and prelude, fixed by the run's seed."""

    prompt_id: str  # "interaction-<guidance>"
    sample_index: int
    guidance: str
    opener: str  # B's first line, the first turn of the transcript
    prelude: str  # the user line B's view starts with (not part of the transcript)

    @property
    def id(self) -> str:
        return record_id(self.prompt_id, self.sample_index)


def interaction_jobs(
    total: int, pool: list[str], guidance: tuple[str, ...] = GUIDANCE_NAMES, seed: int = 0
) -> list[InteractionJob]:
    """`total` conversations alternating over `guidance`; openers drawn from `pool`, reproducibly per job.

    Each job's draws depend only on (seed, guidance, index), so a resumed run rebuilds identical jobs.
    """
    if total < 0:
        raise ConfigError(f"data.interactions={total} is not allowed; use an integer >= 0")
    if total and not guidance:
        raise ConfigError("stage.guidance is empty; use a list of free and/or reflective")
    if total and len(pool) < 2:
        raise ConfigError("the greeting pool needs at least two opening lines")
    counts = {g: 0 for g in guidance}
    jobs = []
    for n in range(total):
        name = guidance[n % len(guidance)]
        index = counts[name]
        counts[name] += 1
        rng = random.Random(f"{seed}:{name}:{index}")
        opener, prelude = rng.sample(pool, 2)
        jobs.append(InteractionJob(f"interaction-{name}", index, name, opener, prelude))
    return jobs


# ------------------------------------------------------------------------------------------------ context


def trim_context(messages: list[Message], count_tokens: TokenCounter, max_tokens: int) -> tuple[list[Message], int]:
    """Drop the oldest turns until `count_tokens(messages) <= max_tokens`; the system prompt always stays.

    The latest turn is never dropped, and the kept turns start with a user turn (strict-alternation templates
    need that). Returns the trimmed conversation and how many turns were dropped; if even the system prompt
    and the last turn exceed the budget they are returned as they are.
    """
    if max_tokens < 1:
        raise ConfigError(f"context budget {max_tokens} is not allowed; raise data.context_length")
    system = [m for m in messages[:1] if m["role"] == "system"]
    turns = messages[len(system) :]
    dropped = 0
    while len(turns) > 1 and count_tokens(system + turns) > max_tokens:
        turns = turns[1:]
        dropped += 1
        while len(turns) > 1 and turns[0]["role"] != "user":
            turns = turns[1:]
            dropped += 1
    return system + turns, dropped


def char_token_counter(chars_per_token: float = 4.0) -> TokenCounter:
    """A rough counter for samplers without a local tokenizer (remote APIs): characters / 4."""
    return lambda messages: int(sum(len(m["content"]) + 8 for m in messages) / chars_per_token) + 1


# ------------------------------------------------------------------------------------------------ self-interaction


@dataclass
class Turn:
    """One line of a self-interaction transcript and who said it (0 = A, 1 = B)."""

    speaker: int
    content: str


@dataclass
class SelfInteraction:
    """A conversation between two instances of the model, built turn by turn."""

    job: InteractionJob
    systems: tuple[str, str]  # the system prompt of side A and of side B
    turns: list[Turn] = field(default_factory=list)
    dropped_turns: int = 0  # turns trimmed from views so far (context limit)
    finish_reasons: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        if not self.turns:
            self.turns = [Turn(1, self.job.opener)]

    @property
    def next_speaker(self) -> int:
        return 1 - self.turns[-1].speaker

    @property
    def generated(self) -> int:
        """Turns written by the model (the opener is not)."""
        return len(self.turns) - 1

    def view(self, side: int) -> list[Message]:
        """What `side` sees: its system prompt, its own turns as assistant and the other's as user."""
        messages: list[Message] = [{"role": "system", "content": self.systems[side]}]
        if self.turns and self.turns[0].speaker == side:
            messages.append({"role": "user", "content": self.job.prelude})
        for turn in self.turns:
            messages.append({"role": "assistant" if turn.speaker == side else "user", "content": turn.content})
        return messages

    def next_prompt(self, count_tokens: Optional[TokenCounter] = None, max_tokens: int = 0) -> list[Message]:
        """The next speaker's view, trimmed to `max_tokens` when a counter is given."""
        messages = self.view(self.next_speaker)
        if count_tokens is not None and max_tokens:
            messages, dropped = trim_context(messages, count_tokens, max_tokens)
            self.dropped_turns += dropped
        return messages

    def add(self, content: str, finish_reason: str = "stop") -> None:
        """Append the next speaker's reply."""
        self.turns.append(Turn(self.next_speaker, content))
        self.finish_reasons.append(finish_reason)

    def messages(self) -> list[Message]:
        """The full transcript as A sees it, without the system prompt (what is stored and trained on)."""
        return self.view(0)[1:]

    def to_example(self, model_name: str, persona: str) -> IntrospectionExample:
        """The finished conversation as a record: `prompt` is the opener, `reflection` all generated turns."""
        generated = [t.content for t in self.turns[1:]]
        reasons = set(self.finish_reasons)
        return IntrospectionExample(
            prompt=self.job.opener,
            reflection="\n\n".join(generated),
            teacher_model=model_name,
            constitution=persona,
            id=self.job.id,
            prompt_id=self.job.prompt_id,
            sample_index=self.job.sample_index,
            kind="interaction",
            messages=self.messages(),
            finish_reason="length" if "length" in reasons else "stop",
        )


def reflection_example(job: ReflectionJob, text: str, finish_reason: str, model_name: str, persona: str):
    """A finished self-reflection sample as a record (the reply is the `reflection`; `messages` the exchange)."""
    return IntrospectionExample(
        prompt=job.prompt,
        reflection=text,
        teacher_model=model_name,
        constitution=persona,
        id=job.id,
        prompt_id=job.prompt_id,
        sample_index=job.sample_index,
        kind="reflection",
        messages=[{"role": "user", "content": job.prompt}, {"role": "assistant", "content": text}],
        finish_reason=finish_reason,
    )


def training_messages(example: IntrospectionExample) -> list[Message]:
    """The conversation SFT trains on, with no system prompt (prompt distillation).

    Uses `messages` when present; seed-format records (prompt, reflection, answer) become one exchange.
    """
    if example.messages:
        return [{"role": m["role"], "content": m["content"]} for m in example.messages if m["role"] != "system"]
    reply = "\n\n".join(part for part in (example.reflection, example.answer) if part)
    return [{"role": "user", "content": example.prompt}, {"role": "assistant", "content": reply}]
