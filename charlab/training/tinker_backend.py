"""The Tinker training backend: the same `TrainingBackend` calls, run by the Tinker service (LoRA, remote GPUs).

    backend = TinkerBackend.create("Qwen/Qwen3-8B", rank=32, tokenizer=tok, model_name="qwen3-8b")

* a sequence becomes a `tinker.Datum`: `model_input` = tokens[:-1], `target_tokens` = tokens[1:], `weights` =
  the loss mask of those targets;
* `forward_backward` sends the loss through `forward_backward_custom` (the SDK computes log-probs remotely,
  runs our loss locally in torch, and sends the gradient back); `optim_step` sends `tinker.AdamParams`.
  Both return the SDK's futures, so the loop submits the next step before awaiting this one;
* reference log-probs come from a frozen sampling snapshot of the weights before the first step
  (`save_weights_and_get_sampling_client`), requested for a whole batch at once with `compute_logprobs`
  futures, at most `max_concurrency` in flight;
* `save_state` saves `save_state` + `save_weights_for_sampler` checkpoints and writes their `tinker://` paths
  into the local checkpoint folder; `load_state` resumes with `create_training_client_from_state_with_optimizer`;
* `save_adapter` exports with `save_weights_external` and downloads the files from the REST client's signed
  URLs into a PEFT folder.

The `tinker` package is an optional extra, imported only here.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import uuid
from collections import deque
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional

from charlab.errors import ConfigError, ProviderError
from charlab.training.backend import AdamParams, LossFn, MappedFuture, TokenSequence

if TYPE_CHECKING:  # pragma: no cover
    import torch

    from charlab.generation.base import Sampler

log = logging.getLogger("charlab")
STATE_FILE = "tinker_state.json"
ADAPTER_FILES = ("adapter_config.json", "adapter_model.safetensors")


def _tinker() -> Any:
    try:
        import tinker
    except ImportError:  # pragma: no cover - the extra is installed in the dev venv
        raise ProviderError("backend=tinker needs the tinker package: pip install 'charlab[tinker]'") from None
    return tinker


def to_datum(seq: TokenSequence) -> Any:
    """A `tinker.Datum` for next-token training on `seq` (targets shifted by one, weights = loss mask)."""
    tinker = _tinker()
    if seq.positions is not None:
        raise ValueError("backend=tinker cannot train packed rows (TokenSequence.positions); pack only locally")
    n = len(seq) - 1
    return tinker.Datum(
        model_input=tinker.ModelInput.from_ints(list(seq.tokens[:-1])),
        loss_fn_inputs={
            "target_tokens": tinker.TensorData(data=list(seq.target_tokens), dtype="int64", shape=[n]),
            "weights": tinker.TensorData(data=[float(w) for w in seq.target_weights], dtype="float32", shape=[n]),
        },
    )


# Tinker adapts whole groups of layers (its LoRA config: train_attn, train_mlp, train_unembed), named here by the
# projections charlab's `lora.target_modules` lists.
TINKER_LAYER_GROUPS: dict[str, tuple[str, ...]] = {
    "train_attn": ("q_proj", "k_proj", "v_proj", "o_proj"),
    "train_mlp": ("gate_proj", "up_proj", "down_proj"),
    "train_unembed": ("lm_head",),
}


def tinker_lora_flags(
    target_modules: Sequence[str], alpha: float, dropout: float, tinker_alpha: float
) -> dict[str, bool]:
    """`lora.target_modules` as Tinker's layer-group flags; a LoRA shape Tinker cannot train is a one-line error.

    Tinker takes whole groups (attention, MLP, unembedding), a fixed alpha (`backend.lora_alpha`) and no
    dropout, so a partial group, another alpha or a dropout would silently train something else.
    """
    requested = list(dict.fromkeys(str(t) for t in target_modules))
    groups = ", ".join(
        f"{flag.removeprefix('train_')}: {'/'.join(names)}" for flag, names in TINKER_LAYER_GROUPS.items()
    )
    known = {name for names in TINKER_LAYER_GROUPS.values() for name in names}
    unknown = [t for t in requested if t not in known]
    if unknown:
        raise ConfigError(
            f"backend=tinker: lora.target_modules has '{unknown[0]}', which Tinker cannot target; it adapts whole "
            f"layer groups ({groups})"
        )
    flags = {}
    for flag, names in TINKER_LAYER_GROUPS.items():
        chosen = [n for n in names if n in requested]
        if chosen and len(chosen) < len(names):
            raise ConfigError(
                f"backend=tinker: lora.target_modules lists {', '.join(chosen)} but not all of {', '.join(names)}; "
                f"Tinker adapts whole layer groups ({groups})"
            )
        flags[flag] = bool(chosen)
    if not any(flags.values()):
        raise ConfigError(f"backend=tinker: lora.target_modules is empty; Tinker adapts whole layer groups ({groups})")
    if float(alpha) != float(tinker_alpha):
        raise ConfigError(
            f"backend=tinker: lora.alpha={alpha:g} cannot be set on Tinker, which trains every LoRA with alpha "
            f"{tinker_alpha:g} (scale alpha/rank); set lora.alpha={tinker_alpha:g} (and scale stage.lr to keep "
            "alpha/rank x lr if you match a local run)"
        )
    if float(dropout) != 0.0:
        raise ConfigError(
            f"backend=tinker: lora.dropout={dropout:g} is not allowed; Tinker trains LoRA without dropout"
        )
    return flags


def api_key_from_env(env_var: str) -> str:
    """The Tinker key from `env_var`, or a one-line error saying where it is expected."""
    key = os.environ.get(env_var, "").strip()
    if not key:
        raise ProviderError(f"backend=tinker needs an API key in ${env_var} (environment or .env); it is not set")
    return key


class TinkerBackend:
    """A Tinker LoRA training client behind the `TrainingBackend` calls (see module docstring)."""

    supports_packing = False  # a Datum is one sequence; Tinker has no per-segment positions

    def __init__(
        self,
        service: Any,
        training_client: Any,
        tokenizer: Any,
        model_name: str,
        base_model: str,
        max_concurrency: int = 64,
        init_state: Optional[str] = None,
    ):
        self.service = service
        self.training_client = training_client
        self.tokenizer = tokenizer
        self.model_name = model_name
        self.base_model = base_model
        self.max_concurrency = max(1, int(max_concurrency))
        self.init_state = init_state
        self.steps = 0  # optimizer steps submitted
        self.resumed = False
        self.last_export: Optional[str] = None
        self.last_saved: dict[str, Any] = {}  # the newest save_state record (its tinker:// paths)
        self._reference: Any = None

    @classmethod
    def create(
        cls,
        base_model: str,
        rank: int,
        tokenizer: Any,
        model_name: str,
        seed: Optional[int] = None,
        service: Any = None,
        base_url: Optional[str] = None,
        api_key: Optional[str] = None,
        max_concurrency: int = 64,
        init_state: Optional[str] = None,
        layer_groups: Optional[dict[str, bool]] = None,
    ) -> TinkerBackend:
        """A new LoRA training client of `rank` on `base_model`, adapting `layer_groups` (Tinker's `train_attn`,
        `train_mlp`, `train_unembed`; see `tinker_lora_flags`), or one continuing the weights at `init_state`."""
        if service is None:
            service = _tinker().ServiceClient(base_url=base_url, api_key=api_key)
        if init_state:
            client = service.create_training_client_from_state(init_state).result()
            trained_rank = client.get_info().lora_rank
            if trained_rank is not None and int(trained_rank) != int(rank):
                raise ConfigError(
                    f"backend=tinker: {init_state} is a rank-{trained_rank} LoRA, which Tinker continues (it cannot "
                    f"train a new LoRA on merged weights); set lora.rank={trained_rank} (lora.rank={rank} now)"
                )
        else:
            client = service.create_lora_training_client(
                base_model=base_model, rank=int(rank), seed=seed, **(layer_groups or {})
            ).result()
        return cls(service, client, tokenizer, model_name, base_model, max_concurrency, init_state)

    # ---- log-probabilities ----------------------------------------------------------------------------------
    def _reference_client(self) -> Any:
        """A frozen snapshot of the weights before training (or, after a resume, of the starting weights)."""
        if self._reference is None:
            if self.steps == 0 and not self.resumed:
                self._reference = self.training_client.save_weights_and_get_sampling_client().result()
            elif self.init_state:
                self._reference = self.service.create_sampling_client(model_path=self.init_state).result()
            else:  # a fresh LoRA is zero, so the starting weights are the base model's
                self._reference = self.service.create_sampling_client(base_model=self.base_model).result()
        return self._reference

    def logprobs(self, batch: Sequence[TokenSequence], reference: bool = False) -> list[torch.Tensor]:
        """Per-target log-probs; reference ones through concurrent `compute_logprobs` futures."""
        import torch

        tinker = _tinker()
        if not reference:
            out = self.training_client.forward([to_datum(s) for s in batch], "cross_entropy").result()
            return [o["logprobs"].to_torch().float() for o in out.loss_fn_outputs]
        client = self._reference_client()
        results: list[Any] = [None] * len(batch)
        in_flight: deque[tuple[int, Any]] = deque()
        for i, seq in enumerate(batch):
            in_flight.append((i, client.compute_logprobs(tinker.ModelInput.from_ints(list(seq.tokens)))))
            if len(in_flight) >= self.max_concurrency:
                j, future = in_flight.popleft()
                results[j] = future.result()
        while in_flight:
            j, future = in_flight.popleft()
            results[j] = future.result()
        # compute_logprobs scores every prompt token; the first has no context (None)
        return [torch.tensor([float(x) if x is not None else 0.0 for x in lps[1:]]) for lps in results]

    # ---- training -------------------------------------------------------------------------------------------
    def forward_backward(self, batch: list[TokenSequence], loss_fn: LossFn) -> MappedFuture:
        """`forward_backward_custom` with our loss over our sequences; a future of its metrics."""
        data = [to_datum(s) for s in batch]
        future = self.training_client.forward_backward_custom(data, lambda _data, logprobs: loss_fn(batch, logprobs))
        return MappedFuture(future, lambda out: {k: float(v) for k, v in (out.metrics or {}).items()})

    def optim_step(self, params: AdamParams) -> MappedFuture:
        tinker = _tinker()
        adam = tinker.AdamParams(
            learning_rate=params.learning_rate,
            beta1=params.beta1,
            beta2=params.beta2,
            eps=params.eps,
            weight_decay=params.weight_decay,
            grad_clip_norm=params.grad_clip_norm,
        )
        self.steps += 1
        return MappedFuture(self.training_client.optim_step(adam), lambda out: dict(out.metrics or {}))

    # ---- state ----------------------------------------------------------------------------------------------
    def save_state(self, folder: Path) -> str:
        """`save_state` + `save_weights_for_sampler` (submitted together); their paths go into `folder`."""
        name = f"step-{self.steps:06d}"
        state = self.training_client.save_state(name)
        sampler = self.training_client.save_weights_for_sampler(name)
        record = {
            "state_path": state.result().path,
            "sampler_path": sampler.result().path,
            "base_model": self.base_model,
            "steps": self.steps,
        }
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        (folder / STATE_FILE).write_text(json.dumps(record, indent=2) + "\n")
        self.last_saved = record
        return record["state_path"]

    def remote_artifacts(self) -> dict[str, str]:
        """The newest saved weights in Tinker's own forms: `tinker_state` (training continues from it) and
        `tinker_sampler` (a sampler serves it); empty before the first `save_state`."""
        if not self.last_saved:
            return {}
        return {"tinker_state": self.last_saved["state_path"], "tinker_sampler": self.last_saved["sampler_path"]}

    def no_sync(self) -> contextlib.AbstractContextManager[Any]:
        """Nothing to hold back: one client, no data-parallel ranks."""
        return contextlib.nullcontext()

    def sync_from_main(self) -> None:
        """Nothing to share: one client, no data-parallel ranks."""

    def load_state(self, folder: Path) -> None:
        """A new training client from the saved weights and optimizer state."""
        record = json.loads((Path(folder) / STATE_FILE).read_text())
        self.training_client = self.service.create_training_client_from_state_with_optimizer(
            record["state_path"]
        ).result()
        self.steps = int(record["steps"])
        self.resumed = True

    def save_adapter(self, folder: Path) -> Path:
        """Export the weights (`save_weights_external`) and download them into a PEFT folder."""
        import httpx

        name = f"adapter-{self.steps:06d}-{uuid.uuid4().hex[:8]}"  # names must be unique within a training run
        export = self.training_client.save_weights_external(name).result().path
        self.last_export = export
        urls = self.service.create_rest_client().get_external_weights_urls(export).result().urls
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        root = folder.resolve()
        with httpx.Client(timeout=120, follow_redirects=True) as http:
            for name, url in sorted(urls.items()):
                dest = (folder / name).resolve()
                if not dest.is_relative_to(root):
                    raise ProviderError(f"tinker export {export} holds an unsafe file path: {name!r}")
                dest.parent.mkdir(parents=True, exist_ok=True)
                with http.stream("GET", url) as response:
                    response.raise_for_status()
                    with open(dest, "wb") as f:
                        for chunk in response.iter_bytes(1 << 20):
                            f.write(chunk)
        missing = [f for f in ADAPTER_FILES if not (folder / f).is_file()]
        if missing:
            got = ", ".join(sorted(urls)) or "nothing"
            raise ProviderError(f"tinker export {export} has no {missing[0]}; it holds: {got}")
        return folder

    def sampler(self, batch_size: int = 8) -> Sampler:
        """A `TinkerSampler` over a snapshot of the current weights (`batch_size` is the local backend's knob)."""
        from charlab.generation.tinker_sampler import TinkerSampler

        snapshot = self.training_client.save_weights_and_get_sampling_client().result()
        return TinkerSampler(snapshot, self.tokenizer, self.model_name, max_concurrency=self.max_concurrency)

    def close(self, status: str = "success") -> None:
        """Finish the Tinker session, telling the service how the work ended (success | errored | interrupted)."""
        close = getattr(self.service, "close", None)
        if close is not None:
            try:
                result = close(status)
                if hasattr(result, "result"):
                    result.result(timeout=30)
            except Exception as err:  # closing is best effort: the session expires anyway
                log.warning("tinker: closing the session failed (%s)", err)
