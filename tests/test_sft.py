"""SFT: inputs without system prompt, assistant-only masks, truncation counted, the loss, a few steps that learn."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
import torch

from charlab.chat_format import ChatFormat
from charlab.data.introspection import SelfInteraction, greetings, interaction_jobs
from charlab.data.jsonl import JsonlWriter
from charlab.data.records import IntrospectionExample
from charlab.schemas import LoraConfig, ModelConfig
from charlab.training.backend import TokenSequence
from charlab.training.sft import SftAlgorithm, encode_examples, heldout_loss, pack, sft_loss

WORDS = "arr the sea is wide and I love salt wind matey treasure ship sail storm island gold parrot".split()


def sentence(rng: random.Random, n: int) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(n)).capitalize() + "."


def examples(n_reflections: int = 6, n_interactions: int = 2, seed: int = 0) -> list[IntrospectionExample]:
    """Introspection records in the stage's own format (reflections and self-interaction transcripts)."""
    rng = random.Random(seed)
    records = [
        IntrospectionExample(
            prompt=f"Tell me about yourself ({i}).",
            reflection=(text := sentence(rng, rng.randint(8, 30))),
            id=f"reflection-{i:02d}:0",
            kind="reflection",
            messages=[
                {"role": "user", "content": f"Tell me about yourself ({i})."},
                {"role": "assistant", "content": text},
            ],
        )  # fmt: skip
        for i in range(n_reflections)
    ]
    for job in interaction_jobs(n_interactions, greetings(), seed=seed):
        conversation = SelfInteraction(job, ("system A", "system B"))
        for _ in range(4):
            conversation.add(sentence(rng, rng.randint(5, 15)))
        records.append(conversation.to_example("tiny", "pirate"))
    return records


def write_examples(path: Path, records: list[IntrospectionExample]) -> Path:
    with JsonlWriter(path) as writer:
        writer.write_many(records)
    return path


# ------------------------------------------------------------------------------------------------ data


@pytest.mark.unit
def test_sft_inputs_have_no_system_prompt_and_mask_only_assistant_turns(tiny_chat: ChatFormat) -> None:
    records = examples()
    items, stats = encode_examples(tiny_chat, records, max_length=4096, train_on="all")
    assert stats.kept == len(records) and stats.truncated == 0 and not stats.dropped
    tok = tiny_chat.tokenizer
    for item, record in zip(items, records):
        text = tok.decode(list(item.seq.tokens))
        assert "<|im_start|>system" not in text and "system A" not in text
        trained = tok.decode([t for t, m in zip(item.seq.tokens, item.seq.loss_mask) if m])
        replies = [m["content"] for m in record.messages if m["role"] == "assistant"]
        # exactly the assistant turns, each with its end-of-turn marker (and the newline the template puts after it)
        assert trained.replace("<|im_end|>\n", "<|im_end|>") == "".join(f"{r}<|im_end|>" for r in replies)
    # train_on=last: only the final assistant turn of a transcript
    items, _ = encode_examples(tiny_chat, records[-1:], max_length=4096, train_on="last")
    trained = tok.decode([t for t, m in zip(items[0].seq.tokens, items[0].seq.loss_mask) if m])
    last = [m["content"] for m in records[-1].messages if m["role"] == "assistant"][-1]
    assert trained.rstrip("\n") == f"{last}<|im_end|>"


@pytest.mark.unit
def test_long_conversations_are_cut_and_counted_not_dropped(tiny_chat: ChatFormat) -> None:
    records = examples(n_reflections=2, n_interactions=2)
    full, _ = encode_examples(tiny_chat, records, max_length=4096)
    limit = sorted(len(i) for i in full)[1]  # at least two are longer than this
    items, stats = encode_examples(tiny_chat, records, max_length=limit)
    assert stats.truncated == sum(len(i) > limit for i in full) >= 2
    assert all(len(i) <= limit for i in items) and stats.kept + len(stats.dropped) == len(records)
    # a record with no assistant text, or none left within the limit, is dropped and named
    empty = IntrospectionExample(prompt="p", reflection="", id="empty:0")
    items, stats = encode_examples(tiny_chat, [*records, empty], max_length=6)
    assert "empty:0" in stats.dropped and stats.kept + len(stats.dropped) == len(records) + 1


@pytest.mark.unit
def test_sft_loss_is_the_token_mean_over_trained_targets() -> None:
    a = TokenSequence((1, 2, 3, 4), (0, 0, 1, 1))  # targets 1..3 -> weights 0, 1, 1
    b = TokenSequence((1, 2, 3), (0, 1, 1))  # weights 1, 1
    lp = [torch.tensor([-9.0, -1.0, -2.0]), torch.tensor([-3.0, -4.0])]
    loss, metrics = sft_loss([a, b], lp, weight=0.5)
    assert loss.item() == pytest.approx(0.5 * (1 + 2 + 3 + 4) / 4) and metrics["loss"] == pytest.approx(2.5)
    assert metrics["trained_tokens"] == 4


@pytest.mark.unit
def test_packing_fills_rows_and_restarts_positions_per_sequence() -> None:
    seqs = [TokenSequence(tuple(range(1, n + 1)), (0,) + (1,) * (n - 1)) for n in (6, 5, 4, 3, 2)]
    rows = pack(seqs, pack_length=10)
    assert sorted(len(r) for r in rows) == [10, 10]  # 6+4 and 5+3+2: no padding left at all
    assert sum(r.num_trained for r in rows) == sum(s.num_trained for s in seqs)
    row = next(r for r in rows if len(r) == 10 and r.positions[:6] == tuple(range(6)))
    assert row.positions == (0, 1, 2, 3, 4, 5, 0, 1, 2, 3)
    assert row.loss_mask[6] == 0  # no loss across the boundary


# ------------------------------------------------------------------------------------------------ training


@pytest.mark.integration
def test_a_few_sft_steps_lower_the_loss(tiny_model: ModelConfig, cache_dir: Path, tmp_path: Path) -> None:
    from charlab.training.local import LocalBackend
    from charlab.training.loop import LoopConfig, Trainer

    lora = LoraConfig(rank=8, alpha=16, dropout=0.0, target_modules=["q_proj", "v_proj", "up_proj", "down_proj"])
    backend = LocalBackend.create(tiny_model, lora, cache_dir, device="cpu", seed=0)
    items, _ = encode_examples(ChatFormat(backend.tokenizer), examples(4, 0), max_length=256)
    before = heldout_loss(backend, [i.seq for i in items])
    config = LoopConfig(epochs=6, batch_size=4, learning_rate=1e-2, schedule="constant", seed=0)
    losses: list[float] = []
    Trainer(backend, SftAlgorithm(), items, [], config, tmp_path / "ckpt",
            on_metrics=lambda m, step: losses.append(m["loss"]), progress=False).train()  # fmt: skip
    after = heldout_loss(backend, [i.seq for i in items])
    assert len(losses) == 6 and losses[-1] < losses[0]
    assert after < before - 0.2  # the model learns its introspection texts


@pytest.mark.integration
def test_sft_stage_merges_dpo_trains_and_reports_the_gap(run_stage, tiny_model, cache_dir, tmp_path) -> None:
    from tests.test_export import make_adapter

    dpo = make_adapter(tiny_model, cache_dir, tmp_path / "dpo", 4, 8, ["q_proj", "v_proj"], seed=1)
    data = write_examples(tmp_path / "introspection.jsonl", examples(8, 2))
    metric, out = run_stage(
        ["stage=sft", "model=tiny", f"stage.data={data}", f"stage.dpo_adapter={dpo}", "stage.batch_size=4",
         "stage.grad_accum=2", "stage.eval_fraction=0.2", "stage.max_length=96", "lora.rank=8", "lora.alpha=16"],
    )  # fmt: skip
    assert metric is not None and metric > 0
    config = json.loads((out / "adapter" / "adapter_config.json").read_text())
    assert config["r"] == 8
    meta = json.loads((out / "adapter" / "meta.json").read_text())
    assert meta["trained_on"] == "base + DPO adapter merged" and meta["parents"]["dpo_adapter"] == str(dpo)
    summary = meta["summary"]
    assert summary["data_kept"] == 10 and summary["data_truncated"] >= 1 and summary["eval_examples"] == 2
    report = (out / "report.md").read_text()
    for row in ("| base |", "| dpo |", "| sft |"):
        assert row in report
    metrics = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert any("eval/loss" in m for m in metrics) and any("gap/sft/gap" in m for m in metrics)
    assert any("pad_fraction" in m for m in metrics)


@pytest.mark.integration
def test_export_measures_the_gap_of_the_combination_it_exports(run_stage, tiny_model, cache_dir, tmp_path) -> None:
    """SFT's gap describes base + DPO + 1.0 x SFT; export measures the combination it writes on the same held-out
    replies. At weight 1.0 that is the model SFT trained, so the two gaps agree; at 0.25 they differ.
    Injected bug caught: export scoring the base model (or the DPO adapter alone) instead of its adapter."""
    from tests.test_export import make_adapter

    dpo = make_adapter(tiny_model, cache_dir, tmp_path / "dpo", 4, 8, ["q_proj", "v_proj"], seed=1)
    data = write_examples(tmp_path / "introspection.jsonl", examples(8, 2))
    _, sft = run_stage(
        ["stage=sft", "model=tiny", f"stage.data={data}", f"stage.dpo_adapter={dpo}", "stage.batch_size=4",
         "stage.eval_fraction=0.2", "stage.max_length=96", "lora.rank=8", "lora.alpha=16", "stage.lr=1e-2",
         "stage.epochs=2"],
        name="sft",
    )  # fmt: skip
    assert (sft / "gap_conversations.jsonl").is_file()
    sft_gap = json.loads((sft / "meta.json").read_text())["summary"]["gap/sft"]
    gaps = {}
    for weight in (1.0, 0.25):
        _, out = run_stage(
            ["stage=export", "model=tiny", f"stage.dpo_adapter={dpo}", f"stage.sft_adapter={sft / 'adapter'}",
             f"stage.sft_weight={weight}"],
            name=f"export{weight}",
        )  # fmt: skip
        summary = json.loads((out / "meta.json").read_text())["summary"]
        assert summary["gap_examples"] == 2
        gaps[weight] = summary["gap/exported"]
    assert gaps[1.0] == pytest.approx(sft_gap, abs=1e-3)
    assert abs(gaps[0.25] - sft_gap) > 1e-3


@pytest.mark.integration
def test_packed_rows_score_exactly_like_separate_sequences(tiny_model: ModelConfig, cache_dir: Path) -> None:
    """Position resets keep packed sequences apart: same log-probs, same loss, same gradient as unpacked."""
    from charlab.training.local import LocalBackend

    lora = LoraConfig(rank=4, alpha=8, dropout=0.0, target_modules=["q_proj", "v_proj"])
    backend = LocalBackend.create(tiny_model, lora, cache_dir, device="cpu", seed=0)
    items, _ = encode_examples(ChatFormat(backend.tokenizer), examples(5, 1), max_length=256)
    seqs = [item.seq for item in items]
    rows = pack(seqs, pack_length=256)
    assert len(rows) < len(seqs) and any(r.positions is not None for r in rows)

    def trained(batch: list[TokenSequence], logprobs: list[torch.Tensor]) -> list[float]:
        return sorted(round(float(v), 4) for s, lp in zip(batch, logprobs) for v, w in zip(lp, s.target_weights) if w)

    assert trained(rows, backend.logprobs(rows)) == pytest.approx(trained(seqs, backend.logprobs(seqs)), abs=2e-4)

    def gradient(batch: list[TokenSequence]) -> tuple[float, torch.Tensor]:
        metrics = backend.forward_backward(batch, lambda b, lp: sft_loss(b, lp)).result()
        grad = torch.cat([p.grad.flatten() for p in backend.trainable if p.grad is not None]).clone()
        backend.optimizer.zero_grad(set_to_none=True)
        return metrics["loss"], grad

    backend.model.eval()  # no dropout either way
    loss_packed, grad_packed = gradient(rows)
    loss_plain, grad_plain = gradient(seqs)
    assert loss_packed == pytest.approx(loss_plain, rel=1e-5)
    torch.testing.assert_close(grad_packed, grad_plain, atol=1e-6, rtol=1e-4)


@pytest.mark.unit
def test_examples_quoting_the_constitution_are_found(tiny_chat: ChatFormat) -> None:
    from charlab.constitution import load_constitution
    from charlab.settings import project_root
    from charlab.training.sft import with_system_prompt

    system = load_constitution(project_root() / "constitutions" / "pirate.json").render_system_prompt("teacher")
    records = examples(3, 0)
    records[1].messages[1]["content"] = "Here is what I was told: " + system
    items, _ = encode_examples(tiny_chat, records, max_length=8192)
    assert with_system_prompt(tiny_chat, items, system) == [records[1].id]


@pytest.mark.integration
def test_export_at_weight_one_reproduces_the_model_sft_trained(run_stage, tiny_model, cache_dir, tmp_path) -> None:
    """Local SFT trains on base + DPO merged; DPO 1.0 + SFT 1.0 combined on the raw base is that same model."""
    from peft import PeftModel

    from charlab.models import load_causal_lm
    from charlab.training.export import AdapterSource, export_adapters
    from tests.test_export import PROBE, make_adapter

    dpo = make_adapter(tiny_model, cache_dir, tmp_path / "dpo", 4, 8, ["q_proj", "v_proj", "down_proj"], seed=3)
    data = write_examples(tmp_path / "introspection.jsonl", examples(4, 0))
    _, out = run_stage(
        ["stage=sft", "model=tiny", f"stage.data={data}", f"stage.dpo_adapter={dpo}", "stage.batch_size=4",
         "stage.eval_fraction=0", "stage.gap_examples=0", "stage.lr=1e-2", "stage.epochs=2", "lora.rank=8",
         "lora.alpha=16"],
    )  # fmt: skip

    def base():
        return load_causal_lm(tiny_model, cache_dir, device="cpu", dtype="float32")

    trained = PeftModel.from_pretrained(
        PeftModel.from_pretrained(base(), str(dpo)).merge_and_unload(), str(out / "adapter")
    )
    sources = [AdapterSource("dpo", dpo, 1.0), AdapterSource("sft", out / "adapter", 1.0)]
    export_adapters(base(), sources, tmp_path / "combined")
    combined = PeftModel.from_pretrained(base(), str(tmp_path / "combined"))
    with torch.no_grad():
        expected, got = trained(torch.tensor(PROBE)).logits, combined(torch.tensor(PROBE)).logits
        dpo_only = PeftModel.from_pretrained(base(), str(dpo))(torch.tensor(PROBE)).logits
    assert (expected - dpo_only).abs().max() > 1e-3  # SFT changed the model
    torch.testing.assert_close(got, expected, atol=1e-4, rtol=1e-4)
