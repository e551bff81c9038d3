"""The prompt-distillation gap: the same reply tokens scored with and without the constitution, by hand."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from charlab.chat_format import ChatFormat
from charlab.eval.distillation_gap import distillation_gap, gap_table, hf_scorer
from charlab.schemas import LoraConfig, ModelConfig

pytestmark = pytest.mark.integration
SYSTEM = "You are Captain Salt, a pirate who loves the sea. Speak like a pirate in every reply."
U, A = "user", "assistant"
CHATS = [
    [{"role": U, "content": "Who are you?"}, {"role": A, "content": "Arr, I be the captain of the sea."}],
    [{"role": U, "content": "Hello"}, {"role": A, "content": "Ahoy!"}, {"role": U, "content": "Sail?"},
     {"role": A, "content": "Aye, we sail at dawn, matey."}],
]  # fmt: skip


def reply_loglik(model, chat: ChatFormat, messages: list[dict[str, str]]) -> float:
    """Mean log-probability of the last assistant reply's tokens, from one plain forward pass."""
    encoded = chat.encode_with_mask(messages, train_on="last")
    ids = torch.tensor([encoded.input_ids])
    with torch.no_grad():
        logprobs = torch.log_softmax(model(ids).logits[0, :-1].float(), dim=-1)
    picked = [float(logprobs[t, ids[0, t + 1]]) for t in range(len(encoded) - 1) if encoded.loss_mask[t + 1]]
    return sum(picked) / len(picked)


def test_gap_equals_the_hand_computed_difference(tiny_model: ModelConfig, cache_dir: Path, tiny_chat) -> None:
    from charlab.models import load_causal_lm

    model = load_causal_lm(tiny_model, cache_dir, device="cpu", dtype="float32")
    result = distillation_gap(hf_scorer(model, pad_id=0), tiny_chat, CHATS, SYSTEM)
    with_sys = [reply_loglik(model, tiny_chat, [{"role": "system", "content": SYSTEM}, *c]) for c in CHATS]
    without = [reply_loglik(model, tiny_chat, c) for c in CHATS]
    assert result.examples == 2 and result.skipped == 0
    assert result.with_system == pytest.approx(sum(with_sys) / 2, abs=1e-5)
    assert result.without_system == pytest.approx(sum(without) / 2, abs=1e-5)
    assert result.gap == pytest.approx(result.with_system - result.without_system)
    assert result.per_example == pytest.approx([a - b for a, b in zip(with_sys, without)], abs=1e-5)
    assert result.gap != 0.0  # the system prompt does change the reply's likelihood
    assert "| base |" in gap_table({"base": result})
    # a limit the system-prompted version exceeds: skipped (and counted), never compared on different tokens
    limited = distillation_gap(hf_scorer(model), tiny_chat, CHATS, SYSTEM, max_length=30)
    assert limited.examples == 0 and limited.skipped == 2


def test_backend_and_plain_model_scorers_agree(tiny_model: ModelConfig, cache_dir: Path, tiny_chat) -> None:
    """The SFT stage scores the base with `hf_scorer` and the trained model through the backend: same numbers."""
    from charlab.models import load_causal_lm
    from charlab.stages.sft import backend_scorer
    from charlab.training.local import LocalBackend

    lora = LoraConfig(rank=4, alpha=8, dropout=0.0, target_modules=["q_proj", "v_proj"])
    backend = LocalBackend.create(tiny_model, lora, cache_dir, device="cpu", seed=0)  # B = 0: the base model
    via_backend = distillation_gap(backend_scorer(backend), tiny_chat, CHATS, SYSTEM)
    model = load_causal_lm(tiny_model, cache_dir, device="cpu", dtype="float32")
    direct = distillation_gap(hf_scorer(model), tiny_chat, CHATS, SYSTEM)
    assert via_backend.with_system == pytest.approx(direct.with_system, abs=1e-4)
    assert via_backend.without_system == pytest.approx(direct.without_system, abs=1e-4)
