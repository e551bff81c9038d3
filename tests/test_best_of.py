"""Best-of-N sampling on the real tiny model: the best candidate by the score, every score recorded."""

from __future__ import annotations

from dataclasses import replace

import pytest

from charlab.errors import ConfigError
from charlab.generation.base import SamplingParams
from charlab.generation.best_of import BestOfSampler, ScoredCompletion, persona_contrast
from charlab.generation.text import derive_seed

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def tiny_sampler(tiny_model, cache_dir):
    from charlab.generation.hf import HFSampler

    sampler = HFSampler.load(tiny_model, cache_dir, batch_size=4, device="cpu")
    yield sampler
    sampler.close()


def user(text: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": text}]


def by_length(conversations, candidates):
    return [[float(len(c.text)) for c in cands] for cands in candidates]


def test_best_of_returns_the_highest_scoring_of_n_distinct_samples(tiny_sampler):
    """Injected bugs caught: every candidate drawn with the same seed (the n candidates are then one sample
    repeated); taking the lowest score; mixing up candidates of different conversations."""
    conversations = [user("tell me a story"), user("what is a ship?"), user("hello")]
    params = SamplingParams(temperature=1.0, top_p=1.0, max_new_tokens=12, seed=5)
    best = BestOfSampler(tiny_sampler, n=4, score=by_length, scorer_name="length").sample(conversations, params)
    draws = [tiny_sampler.sample(conversations, replace(params, seed=derive_seed(5, "best_of", j))) for j in range(4)]
    for i, completion in enumerate(best):
        texts = [draw[i].text for draw in draws]
        assert len(set(texts)) > 1, "the candidates of one conversation must be distinct samples"
        assert isinstance(completion, ScoredCompletion)
        assert completion.candidate_scores == [float(len(t)) for t in texts]
        assert completion.text == texts[completion.picked] and completion.score == max(completion.candidate_scores)
        assert completion.picked == completion.candidate_scores.index(completion.score)  # ties: the earliest
        assert completion.record() == {
            "n": 4, "scorer": "length", "score": completion.score, "scores": completion.candidate_scores,
            "picked": completion.picked,
        }  # fmt: skip


def test_best_of_picks_an_eligible_candidate_over_a_higher_scoring_rejected_one(tiny_sampler):
    """The longest candidate wins by the score unless `eligible` rejects it; then a shorter (eligible) one wins,
    and with none eligible the best of all. Injected bug caught: `eligible` ignored (the longest always wins)."""
    conversations = [user("tell me a story"), user("what is a ship?")]
    params = SamplingParams(temperature=1.0, top_p=1.0, max_new_tokens=12, seed=5)
    plain = BestOfSampler(tiny_sampler, n=4, score=by_length).sample(conversations, params)
    longest = {c.text for c in plain}
    picky = BestOfSampler(tiny_sampler, n=4, score=by_length, eligible=lambda c: c.text not in longest)
    for was, now in zip(plain, picky.sample(conversations, params)):
        assert now.candidate_scores == was.candidate_scores  # the same candidates, the same scores
        if min(now.candidate_scores) < was.score:  # a shorter, eligible candidate exists: it wins
            assert now.text not in longest and now.score < was.score
    nothing = BestOfSampler(tiny_sampler, n=4, score=by_length, eligible=lambda c: False)
    assert [c.text for c in nothing.sample(conversations, params)] == [c.text for c in plain]


def test_best_of_rejects_bad_sizes_and_scorers(tiny_sampler):
    with pytest.raises(ConfigError, match="best_of=0"):
        BestOfSampler(tiny_sampler, n=0, score=by_length)
    short = BestOfSampler(tiny_sampler, n=2, score=lambda conversations, candidates: [[1.0]] * len(candidates))
    with pytest.raises(ValueError, match="wanted 2 per reply"):
        short.sample([user("hi")], SamplingParams(max_new_tokens=2, seed=1))
    assert BestOfSampler(tiny_sampler, n=3, score=by_length).sample([], SamplingParams()) == []


def test_persona_contrast_is_the_log_likelihood_gain_the_system_prompt_gives_each_reply(tiny_sampler):
    """Injected bugs caught: scoring both sides with the system prompt (every score 0); scores of one
    conversation's candidates given to another's; an empty reply scored instead of ranked last."""
    import math

    from charlab.generation.base import Completion

    system = {"role": "system", "content": "You are a pirate. Say arr."}
    conversations = [[system, *user("what is a ship?")], [system, *user("hello there")]]
    candidates = [[Completion("Arr, a ship sails."), Completion("")], [Completion("Hi."), Completion("Arr matey.")]]
    scores = persona_contrast(tiny_sampler)(conversations, candidates)
    assert scores[0][1] == -math.inf
    for conversation, cands, row in zip(conversations, candidates, scores):
        for completion, score in zip(cands, row):
            if not completion.text:
                continue
            with_system = tiny_sampler.score_choices([conversation], [[completion.text]])[0][0]
            without = tiny_sampler.score_choices([conversation[1:]], [[completion.text]])[0][0]
            assert score == pytest.approx(with_system - without, abs=1e-4) and score != 0.0


def test_best_of_over_an_api_provider_streams_within_its_limit():
    """Over an OpenAI-compatible server the wrapper streams: each request draws its candidates at once, the
    server never sees more than the provider's max_concurrency, and every conversation gets its best of 3.
    Injected bug: a streaming lane sized max_concurrency (not max_concurrency // n) sends 18 at once."""
    import itertools
    import threading

    from openai_compat_server import OpenAICompatServer

    from charlab.generation.best_of import best_of_sampler
    from charlab.generation.openai_compat import OpenAISampler
    from charlab.generation.streaming import Request, RequestStream

    counter, lock = itertools.count(), threading.Lock()

    def reply(messages):
        with lock:
            return "word " * (1 + next(counter) % 5)  # candidates of different lengths

    with OpenAICompatServer(replies=reply, latency_s=0.2) as server:
        inner = OpenAISampler("m", base_url=server.base_url, max_concurrency=6)
        best = best_of_sampler(inner, 3, by_length, scorer_name="length")
        assert best.max_concurrency == 2
        got: dict[int, ScoredCompletion] = {}
        source = [Request(best, user(f"q{i}"), SamplingParams(max_new_tokens=8, seed=1), i) for i in range(10)]
        RequestStream().run(source, lambda request, completion: got.__setitem__(request.tag, completion))
        assert len(server.requests) == 30 and server.max_in_flight == 6
    assert sorted(got) == list(range(10))
    for completion in got.values():
        assert isinstance(completion, ScoredCompletion) and len(completion.candidate_scores) == 3
        assert completion.score == max(completion.candidate_scores) == len(completion.text)
