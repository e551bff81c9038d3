"""Probes the local backend runs when it is created: do its fast paths (head-only log-probs, shared-prefix rows)
give what the model's own `logits` give on each sequence alone? Where not, it falls back to the plain path."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from charlab.training import rows
from charlab.training.backend import TokenSequence

if TYPE_CHECKING:  # pragma: no cover
    from charlab.training.local import LocalBackend

log = logging.getLogger("charlab")


def fast_path_agrees(backend: LocalBackend) -> bool:
    """The head-only log-prob path equals the model's own logits on a short probe (and, as a side effect, shared-
    prefix rows are switched off where they disagree with separate sequences)."""
    import torch

    probe = backend.tokenizer("Hello there, how are you today?", add_special_tokens=False)["input_ids"][:12]
    if len(probe) < 3:
        return True
    seq = TokenSequence(tuple(probe), (0,) + (1,) * (len(probe) - 1))
    backend.fast_logprobs = True
    with torch.no_grad():
        fast = backend._forward([seq])[0]
        ids = torch.tensor([probe], device=backend.device)
        logits = backend.model(input_ids=ids, use_cache=False).logits.float()
        slow = torch.log_softmax(logits[0, :-1], dim=-1).gather(-1, ids[0, 1:, None]).squeeze(-1)
    tolerance = 2e-2 if backend._dtype != torch.float32 else 1e-3
    agrees = bool(torch.allclose(fast, slow, atol=tolerance))
    if not agrees:
        log.warning("%s: the head-only log-prob path disagrees with the model's logits; using the slow path", backend)
    backend.share_prefixes = backend.share_prefixes and shared_rows_agree(backend, tolerance)
    return agrees


def shared_rows_agree(backend: LocalBackend, tolerance: float) -> bool:
    """A pair with a common prefix scored in one shared row equals the two scored alone."""
    import torch

    text = "The morning fog rolled over the harbor while the fishermen checked their nets and the gulls"
    prefix = backend.tokenizer(text, add_special_tokens=False)["input_ids"][: rows.MIN_SHARED + 4]
    tails = [backend.tokenizer(t, add_special_tokens=False)["input_ids"][:6] for t in (" sang", " slept all day")]
    pair = [TokenSequence(tuple(prefix + t), (0,) * len(prefix) + (1,) * len(t)) for t in tails]
    if len(prefix) < rows.MIN_SHARED or len(rows.group(pair)) != 1:
        return False
    with torch.no_grad():
        together = backend._forward(pair)
        backend.share_prefixes = False
        alone = [backend._forward([seq])[0] for seq in pair]
        backend.share_prefixes = True
    agrees = all(torch.allclose(a, b, atol=tolerance) for a, b in zip(together, alone))
    if not agrees:
        log.warning("%s: shared-prefix rows disagree with separate sequences; padding instead", backend)
    return agrees
