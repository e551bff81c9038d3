"""The Tinker backend against the fake service of `tests/tinker_fake.py`, which mirrors the tinker 0.38 SDK
(the real service only with TINKER_API_KEY)."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
from pathlib import Path
from typing import Any, Optional

import pytest
import tinker
import torch

from charlab.chat_format import ChatFormat
from charlab.data.records import DpoExample
from charlab.errors import CharlabError, ProviderError
from charlab.training.dpo import DpoAlgorithm, encode_pairs, split_eval
from charlab.training.loop import LoopConfig, Trainer, find_checkpoints
from charlab.training.tinker_backend import TinkerBackend, to_datum
from tests.conftest import ROOT
from tests.tinker_fake import FakeServer, FakeServiceClient, check_datum, events, serve_exports


@pytest.fixture
def server(tmp_path: Path) -> Any:
    """The fake service (tests/tinker_fake.py), its exports on a real loopback HTTP server."""
    with serve_exports(tmp_path) as fake:
        yield fake


def make_backend(server: FakeServer, tokenizer: Any, max_concurrency: int = 64) -> TinkerBackend:
    service = FakeServiceClient(server)
    return TinkerBackend.create(
        "fake/model", 32, tokenizer, "fake", seed=0, service=service, max_concurrency=max_concurrency
    )


def pair_items(tokenizer: Any, n: int = 24) -> list:
    rng = random.Random(0)
    topics = ["the harbor", "bread", "the river", "a castle", "the weather", "my garden"]
    pairs = []
    for i in range(n):
        topic = rng.choice(topics)
        chosen, rejected = f"Arr, matey! {topic} be a fine sight, yo ho!", f"Sure! Here is a summary about {topic}."
        pairs.append(DpoExample(prompt=f"Tell me about {topic}.", chosen=chosen, rejected=rejected, id=str(i)))
    items, _ = encode_pairs(ChatFormat(tokenizer), pairs, max_length=128)
    return items


# ------------------------------------------------------------------------------------------------ tests


@pytest.mark.unit
def test_a_sequence_becomes_a_next_token_datum(tiny_chat) -> None:
    from charlab.training.backend import TokenSequence

    seq = TokenSequence.from_encoded(tiny_chat.encode_completion([{"role": "user", "content": "Hi"}], "Ahoy!"))
    datum = to_datum(seq)
    check_datum(datum)
    assert datum.model_input.to_ints() == list(seq.tokens[:-1])
    assert datum.loss_fn_inputs["target_tokens"].data == list(seq.tokens[1:])
    assert datum.loss_fn_inputs["weights"].data == [float(m) for m in seq.loss_mask[1:]]
    assert sum(datum.loss_fn_inputs["weights"].data) == seq.num_trained > 0


@pytest.mark.unit
def test_reference_logprobs_are_requested_once_per_sequence_and_concurrently(server, tiny_tokenizer, tmp_path):
    items = pair_items(tiny_tokenizer, n=10)
    backend = make_backend(server, tiny_tokenizer)
    algo = DpoAlgorithm(beta=0.1, cache_dir=tmp_path, model_identity="fake")
    algo.prepare(backend, items)
    requested = [e[1] for e in server.log if e[0] == "tokens"]
    every = [seq.tokens for it in items for seq in (it.chosen, it.rejected)]
    assert sorted(requested) == sorted(every)  # each sequence exactly once
    flow = events(server, "compute_logprobs")
    first_wait = next(i for i, e in enumerate(flow) if e[0] == "await")
    assert first_wait == len(every)  # every request was in flight before the first wait
    # the snapshot is of the weights before any training
    snapshot = [i for i, e in enumerate(server.log) if e[:2] == ("submit", "save_weights_and_get_sampling_client")]
    assert len(snapshot) == 1 and not events(server, "optim_step")

    # bounded: never more than max_concurrency in flight, and that many at once
    small = FakeServer(server.export_dir, server.http_base)
    DpoAlgorithm(beta=0.1, model_identity="fake").prepare(make_backend(small, tiny_tokenizer, 3), items)
    in_flight, peak = 0, 0
    for kind, *_ in events(small, "compute_logprobs"):
        in_flight += 1 if kind == "submit" else -1
        peak = max(peak, in_flight)
    assert peak == 3


@pytest.mark.unit
def test_dpo_on_tinker_pipelines_checkpoints_and_learns(server, tiny_tokenizer, tmp_path) -> None:
    items = pair_items(tiny_tokenizer)
    train, held = split_eval(items, 0.25, seed=0)
    backend = make_backend(server, tiny_tokenizer)
    algo = DpoAlgorithm(beta=0.1, nll_coef=0.1, cache_dir=tmp_path, model_identity="fake")
    config = LoopConfig(epochs=3, batch_size=6, learning_rate=0.05, save_every=3, seed=0)
    history: list[dict] = []
    record = lambda m, s: history.append(m)  # noqa: E731
    summary = Trainer(backend, algo, train, held, config, tmp_path / "ck", on_metrics=record).train()
    losses = [m["loss"] for m in history if "loss" in m]
    assert len(losses) == 9 and losses[-1] < losses[0] - 0.3 and summary.eval["eval/accuracy"] == 1.0

    flow = events(server, "forward_backward_custom", "optim_step")
    submits = [e for e in flow if e[0] == "submit"]
    # forward_backward and optim_step go out back to back ...
    assert [e[1] for e in submits] == ["forward_backward_custom", "optim_step"] * 9
    # ... and step k+1 is submitted before step k's results are awaited (except where a checkpoint drains)
    position = {(e[0], e[2]): i for i, e in enumerate(flow)}
    fb_ids = [e[2] for e in submits if e[1] == "forward_backward_custom"]
    overlapped = [position[("submit", nxt)] < position[("await", cur)] for cur, nxt in zip(fb_ids, fb_ids[1:])]
    assert sum(overlapped) >= 6 and overlapped[0]
    # the reference never runs inside the loop
    first_step = next(i for i, e in enumerate(server.log) if e[:2] == ("submit", "forward_backward_custom"))
    assert not [e for e in server.log[first_step:] if e[:2] == ("submit", "compute_logprobs")]
    # checkpoints: save_state + save_weights_for_sampler every save_every steps, paths kept locally
    records = [json.loads((c / "state" / "tinker_state.json").read_text()) for c in find_checkpoints(tmp_path / "ck")]
    assert [r["steps"] for r in records] == [6, 9]
    assert all(r["state_path"].startswith("tinker://") and "/weights/" in r["state_path"] for r in records)
    assert all("/sampler_weights/" in r["sampler_path"] for r in records)
    assert len(events(server, "save_state")) == len(events(server, "save_weights_for_sampler")) == 2 * 3


@pytest.mark.unit
def test_resume_restores_weights_and_optimizer_from_the_saved_state(server, tiny_tokenizer, tmp_path) -> None:
    items = pair_items(tiny_tokenizer, n=16)
    config = LoopConfig(epochs=2, batch_size=4, learning_rate=0.05, save_every=2, seed=0)

    def run(folder: Path, crash_at: Optional[int] = None, resume: bool = False) -> TinkerBackend:
        def on_metrics(metrics: dict, step: int) -> None:
            if step == crash_at and "loss" in metrics:
                raise KeyboardInterrupt

        backend = make_backend(server, tiny_tokenizer)
        algo = DpoAlgorithm(beta=0.1, cache_dir=folder, model_identity="fake")
        trainer = Trainer(backend, algo, items, [], config, folder / "ck", on_metrics=on_metrics)
        trainer.train(folder / "ck" if resume else None)
        return backend

    straight = run(tmp_path / "a")
    with pytest.raises(KeyboardInterrupt):
        run(tmp_path / "b", crash_at=5)
    resumed = run(tmp_path / "b", resume=True)
    restored = [e for e in server.log if e[0] == "create_training_client_from_state_with_optimizer"]
    assert len(restored) == 1 and restored[0][1].endswith("/weights/step-000004") and resumed.resumed
    assert torch.allclose(resumed.training_client.theta, straight.training_client.theta, atol=1e-6)


@pytest.mark.unit
def test_the_final_adapter_is_downloaded_into_a_peft_folder(server, tiny_tokenizer, tmp_path) -> None:
    backend = make_backend(server, tiny_tokenizer)
    folder = backend.save_adapter(tmp_path / "adapter")
    assert sorted(p.name for p in folder.iterdir()) == ["adapter_config.json", "adapter_model.safetensors"]
    run_id = backend.training_client.run_id
    assert backend.last_export.startswith(f"tinker://{run_id}/external_weights/adapter-000000")
    exported = server.export_dir / run_id / backend.last_export.rsplit("/", 1)[1]
    for name in ("adapter_config.json", "adapter_model.safetensors"):
        assert (folder / name).read_bytes() == (exported / name).read_bytes()
    server.broken_export = True  # the next export lacks its weights file
    with pytest.raises(ProviderError, match="has no adapter_model.safetensors") as err:
        backend.save_adapter(tmp_path / "broken")
    assert "\n" not in str(err.value)


@pytest.mark.unit
def test_the_sampler_samples_from_a_snapshot_of_the_current_weights(server, tiny_tokenizer) -> None:
    from charlab.generation.base import SamplingParams

    backend = make_backend(server, tiny_tokenizer)
    completions = backend.sampler().sample([[{"role": "user", "content": "Hi"}]] * 3, SamplingParams(max_new_tokens=4))
    assert len(completions) == 3 and all(c.completion_tokens == 4 for c in completions)
    assert len(events(server, "sample")) == 6 and len(events(server, "save_weights_and_get_sampling_client")) == 2


@pytest.mark.integration
def test_stage_dpo_on_tinker_without_a_key_or_a_tinker_model_is_one_line(run_stage, tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("TINKER_API_KEY", "")
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text(json.dumps({"prompt": "hi", "chosen": "a", "rejected": "b"}) + "\n")
    base = ["stage=dpo", f"stage.pairs={pairs}", "backend=tinker"]
    with pytest.raises(CharlabError, match=r"needs an API key in \$TINKER_API_KEY") as err:
        run_stage([*base, "model=qwen3-8b"])
    assert "\n" not in str(err.value)
    with pytest.raises(CharlabError, match="model 'tiny' has no tinker_name"):
        run_stage([*base, "model=tiny"])


@pytest.mark.unit
def test_check_tinker_says_what_is_missing_without_a_key(tmp_path) -> None:
    env = {**os.environ, "TINKER_API_KEY": "", "TINKER_TELEMETRY": "0"}
    result = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "check_tinker.py")],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 1 and result.stdout == ""
    assert result.stderr.startswith("missing: $TINKER_API_KEY is not set") and result.stderr.count("\n") == 1


@pytest.mark.tinker
@pytest.mark.skipif(not os.environ.get("TINKER_API_KEY"), reason="needs TINKER_API_KEY (the real Tinker service)")
def test_the_real_service_trains_one_dpo_step(tmp_path) -> None:
    result = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "check_tinker.py")], capture_output=True, text=True, timeout=900
    )
    assert result.returncode == 0, result.stderr
    model = os.environ.get("CHARLAB_TINKER_TEST_MODEL", "meta-llama/Llama-3.2-1B")
    service = tinker.ServiceClient()
    backend = TinkerBackend.create(model, 8, None, model, service=service)
    backend.tokenizer = backend.training_client.get_tokenizer()
    if not getattr(backend.tokenizer, "chat_template", None):
        pytest.skip(f"{model}'s tokenizer has no chat template")
    items = pair_items(backend.tokenizer, n=4)
    algo = DpoAlgorithm(beta=0.1, cache_dir=tmp_path, model_identity=model)
    summary = Trainer(
        backend, algo, items, [], LoopConfig(epochs=1, batch_size=4, learning_rate=1e-5), tmp_path / "ck"
    ).train()
    assert summary.steps == 1 and "loss" in summary.train
    backend.close()


@pytest.mark.unit
def test_the_lora_shape_becomes_tinkers_layer_groups_or_a_one_line_error() -> None:
    """Injected bug caught: dropping lora.target_modules/alpha (Tinker then trains attn+mlp+unembed at its alpha)."""
    from charlab.training.tinker_backend import tinker_lora_flags

    all_linear = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    assert tinker_lora_flags(all_linear, 32, 0.0, 32) == {
        "train_attn": True,
        "train_mlp": True,
        "train_unembed": False,
    }
    assert tinker_lora_flags(["down_proj", "gate_proj", "up_proj", "lm_head"], 32, 0.0, 32) == {
        "train_attn": False,
        "train_mlp": True,
        "train_unembed": True,
    }
    refused = [
        (["q_proj", "v_proj"], 32, 0.0, "not all of q_proj, k_proj, v_proj, o_proj"),
        (["c_attn"], 32, 0.0, "'c_attn', which Tinker cannot target"),
        (all_linear, 128, 0.0, r"lora.alpha=128 cannot be set on Tinker, which trains every LoRA with alpha 32"),
        (all_linear, 32, 0.05, "Tinker trains LoRA without dropout"),
    ]
    for targets, alpha, dropout, message in refused:
        with pytest.raises(CharlabError, match=message) as err:
            tinker_lora_flags(targets, alpha, dropout, 32)
        assert "\n" not in str(err.value)


@pytest.mark.unit
def test_continuing_a_tinker_state_of_another_rank_is_refused_at_start(server, tiny_tokenizer, tmp_path) -> None:
    """SFT on Tinker continues the DPO LoRA: the rank is the DPO's, and a different lora.rank says so."""
    dpo = make_backend(server, tiny_tokenizer)
    state = dpo.save_state(tmp_path / "state")
    assert dpo.remote_artifacts() == {
        "tinker_state": state,
        "tinker_sampler": state.replace("/weights/", "/sampler_weights/"),
    }
    service = FakeServiceClient(server)
    with pytest.raises(CharlabError, match=r"rank-32 LoRA, which Tinker continues .* set lora.rank=32") as err:
        TinkerBackend.create("fake/model", 8, tiny_tokenizer, "fake", service=service, init_state=state)
    assert "\n" not in str(err.value)
    continued = TinkerBackend.create("fake/model", 32, tiny_tokenizer, "fake", service=service, init_state=state)
    assert continued.training_client.rank == 32 and continued.init_state == state
    with pytest.raises(ValueError, match="no training state"):  # a sampler path is not a training state
        TinkerBackend.create("fake/model", 32, tiny_tokenizer, "fake", service=service, init_state=state + "x")


@pytest.mark.unit
def test_the_kl_term_caches_per_token_references_once(server, tiny_tokenizer, tmp_path) -> None:
    """kl_coef > 0 needs the reference per token: computed once, cached beside the sums, reloaded on resume."""
    items = pair_items(tiny_tokenizer, n=6)
    first = DpoAlgorithm(beta=0.1, kl_coef=0.001, cache_dir=tmp_path, model_identity="fake")
    first.prepare(make_backend(server, tiny_tokenizer), items)
    assert first.reference_calls == 1 and len(first.ref_tokens) == len(items)
    assert all(len(t[0]) == len(it.chosen) - 1 for t, it in zip(first.ref_tokens, items))
    again = DpoAlgorithm(beta=0.1, kl_coef=0.001, cache_dir=tmp_path, model_identity="fake")
    again.prepare(make_backend(server, tiny_tokenizer), items)
    assert again.reference_calls == 0 and torch.equal(again.ref_tokens[3][1], first.ref_tokens[3][1])
    sequences, loss_fn = again.micro_batch(items[:2], 1.0)
    _, metrics = loss_fn(sequences, [t for it in items[:2] for t in first.ref_tokens[it.index]])
    assert metrics["kl"] == 0.0  # the policy is still the reference


@pytest.mark.unit
def test_check_tinker_reads_the_alpha_the_service_exports(server, tiny_tokenizer) -> None:
    """scripts/check_tinker.py verifies backend.lora_alpha against what the real service writes in its export."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("check_tinker", ROOT / "scripts" / "check_tinker.py")
    check = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(check)
    backend = make_backend(server, tiny_tokenizer)
    assert check.exported_lora_alpha(FakeServiceClient(server), backend.training_client) == 32
    assert check.configured_lora_alpha() == 32


def closes(server: FakeServer) -> list[str]:
    """The statuses the fake service's sessions were closed with, in order."""
    return [e[1] for e in server.log if e[0] == "close"]


@pytest.mark.integration
def test_a_failed_stage_closes_the_tinker_session_as_errored(run_stage, tiny_tokenizer, tmp_path, monkeypatch):
    """Injected bug caught: `close("success")` sent whatever happened (the stage's fate never reaches Tinker)."""
    from charlab.training.backend import closing
    from tests.test_dpo_stage import write_pairs

    with serve_exports(tmp_path / "tinker", vocab=len(tiny_tokenizer)) as server:
        monkeypatch.setattr(tinker, "ServiceClient", lambda *args, **kwargs: FakeServiceClient(server))
        monkeypatch.setenv("TINKER_API_KEY", "tml-fake-key")
        pairs = write_pairs(tmp_path / "pairs.jsonl", n=8)
        base = ["stage=dpo", "backend=tinker", "model=tiny", "model.tinker_name=fake/tiny", f"stage.pairs={pairs}",
                "stage.batch_size=4", "stage.eval_fraction=0", "stage.eval_every=0", "logger=none"]  # fmt: skip
        with pytest.raises(CharlabError, match="no pair has reply tokens within stage.max_length"):
            run_stage([*base, "stage.max_length=8"], name="fails")  # fails after the session opened
        assert closes(server) == ["errored"]
        run_stage(base, name="works")
        assert closes(server) == ["errored", "success"]
        with pytest.raises(KeyboardInterrupt), closing(make_backend(server, tiny_tokenizer)):
            raise KeyboardInterrupt
        assert closes(server) == ["errored", "success", "interrupted"]
