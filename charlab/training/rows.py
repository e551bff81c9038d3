"""Laying a batch of sequences out as model rows: right padding, packed rows, and shared prompt prefixes.

Two sequences side by side in a batch that begin with the same tokens (DPO's chosen and rejected replies to one
prompt) go into ONE row: the shared prefix once, then each sequence's own suffix. Each suffix attends to the
prefix and to itself only (a 4D mask), and its positions continue from the prefix, so every token sees exactly
what it would see alone: the log-probabilities are those of the sequences run separately, while the prompt is
computed once and the shorter reply is not padded to the longer one.

Without shared prefixes a batch is plainly right-padded and needs no mask at all: under causal attention a real
token only sees the tokens before it, which are all real, and padded positions are never read. Packed rows
(`TokenSequence.positions`, several SFT examples in one row) keep their positions, from which transformers
builds per-sequence causal masks; they are never combined with shared prefixes.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Optional

from charlab.training.backend import TokenSequence

if TYPE_CHECKING:  # pragma: no cover
    import torch

MIN_SHARED = 16  # a prefix shorter than this is not worth a mask
MAX_BRANCHES = 2  # a row's masked-out cross-branch attention grows with every extra branch
MAX_PADDING = 0.05  # a no-gradient forward's share of padded positions before a new forward starts


def common_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    n = min(len(a), len(b))
    for i in range(n):
        if a[i] != b[i]:
            return i
    return n


def group(batch: Sequence[TokenSequence], share_prefixes: bool = True) -> list[list[int]]:
    """Indices of `batch` per row: neighbours sharing >= MIN_SHARED leading tokens share a row (at most 2)."""
    if not share_prefixes or any(seq.positions is not None for seq in batch):
        return [[i] for i in range(len(batch))]
    rows: list[list[int]] = []
    for i, seq in enumerate(batch):
        joins = rows and len(rows[-1]) < MAX_BRANCHES
        if joins and common_prefix(batch[rows[-1][0]].tokens, seq.tokens) >= MIN_SHARED:
            rows[-1].append(i)
        else:
            rows.append([i])
    return rows


def row_length(batch: Sequence[TokenSequence], members: list[int]) -> int:
    """Tokens of one row: the shared prefix once plus each member's own suffix."""
    shared = _shared(batch, members)
    return shared + sum(len(batch[i]) - shared for i in members)


def forward_chunks(widths: Sequence[int], budget: int, max_padding: float = MAX_PADDING) -> list[range]:
    """Consecutive runs of rows (`widths` longest first) for forwards of at most `budget` padded tokens, each
    also cut where its padding would pass `max_padding` of its positions (every forward pads to its first row;
    a token budget alone puts the short tail of a chunk beside a long head: 12% padding at 8192 tokens in
    the DPO benchmark's reference pass, 4% with this cut). A row wider than `budget` is a forward alone."""
    chunks: list[range] = []
    start = 0
    while start < len(widths):
        width, end, real = widths[start], start + 1, widths[start]
        while end < len(widths):
            padded = width * (end + 1 - start)
            if padded > budget or 1 - (real + widths[end]) / padded > max_padding:
                break
            real += widths[end]
            end += 1
        chunks.append(range(start, end))
        start = end
    return chunks


def _shared(batch: Sequence[TokenSequence], members: list[int]) -> int:
    if len(members) == 1:
        return len(batch[members[0]])
    first = batch[members[0]].tokens
    shared = min(common_prefix(first, batch[i].tokens) for i in members[1:])
    return min(shared, *(len(batch[i]) - 1 for i in members))  # every member keeps at least one own token


@dataclass
class Layout:
    """Model inputs for a batch and where each sequence's tokens sit in them."""

    ids: torch.Tensor  # [rows, width]
    positions: Optional[torch.Tensor]  # [rows, width], or None for 0, 1, 2, ...
    mask: Optional[torch.Tensor]  # [rows, 1, width, width] additive (0 / dtype min), or None for plain causal
    row: list[int]  # row of each sequence
    shared: list[int]  # shared prefix length of each sequence's row (its own length when alone)
    offset: list[int]  # column where each sequence's own suffix starts
    # per row: (0, shared prefix end) then each member's (start, end) columns; a row of one sequence: (0, its end)
    spans: list[list[tuple[int, int]]]

    def column(self, seq: int, t: int) -> int:
        """Column holding token `t` of sequence `seq`."""
        return t if t < self.shared[seq] else self.offset[seq] + t - self.shared[seq]


def layout(
    batch: Sequence[TokenSequence], pad_id: int, share_prefixes: bool = True, mask_dtype: Optional[torch.dtype] = None
) -> Layout:
    """Rows for `batch` (see the module docstring)."""
    import torch

    rows = group(batch, share_prefixes)
    lengths = [row_length(batch, members) for members in rows]
    width = max(lengths)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    branched = any(len(members) > 1 for members in rows)
    packed = any(seq.positions is not None for seq in batch)
    positions = torch.zeros((len(rows), width), dtype=torch.long) if branched or packed else None
    allowed = torch.ones((width, width), dtype=torch.bool).tril().repeat(len(rows), 1, 1) if branched else None
    seq_row, seq_shared, seq_offset = [0] * len(batch), [0] * len(batch), [0] * len(batch)
    row_spans: list[list[tuple[int, int]]] = []
    for r, members in enumerate(rows):
        shared = _shared(batch, members)
        first = batch[members[0]]
        ids[r, :shared] = torch.tensor(first.tokens[:shared], dtype=torch.long)
        own_positions = list(first.positions) if first.positions is not None else list(range(len(first)))
        if positions is not None:
            positions[r, :shared] = torch.tensor(own_positions[:shared], dtype=torch.long)
        start, spans = shared, []
        for i in members:
            seq = batch[i]
            end = start + len(seq) - shared
            ids[r, start:end] = torch.tensor(seq.tokens[shared:], dtype=torch.long)
            if positions is not None:
                own = list(seq.positions) if seq.positions is not None else list(range(len(seq)))
                positions[r, start:end] = torch.tensor(own[shared:], dtype=torch.long)
            seq_row[i], seq_shared[i], seq_offset[i] = r, shared, start
            spans.append((start, end))
            start = end
        row_spans.append([(0, start)] if len(members) == 1 else [(0, shared), *spans])
        if positions is not None and start < width:  # padding continues the last count (never a new segment)
            last = int(positions[r, start - 1])
            positions[r, start:] = last + 1 + torch.arange(width - start)
        if allowed is not None:
            for j, (s_j, e_j) in enumerate(spans):
                for s_i, e_i in spans[:j]:  # a later branch never sees an earlier one
                    allowed[r, s_j:e_j, s_i:e_i] = False
    mask = None
    if allowed is not None:
        dtype = mask_dtype or torch.float32
        mask = torch.zeros(allowed.shape, dtype=dtype).masked_fill(~allowed, torch.finfo(dtype).min)[:, None]
    return Layout(ids, positions, mask, seq_row, seq_shared, seq_offset, row_spans)


def targets(
    batch: Sequence[TokenSequence], lay: Layout, all_targets: bool = False
) -> tuple[list[int], list[int], list[int], list[int], list[int]]:
    """For each scored target: (sequence, target index t, row, column of the predicting token, target token id).

    Only weighted targets unless `all_targets`; the token at column c predicts target t = token t + 1.
    """
    seq_ids, ts, rows, cols, tokens = [], [], [], [], []
    for i, seq in enumerate(batch):
        for t, w in enumerate(seq.target_weights):
            if w or all_targets:
                seq_ids.append(i)
                ts.append(t)
                rows.append(lay.row[i])
                cols.append(lay.column(i, t))
                tokens.append(seq.tokens[t + 1])
    return seq_ids, ts, rows, cols, tokens
