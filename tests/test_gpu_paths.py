"""What a GPU node needs of in-process training, checked on this CPU: memory handed back, per-step peaks, bf16.

* After a training stage nothing holds the model, its adapter or the optimizer state (a vLLM server started next
  in the same process needs the accelerator's memory); `LocalBackend.close` also empties the CUDA cache where
  CUDA is present (not reachable on this machine).
* Each stage reports its own peak memory, not the largest so far in the process (a pipeline runs in-process).
* The fused LoRA kernel runs for a bf16 model whose adapter PEFT keeps in float32 (it used to always fall back).
"""

from __future__ import annotations

import weakref
from pathlib import Path
from typing import Any

import pytest
import torch

from charlab.schemas import LoraConfig
from charlab.training import kernels
from charlab.training.backend import TokenSequence
from charlab.training.local import LocalBackend
from tests.test_dpo_stage import overrides, write_pairs

TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def record_backends(monkeypatch: pytest.MonkeyPatch, refs: dict[str, weakref.ref]) -> None:
    """Every `LocalBackend` made from now on leaves weak references to its model, base, optimizer and adapter."""
    init = LocalBackend.__init__

    def recording_init(self: LocalBackend, *args: Any, **kwargs: Any) -> None:
        init(self, *args, **kwargs)
        refs.update(model=weakref.ref(self.model), base=weakref.ref(self._hf), optimizer=weakref.ref(self.optimizer),
                    adapter_weight=weakref.ref(self.trainable[0]))  # fmt: skip

    monkeypatch.setattr(LocalBackend, "__init__", recording_init)


@pytest.mark.integration
def test_close_releases_the_model_adapter_and_optimizer_while_the_backend_is_still_referenced(
    tiny_model, cache_dir, monkeypatch
) -> None:
    """A caller (a traceback, the Studio, a notebook) may still hold the backend: `close` must let go of the rest.
    Injected bug this catches: `close` keeping `self.trainable` (the adapter weights and their gradients)."""
    refs: dict[str, weakref.ref] = {}
    record_backends(monkeypatch, refs)
    backend = LocalBackend.create(tiny_model, LoraConfig(rank=4, alpha=8, dropout=0.0, target_modules=TARGETS),
                                  cache_dir, device="cpu")  # fmt: skip
    backend.close()
    alive = [name for name, ref in refs.items() if ref() is not None]
    assert backend is not None and alive == [], f"still referenced after close(): {alive}"


@pytest.mark.integration
def test_a_training_stage_leaves_no_model_adapter_or_optimizer_alive(run_stage, tmp_path, monkeypatch) -> None:
    """Right after `stage=dpo` returns (no garbage collection of our own: the model's modules hold reference
    cycles, so only a collection frees them) nothing of the training is left for a vLLM server to compete with.
    Injected bug this catches: `LocalBackend.close` without its `gc.collect()`, or anything (a cache, the
    tracker) keeping the backend."""
    refs: dict[str, weakref.ref] = {}
    record_backends(monkeypatch, refs)
    pairs = write_pairs(tmp_path / "pairs.jsonl", n=12)
    _, run_dir = run_stage(overrides(pairs, "stage.max_steps=2"), name="dpo")
    assert (run_dir / "adapter" / "adapter_config.json").is_file() and set(refs) == {"model", "base", "optimizer",
                                                                                     "adapter_weight"}  # fmt: skip
    alive = [name for name, ref in refs.items() if ref() is not None]
    assert alive == [], f"still referenced after the stage: {alive}"


@pytest.mark.unit
def test_each_window_reports_its_own_peak_and_the_enclosing_one_all_of_them() -> None:
    """Injected bug this catches: no reset between in-process steps (each step would report the pipeline's peak
    so far: the second step here would show the first one's 400 MB)."""
    from charlab.memory import memory_window

    if not Path("/proc/self/clear_refs").exists():
        pytest.skip("resetting the peak resident memory needs Linux's /proc/self/clear_refs")
    with memory_window() as pipeline:
        with memory_window() as first:
            big = torch.ones(100 * 1024 * 1024, dtype=torch.float32)  # 400 MB, touched
            big += 1
            del big
            first_peak = first()["cpu_rss_gb"]
        with memory_window() as second:
            small = torch.ones(1024, dtype=torch.float32)
            del small
            second_peak = second()["cpu_rss_gb"]
        whole = pipeline()["cpu_rss_gb"]
    assert first_peak - second_peak > 0.3, (first_peak, second_peak)
    assert whole >= first_peak


@pytest.mark.integration
def test_the_fused_lora_kernel_runs_in_bf16_with_float32_adapter_weights(tiny_model, cache_dir, monkeypatch):
    """A bf16 model (what a GPU trains in) whose LoRA weights PEFT keeps in float32: the fused kernel is taken
    (it used to fall back to PEFT's module on the dtype mismatch), and it gives PEFT's loss and gradients.
    Injected bug this catches: the old dtype check (`x.dtype != a.dtype`) -> no call of `LoraLinear`."""
    calls = []
    apply = kernels.LoraLinear.apply
    monkeypatch.setattr(kernels.LoraLinear, "apply", lambda *args: calls.append(1) or apply(*args))
    lora = LoraConfig(rank=8, alpha=16, dropout=0.0, target_modules=TARGETS)
    seq = TokenSequence(tuple(range(5, 29)), (0,) * 8 + (1,) * 16)

    def loss_and_grads(fused: bool) -> tuple[float, dict[str, torch.Tensor]]:
        backend = LocalBackend.create(tiny_model, lora, cache_dir, device="cpu", dtype="bfloat16", seed=0)
        assert backend._dtype == torch.bfloat16 and backend.trainable[0].dtype == torch.float32
        if not fused:
            kernels.unfuse_lora(backend.model)
        with torch.no_grad():  # a non-zero adapter: B's init is zero
            for i, param in enumerate(backend.trainable):
                param.copy_(0.05 * torch.randn(param.shape, generator=torch.Generator().manual_seed(i)))

        def loss_fn(batch: Any, logprobs: list[torch.Tensor]) -> tuple[torch.Tensor, dict[str, float]]:
            loss = -(logprobs[0] * torch.tensor(batch[0].loss_mask[1:])).sum()
            return loss, {"loss": float(loss.detach())}

        calls.clear()  # creation probes the fast paths with a forward or two
        metrics = backend.forward_backward([seq], loss_fn).result()
        grads = {n: p.grad.clone() for n, p in backend.model.named_parameters() if p.requires_grad}
        backend.close()
        return metrics["loss"], grads

    fused_loss, fused_grads = loss_and_grads(fused=True)
    lora_modules = 2 * len(TARGETS)  # the tiny model's 2 layers, every linear
    assert len(calls) == lora_modules, f"LoraLinear ran {len(calls)} times, want {lora_modules}"
    assert all(g.dtype == torch.float32 for g in fused_grads.values())
    peft_loss, peft_grads = loss_and_grads(fused=False)
    assert calls == [] and fused_loss == pytest.approx(peft_loss, rel=2e-2)
    for name, grad in peft_grads.items():  # bf16 products: agreement to bf16 precision, direction exact
        cosine = torch.nn.functional.cosine_similarity(grad.flatten(), fused_grads[name].flatten(), dim=0)
        assert cosine > 0.99, (name, float(cosine))

