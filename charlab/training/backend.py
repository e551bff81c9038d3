"""The one training interface every algorithm is written against, shaped like the Tinker SDK.

A backend owns a base model with a trainable LoRA adapter and offers six things:

* `logprobs(batch, reference=False)` -- per-target log-probabilities of each sequence (no gradient); with
  `reference=True` under the frozen initial weights (the local backend disables the adapter, Tinker samples
  from a snapshot taken before training);
* `forward_backward(batch, loss_fn)` -- runs `loss_fn(batch, logprobs_list) -> (loss, metrics)` on the
  current weights and accumulates gradients (exactly the callable Tinker's `forward_backward_custom` takes);
* `optim_step(params)` -- one AdamW step with this step's learning rate, clipping and weight decay;
* `save_state(folder)` / `load_state(folder)` -- adapter weights *and* optimizer state, for resuming;
* `save_adapter(folder)` -- a standard PEFT folder (`adapter_config.json` + `adapter_model.safetensors`);
* `sampler()` -- a `charlab.generation.base.Sampler` over the current weights.

Stages and the loop also ask, through the same protocol and never by `getattr`: `supports_packing` (packed rows),
`remote_artifacts()` and `last_export` (a remote backend's own forms of the weights), `no_sync()` and
`sync_from_main()` (data-parallel ranks; no-ops where there is one process).

`forward_backward` and `optim_step` return futures (`.result()`), so a remote backend can keep several
requests in flight; the local backend returns futures that are already done. Algorithms (DPO, SFT) and the
generic loop in `charlab.training.loop` never look behind this interface.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional, Protocol, TypeVar, runtime_checkable

if TYPE_CHECKING:  # pragma: no cover
    import torch

    from charlab.chat_format import EncodedChat
    from charlab.generation.base import Sampler

T = TypeVar("T")


@dataclass(frozen=True)
class TokenSequence:
    """One training sequence: token ids and a 0/1 loss mask aligned with them (from `ChatFormat`).

    The model predicts `tokens[t + 1]` from `tokens[: t + 1]`, so there are `len(tokens) - 1` targets and the
    weight of target `t` is `loss_mask[t + 1]`. Padding never appears here: backends pad internally.
    """

    tokens: tuple[int, ...]
    loss_mask: tuple[int, ...]
    # A packed row (several sequences in one, `charlab.training.sft.pack`): each token's position, restarting at 0
    # where a sequence starts, so attention never crosses sequences. None: 0, 1, 2, ... Only backends with
    # `supports_packing = True` accept it.
    positions: Optional[tuple[int, ...]] = None

    def __post_init__(self) -> None:
        if len(self.tokens) != len(self.loss_mask):
            raise ValueError(f"tokens ({len(self.tokens)}) and loss_mask ({len(self.loss_mask)}) differ in length")
        if self.positions is not None and len(self.positions) != len(self.tokens):
            raise ValueError(f"tokens ({len(self.tokens)}) and positions ({len(self.positions)}) differ in length")
        if len(self.tokens) < 2:
            raise ValueError("a training sequence needs at least two tokens")

    @classmethod
    def from_encoded(cls, encoded: EncodedChat, max_length: Optional[int] = None) -> TokenSequence:
        """From `ChatFormat.encode_*`, cut to `max_length` tokens (the tail of the trained reply is dropped)."""
        ids, mask = encoded.input_ids, encoded.loss_mask
        if max_length is not None:
            ids, mask = ids[:max_length], mask[:max_length]
        return cls(tuple(int(i) for i in ids), tuple(int(m) for m in mask))

    def __len__(self) -> int:
        return len(self.tokens)

    @property
    def target_tokens(self) -> tuple[int, ...]:
        return self.tokens[1:]

    @property
    def target_weights(self) -> tuple[int, ...]:
        return self.loss_mask[1:]

    @property
    def num_trained(self) -> int:
        """Targets that carry the loss."""
        return int(sum(self.target_weights))


LossFn = Callable[[list[TokenSequence], list["torch.Tensor"]], tuple["torch.Tensor", dict[str, float]]]
"""`loss_fn(batch, logprobs_list) -> (scalar loss, metrics)`; `logprobs_list[i]` has one entry per target of
`batch[i]`. Entries of zero-weight targets are unspecified (the local backend leaves them at 0 to save work),
so a loss must only read targets its weights select."""


@dataclass(frozen=True)
class AdamParams:
    """One optimizer step's hyperparameters (mirrors `tinker.AdamParams`; the stage YAML sets every value)."""

    learning_rate: float
    beta1: float = 0.9
    beta2: float = 0.999
    eps: float = 1e-8
    weight_decay: float = 0.0
    grad_clip_norm: float = 0.0  # 0: no clipping


class ResultFuture(Protocol[T]):  # type: ignore[misc]
    """Anything with `.result()`: a `concurrent.futures.Future`, a Tinker `APIFuture`, a mapped future."""

    def result(self, timeout: Optional[float] = None) -> T: ...


def done(value: T) -> Future[T]:
    """A future that already holds `value` (what the local backend returns)."""
    future: Future[T] = Future()
    future.set_result(value)
    return future


class MappedFuture:
    """`fn(inner.result())`, computed once when first asked for (keeps remote futures lazy)."""

    def __init__(self, inner: ResultFuture[Any], fn: Callable[[Any], T]):
        self._inner, self._fn = inner, fn
        self._value: Any = None
        self._ready = False

    def result(self, timeout: Optional[float] = None) -> Any:
        if not self._ready:
            self._value = self._fn(self._inner.result(timeout))
            self._ready = True
        return self._value


class ReleasesGpu(Protocol):
    """Something that holds GPU memory a local backend needs and gives it up on request (a vLLM server pool)."""

    def release_gpu(self) -> None: ...


@runtime_checkable
class TrainingBackend(Protocol):
    """A base model with a trainable LoRA adapter (see the module docstring)."""

    model_name: str
    tokenizer: Any
    supports_packing: bool  # accepts `TokenSequence.positions` (packed rows)
    last_export: Optional[str]  # where the last `save_adapter` exported the weights remotely (`tinker://`); None

    def logprobs(self, batch: Sequence[TokenSequence], reference: bool = False) -> list[torch.Tensor]:
        """Per-target log-probabilities of each sequence, without gradient."""
        ...

    def forward_backward(self, batch: list[TokenSequence], loss_fn: LossFn) -> ResultFuture[dict[str, float]]:
        """Accumulate the gradient of `loss_fn` on the current weights; the future holds its metrics."""
        ...

    def optim_step(self, params: AdamParams) -> ResultFuture[dict[str, float]]:
        """Apply (and clear) the accumulated gradient."""
        ...

    def save_state(self, folder: Path) -> str:
        """Save adapter and optimizer state into (or, remote, pointed to from) `folder`; returns its location."""
        ...

    def load_state(self, folder: Path) -> None:
        """Restore what `save_state(folder)` saved."""
        ...

    def save_adapter(self, folder: Path) -> Path:
        """Write the current adapter as a standard PEFT folder; returns it."""
        ...

    def sampler(self, batch_size: int = 8) -> Sampler:
        """A `Sampler` that generates with the current weights."""
        ...

    def close(self, status: str = "success") -> None:
        """Release the model / connections; `status` says how the work ended: success | errored | interrupted."""
        ...

    def remote_artifacts(self) -> dict[str, str]:
        """The newest saved weights in the backend's own remote forms (`{"tinker_state": ...}`); {} locally."""
        ...

    def no_sync(self) -> contextlib.AbstractContextManager[Any]:
        """A context in which `forward_backward` skips the data-parallel gradient all-reduce (a no-op elsewhere)."""
        ...

    def sync_from_main(self) -> None:
        """Data-parallel ranks take rank 0's weights, optimizer state and step after it resumed (a no-op elsewhere)."""
        ...


@contextlib.contextmanager
def closing(backend: TrainingBackend) -> Iterator[TrainingBackend]:
    """`with closing(backend):` closes the backend when the block ends, saying how it ended: `success`, `errored`
    (an exception) or `interrupted` (Ctrl-C). Tinker records that on its session."""
    try:
        yield backend
    except KeyboardInterrupt:
        backend.close("interrupted")
        raise
    except BaseException:
        backend.close("errored")
        raise
    backend.close("success")
