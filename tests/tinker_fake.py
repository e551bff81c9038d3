"""A FAKE Tinker service for tests: the `tinker` 0.38 SDK's client calls, served in-process.

The real service cannot run here (it trains on remote GPUs), so this fake stands in for it and mirrors the
SDK's interface: `FakeServiceClient`, `FakeTrainingClient`, `FakeSamplingClient` and `FakeRestClient` have the
SDK's method names and signatures, return SDK-style futures (`tinker`'s own `AwaitableConcurrentFuture`) and
build real `tinker.types` objects; they check every `Datum` they receive and refuse `tinker://` paths they
never issued, as the service would. The "server model" is a unigram table over the vocabulary trained with
Adam: `forward_backward_custom` works as the SDK does (log-probs out, the caller's loss run locally, its
gradient sent back as per-token weights), sampling draws tokens from the table (seeded, honouring stop
tokens). Exported adapters are served by a real HTTP server on 127.0.0.1 (`serve_exports`).

    with serve_exports(tmp_path) as server:                      # a FakeServer
        service = FakeServiceClient(server)                      # what tinker.ServiceClient(...) returns
"""

from __future__ import annotations

import contextlib
import copy
import datetime
import functools
import http.server
import json
import threading
from collections.abc import Iterator
from concurrent.futures import Future
from pathlib import Path
from typing import Any, Optional

import tinker
import torch
from tinker.lib.public_interfaces.api_future import AwaitableConcurrentFuture

VOCAB = 2048


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

    def __init__(self, export_dir: Path, http_base: str, vocab: int = VOCAB):
        self.export_dir, self.http_base, self.vocab = export_dir, http_base, vocab
        self.log: list[tuple] = []
        self.states: dict[str, tuple[torch.Tensor, dict, int]] = {}  # path -> (weights, optimizer, rank)
        self.sampler_weights: dict[str, torch.Tensor] = {}
        self.runs = 0
        self.counter = 0
        self.broken_export = False

    def submit(self, kind: str, value: Any) -> FakeFuture:
        self.counter += 1
        label = (kind, self.counter)
        self.log.append(("submit", *label))
        return FakeFuture(value, self.log, label)

    def weights_at(self, path: str) -> torch.Tensor:
        """The weights a `tinker://` path names; an unknown path fails as the service would."""
        if path in self.sampler_weights:
            return self.sampler_weights[path]
        if path in self.states:
            return self.states[path][0]
        raise ValueError(f"fake tinker service: no weights at {path!r} (never saved here)")


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

    def sample(
        self,
        prompt: Any,
        num_samples: int,
        sampling_params: Any,
        include_prompt_logprobs: bool = False,
        topk_prompt_logprobs: int = 0,
        **kwargs: Any,
    ) -> FakeFuture:
        """Tokens drawn from the table (seeded by `sampling_params.seed`), stopping at a stop token."""
        assert isinstance(sampling_params, tinker.SamplingParams) and isinstance(prompt, tinker.ModelInput)
        self.server.log.append(("sample_prompt", len(prompt.to_ints())))
        generator = torch.Generator().manual_seed(int(sampling_params.seed or 0))
        probs = torch.softmax(self.theta / max(float(sampling_params.temperature or 1.0), 1e-3), dim=0)
        stops = {s for s in sampling_params.stop or [] if isinstance(s, int)}  # stop token ids
        sequences = []
        for i in range(num_samples):
            drawn = torch.multinomial(probs, sampling_params.max_tokens, replacement=True, generator=generator)
            tokens: list[int] = []
            reason = "length"
            for token in drawn.tolist():
                tokens.append(token)
                if token in stops:
                    reason = "stop"
                    break
            sequences.append(tinker.SampledSequence(stop_reason=reason, sequence_id=f"s{i}", _tokens_list=tokens))
        return self.server.submit("sample", tinker.SampleResponse(sequences=sequences))


class FakeTrainingClient:
    """`tinker.TrainingClient`'s calls over a unigram table trained with Adam."""

    def __init__(
        self,
        server: FakeServer,
        rank: int,
        base_model: str,
        theta: Optional[torch.Tensor] = None,
        optimizer: Optional[dict] = None,
    ):
        server.runs += 1
        self.server, self.run_id, self.rank, self.base_model = server, f"run{server.runs}", rank, base_model
        self.theta = torch.zeros(server.vocab) if theta is None else theta.detach().clone()
        self.theta.requires_grad_(True)
        self.optimizer = torch.optim.Adam([self.theta], lr=0.0)
        if optimizer is not None:
            self.optimizer.load_state_dict(copy.deepcopy(optimizer))

    def get_info(self) -> Any:
        """Fetched when the client was created in the SDK, so no future."""
        return tinker.types.GetInfoResponse(
            model_data=tinker.types.ModelData(arch="fake-unigram", model_name=self.base_model),
            model_id=self.run_id,
            is_lora=True,
            lora_rank=self.rank,
            model_name=self.base_model,
        )

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
        self.server.log.append(("adam", params.learning_rate, params.beta1, params.beta2, params.grad_clip_norm))
        for group in self.optimizer.param_groups:
            group.update(lr=params.learning_rate, betas=(params.beta1, params.beta2), eps=params.eps)
        self.optimizer.step()
        self.optimizer.zero_grad()
        return self.server.submit("optim_step", tinker.types.OptimStepResponse(metrics={}))

    def save_state(self, name: str, ttl_seconds: Any = None, overwrite: bool = False, user_metadata: Any = None):
        path = f"tinker://{self.run_id}/weights/{name}"
        state = (self.theta.detach().clone(), copy.deepcopy(self.optimizer.state_dict()), self.rank)
        self.server.states[path] = state
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
        (folder / "adapter_config.json").write_text(
            json.dumps({"r": self.rank, "lora_alpha": 32, "peft_type": "LORA"})
        )
        if self.server.broken_export:
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
    """`tinker.ServiceClient`'s calls that charlab uses, each logged."""

    def __init__(self, server: FakeServer, base_url: Optional[str] = None, api_key: Optional[str] = None):
        self.server, self.base_url, self.api_key = server, base_url, api_key

    def create_lora_training_client(
        self,
        base_model: str,
        rank: int = 32,
        seed: Optional[int] = None,
        train_mlp: bool = True,
        train_attn: bool = True,
        train_unembed: bool = True,
        user_metadata: Optional[dict[str, str]] = None,
        optimizer: Any = None,
    ) -> FakeFuture:
        assert any([train_mlp, train_attn, train_unembed]), "at least one layer group must train (as in the SDK)"
        flags = {"train_attn": train_attn, "train_mlp": train_mlp, "train_unembed": train_unembed}
        self.server.log.append(("create_lora_training_client", base_model, rank, flags))
        return self.server.submit("create", FakeTrainingClient(self.server, rank, base_model))

    def create_training_client_from_state_with_optimizer(self, path: str, base_model: Any = None, **kw: Any):
        self.server.log.append(("create_training_client_from_state_with_optimizer", path))
        theta, optimizer, rank = self._state(path)
        return self.server.submit("create", FakeTrainingClient(self.server, rank, base_model or "", theta, optimizer))

    def create_training_client_from_state(self, path: str, base_model: Any = None, **kw: Any) -> FakeFuture:
        self.server.log.append(("create_training_client_from_state", path))
        theta, _, rank = self._state(path)
        return self.server.submit("create", FakeTrainingClient(self.server, rank, base_model or "", theta))

    def _state(self, path: str) -> tuple[torch.Tensor, dict, int]:
        if path not in self.server.states:
            raise ValueError(f"fake tinker service: no training state at {path!r} (a sampler path is not one)")
        return self.server.states[path]

    def create_sampling_client(
        self,
        model_path: Optional[str] = None,
        base_model: Optional[str] = None,
        retry_config: Any = None,
        record_stability_info: bool = False,
    ) -> FakeFuture:
        if model_path is None and base_model is None:
            raise ValueError("Either model_path or base_model must be provided")
        self.server.log.append(("create_sampling_client", model_path or base_model))
        theta = self.server.weights_at(model_path) if model_path else torch.zeros(self.server.vocab)
        return self.server.submit("create_sampling_client", FakeSamplingClient(self.server, theta))

    def create_rest_client(self) -> FakeRestClient:
        return FakeRestClient(self.server)

    def close(self, status: str, detail: Any = None) -> FakeFuture:
        self.server.log.append(("close", status))
        return self.server.submit("close", None)


class QuietHandler(http.server.SimpleHTTPRequestHandler):
    """Serves the export folder without a line per request on stderr."""

    def log_message(self, format: str, *args: Any) -> None:
        pass


@contextlib.contextmanager
def serve_exports(root: Path, vocab: int = VOCAB) -> Iterator[FakeServer]:
    """A fake service whose exported adapters are served by a real HTTP server on 127.0.0.1."""
    export_dir = Path(root) / "exports"
    export_dir.mkdir(parents=True, exist_ok=True)
    handler = functools.partial(QuietHandler, directory=str(export_dir))
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield FakeServer(export_dir, f"http://127.0.0.1:{httpd.server_address[1]}", vocab)
    finally:
        httpd.shutdown()
        httpd.server_close()


def events(server: FakeServer, *kinds: str) -> list[tuple]:
    """Submit/await events of the given request kinds, in order."""
    return [e for e in server.log if e[0] in ("submit", "await") and e[1] in kinds]
