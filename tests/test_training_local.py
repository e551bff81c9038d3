"""The local backend and DPO on the real tiny model: masks and padding, learning, reload, resume, accumulation."""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import pytest
import torch

from charlab.chat_format import ChatFormat
from charlab.data.records import DpoExample
from charlab.schemas import LoraConfig
from charlab.training.backend import TokenSequence
from charlab.training.dpo import DpoAlgorithm, encode_pairs, interleave, split_eval, split_pairs
from charlab.training.local import LocalBackend
from charlab.training.loop import LoopConfig, Trainer, find_checkpoints

pytestmark = pytest.mark.integration
ALL_LINEAR = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
PLACES = ["harbor", "river", "castle", "garden", "library", "ocean", "market", "forest"]
THINGS = ["bread", "weather", "music", "history", "tides", "maps"]
TOPICS = [f"the {thing} of the {place}" for place in PLACES for thing in THINGS]  # 48 distinct topics


def synthetic_pairs(n: int, seed: int = 0) -> list[DpoExample]:
    """A separable preference set: the chosen reply always talks like a pirate, the rejected one never does.

    Every pair has its own topic, so a held-out pair's prompt and replies never occur in training.
    """
    assert n <= len(TOPICS)
    topics = random.Random(seed).sample(TOPICS, n)
    pairs = []
    for i, topic in enumerate(topics):
        pairs.append(
            DpoExample(
                prompt=f"Tell me about {topic}.",
                chosen=f"Arr, matey! {topic} be a fine sight, yo ho!",
                rejected=f"Sure! Here is a short summary about {topic}.",
                id=f"p{i}:0",
            )
        )
    return pairs


def make_backend(tiny_model: Any, cache_dir: Path, seed: int = 0, dropout: float = 0.0, **kw: Any) -> LocalBackend:
    lora = LoraConfig(rank=8, alpha=16, dropout=dropout, target_modules=list(ALL_LINEAR))
    return LocalBackend.create(tiny_model, lora, cache_dir, device="cpu", seed=seed, **kw)


def loop_config(**kw: Any) -> LoopConfig:
    base = dict(epochs=2, batch_size=8, learning_rate=5e-3, warmup_ratio=0.1, max_grad_norm=1.0, seed=0)
    return LoopConfig(**{**base, **kw})


class CountingBackend:
    """The real backend, with a log of which calls ran in which order (reference vs training)."""

    def __init__(self, inner: LocalBackend):
        self.inner, self.calls = inner, []

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def logprobs(self, batch: Any, reference: bool = False) -> Any:
        self.calls.append(("reference" if reference else "policy", len(batch)))
        return self.inner.logprobs(batch, reference=reference)

    def forward_backward(self, batch: Any, loss_fn: Any) -> Any:
        self.calls.append(("forward_backward", len(batch)))
        return self.inner.forward_backward(batch, loss_fn)


@pytest.fixture(scope="module")
def pairs_items(tiny_model: Any, tiny_tokenizer: Any) -> list:
    items, _ = encode_pairs(ChatFormat(tiny_tokenizer), synthetic_pairs(40), max_length=128)
    return items


def test_padding_never_changes_logprobs_and_only_masked_targets_are_scored(tiny_model, cache_dir, tiny_chat) -> None:
    backend = make_backend(tiny_model, cache_dir)
    assert backend.fast_logprobs
    seqs = [
        TokenSequence.from_encoded(tiny_chat.encode_completion([{"role": "user", "content": q}], a))
        for q, a in [
            ("Hi", "Hello there, friend."),
            ("What is the weather like in the harbor today?", "Sunny."),
            ("Bread?", "Flour, salt, yeast and warm water, kneaded for ten minutes."),
        ]
    ]
    assert len({len(s) for s in seqs}) == 3
    with torch.inference_mode():  # one padded forward (`logprobs` would cut rows this uneven apart)
        together = backend._forward(seqs)
    assert all(torch.allclose(a, b, atol=1e-5) for a, b in zip(backend.logprobs(seqs), together))
    for seq, lp in zip(seqs, together):
        alone = backend.logprobs([seq])[0]
        assert lp.shape == (len(seq) - 1,)
        assert torch.allclose(lp, alone, atol=1e-5)
        weights = torch.tensor(seq.target_weights, dtype=torch.bool)
        assert torch.all(lp[~weights] == 0) and torch.all(lp[weights] < 0)
        # the head-only path equals log-softmax of the model's own logits at the trained targets
        ids = torch.tensor([seq.tokens])
        with torch.no_grad():
            logits = backend.model(input_ids=ids).logits[0, :-1]
        full = torch.log_softmax(logits, -1).gather(-1, ids[0, 1:, None]).squeeze(-1)
        assert torch.allclose(lp[weights], full[weights], atol=1e-5)


def test_dpo_lowers_the_loss_raises_held_out_accuracy_and_runs_the_reference_once(
    tiny_model, cache_dir, pairs_items, tmp_path
) -> None:
    """Held-out pairs are about topics never trained on (40 distinct topics), so accuracy on them measures a
    learnt preference, not memorised pairs. Injected bug: `split_pairs` returning training pairs as the held-out
    set -> the disjointness check fails (with 8 repeated topics, the old data could not tell)."""
    backend = CountingBackend(make_backend(tiny_model, cache_dir))
    train, held = split_pairs(pairs_items, 0.25, seed=0)
    texts = {item.index: item.chosen.tokens for item in pairs_items}
    assert len(held) == 10 and not {texts[i.index] for i in train} & {texts[i.index] for i in held}
    algo = DpoAlgorithm(beta=0.1, nll_coef=0.1, cache_dir=tmp_path, model_identity="tiny")
    algo.prepare(backend, train + held)
    before = algo.evaluate(backend, held)
    assert before["accuracy"] == 0.0 and before["margin"] == 0.0  # a fresh LoRA is exactly the reference
    history: list[dict] = []
    trainer = Trainer(
        backend, algo, train, held, loop_config(), tmp_path / "ck", on_metrics=lambda m, s: history.append(m)
    )
    summary = trainer.train()
    steps = [m for m in history if "loss" in m]
    assert len(steps) == trainer.total_steps == 8
    assert steps[-1]["loss"] < steps[0]["loss"] - 0.3
    assert summary.eval["eval/accuracy"] >= 0.9 > before["accuracy"]
    assert summary.eval["eval/dpo_loss"] < before["dpo_loss"] - 0.2
    assert {"accuracy", "margin", "reward_chosen", "reward_rejected", "nll", "lr", "tokens_per_s"} <= set(steps[-1])
    # the reference ran once, before training, over every pair (chosen and rejected), never in the loop
    kinds = [kind for kind, _ in backend.calls]
    first_step = kinds.index("forward_backward")
    assert "reference" not in kinds[first_step:] and algo.reference_calls == 1
    assert sum(n for kind, n in backend.calls if kind == "reference") == 2 * len(pairs_items)
    # a second run over the same data reads the on-disk cache
    again = DpoAlgorithm(beta=0.1, nll_coef=0.1, cache_dir=tmp_path, model_identity="tiny")
    again.prepare(backend, train + held)
    assert again.reference_calls == 0 and torch.equal(again.refs, algo.refs)
    other_model = DpoAlgorithm(beta=0.1, cache_dir=tmp_path, model_identity="another model")
    other_model.prepare(backend, train + held)
    assert other_model.reference_calls == 1


@pytest.mark.filterwarnings("ignore:.*is_gradient_checkpointing:FutureWarning")
def test_saved_adapter_reloads_with_peft_and_gives_identical_logprobs(tiny_model, cache_dir, pairs_items, tmp_path):
    from peft import PeftModel

    from charlab.models import load_causal_lm

    backend = make_backend(tiny_model, cache_dir)
    algo = DpoAlgorithm(beta=0.1, cache_dir=tmp_path, model_identity="tiny")
    Trainer(backend, algo, pairs_items, [], loop_config(epochs=1), tmp_path / "ck").train()
    adapter = backend.save_adapter(tmp_path / "adapter")
    config = json.loads((adapter / "adapter_config.json").read_text())
    assert (adapter / "adapter_model.safetensors").is_file()
    assert config["r"] == 8 and set(config["target_modules"]) == set(ALL_LINEAR)
    assert config["base_model_name_or_path"] == tiny_model.name_or_path
    reloaded = PeftModel.from_pretrained(load_causal_lm(tiny_model, cache_dir), str(adapter)).eval()
    seqs = interleave(pairs_items[:3])
    trained = backend.logprobs(seqs)
    for seq, lp in zip(seqs, trained):
        ids = torch.tensor([seq.tokens])
        with torch.no_grad():
            logits = reloaded(input_ids=ids).logits[0, :-1]
        full = torch.log_softmax(logits, -1).gather(-1, ids[0, 1:, None]).squeeze(-1)
        weights = torch.tensor(seq.target_weights, dtype=torch.bool)
        assert torch.allclose(lp[weights], full[weights], atol=1e-5)
    base = backend.logprobs(seqs, reference=True)
    assert max((a - b).abs().max().item() for a, b in zip(trained, base)) > 1e-2  # training changed something
    # SFT's start: the adapter merged into the base weights, a fresh LoRA on top (so reference = merged model)
    merged = make_backend(tiny_model, cache_dir, init_adapter=str(adapter))
    for a, b in zip(merged.logprobs(seqs, reference=True), trained):
        assert torch.allclose(a, b, atol=1e-4)


class Crash(Exception):
    """Stands in for a killed process."""


def test_a_crashed_run_resumes_to_the_same_final_loss(tiny_model, cache_dir, pairs_items, tmp_path) -> None:
    train, held = split_eval(pairs_items, 0.25, seed=0)
    config = loop_config(save_every=2, keep_checkpoints=2)

    def run(folder: Path, crash_at: int | None = None, resume: bool = False) -> tuple[list[dict], Any]:
        history: list[dict] = []

        def on_metrics(metrics: dict, step: int) -> None:
            history.append({**metrics, "step": step})
            if crash_at is not None and step == crash_at and "loss" in metrics:
                raise Crash

        backend = make_backend(tiny_model, cache_dir, dropout=0.1)  # dropout: the RNG state must resume too
        algo = DpoAlgorithm(beta=0.1, nll_coef=0.1, cache_dir=folder, model_identity="tiny")
        trainer = Trainer(backend, algo, train, held, config, folder / "checkpoints", on_metrics=on_metrics)
        summary = trainer.train(resume_from=folder / "checkpoints" if resume else None)
        return history, summary

    straight, straight_summary = run(tmp_path / "straight")
    with pytest.raises(Crash):
        run(tmp_path / "crashed", crash_at=5)
    assert [p.name for p in find_checkpoints(tmp_path / "crashed" / "checkpoints")] == ["step-000002", "step-000004"]
    resumed, resumed_summary = run(tmp_path / "crashed", resume=True)
    assert resumed_summary.start_step == 4 and [m["step"] for m in resumed if "loss" in m] == [5, 6, 7, 8]
    final = [m for m in straight if "loss" in m][-1]
    assert resumed_summary.train["loss"] == pytest.approx(final["loss"], abs=1e-4)
    assert resumed_summary.eval["eval/loss"] == pytest.approx(straight_summary.eval["eval/loss"], abs=1e-4)
    assert [p.name for p in find_checkpoints(tmp_path / "crashed" / "checkpoints")] == ["step-000006", "step-000008"]


class GradientRecorder(CountingBackend):
    """The real backend, keeping a copy of every LoRA gradient as each optimizer step sees it."""

    def __init__(self, inner: LocalBackend):
        super().__init__(inner)
        self.grads: list[dict[str, torch.Tensor]] = []

    def optim_step(self, params: Any) -> Any:
        self.grads.append(
            {
                n: p.grad.detach().clone() if p.grad is not None else torch.zeros_like(p)
                for n, p in self.inner.model.named_parameters()
                if p.requires_grad
            }
        )
        return self.inner.optim_step(params)


def test_grad_accumulation_and_checkpointing_give_the_same_gradients(tiny_model, cache_dir, pairs_items, tmp_path):
    """The gradients of three steps, compared (not the parameters after one AdamW step: Adam's first update is
    about lr * sign(g), blind to a gradient's scale, and a fresh LoRA's A has no gradient at all).

    Injected bugs: micro-batch losses summed instead of weighted by their share of the step (grad_accum=4 gives
    4x the gradient) -> "accumulated" fails; activation checkpointing without `preserve_rng_state` (the
    recomputed forward draws new LoRA-dropout masks) -> "checkpointed" fails.
    """

    def gradients(name: str, grad_accum: int = 1, **backend_kw: Any) -> list[dict[str, torch.Tensor]]:
        backend = GradientRecorder(make_backend(tiny_model, cache_dir, **backend_kw))
        checkpointing = getattr(backend.model.get_base_model(), "is_activation_checkpointing", None)
        assert bool(checkpointing) == backend_kw.get("gradient_checkpointing", False)
        algo = DpoAlgorithm(beta=0.1, nll_coef=0.1, cache_dir=tmp_path, model_identity="tiny")
        config = loop_config(max_steps=3, grad_accum=grad_accum, max_grad_norm=0.0)
        Trainer(backend, algo, pairs_items, [], config, tmp_path / name).train()
        return backend.grads

    plain, plain_dropout = gradients("plain"), gradients("plain_dropout", dropout=0.1)
    assert len(plain) == 3
    assert all(g.abs().max() > 0 for g in plain[-1].values())  # after one step every LoRA matrix has a gradient
    # with dropout the checkpointed layers must recompute the very masks of the first forward
    checkpointed = gradients("checkpointed", dropout=0.1, gradient_checkpointing=True)
    for name, reference, other in [
        ("accumulated", plain, gradients("accumulated", grad_accum=4)),
        ("checkpointed", plain_dropout, checkpointed),
    ]:
        assert len(other) == 3 and reference[0].keys() == other[0].keys()
        for step, (expected, got) in enumerate(zip(reference, other), 1):
            for key in expected:
                torch.testing.assert_close(got[key], expected[key], atol=1e-7, rtol=1e-4, msg=f"{name} {step} {key}")


def test_each_speed_technique_switched_off_gives_the_same_step(tiny_model, cache_dir, pairs_items, tmp_path):
    """The benchmark's ablation rows change speed only: shared prompt rows off, the output head on every position,
    the reference recomputed in every step, and PEFT's LoRA and a checkpointed head instead of the fused kernels
    all give the same updated adapter.
    Injected bugs: a per-step reference taken with the adapter on (the policy); a fused LoRA backward that forgets
    the scaling in the gradient of B."""
    from charlab.training import kernels

    def one_step(name: str, shared: bool = True, trained_only: bool = True, cached: bool = True, fused: bool = True):
        backend = make_backend(tiny_model, cache_dir)
        assert backend.fused_lora and backend.fused_head
        backend.share_prefixes, backend.trained_only = shared and backend.share_prefixes, trained_only
        if not fused:
            kernels.unfuse_lora(backend.model)
            backend.fused_head = False
        torch.manual_seed(1)
        with torch.no_grad():  # a non-zero adapter, so policy and reference differ from the first step
            for param in backend.trainable:
                param.add_(0.05 * torch.randn_like(param))
        algo = DpoAlgorithm(beta=0.1, nll_coef=0.1, cache_dir=None, cached_reference=cached)
        config = loop_config(max_steps=1, grad_accum=2, max_grad_norm=0.0)
        summary = Trainer(backend, algo, pairs_items, [], config, tmp_path / name).train()
        weights = {n: p.detach().clone() for n, p in backend.model.named_parameters() if p.requires_grad}
        return {"loss": summary.train["loss"], **weights}

    plain = one_step("plain")
    for name, kw in [("unshared", {"shared": False}), ("all_positions", {"trained_only": False}),
                     ("per_step_reference", {"cached": False}), ("unfused", {"fused": False})]:  # fmt: skip
        other = one_step(name, **kw)
        assert other["loss"] == pytest.approx(plain["loss"], abs=1e-5), name
        assert all(torch.allclose(plain[k], other[k], atol=1e-6) for k in plain if k != "loss"), name


def test_the_sampler_generates_with_the_trained_weights(tiny_model, cache_dir) -> None:
    """Injected bugs: an import error in `charlab.generation.hf` (once a silent `importorskip`, now a failure);
    `LocalBackend.sampler` sampling with the adapter disabled -> the same replies as the base model."""
    from charlab.generation.base import SamplingParams

    backend = make_backend(tiny_model, cache_dir)
    torch.manual_seed(0)
    with torch.no_grad():  # stands in for training: a fresh LoRA (B = 0) would say exactly what the base says
        for name, param in backend.model.named_parameters():
            if "lora_B" in name:
                param.normal_(0.0, 0.5)
    conversations = [[{"role": "user", "content": q}] for q in ("Hi", "Who are you?", "Tell me about the sea.")]
    greedy = SamplingParams(temperature=0, max_new_tokens=8)
    tuned = [c.text for c in backend.sampler(batch_size=2).sample(conversations, greedy)]
    with backend.model.disable_adapter():
        base = [c.text for c in backend.sampler(batch_size=2).sample(conversations, greedy)]
    assert all(t != b for t, b in zip(tuned, base)), (tuned, base)


def test_a_pair_sharing_its_prompt_in_one_row_scores_as_if_alone(tiny_model, cache_dir, pairs_items) -> None:
    """Shared rows through the branched attention, the same rows through a dense mask, and each sequence alone:
    equal log-probabilities and gradients. Injected bug: a second reply that also attends to the first."""
    from charlab.training import rows

    backend = make_backend(tiny_model, cache_dir)
    assert backend.share_prefixes and backend.branched_attention
    batch = interleave(pairs_items[:4])
    assert rows.group(batch) == [[0, 1], [2, 3], [4, 5], [6, 7]]
    torch.manual_seed(0)
    with torch.no_grad():  # a non-zero adapter, so that every LoRA matrix gets a gradient
        for param in backend.trainable:
            param.add_(0.05 * torch.randn_like(param))
    backend.model.train()
    together = backend._forward(batch)  # with gradient: the training path
    (sum(lp.sum() for lp in together)).backward()
    grads = {n: p.grad.clone() for n, p in backend.model.named_parameters() if p.requires_grad}
    backend.model.zero_grad()
    backend.branched_attention = False  # the same rows through one dense masked attention
    dense = backend._forward(batch)
    (sum(lp.sum() for lp in dense)).backward()
    for n, p in backend.model.named_parameters():
        if p.requires_grad:
            assert torch.allclose(grads[n], p.grad, atol=1e-5), n
    backend.model.zero_grad()
    backend.share_prefixes = False
    alone = [backend._forward([seq])[0] for seq in batch]
    (sum(lp.sum() for lp in alone)).backward()
    for a, b in zip(together, alone):
        assert torch.allclose(a, b, atol=1e-5)
    for n, p in backend.model.named_parameters():
        if p.requires_grad:
            assert torch.allclose(grads[n], p.grad, atol=1e-5), n


def test_dpo_trains_a_real_gpt2_through_its_own_layer_names(tiny_model, cache_dir, tiny_tokenizer, tmp_path) -> None:
    """The default LoRA targets (Llama names) on a real GPT-2 (random weights, the tiny tokenizer): every block's
    Conv1D layer gets a LoRA and DPO learns. Injected bug: no GPT-2 names in the alias table -> ConfigError."""
    import shutil

    from charlab.schemas import ModelConfig
    from tests.test_training_unit import lora_layers, tiny_gpt2

    folder = tmp_path / "gpt2-tiny"
    tiny_gpt2(vocab_size=len(tiny_tokenizer)).save_pretrained(folder)
    for name in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja"):
        shutil.copy(Path(tiny_model.name_or_path) / name, folder / name)
    gpt2 = ModelConfig(name="gpt2-tiny", name_or_path=str(folder))
    lora = LoraConfig(rank=8, alpha=16, dropout=0.0, target_modules=list(ALL_LINEAR))
    backend = LocalBackend.create(gpt2, lora, cache_dir, device="cpu")
    blocks = ("attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj")
    assert lora_layers(backend.model) == sorted(f"transformer.h.{i}.{layer}" for i in range(2) for layer in blocks)
    items, _ = encode_pairs(ChatFormat(backend.tokenizer), synthetic_pairs(16), max_length=64)
    algo = DpoAlgorithm(beta=0.1, cache_dir=tmp_path, model_identity="gpt2-tiny")
    history: list[dict] = []
    config = loop_config(epochs=3, batch_size=8)
    Trainer(backend, algo, items, [], config, tmp_path / "ck", on_metrics=lambda m, s: history.append(m)).train()
    losses = [m["loss"] for m in history if "loss" in m]
    assert len(losses) == 6 and losses[-1] < losses[0] - 0.1
