"""An upper-bound estimate of tokens a recipe generates and trains on, printed before paid runs start."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional


@dataclass
class TokenEstimate:
    """Token counts (upper bounds: every reply is assumed to use its full `max_new_tokens`)."""

    generate: int
    train: int

    def describe(self) -> str:
        return f"~{self.generate:,} tokens to generate and ~{self.train:,} tokens to train on (upper bounds)"


def estimate_tokens(
    prompts: int,
    *,
    teacher_max_new_tokens: int,
    student_max_new_tokens: int,
    reflections: int,
    interactions: int,
    interaction_turns: int,
    max_length: int,
    epochs: int = 1,
    sft_max_length: Optional[int] = None,
) -> TokenEstimate:
    """Estimate the distill + introspect generation and the DPO + SFT training volume of one persona
    (`max_length`: DPO's sequence limit; `sft_max_length`: SFT's, default the same)."""
    generate = prompts * (teacher_max_new_tokens + student_max_new_tokens)
    generate += reflections * student_max_new_tokens + interactions * interaction_turns * student_max_new_tokens
    prompt_tokens = max_length // 4  # a generous prompt + system prompt length per sequence
    dpo = prompts * 2 * (prompt_tokens + max(teacher_max_new_tokens, student_max_new_tokens))
    sft = reflections * (prompt_tokens + student_max_new_tokens)
    sft += interactions * min(sft_max_length or max_length, interaction_turns * student_max_new_tokens)
    return TokenEstimate(generate=generate, train=(dpo + sft) * epochs)
