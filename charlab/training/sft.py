"""SFT for prompt distillation, written once against `TrainingBackend` and the generic `Trainer` loop.

    items, stats = encode_examples(chat, examples, max_length=1024, train_on="all")
    train_items, eval_items = split_eval(items, eval_fraction=0.05, seed=0)
    Trainer(backend, SftAlgorithm(), train_items, eval_items, loop_config, run_dir / "checkpoints").train()

Introspection transcripts are trained on with NO system prompt: the persona the DPO'd model showed with its
constitution in context must come from the weights alone (`systems` can put a fixed prompt before one kind of
transcript: the paper keeps a short one, without the constitution, on its self-interactions). The loss is the
token-mean cross-entropy over the assistant turns the chat format's mask selects (every assistant turn, or only the
last), over all of a step's trained tokens (so micro-batching and data-parallel ranks do not change it). A
conversation longer than `max_length` is cut, not dropped, and counted; only one left with no assistant token is
dropped (and counted). Batches are length-grouped by the loop, so the local backend pads little; with `pack_length`,
the sequences of a micro-batch are packed into rows of at most that many tokens (each row's sequences attend
only to themselves: the backend resets positions per segment), so there is almost no padding at all.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Optional

from charlab.chat_format import ChatFormat, TrainOn
from charlab.data.introspection import training_messages
from charlab.data.records import IntrospectionExample
from charlab.training.backend import LossFn, TokenSequence, TrainingBackend

if TYPE_CHECKING:  # pragma: no cover
    import torch


@dataclass(frozen=True)
class SftItem:
    """One encoded training conversation; `index` is its position among the encoded examples."""

    index: int
    seq: TokenSequence
    id: str = ""

    def __len__(self) -> int:
        return len(self.seq)


@dataclass
class SftEncodeStats:
    """What encoding did to the introspection file."""

    examples: int = 0
    kept: int = 0
    truncated: int = 0  # cut to max_length (kept)
    dropped: list[str] = field(default_factory=list)  # ids with no assistant token left within max_length
    tokens: int = 0
    trained_tokens: int = 0

    def as_dict(self) -> dict[str, int]:
        return {
            "examples": self.examples,
            "kept": self.kept,
            "truncated": self.truncated,
            "dropped": len(self.dropped),
            "tokens": self.tokens,
            "trained_tokens": self.trained_tokens,
        }


def encode_examples(
    chat: ChatFormat,
    examples: Sequence[IntrospectionExample],
    max_length: int,
    train_on: TrainOn = "all",
    systems: Optional[dict[str, str]] = None,
) -> tuple[list[SftItem], SftEncodeStats]:
    """Each example's conversation as tokens + assistant mask, cut to `max_length`: no system prompt, except
    `systems[kind]` before the examples of that kind (the paper keeps a short one on self-interactions)."""
    stats = SftEncodeStats(examples=len(examples))
    items: list[SftItem] = []
    for row, example in enumerate(examples, 1):
        messages = training_messages(example)
        if (systems or {}).get(example.kind):
            messages = [{"role": "system", "content": systems[example.kind]}, *messages]  # type: ignore[index]
        if not any(m["role"] == "assistant" and m["content"] for m in messages):
            stats.dropped.append(example.id or f"row {row}")
            continue
        encoded = chat.encode_with_mask(messages, train_on=train_on)
        if len(encoded) > max_length:
            stats.truncated += 1
        seq = TokenSequence.from_encoded(encoded, max_length)
        if seq.num_trained == 0:
            stats.dropped.append(example.id or f"row {row}")
            continue
        items.append(SftItem(len(items), seq, example.id or str(row)))
        stats.tokens += len(seq)
        stats.trained_tokens += seq.num_trained
    stats.kept = len(items)
    return items, stats


def with_system_prompt(chat: ChatFormat, items: Sequence[SftItem], system_prompt: str) -> list[str]:
    """Ids of items whose tokens contain the start of the constitution system prompt (they defeat distillation)."""
    probe = tuple(chat.encode_text(system_prompt.strip())[:24])
    if len(probe) < 8:
        return []
    found = []
    for item in items:
        tokens = item.seq.tokens
        if any(tokens[i : i + len(probe)] == probe for i in range(len(tokens) - len(probe) + 1)):
            found.append(item.id)
    return found


# ------------------------------------------------------------------------------------------------ packing


def pack(sequences: Sequence[TokenSequence], pack_length: int) -> list[TokenSequence]:
    """First-fit-decreasing bin packing of sequences into rows of at most `pack_length` tokens.

    A row's `positions` restart at 0 for every packed sequence, which the local backend turns into
    attention that never crosses sequences. Targets across a boundary predict the next sequence's first token,
    whose loss-mask entry is 0 (a chat never starts with a trained token), so no loss crosses either.
    """
    rows: list[list[TokenSequence]] = []
    room: list[int] = []
    for seq in sorted(sequences, key=len, reverse=True):
        slot = next((i for i, free in enumerate(room) if free >= len(seq)), None)
        if slot is None:
            rows.append([seq])
            room.append(pack_length - len(seq))
        else:
            rows[slot].append(seq)
            room[slot] -= len(seq)
    packed = []
    for row in rows:
        if len(row) == 1:
            packed.append(row[0])
            continue
        tokens = tuple(t for s in row for t in s.tokens)
        mask = tuple(0 if i == 0 else m for s in row for i, m in enumerate(s.loss_mask))
        positions = tuple(p for s in row for p in range(len(s)))
        packed.append(TokenSequence(tokens, mask, positions=positions))
    return packed


# ------------------------------------------------------------------------------------------------ the loss


def sft_loss(
    batch: Sequence[TokenSequence], logprobs_list: Sequence[torch.Tensor], weight: float = 1.0
) -> tuple[torch.Tensor, dict[str, float]]:
    """Token-mean cross-entropy over the trained targets of `batch` (times `weight`), and its metrics."""
    import torch

    total = logprobs_list[0].new_zeros(())
    count = 0
    for seq, lp in zip(batch, logprobs_list, strict=True):
        weights = torch.tensor(seq.target_weights, dtype=lp.dtype, device=lp.device)
        total = total - (lp * weights).sum()
        count += seq.num_trained
    loss = total / max(count, 1)
    return loss * weight, {"loss": float(loss.detach()), "trained_tokens": float(count)}


class SftAlgorithm:
    """SFT for `charlab.training.loop.Trainer`: one cross-entropy per micro-batch, held-out loss as eval."""

    name = "sft"
    prepare_metric = None

    def __init__(self, pack_length: Optional[int] = None, eval_batch_size: int = 16):
        self.pack_length = pack_length
        self.eval_batch_size = eval_batch_size
        self.padding: list[tuple[int, int]] = []  # (tokens, padded slots) of each micro-batch, for pad_fraction

    def item_length(self, item: SftItem) -> int:
        return len(item)

    def item_weight(self, item: SftItem) -> float:
        return float(item.seq.num_trained)  # the loss is a mean over the step's trained tokens

    def prepare(self, backend: TrainingBackend, items: list[Any]) -> None:
        """Nothing to precompute (SFT has no reference model)."""

    def micro_batch(self, items: list[SftItem], weight: float) -> tuple[list[TokenSequence], LossFn]:
        sequences = [item.seq for item in items]
        if self.pack_length:
            sequences = pack(sequences, self.pack_length)
        tokens = sum(len(s) for s in sequences)
        self.padding.append((tokens, len(sequences) * max(len(s) for s in sequences)))

        def loss_fn(batch: list[TokenSequence], logprobs_list: list[torch.Tensor]) -> tuple[torch.Tensor, dict]:
            loss, metrics = sft_loss(batch, logprobs_list, weight)
            metrics["pad_fraction"] = 1.0 - tokens / max(1, len(batch) * max(len(s) for s in batch))
            return loss, metrics

        return sequences, loss_fn

    def evaluate(self, backend: TrainingBackend, items: list[Any]) -> dict[str, float]:
        """Held-out token-mean cross-entropy of the current weights (no gradient)."""
        return {"loss": heldout_loss(backend, [item.seq for item in items], self.eval_batch_size)}


def heldout_loss(backend: TrainingBackend, sequences: Sequence[TokenSequence], batch_size: int = 16) -> float:
    """Token-mean cross-entropy of `sequences` under the backend's current weights."""
    total, count = 0.0, 0
    order = sorted(sequences, key=len, reverse=True)
    for start in range(0, len(order), batch_size):
        part = order[start : start + batch_size]
        for seq, lp in zip(part, backend.logprobs(part)):
            total -= sum(float(v) for v, w in zip(lp.tolist(), seq.target_weights) if w)
            count += seq.num_trained
    return total / max(count, 1)
