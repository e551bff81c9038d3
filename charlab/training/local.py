"""The local training backend: transformers + PEFT LoRA on this machine (fp32 on CPU, bf16 on GPU).

    backend = LocalBackend.create(model_cfg, lora_cfg, cache_dir, device="auto", seed=0)
    backend.forward_backward(batch, loss_fn).result(); backend.optim_step(AdamParams(1e-4)).result()
    backend.save_adapter(run_dir / "adapter")

Speed and memory choices:

* one forward per batch: callers put related sequences (DPO's chosen and rejected) in the same batch;
* log-probabilities only where the loss mask is set: the decoder runs once, then the output head runs on the
  trained positions alone, in row chunks that are recomputed in backward (never a [batch, length, vocab]
  tensor of logits, which for a 49k vocabulary is gigabytes);
* fused kernels (`charlab.training.kernels`): each LoRA linear is one matmul plus one accumulating matmul
  (no separate scale-and-add passes), and the head's backward turns the recomputed logits into the gradient
  in place;
* the reference model is this model with the adapter disabled (no second copy in memory);
* neighbours that share a prompt (chosen and rejected) share one row: the prompt is computed once and the
  shorter reply is not padded (`charlab.training.rows`); other sequences are right-padded only to their own
  longest member (callers group by length) and need no attention mask.

At creation short probes are scored both ways (the fast paths above vs the model's own `logits` on each sequence
alone); where they disagree (an architecture that scales or caps its logits, or ignores position ids), the
backend falls back to the plain path.
`init_adapter` merges an earlier adapter into the base weights before the new LoRA is added (SFT starts from
the DPO model this way).
"""

from __future__ import annotations

import gc
import json
import logging
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional

from charlab import distributed
from charlab.errors import ConfigError
from charlab.memory import release_accelerator_memory
from charlab.training import rows
from charlab.training.backend import AdamParams, LossFn, TokenSequence, done
from charlab.training.local_ddp import to_cpu, wrap_ddp
from charlab.training.local_probes import fast_path_agrees
from charlab.training.lora import resolve_target_modules

if TYPE_CHECKING:  # pragma: no cover
    import torch

    from charlab.generation.base import Sampler
    from charlab.schemas import LoraConfig, ModelConfig

log = logging.getLogger("charlab")
LOGIT_BYTES_PER_CHUNK = 1 << 26  # 64 MiB of fp32 logits per output-head chunk
STATE_WEIGHTS, STATE_OPTIMIZER = "adapter_state.safetensors", "optimizer.pt"


class LocalBackend:
    """A PEFT LoRA model, its AdamW optimizer and the Tinker-shaped training calls (see module docstring)."""

    supports_packing = True  # honours TokenSequence.positions (packed rows)
    last_export: Optional[str] = None  # nothing is exported remotely

    def __init__(
        self,
        model: Any,
        tokenizer: Any,
        model_name: str,
        device: str,
        base_name_or_path: str = "",
        max_forward_tokens: int = 8192,
    ):
        import torch

        from charlab.training import kernels

        self.model = model
        self.tokenizer = tokenizer
        self.model_name = model_name
        self.device = device
        self.base_name_or_path = base_name_or_path
        self.max_forward_tokens = max_forward_tokens
        self.steps = 0
        self._hf = model.get_base_model()
        self._body = self._hf.base_model  # the decoder stack (LlamaModel, Qwen2Model, ...)
        self._head = self._hf.get_output_embeddings()
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        self._pad_id = int(pad or 0)
        vocab = int(self._head.weight.shape[0])
        self._chunk_rows = max(64, LOGIT_BYTES_PER_CHUNK // (4 * vocab))
        self.trainable = [p for p in model.parameters() if p.requires_grad]
        self._dtype = next(self._head.parameters()).dtype
        # shared-prefix rows need a 4D mask (eager) or the branched attention (SDPA); fused flash kernels take neither
        self.branched_attention = kernels.use_branched_attention(self._hf)
        self.share_prefixes = self.branched_attention or self._hf.config._attn_implementation == "eager"
        self.trained_only = True  # the output head on trained positions only (False: on every position, for ablations)
        # fused kernels (`charlab.training.kernels`): LoRA linears and the head's backward; False: PEFT's / checkpoint
        self.fused_head = getattr(self._head, "bias", None) is None
        self.fused_lora = kernels.fuse_lora(model) > 0
        self.optimizer = torch.optim.AdamW(self.trainable, lr=0.0)
        self._ddp: Any = None
        self.fast_logprobs = fast_path_agrees(self)
        if distributed.active():
            self._ddp = wrap_ddp(self)

    # ---- construction -------------------------------------------------------------------------------------
    @classmethod
    def create(
        cls,
        model_cfg: ModelConfig,
        lora_cfg: LoraConfig,
        cache_dir: Path,
        device: str = "auto",
        dtype: str = "auto",
        seed: int = 0,
        init_adapter: Optional[str] = None,
        gradient_checkpointing: bool = False,
        num_threads: Optional[int] = None,
        attn_implementation: Optional[str] = None,
    ) -> LocalBackend:
        """Load the base model, merge `init_adapter` (if any), add a fresh LoRA adapter (seeded)."""
        import torch
        from peft import LoraConfig as PeftLoraConfig
        from peft import PeftModel, get_peft_model

        from charlab.models import load_causal_lm, load_tokenizer, resolve_device

        if num_threads:
            torch.set_num_threads(int(num_threads))
        device = distributed.rank_device(resolve_device(device))
        tokenizer = load_tokenizer(model_cfg, cache_dir)
        base = load_causal_lm(
            model_cfg, cache_dir, device=device, dtype=dtype, attn_implementation=attn_implementation
        )
        if init_adapter:
            if not (Path(init_adapter) / "adapter_config.json").is_file():
                raise ConfigError(f"init_adapter '{init_adapter}' is not a PEFT folder (no adapter_config.json)")
            with warnings.catch_warnings():  # PEFT still asks transformers for a renamed attribute
                warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
                base = PeftModel.from_pretrained(base, str(init_adapter)).merge_and_unload()
        targets = resolve_target_modules(base, list(lora_cfg.target_modules), model_cfg.name)
        if gradient_checkpointing and hasattr(base, "activation_checkpointing_enable"):  # transformers >= 5.2x
            base.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
        elif gradient_checkpointing:
            base.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        base.config.use_cache = False
        torch.manual_seed(seed)  # the LoRA A init and the dropout stream
        peft_cfg = PeftLoraConfig(
            r=int(lora_cfg.rank),
            lora_alpha=float(lora_cfg.alpha),
            lora_dropout=float(lora_cfg.dropout),
            target_modules=targets,
            bias="none",
            task_type="CAUSAL_LM",
        )
        with warnings.catch_warnings():  # PEFT still asks transformers for a renamed attribute
            warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
            model = get_peft_model(base, peft_cfg)
        return cls(model, tokenizer, model_cfg.name, device, base_name_or_path=model_cfg.name_or_path)

    def num_trainable(self) -> int:
        return sum(p.numel() for p in self.trainable)

    # ---- log-probabilities ----------------------------------------------------------------------------------
    def _chunk_logprobs(self, hidden: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        import torch

        logits = self._head(hidden).float()
        cap = getattr(self._hf.config, "final_logit_softcapping", None)
        if cap:
            logits = torch.tanh(logits / cap) * cap
        return logits.gather(-1, targets[:, None]).squeeze(-1) - torch.logsumexp(logits, dim=-1)

    def _head_logprobs(self, hidden: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        import torch
        from torch.utils.checkpoint import checkpoint

        from charlab.training import kernels

        fused = self.fused_head and not getattr(self._hf.config, "final_logit_softcapping", None)
        parts = []
        for start in range(0, hidden.shape[0], self._chunk_rows):
            h, t = hidden[start : start + self._chunk_rows], targets[start : start + self._chunk_rows]
            if torch.is_grad_enabled() and fused:  # logits recomputed in backward, turned into the gradient in place
                parts.append(kernels.head_logprobs(h, self._head.weight, t))
            elif torch.is_grad_enabled():  # recompute this chunk's logits in backward instead of keeping them
                parts.append(checkpoint(self._chunk_logprobs, h, t, use_reentrant=False))
            else:
                parts.append(self._chunk_logprobs(h, t))
        return torch.cat(parts) if parts else hidden.new_zeros(0, dtype=torch.float32)

    def _forward(self, batch: Sequence[TokenSequence]) -> list[torch.Tensor]:
        """Per-target log-probabilities (differentiable when grad is enabled), one forward for the batch.

        `charlab.training.rows` lays the batch out: neighbours with a shared prompt share a row, others are
        right-padded; packed rows keep their positions. Only weighted targets are scored on the fast path.
        Under torchrun a training forward goes through `DistributedDataParallel`, which averages the LoRA
        gradients over the ranks in backward.
        """
        import torch

        lay = rows.layout(batch, self._pad_id, self.share_prefixes, mask_dtype=self._dtype)
        ids = lay.ids.to(self.device)
        positions = lay.positions.to(self.device) if lay.positions is not None else None
        mask = lay.mask.to(self.device) if lay.mask is not None else None
        all_targets = not (self.fast_logprobs and self.trained_only)
        seq_ids, ts, row_ids, cols, tokens = rows.targets(batch, lay, all_targets=all_targets)
        row_index = torch.tensor(row_ids, device=self.device)
        col_index = torch.tensor(cols, device=self.device)
        target = torch.tensor(tokens, dtype=torch.long, device=self.device)
        score = self._ddp if self._ddp is not None and torch.is_grad_enabled() else self.score
        spans = lay.spans if mask is not None and self.branched_attention else None  # else the dense 4D mask
        picked = score(ids, mask, positions, row_index, col_index, target, spans)
        starts = [0]
        for seq in batch:
            starts.append(starts[-1] + len(seq) - 1)
        flat_index = torch.tensor([starts[i] + t for i, t in zip(seq_ids, ts)], dtype=torch.long, device=self.device)
        flat = torch.zeros(starts[-1], dtype=torch.float32, device=self.device).index_put((flat_index,), picked)
        return [flat[starts[i] : starts[i + 1]] for i in range(len(batch))]

    def score(
        self,
        ids: torch.Tensor,
        mask: Optional[torch.Tensor],
        positions: Optional[torch.Tensor],
        row_index: torch.Tensor,
        col_index: torch.Tensor,
        target: torch.Tensor,
        spans: Optional[list[list[tuple[int, int]]]] = None,
    ) -> torch.Tensor:
        """Log-probabilities of `target` at (row, column) positions of the laid-out batch (`spans`: its rows'
        prompt and replies, for the branched attention)."""
        import torch

        from charlab.training import kernels

        index = (row_index, col_index)
        extra = {kernels.BRANCHES: spans} if spans is not None else {}
        if self.fast_logprobs:
            hidden = self._body(input_ids=ids, attention_mask=mask, position_ids=positions, use_cache=False, **extra)
            return self._head_logprobs(hidden.last_hidden_state[index], target)
        out = self.model(input_ids=ids, attention_mask=mask, position_ids=positions, use_cache=False, **extra)
        logits = out.logits
        return torch.log_softmax(logits[index].float(), dim=-1).gather(-1, target[:, None]).squeeze(-1)

    def logprobs(self, batch: Sequence[TokenSequence], reference: bool = False) -> list[torch.Tensor]:
        """Per-target log-probabilities without gradient, in token-budgeted chunks; `reference`: adapter off."""
        import contextlib

        import torch

        out: list[Optional[torch.Tensor]] = [None] * len(batch)
        self.model.eval()
        context = self.model.disable_adapter() if reference else contextlib.nullcontext()
        with torch.inference_mode(), context:
            # rows (sequences sharing a prompt stay together), longest first, in forwards of at most
            # max_forward_tokens padded tokens and little padding
            groups = sorted(rows.group(batch, self.share_prefixes), key=lambda g: -rows.row_length(batch, g))
            widths = [rows.row_length(batch, g) for g in groups]
            for chunk in rows.forward_chunks(widths, self.max_forward_tokens):
                members = [i for g in groups[chunk.start : chunk.stop] for i in g]
                for i, lp in zip(members, self._forward([batch[i] for i in members])):
                    out[i] = lp.detach().cpu()
        return out  # type: ignore[return-value]

    # ---- training -------------------------------------------------------------------------------------------
    def forward_backward(self, batch: list[TokenSequence], loss_fn: LossFn) -> Any:
        """One forward over the whole batch, `loss_fn`, backward (gradients accumulate until `optim_step`)."""
        self.model.train()
        logprobs = self._forward(batch)
        loss, metrics = loss_fn(batch, logprobs)
        loss.backward()
        return done({k: float(v) for k, v in metrics.items()})

    def remote_artifacts(self) -> dict[str, str]:
        """None: the weights are the local folders `save_state` / `save_adapter` write."""
        return {}

    def no_sync(self) -> Any:
        """A context in which `forward_backward` accumulates gradients without DDP's all-reduce (all but the last
        micro-batch of a step; the last one's backward then reduces the sum). One process: a no-op."""
        import contextlib

        return self._ddp.no_sync() if self._ddp is not None else contextlib.nullcontext()

    def optim_step(self, params: AdamParams) -> Any:
        """Clip, step AdamW with this step's hyperparameters, clear gradients."""
        import torch

        for group in self.optimizer.param_groups:
            group.update(
                lr=params.learning_rate,
                betas=(params.beta1, params.beta2),
                eps=params.eps,
                weight_decay=params.weight_decay,
            )
        max_norm = params.grad_clip_norm if params.grad_clip_norm > 0 else float("inf")
        norm = torch.nn.utils.clip_grad_norm_(self.trainable, max_norm)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.steps += 1
        return done({"grad_norm": float(norm)})

    # ---- state ----------------------------------------------------------------------------------------------
    def save_state(self, folder: Path) -> str:
        """Adapter weights (safetensors), optimizer state, step count and RNG state into `folder`."""
        import torch
        from peft import get_peft_model_state_dict
        from safetensors.torch import save_file

        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        weights = {k: v.detach().contiguous().cpu() for k, v in get_peft_model_state_dict(self.model).items()}
        save_file(weights, str(folder / STATE_WEIGHTS))
        state = {"optimizer": self.optimizer.state_dict(), "steps": self.steps, "rng": torch.get_rng_state()}
        if torch.cuda.is_available():
            state["cuda_rng"] = torch.cuda.get_rng_state_all()
        torch.save(state, folder / STATE_OPTIMIZER)
        return str(folder)

    def load_state(self, folder: Path) -> None:
        """Restore adapter weights, optimizer state, step count and RNG state saved by `save_state`."""
        import torch
        from peft import set_peft_model_state_dict
        from safetensors.torch import load_file

        folder = Path(folder)
        weights = load_file(str(folder / STATE_WEIGHTS), device=str(self.device))
        result = set_peft_model_state_dict(self.model, weights)
        if getattr(result, "unexpected_keys", None):
            unexpected = result.unexpected_keys[0]
            raise ConfigError(f"{folder}: checkpoint does not fit this LoRA shape (unexpected {unexpected})")
        state = torch.load(folder / STATE_OPTIMIZER, map_location=self.device, weights_only=True)
        self.optimizer.load_state_dict(state["optimizer"])
        self.steps = int(state["steps"])
        torch.set_rng_state(state["rng"].cpu())
        if "cuda_rng" in state and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["cuda_rng"])

    def sync_from_main(self) -> None:
        """Under torchrun, after rank 0 resumed: every rank takes its adapter weights, optimizer state and step."""
        import torch

        distributed.broadcast_tensors(self.trainable)
        state = self.optimizer.state_dict() if distributed.is_main() else None
        state = distributed.broadcast_object(to_cpu(state))  # CPU tensors: each rank moves them to its device
        self.optimizer.load_state_dict(state)
        self.steps = int(distributed.broadcast_object(self.steps))
        if self.device.startswith("cuda"):
            torch.cuda.synchronize(self.device)

    def save_adapter(self, folder: Path) -> Path:
        """A standard PEFT folder (what `PeftModel.from_pretrained` and vLLM `--lora-modules` load)."""
        folder = Path(folder)
        self.model.save_pretrained(str(folder))
        config_path = folder / "adapter_config.json"
        config = json.loads(config_path.read_text())
        if self.base_name_or_path:  # the hub id, not this machine's cache folder
            config["base_model_name_or_path"] = self.base_name_or_path
        config_path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
        return folder

    def sampler(self, batch_size: int = 8) -> Sampler:
        """`HFSampler` over this model with the adapter as trained so far."""
        from charlab.generation.hf import HFSampler

        self.model.eval()
        return HFSampler(self.model, self.tokenizer, self.model_name, batch_size=batch_size, device=self.device)

    def close(self, status: str = "success") -> None:
        """Drop every reference to the model, its adapter, gradients and optimizer state, and give the accelerator's
        cached blocks back to the driver: a vLLM server started next (another process) sees that memory free.
        (`status` is for remote backends.)"""
        self.model = self._hf = self._body = self._head = self._ddp = None  # type: ignore[assignment]
        self.optimizer = None  # type: ignore[assignment]
        self.trainable = []
        gc.collect()
        release_accelerator_memory()

    def __repr__(self) -> str:
        return f"LocalBackend({self.model_name}, {self.device})"
