"""Fused autograd functions for the local backend: a LoRA linear layer and the log-probability head.

Both compute exactly what the plain modules compute, with fewer passes over large tensors:

* `LoraLinear`: `y = x W^T + s (x A^T) B^T` as one matmul plus one accumulating matmul (`addmm`), and a
  backward that accumulates `dx` the same way. PEFT's module runs a separate scale and add over the full
  [tokens, out] output and keeps more intermediates; on a CPU those elementwise passes are ~10% of a step.
  `fuse_lora(model)` routes every plain PEFT LoRA linear (one active adapter, no dropout, no DoRA) through it
  and leaves anything else to PEFT; disabling the adapter (the DPO reference) still runs the base layer. A bf16
  model with PEFT's float32 adapter weights takes it too (the product runs in bf16, the adapter's gradients
  come back in float32).
* `head_logprobs`: `log softmax(h W^T)[target]` for the trained positions, whose backward recomputes the
  chunk's logits once and turns them into the gradient in place (softmax minus one-hot), never keeping a
  [rows, vocabulary] tensor between forward and backward.
* `branched_attention`: attention for rows that hold a shared prompt and then two replies
  (`charlab.training.rows`). With one dense masked attention over the row, every reply token would also be
  scored against the other reply's tokens (masked out, but computed); here the prompt and the first reply are
  one causal attention, and each further reply attends to the prompt and to itself only. `use_branched_attention`
  installs it as the model's attention (plain SDPA whenever a forward passes no row spans).
"""

from __future__ import annotations

import functools
import types
from typing import Any, Optional

import torch


class LoraLinear(torch.autograd.Function):
    """`x W^T (+ bias) + scaling * (x A^T) B^T`, with gradients for x, A and B (W and bias are frozen).

    The matmuls run in the activations' dtype. A and B may be kept in another (PEFT keeps adapter weights in
    float32 under a bf16 model): they are cast for the product (two [rank, features] tensors, never the
    activations) and their gradients come back in their own dtype, as under autocast.
    """

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor], a: torch.Tensor,
                b: torch.Tensor, scaling: float) -> torch.Tensor:  # fmt: skip
        flat = x.reshape(-1, x.shape[-1])
        a_c = a.to(x.dtype)
        xa = flat @ a_c.t()
        b_scaled = (b * scaling).to(x.dtype)
        y = torch.addmm(bias, flat, weight.t()) if bias is not None else flat @ weight.t()
        y.addmm_(xa, b_scaled.t())
        ctx.save_for_backward(flat, xa, weight, a_c, b_scaled)
        ctx.scaling, ctx.shape, ctx.param_dtypes = scaling, x.shape, (a.dtype, b.dtype)
        return y.view(*x.shape[:-1], weight.shape[0])

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[Optional[torch.Tensor], ...]:
        flat, xa, weight, a, b_scaled = ctx.saved_tensors
        g = grad.reshape(-1, grad.shape[-1])
        g_xa = g @ b_scaled
        grad_x = None
        if ctx.needs_input_grad[0]:
            grad_x = (g @ weight).addmm_(g_xa, a).view(ctx.shape)
        grad_a = (g_xa.t() @ flat).to(ctx.param_dtypes[0]) if ctx.needs_input_grad[3] else None
        grad_b = (g.t() @ xa).mul_(ctx.scaling).to(ctx.param_dtypes[1]) if ctx.needs_input_grad[4] else None
        return grad_x, None, None, grad_a, grad_b, None


def _fused_forward(self: Any, x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
    """A PEFT `lora.Linear.forward` that takes the fused path when the module is plain LoRA."""
    active = self.active_adapters
    if self.disable_adapters or self.merged or args or kwargs or len(active) != 1 or active[0] not in self.lora_A:
        return self._peft_forward(x, *args, **kwargs)
    name = active[0]
    base = self.get_base_layer()
    a, b = self.lora_A[name].weight, self.lora_B[name].weight
    if x.dtype != base.weight.dtype or base.bias is not None and base.bias.dtype != x.dtype:
        return self._peft_forward(x, *args, **kwargs)  # e.g. an fp32 input to a bf16 layer: PEFT casts it
    return LoraLinear.apply(x, base.weight, base.bias, a, b, float(self.scaling[name]))


def fuse_lora(model: torch.nn.Module) -> int:
    """Route every plain LoRA linear of a PEFT model through `LoraLinear`; returns how many modules now are."""
    from peft.tuners.lora.layer import Linear

    fused = 0
    for module in model.modules():
        if type(module) is not Linear or getattr(module, "_peft_forward", None) is not None:
            continue
        plain = all(isinstance(d, torch.nn.Identity) for d in module.lora_dropout.values())
        plain = plain and not module.lora_variant and not getattr(module, "fan_in_fan_out", False)
        if plain:
            module._peft_forward = module.forward
            module.forward = types.MethodType(_fused_forward, module)
            fused += 1
    return fused


def unfuse_lora(model: torch.nn.Module) -> None:
    """Back to PEFT's own forward everywhere (for ablations and comparisons)."""
    for module in model.modules():
        original = module.__dict__.pop("_peft_forward", None)
        if original is not None:
            module.__dict__.pop("forward", None)


class _HeadLogprobs(torch.autograd.Function):
    """`log softmax(hidden W^T)[targets]` in float32, never keeping a [rows, vocabulary] tensor for backward.

    With a frozen head (LoRA never trains it) the gradient for `hidden` is `grad * (W[target] - softmax @ W)`,
    and `softmax @ W` does not depend on `grad`: the forward computes it from the logits it already has (one
    [rows, vocabulary] x [vocabulary, hidden] product, which a backward would need anyway) and keeps only that
    [rows, hidden] direction, so backward is one multiply and the logits are never computed twice. A head that
    trains keeps the other way: the logits are recomputed in backward.
    """

    @staticmethod
    def forward(ctx: Any, hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        logits = (hidden @ weight.t()).float()
        lse = torch.logsumexp(logits, dim=-1)
        picked = logits.gather(-1, targets[:, None]).squeeze(-1)
        ctx.frozen_head, ctx.hidden_dtype = not weight.requires_grad, hidden.dtype
        if ctx.frozen_head:
            expected = logits.sub_(lse[:, None]).exp_().to(weight.dtype) @ weight  # softmax @ W
            ctx.save_for_backward(weight[targets].float().sub_(expected.float()))
        else:
            ctx.save_for_backward(hidden, weight, targets, lse)
        return picked - lse

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[Optional[torch.Tensor], ...]:
        if ctx.frozen_head:
            (direction,) = ctx.saved_tensors
            return (grad[:, None] * direction).to(ctx.hidden_dtype), None, None
        hidden, weight, targets, lse = ctx.saved_tensors
        # d(picked - lse)/dlogits = onehot(target) - softmax; times the incoming gradient, built in place
        dlogits = (hidden @ weight.t()).float().sub_(lse[:, None]).exp_().mul_(-grad[:, None])
        dlogits.scatter_add_(1, targets[:, None], grad[:, None].to(dlogits.dtype))
        dlogits = dlogits.to(hidden.dtype)
        grad_hidden = dlogits @ weight if ctx.needs_input_grad[0] else None
        grad_weight = dlogits.t() @ hidden if ctx.needs_input_grad[1] else None
        return grad_hidden, grad_weight, None


def head_logprobs(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Per-row log-probability of `targets` under the output head `weight` ([vocabulary, hidden])."""
    return _HeadLogprobs.apply(hidden, weight, targets)


BRANCHES = "charlab_branches"  # the forward keyword that carries `Layout.spans` down to the attention layers
ATTENTION = "charlab_sdpa"


@functools.lru_cache(maxsize=64)
def _reply_mask(prefix: int, length: int, device: str) -> torch.Tensor:
    """A further reply's attention mask: every prompt position, then itself causally (the same for every layer)."""
    own = torch.ones(length, length, dtype=torch.bool, device=device).tril()
    return torch.cat([own.new_ones(length, prefix), own], dim=1)


def branched_attention(module: Any, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                       attention_mask: Optional[torch.Tensor], dropout: float = 0.0, scaling: Optional[float] = None,
                       **kwargs: Any) -> tuple[torch.Tensor, None]:  # fmt: skip
    """Transformers' attention-function signature; rows as `kwargs[BRANCHES]` describes (see the docstring).

    Each part's output goes straight into the [positions, heads, dim] layout the layer expects and is joined once
    per row (no concatenation along a strided axis and no transposed copy of the whole result at the end);
    grouped-query heads are shared inside SDPA (`enable_gqa`: keys and values are not repeated); the reply masks
    are built once for all layers.
    """
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    spans = kwargs.pop(BRANCHES, None)
    if spans is None:
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout, scaling, **kwargs)
    sdpa = functools.partial(torch.nn.functional.scaled_dot_product_attention, dropout_p=dropout, scale=scaling,
                             enable_gqa=key.shape[1] != query.shape[1])  # fmt: skip
    _, heads, width, dim = query.shape
    rows = []
    for r, row in enumerate(spans):
        q, k, v = query[r : r + 1], key[r : r + 1], value[r : r + 1]
        first = row[1][1] if len(row) > 1 else row[0][1]  # the prompt and the first reply: plain causal
        parts = [sdpa(q[:, :, :first], k[:, :, :first], v[:, :, :first], is_causal=True)[0].transpose(0, 1)]
        prefix = row[0][1]
        for start, end in row[2:]:  # a further reply: the prompt, then itself causally
            keys = torch.cat([k[:, :, :prefix], k[:, :, start:end]], dim=2)
            values = torch.cat([v[:, :, :prefix], v[:, :, start:end]], dim=2)
            allowed = _reply_mask(prefix, end - start, str(q.device))
            parts.append(sdpa(q[:, :, start:end], keys, values, attn_mask=allowed)[0].transpose(0, 1))
        end = row[-1][1]
        if end < width:  # padding: never read by a real token
            parts.append(q.new_zeros(width - end, heads, dim))
        rows.append(torch.cat(parts, dim=0))
    return torch.stack(rows), None


def use_branched_attention(model: torch.nn.Module) -> bool:
    """Route a model's SDPA attention through `branched_attention`; False if it does not use SDPA."""
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

    config = model.config
    if getattr(config, "_attn_implementation", None) not in ("sdpa", ATTENTION):
        return False
    AttentionInterface.register(ATTENTION, branched_attention)
    AttentionMaskInterface.register(ATTENTION, sdpa_mask)  # masks built as for SDPA
    config._attn_implementation = ATTENTION
    return True
