"""DPO, written once against `TrainingBackend`: pairs -> token sequences, the loss, cached references, eval.

    items, stats = encode_pairs(chat, pairs, max_length=512)
    train_items, eval_items = split_eval(items, eval_fraction=0.2, seed=0)
    algorithm = DpoAlgorithm(beta=0.1, nll_coef=0.1, cache_dir=run_dir, cache_key=model_identity)
    Trainer(backend, algorithm, train_items, eval_items, loop_config, run_dir / "checkpoints").train()

Each pair is a chosen and a rejected reply to the same user prompt, rendered by the one chat format; the
loss reads summed log-probabilities over the reply's tokens only (the chat format's loss mask). The sigmoid
loss `-log sigmoid(beta * ((pi_c - ref_c) - (pi_r - ref_r)))` is optionally joined by `nll_coef` times the
per-token negative log-likelihood of the chosen reply and by `kl_coef` times a squared-log-ratio estimate of
KL(policy || reference) on the reply tokens of both sides (`mean_t (log pi_t - log ref_t)^2` per sequence,
averaged over sequences: OpenRLHF's `kl_loss_coef`, the paper's 0.001). Chosen and rejected of a micro-batch
go through the backend as one batch (`[c0, r0, c1, r1, ...]`), so the local backend runs one forward for
both. Reference log-probabilities are computed once for every pair before training (under torchrun each rank
scores its share and all gather the table) and cached on disk under a key of the token ids, loss masks and model
identity (per token, too, when the KL term needs them); the training loop never runs the reference model.

The held-out split keeps every sample of a prompt on one side (`split_eval(..., group=...)`): with several
samples per prompt an item-level split would evaluate on prompts it trained on.
"""

from __future__ import annotations

import hashlib
import json
import logging
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional, TypeVar

from charlab import distributed
from charlab.chat_format import ChatFormat, make_messages
from charlab.data.prompt_text import prompt_id
from charlab.data.records import DpoExample
from charlab.training.backend import LossFn, TokenSequence, TrainingBackend

if TYPE_CHECKING:  # pragma: no cover
    import torch

log = logging.getLogger("charlab")
T = TypeVar("T")


@dataclass(frozen=True)
class DpoItem:
    """One encoded preference pair; `index` is its position among the encoded pairs (the cache's key)."""

    index: int
    chosen: TokenSequence
    rejected: TokenSequence
    id: str = ""
    group: str = ""  # the prompt it answers: every sample of a prompt lands on the same side of the split

    def __len__(self) -> int:
        return len(self.chosen) + len(self.rejected)


@dataclass
class EncodeStats:
    """What encoding did to the pairs file."""

    pairs: int = 0
    kept: int = 0
    truncated: int = 0  # a reply cut to max_length
    dropped: list[str] = field(default_factory=list)  # pair ids (or row numbers) with nothing to train on


def encode_pairs(chat: ChatFormat, pairs: Sequence[DpoExample], max_length: int) -> tuple[list[DpoItem], EncodeStats]:
    """Render each pair (user prompt + reply) and cut it to `max_length`; drop pairs left without reply tokens."""
    stats = EncodeStats(pairs=len(pairs))
    items: list[DpoItem] = []
    for row, pair in enumerate(pairs, 1):
        prompt = make_messages(pair.prompt)
        encoded = [chat.encode_completion(prompt, reply) for reply in (pair.chosen, pair.rejected)]
        if any(len(e) > max_length for e in encoded):
            stats.truncated += 1
        chosen, rejected = (TokenSequence.from_encoded(e, max_length) for e in encoded)
        if chosen.num_trained == 0 or rejected.num_trained == 0:
            stats.dropped.append(pair.id or f"row {row}")
            continue
        group = pair.prompt_id or prompt_id(pair.prompt)
        items.append(DpoItem(len(items), chosen, rejected, pair.id or str(row), group))
    stats.kept = len(items)
    return items, stats


def split_eval(
    items: list[T], eval_fraction: float, seed: int, group: Optional[Callable[[T], str]] = None
) -> tuple[list[T], list[T]]:
    """A seeded held-out split of about `eval_fraction` of the items (at least one group when > 0).

    With `group`, whole groups (every sample of one prompt) are held out until the share is reached, so no
    held-out item shares its group with a trained one; without it every item is its own group.
    """
    keys = [group(it) if group else str(i) for i, it in enumerate(items)]
    groups = list(dict.fromkeys(keys))
    if eval_fraction <= 0 or len(groups) < 2:
        return list(items), []
    target = max(1, round(eval_fraction * len(items)))
    random.Random(f"eval-split:{seed}").shuffle(groups)
    sizes = {g: 0 for g in groups}
    for key in keys:
        sizes[key] += 1
    held: set[str] = set()
    count = 0
    for g in groups[:-1]:  # at least one group trains
        if count >= target:
            break
        held.add(g)
        count += sizes[g]
    train = [it for it, key in zip(items, keys) if key not in held]
    return train, [it for it, key in zip(items, keys) if key in held]


def split_pairs(items: list[DpoItem], eval_fraction: float, seed: int) -> tuple[list[DpoItem], list[DpoItem]]:
    """The DPO held-out split, grouped by prompt."""
    return split_eval(items, eval_fraction, seed, group=lambda item: item.group)


# ------------------------------------------------------------------------------------------------ the loss


def sequence_logprobs(batch: Sequence[TokenSequence], logprobs_list: Sequence[torch.Tensor]) -> torch.Tensor:
    """Each sequence's summed log-probability over its weighted (trained) targets."""
    import torch

    sums = []
    for seq, lp in zip(batch, logprobs_list, strict=True):
        weights = torch.tensor(seq.target_weights, dtype=lp.dtype, device=lp.device)
        sums.append((lp * weights).sum())
    return torch.stack(sums)


def squared_log_ratio(
    batch: Sequence[TokenSequence], logprobs_list: Sequence[torch.Tensor], ref_list: Sequence[torch.Tensor]
) -> torch.Tensor:
    """Each sequence's mean over its trained tokens of `(log pi - log ref)^2` (a KL(pi || ref) estimate)."""
    import torch

    values = []
    for seq, lp, ref in zip(batch, logprobs_list, ref_list, strict=True):
        weights = torch.tensor(seq.target_weights, dtype=lp.dtype, device=lp.device)
        delta = lp - ref.to(lp.device, lp.dtype)
        values.append((delta.pow(2) * weights).sum() / weights.sum().clamp(min=1.0))
    return torch.stack(values)


def dpo_loss(
    chosen: torch.Tensor,
    rejected: torch.Tensor,
    ref_chosen: torch.Tensor,
    ref_rejected: torch.Tensor,
    beta: float,
    *,
    nll_coef: float = 0.0,
    chosen_tokens: Optional[torch.Tensor] = None,
    kl_coef: float = 0.0,
    kl: Optional[torch.Tensor] = None,
) -> tuple[torch.Tensor, dict[str, float]]:
    """Mean sigmoid DPO loss (+ `nll_coef` x per-token NLL of chosen + `kl_coef` x KL estimate) over pairs.

    Inputs are per-pair summed log-probabilities; `chosen_tokens` (trained tokens of each chosen reply)
    normalises the NLL term and is required when `nll_coef` > 0; `kl` (`squared_log_ratio` of every chosen
    and rejected sequence) is required when `kl_coef` > 0.
    """
    import torch.nn.functional as F

    reward_chosen = beta * (chosen - ref_chosen)
    reward_rejected = beta * (rejected - ref_rejected)
    margins = reward_chosen - reward_rejected
    dpo = -F.logsigmoid(margins).mean()
    nll = (-chosen / chosen_tokens).mean() if chosen_tokens is not None else chosen.new_zeros(())
    kl_mean = kl.mean() if kl is not None else chosen.new_zeros(())
    loss = dpo
    if nll_coef:
        loss = loss + nll_coef * nll
    if kl_coef:
        loss = loss + kl_coef * kl_mean
    metrics = {
        "loss": float(loss.detach()),
        "dpo_loss": float(dpo.detach()),
        "nll": float(nll.detach()),
        "kl": float(kl_mean.detach()),
        "accuracy": float((margins > 0).float().mean()),
        "margin": float(margins.detach().mean()),
        "reward_chosen": float(reward_chosen.detach().mean()),
        "reward_rejected": float(reward_rejected.detach().mean()),
    }
    return loss, metrics


def interleave(items: Sequence[DpoItem]) -> list[TokenSequence]:
    """`[c0, r0, c1, r1, ...]`: one batch holds both sides of every pair."""
    return [seq for item in items for seq in (item.chosen, item.rejected)]


def make_loss_fn(
    items: Sequence[DpoItem],
    refs: torch.Tensor,
    beta: float,
    nll_coef: float,
    weight: float,
    kl_coef: float = 0.0,
    ref_tokens: Optional[Sequence[torch.Tensor]] = None,
) -> LossFn:
    """The loss of one micro-batch of `interleave(items)`; `refs[i]` = (ref chosen, ref rejected) of item i and
    `ref_tokens` the per-token reference log-probs of `interleave(items)` (needed when `kl_coef` > 0)."""
    import torch

    chosen_tokens = torch.tensor([float(it.chosen.num_trained) for it in items])

    def loss_fn(batch: list[TokenSequence], logprobs_list: list[torch.Tensor]) -> tuple[torch.Tensor, dict]:
        sums = sequence_logprobs(batch, logprobs_list)
        ref = refs.to(sums.device, sums.dtype)
        kl = squared_log_ratio(batch, logprobs_list, ref_tokens) if ref_tokens is not None else None
        loss, metrics = dpo_loss(
            sums[0::2],
            sums[1::2],
            ref[:, 0],
            ref[:, 1],
            beta,
            nll_coef=nll_coef,
            chosen_tokens=chosen_tokens.to(sums.device, sums.dtype),
            kl_coef=kl_coef,
            kl=kl,
        )
        return loss * weight, metrics

    return loss_fn


# ------------------------------------------------------------------------------------------------ references


def reference_key(items: Sequence[DpoItem], model_identity: str) -> str:
    """A digest of every pair's tokens and masks (data, chat format, max_length) and the model's identity."""
    h = hashlib.sha256(model_identity.encode())
    for item in items:
        for seq in (item.chosen, item.rejected):
            h.update(json.dumps([seq.tokens, seq.loss_mask]).encode())
    return h.hexdigest()


class DpoAlgorithm:
    """DPO for `charlab.training.loop.Trainer`: reference log-probs cached once, one loss per micro-batch."""

    name = "dpo"
    prepare_metric = "reference_pass_s"

    def __init__(
        self,
        beta: float,
        nll_coef: float = 0.0,
        cache_dir: Optional[Path] = None,
        model_identity: str = "",
        extra_cache_dirs: Sequence[Path] = (),
        eval_batch_size: int = 16,
        kl_coef: float = 0.0,
        cached_reference: bool = True,
    ):
        self.beta, self.nll_coef, self.kl_coef = float(beta), float(nll_coef), float(kl_coef)
        self.cache_dir = Path(cache_dir) if cache_dir is not None else None
        self.extra_cache_dirs = [Path(p) for p in extra_cache_dirs]
        self.model_identity = model_identity
        self.eval_batch_size = eval_batch_size
        self.refs: Optional[torch.Tensor] = None  # [n_items, 2], indexed by DpoItem.index
        self.ref_tokens: Optional[list[list[torch.Tensor]]] = None  # per item: [chosen, rejected] per-token refs
        self.cache_path: Optional[Path] = None
        self.reference_calls = 0  # how many times reference log-probs were computed (tests: exactly once)
        # False: the reference runs in every step instead (TRL's default; only for benchmark ablations)
        self.cached_reference = cached_reference
        self._backend: Optional[TrainingBackend] = None

    def item_length(self, item: DpoItem) -> int:
        return len(item)

    def item_weight(self, item: DpoItem) -> float:
        return 1.0  # the loss is a mean over pairs

    # ---- references, once ------------------------------------------------------------------------------
    def prepare(self, backend: TrainingBackend, items: list[Any]) -> None:
        """Reference log-probs for every item (sums; per token too for the KL term): from the cache when its key
        matches, else computed and cached.

        Under torchrun rank 0 reads the cache and shares what it found; on a miss every rank scores its share of
        the pairs and all ranks gather the whole table (computed once, not once per rank); rank 0 writes it.
        """
        import torch

        self._backend = backend
        if not self.cached_reference:
            return
        items = sorted(items, key=lambda it: it.index)
        key = reference_key(items, self.model_identity)
        name, tokens_name = f"ref_logprobs-{key[:16]}.json", f"ref_tokens-{key[:16]}.pt"
        need_tokens = self.kl_coef > 0
        cached = self._read_cache(name, tokens_name, key, len(items), need_tokens) if distributed.is_main() else None
        cached = distributed.broadcast_object(cached)
        if cached is not None:
            path, refs, self.ref_tokens = cached
            self.refs, self.cache_path = torch.tensor(refs, dtype=torch.float64), Path(path)
            log.info("reference log-probs: %d pairs from %s", len(items), path)
            return
        self.refs, self.ref_tokens = self._compute(backend, items, need_tokens)
        if self.cache_dir is not None:
            self.cache_path = self.cache_dir / name
            if not distributed.is_main():
                return
            self.cache_dir.mkdir(parents=True, exist_ok=True)
            if self.ref_tokens is not None:
                tmp_tokens = self.cache_dir / (tokens_name + ".tmp")
                torch.save(self.ref_tokens, tmp_tokens)
                tmp_tokens.replace(self.cache_dir / tokens_name)
            tmp = self.cache_path.with_suffix(".tmp")
            tmp.write_text(json.dumps({"key": key, "model": self.model_identity, "refs": self.refs.tolist()}))
            tmp.replace(self.cache_path)

    def _read_cache(
        self, name: str, tokens_name: str, key: str, count: int, need_tokens: bool
    ) -> Optional[tuple[str, list, Optional[list]]]:
        """(path, sums, per-token log-probs or None) from the first cache folder holding this key, or None."""
        import torch

        for folder in [d for d in [self.cache_dir, *self.extra_cache_dirs] if d is not None]:
            path = folder / name
            if path.is_file() and (not need_tokens or (folder / tokens_name).is_file()):
                data = json.loads(path.read_text())
                if data.get("key") == key and len(data["refs"]) == count:
                    tokens = torch.load(folder / tokens_name, weights_only=True) if need_tokens else None
                    return str(path), data["refs"], tokens
        return None

    def _compute(
        self, backend: TrainingBackend, items: list[DpoItem], keep_tokens: bool
    ) -> tuple[torch.Tensor, Optional[list[list[torch.Tensor]]]]:
        import torch
        from tqdm.auto import tqdm

        self.reference_calls += 1
        refs = torch.zeros((len(items), 2), dtype=torch.float64)
        tokens: list[list[torch.Tensor]] = [[] for _ in items]
        order = sorted(range(len(items)), key=lambda i: -len(items[i]))  # similar lengths share a forward
        mine = distributed.shard(order)  # under torchrun: this rank's share
        chunk = max(1, self.eval_batch_size * 4)
        scored: list[tuple[int, list[float], Optional[list]]] = []
        with tqdm(total=len(mine), desc="reference log-probs", disable=None if distributed.is_main() else True) as bar:
            for start in range(0, len(mine), chunk):
                part = [items[i] for i in mine[start : start + chunk]]
                batch = interleave(part)
                logprobs = backend.logprobs(batch, reference=True)
                sums = sequence_logprobs(batch, logprobs).double().cpu()
                for j, item in enumerate(part):
                    per_token = (
                        [logprobs[2 * j].float().cpu(), logprobs[2 * j + 1].float().cpu()] if keep_tokens else None
                    )
                    scored.append((item.index, sums[2 * j : 2 * j + 2].tolist(), per_token))
                bar.update(len(part))
        for share in distributed.gather_objects(scored):
            for index, pair, per_token in share:
                refs[index] = torch.tensor(pair, dtype=torch.float64)
                if per_token is not None:
                    tokens[index] = per_token
        return refs, (tokens if keep_tokens else None)

    # ---- training and eval -------------------------------------------------------------------------------
    def _loss_fn(self, items: Sequence[DpoItem], weight: float) -> LossFn:
        if not self.cached_reference and self._backend is not None:  # the reference inside every step (ablation)
            batch = interleave(items)
            per_token = self._backend.logprobs(batch, reference=True)
            refs = sequence_logprobs(batch, per_token).float().view(-1, 2)
            ref_tokens = [t.float() for t in per_token] if self.kl_coef > 0 else None
            return make_loss_fn(items, refs, self.beta, self.nll_coef, weight, self.kl_coef, ref_tokens)
        if self.refs is None:
            raise RuntimeError("DpoAlgorithm.prepare must run before training")
        refs = self.refs[[it.index for it in items]].float()
        ref_tokens = None
        if self.kl_coef > 0 and self.ref_tokens is not None:
            ref_tokens = [t for it in items for t in self.ref_tokens[it.index]]
        return make_loss_fn(items, refs, self.beta, self.nll_coef, weight, self.kl_coef, ref_tokens)

    def micro_batch(self, items: list[DpoItem], weight: float) -> tuple[list[TokenSequence], LossFn]:
        return interleave(items), self._loss_fn(items, weight)

    def evaluate(self, backend: TrainingBackend, items: list[Any]) -> dict[str, float]:
        """DPO metrics of the current weights on `items` (no gradient), averaged over pairs."""
        import torch

        totals: dict[str, float] = {}
        for start in range(0, len(items), self.eval_batch_size):
            part = items[start : start + self.eval_batch_size]
            batch = interleave(part)
            with torch.no_grad():
                _, metrics = self._loss_fn(part, 1.0)(batch, backend.logprobs(batch))
            for k, v in metrics.items():
                totals[k] = totals.get(k, 0.0) + v * len(part)
        return {k: v / len(items) for k, v in totals.items()}
