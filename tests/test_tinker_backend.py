"""The Tinker backend against a fake service that mirrors the SDK (the real one only with TINKER_API_KEY).

`FakeServiceClient`, `FakeTrainingClient`, `FakeSamplingClient` and `FakeRestClient` have the SDK's method
names and signatures, return SDK-style futures (`tinker`'s own `AwaitableConcurrentFuture`) and build real
`tinker.types` responses; they check every `Datum` they receive. The "server model" is a unigram table trained
with Adam, and `forward_backward_custom` works as the SDK does: log-probs out, our loss run locally, its
gradient sent back as per-token weights. Exported adapters are served by a real HTTP server on 127.0.0.1.
"""

from __future__ import annotations

import copy
import datetime
import functools
import http.server
import json
import os
import random
import subprocess
import sys
import threading
from concurrent.futures import Future
from pathlib import Path
from typing import Any, Optional

import pytest
import tinker
import torch
from tinker.lib.public_interfaces.api_future import AwaitableConcurrentFuture

from charlab.chat_format import ChatFormat
from charlab.data.records import DpoExample
from charlab.errors import CharlabError, ProviderError
from charlab.training.dpo import DpoAlgorithm, encode_pairs, split_eval
from charlab.training.loop import LoopConfig, Trainer, find_checkpoints
from charlab.training.tinker_backend import TinkerBackend, to_datum
from tests.conftest import ROOT

VOCAB = 2048


# ------------------------------------------------------------------------------------------------ the fake SDK


class FakeFuture(AwaitableConcurrentFuture):
    """The SDK's future class around a finished result; `.result()` is logged (when the caller waits)."""

    def __init__(self, value: Any, log: list, label: tuple):
        future: Future = Future()
        future.set_result(value)
        super().__init__(future)
        self._log, self._label = log, label

    def result(self, timeout: Optional[float] = None) -> Any:
        self._log.append(("await", *self._label))
        return super().result(timeout)


class FakeServer:
    """What the service holds: saved states, sampler weights, exported files; and the request log."""

    def __init__(self, export_dir: Path, http_base: str):
        self.export_dir, self.http_base = export_dir, http_base
        self.log: list[tuple] = []
        self.states: dict[str, tuple[torch.Tensor, dict]] = {}
        self.sampler_weights: dict[str, torch.Tensor] = {}
        self.runs = 0
        self.counter = 0

    def submit(self, kind: str, value: Any) -> FakeFuture:
        self.counter += 1
        label = (kind, self.counter)
        self.log.append(("submit", *label))
        return FakeFuture(value, self.log, label)


def unigram_logprobs(theta: torch.Tensor, targets: list[int]) -> torch.Tensor:
    return torch.log_softmax(theta, dim=0)[torch.tensor(targets, dtype=torch.long)]


def check_datum(datum: Any) -> None:
    """What the real service would reject: a wrong type, lengths that differ, targets not shifted by one."""
    assert isinstance(datum, tinker.Datum) and isinstance(datum.model_input, tinker.ModelInput)
    inputs = datum.model_input.to_ints()
    targets, weights = datum.loss_fn_inputs["target_tokens"], datum.loss_fn_inputs["weights"]
    assert isinstance(targets, tinker.TensorData) and targets.dtype == "int64"
    assert isinstance(weights, tinker.TensorData) and weights.dtype == "float32"
    assert len(inputs) == len(targets.data) == len(weights.data) == targets.shape[0]
    assert inputs[1:] == targets.data[:-1]


class FakeSamplingClient:
    """`tinker.SamplingClient`'s calls over a frozen weight table."""

    def __init__(self, server: FakeServer, theta: torch.Tensor):
        self.server, self.theta = server, theta.detach().clone()

    def compute_logprobs(self, prompt: Any, prompt_logprobs_last_n: Optional[int] = None) -> FakeFuture:
        tokens = prompt.to_ints()
        self.server.log.append(("tokens", tuple(tokens)))
        return self.server.submit("compute_logprobs", [None, *unigram_logprobs(self.theta, tokens[1:]).tolist()])

    def sample(self, prompt: Any, num_samples: int, sampling_params: Any, **kwargs: Any) -> FakeFuture:
        assert isinstance(sampling_params, tinker.SamplingParams)
        tokens = torch.topk(self.theta, sampling_params.max_tokens).indices.tolist()
        sequences = [
            tinker.SampledSequence(stop_reason="length", sequence_id=f"s{i}", _tokens_list=tokens)
            for i in range(num_samples)
        ]
        return self.server.submit("sample", tinker.SampleResponse(sequences=sequences))


class FakeTrainingClient:
    """`tinker.TrainingClient`'s calls over a unigram table trained with Adam."""

    def __init__(self, server: FakeServer, theta: Optional[torch.Tensor] = None, optimizer: Optional[dict] = None):
        server.runs += 1
        self.server, self.run_id = server, f"run{server.runs}"
        self.theta = torch.zeros(VOCAB) if theta is None else theta.detach().clone()
        self.theta.requires_grad_(True)
        self.optimizer = torch.optim.Adam([self.theta], lr=0.0)
        if optimizer is not None:
            self.optimizer.load_state_dict(copy.deepcopy(optimizer))

    def forward(self, data: list, loss_fn: str, loss_fn_config: Any = None) -> FakeFuture:
        outputs = []
        for datum in data:
            check_datum(datum)
            lp = unigram_logprobs(self.theta.detach(), datum.loss_fn_inputs["target_tokens"].data)
            outputs.append({"logprobs": tinker.TensorData.from_torch(lp)})
        return self.server.submit("forward", tinker.ForwardBackwardOutput("ArrayRecord", outputs, {}))

    def forward_backward_custom(self, data: list, loss_fn: Any, *, loss_type_input: Any = None) -> FakeFuture:
        for datum in data:
            check_datum(datum)
        targets = [d.loss_fn_inputs["target_tokens"].data for d in data]
        logprobs = [unigram_logprobs(self.theta.detach(), t).requires_grad_(True) for t in targets]
        loss, metrics = loss_fn(data, logprobs)  # the client side of the SDK: our loss, in torch
        loss.backward()
        surrogate = sum((unigram_logprobs(self.theta, t) * lp.grad).sum() for t, lp in zip(targets, logprobs))
        surrogate.backward()  # the server side: weights = -dloss/dlogprobs through the model
        out = tinker.ForwardBackwardOutput("TorchLossReturn", [], {**metrics, "loss:sum": float(loss.detach())})
        return self.server.submit("forward_backward_custom", out)

    def optim_step(self, optim_params: Any = None, *, adam_params: Any = None) -> FakeFuture:
        params = optim_params or adam_params
        assert isinstance(params, tinker.AdamParams)
        for group in self.optimizer.param_groups:
            group.update(lr=params.learning_rate, betas=(params.beta1, params.beta2), eps=params.eps)
        self.optimizer.step()
        self.optimizer.zero_grad()
        return self.server.submit("optim_step", tinker.types.OptimStepResponse(metrics={}))

    def save_state(self, name: str, ttl_seconds: Any = None, overwrite: bool = False, user_metadata: Any = None):
        path = f"tinker://{self.run_id}/weights/{name}"
        self.server.states[path] = (self.theta.detach().clone(), copy.deepcopy(self.optimizer.state_dict()))
        return self.server.submit("save_state", tinker.types.SaveWeightsResponse(path=path))

    def save_weights_for_sampler(self, name: str, ttl_seconds: Any = None, user_metadata: Any = None) -> FakeFuture:
        path = f"tinker://{self.run_id}/sampler_weights/{name}"
        self.server.sampler_weights[path] = self.theta.detach().clone()
        return self.server.submit("save_weights_for_sampler", tinker.types.SaveWeightsForSamplerResponse(path=path))

    def save_weights_and_get_sampling_client(self, name: Any = None, retry_config: Any = None, **kw: Any):
        return self.server.submit("save_weights_and_get_sampling_client", FakeSamplingClient(self.server, self.theta))

    def save_weights_external(self, name: str, ttl_seconds: Any = None, age_encryption_recipients: Any = None):
        from safetensors.torch import save_file

        folder = self.server.export_dir / self.run_id / name
        folder.mkdir(parents=True)
        (folder / "adapter_config.json").write_text(json.dumps({"r": 32, "peft_type": "LORA"}))
        if getattr(self.server, "broken_export", False):
            (folder / "notes.txt").write_text("no weights here")
        else:
            save_file({"theta": self.theta.detach().clone()}, str(folder / "adapter_model.safetensors"))
        path = f"tinker://{self.run_id}/external_weights/{name}"
        return self.server.submit("save_weights_external", tinker.types.SaveWeightsExternalResponse(path=path))


class FakeRestClient:
    """`tinker.RestClient.get_external_weights_urls`: URLs of the exported files on the local HTTP server."""

    def __init__(self, server: FakeServer):
        self.server = server

    def get_external_weights_urls(self, tinker_path: str) -> FakeFuture:
        run_id, _, name = tinker_path.removeprefix("tinker://").split("/")
        folder = self.server.export_dir / run_id / name
        urls = {p.name: f"{self.server.http_base}/{run_id}/{name}/{p.name}" for p in folder.iterdir()}
        expires = datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(hours=1)
        return self.server.submit("urls", tinker.types.ExternalWeightsUrlsResponse(urls=urls, expires=expires))


class FakeServiceClient:
    """`tinker.ServiceClient`'s calls that the backend uses, each logged."""

    def __init__(self, server: FakeServer):
        self.server = server

    def create_lora_training_client(self, base_model: str, rank: int = 32, seed: Any = None, **kw: Any) -> FakeFuture:
        self.server.log.append(("create_lora_training_client", base_model, rank))
        return self.server.submit("create", FakeTrainingClient(self.server))

    def create_training_client_from_state_with_optimizer(self, path: str, base_model: Any = None, **kw: Any):
        self.server.log.append(("create_training_client_from_state_with_optimizer", path))
        theta, optimizer = self.server.states[path]
        return self.server.submit("create", FakeTrainingClient(self.server, theta, optimizer))

    def create_training_client_from_state(self, path: str, base_model: Any = None, **kw: Any) -> FakeFuture:
        self.server.log.append(("create_training_client_from_state", path))
        return self.server.submit("create", FakeTrainingClient(self.server, self.server.states[path][0]))

    def create_sampling_client(self, model_path: Any = None, base_model: Any = None, **kw: Any) -> FakeFuture:
        self.server.log.append(("create_sampling_client", model_path or base_model))
        theta = self.server.sampler_weights.get(model_path, torch.zeros(VOCAB)) if model_path else torch.zeros(VOCAB)
        return self.server.submit("create_sampling_client", FakeSamplingClient(self.server, theta))

    def create_rest_client(self) -> FakeRestClient:
        return FakeRestClient(self.server)

    def close(self, status: str, detail: Any = None) -> FakeFuture:
        self.server.log.append(("close", status))
        return self.server.submit("close", None)


# ------------------------------------------------------------------------------------------------ fixtures


class QuietHandler(http.server.SimpleHTTPRequestHandler):
    """Serves the export folder without a line per request on stderr."""

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def server(tmp_path: Path) -> Any:
    """A fake service whose exports are served by a real HTTP server on 127.0.0.1."""
    export_dir = tmp_path / "exports"
    export_dir.mkdir()
    handler = functools.partial(QuietHandler, directory=str(export_dir))
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield FakeServer(export_dir, f"http://127.0.0.1:{httpd.server_address[1]}")
    httpd.shutdown()
    httpd.server_close()


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


def events(server: FakeServer, *kinds: str) -> list[tuple]:
    return [e for e in server.log if e[0] in ("submit", "await") and e[1] in kinds]


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
    summary = Trainer(backend, algo, train, held, config, tmp_path / "ck", lambda m, s: history.append(m)).train()
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
        Trainer(backend, algo, items, [], config, folder / "ck", on_metrics).train(folder / "ck" if resume else None)
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
