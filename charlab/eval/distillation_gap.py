"""The prompt-distillation gap: how much a model still needs the constitution in its context.

For held-out in-character replies, the mean per-token log-likelihood of the reply with the constitution
system prompt minus without it. A base model finds in-character text far likelier when told the persona (a
large gap: the "constitution tax"); after introspective SFT the persona is in the weights and the gap shrinks.

    gap = distillation_gap(scorer, chat, conversations, system_prompt)
    gap.with_system, gap.without_system, gap.gap

A conversation is a list of messages without system prompt whose last assistant turn is the scored reply
(earlier turns are context). A scorer maps encoded conversations to per-target log-probabilities (one per
token after the first, as `TrainingBackend.logprobs` returns them): `hf_scorer` wraps a plain transformers
model; a training backend is wrapped by the caller. Only the reply's tokens are scored, and a conversation
is skipped (and counted) if its reply tokenizes differently with and without the system prompt or the
longer version exceeds `max_length`, so both numbers always average over exactly the same tokens.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Optional

from charlab.chat_format import ChatFormat, EncodedChat, Message

if TYPE_CHECKING:  # pragma: no cover
    import torch

Scorer = Callable[[Sequence[EncodedChat]], "list[torch.Tensor]"]


@dataclass
class GapResult:
    """Mean per-token log-likelihood of the replies with and without the system prompt."""

    with_system: float
    without_system: float
    examples: int
    tokens: int
    skipped: int = 0
    per_example: list[float] = field(default_factory=list)  # each reply's gap

    @property
    def gap(self) -> float:
        """with - without: how much the constitution in context still helps (smaller is better after SFT)."""
        return self.with_system - self.without_system

    def as_metrics(self, prefix: str) -> dict[str, float]:
        return {
            f"{prefix}/loglik_with_system": self.with_system,
            f"{prefix}/loglik_without_system": self.without_system,
            f"{prefix}/gap": self.gap,
            f"{prefix}/examples": float(self.examples),
        }


def _pairs(
    chat: ChatFormat, conversations: list[list[Message]], system_prompt: str, max_length: Optional[int]
) -> tuple[list[EncodedChat], list[EncodedChat], int]:
    with_sys, without_sys, skipped = [], [], 0
    for messages in conversations:
        messages = [m for m in messages if m["role"] != "system"]
        if not any(m["role"] == "assistant" for m in messages):
            skipped += 1
            continue
        plain = chat.encode_with_mask(messages, train_on="last")
        primed = chat.encode_with_mask([{"role": "system", "content": system_prompt}, *messages], train_on="last")
        reply = [t for t, m in zip(plain.input_ids, plain.loss_mask) if m]
        same = reply == [t for t, m in zip(primed.input_ids, primed.loss_mask) if m]
        if not same or not reply or (max_length is not None and len(primed) > max_length):
            skipped += 1
            continue
        with_sys.append(primed)
        without_sys.append(plain)
    return with_sys, without_sys, skipped


def _reply_means(scorer: Scorer, encoded: list[EncodedChat]) -> tuple[list[float], int]:
    means, tokens = [], 0
    for enc, logprobs in zip(encoded, scorer(encoded)):
        weights = enc.loss_mask[1:]  # target t predicts token t + 1
        picked = [float(lp) for lp, w in zip(logprobs.tolist(), weights) if w]
        means.append(sum(picked) / len(picked))
        tokens += len(picked)
    return means, tokens


def distillation_gap(
    scorer: Scorer,
    chat: ChatFormat,
    conversations: list[list[Message]],
    system_prompt: str,
    max_length: Optional[int] = None,
) -> GapResult:
    """The gap over `conversations` (their last assistant reply), scored by `scorer`."""
    with_sys, without_sys, skipped = _pairs(chat, conversations, system_prompt, max_length)
    if not with_sys:
        return GapResult(float("nan"), float("nan"), 0, 0, skipped)
    primed, tokens = _reply_means(scorer, with_sys)
    plain, _ = _reply_means(scorer, without_sys)
    return GapResult(
        with_system=sum(primed) / len(primed),
        without_system=sum(plain) / len(plain),
        examples=len(primed),
        tokens=tokens,
        skipped=skipped,
        per_example=[a - b for a, b in zip(primed, plain)],
    )


def hf_scorer(model: Any, pad_id: int = 0, logit_bytes: int = 1 << 28) -> Scorer:
    """A scorer over a transformers causal LM (no gradient; right-padded batches of similar length).

    Batches hold at most `logit_bytes` of float32 logits (a 49k vocabulary is 200 KB per token).
    """
    import torch

    device = next(model.parameters()).device
    per_token = 4 * int(model.get_output_embeddings().weight.shape[0])

    def score(encoded: Sequence[EncodedChat]) -> list[torch.Tensor]:
        order = sorted(range(len(encoded)), key=lambda i: -len(encoded[i]))
        out: list[Optional[torch.Tensor]] = [None] * len(encoded)
        model.eval()
        with torch.no_grad():
            start = 0
            while start < len(order):
                width = len(encoded[order[start]])  # the longest remaining: rows are sorted by length
                rows = order[start : start + max(1, logit_bytes // (per_token * width))]
                start += len(rows)
                ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
                mask = torch.zeros((len(rows), width), dtype=torch.long)
                for r, i in enumerate(rows):
                    ids[r, : len(encoded[i])] = torch.tensor(encoded[i].input_ids)
                    mask[r, : len(encoded[i])] = 1
                ids, mask = ids.to(device), mask.to(device)
                logits = model(input_ids=ids, attention_mask=mask, use_cache=False).logits.float()
                logprobs = torch.log_softmax(logits[:, :-1], dim=-1).gather(-1, ids[:, 1:, None]).squeeze(-1)
                for r, i in enumerate(rows):
                    out[i] = logprobs[r, : len(encoded[i]) - 1].cpu()
        return out  # type: ignore[return-value]

    return score


def gap_table(results: dict[str, GapResult]) -> str:
    """A markdown table of several models' gaps (for `report.md`)."""
    lines = [
        "| model | log-lik. with constitution | without | gap (with - without) | replies |",
        "| --- | ---: | ---: | ---: | ---: |",
    ]
    for name, r in results.items():
        lines.append(f"| {name} | {r.with_system:.4f} | {r.without_system:.4f} | {r.gap:.4f} | {r.examples} |")
    return "\n".join(lines)
