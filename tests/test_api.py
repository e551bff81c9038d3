"""The Python API: every seed-README name imports from `charlab`."""

from __future__ import annotations

import pytest

import charlab

pytestmark = pytest.mark.unit
SEED_NAMES = [
    "generate_constitution", "generate_dpo_pairs", "run_dpo_training", "GenerationConfig", "TrainingConfig",
    "train_classifier", "ClassifierConfig", "compute_elo", "load_matches",
    "DpoExample", "IntrospectionExample", "Match",
]  # fmt: skip


@pytest.mark.parametrize("name", charlab.__all__)
def test_every_public_name_resolves(name: str) -> None:
    assert getattr(charlab, name) is not None


def test_the_seed_readme_calls_are_all_there() -> None:
    assert set(SEED_NAMES) <= set(charlab.__all__)
    with pytest.raises(AttributeError):
        charlab.not_a_thing  # noqa: B018


def test_compute_elo_keeps_the_seed_two_player_api(tmp_path) -> None:
    from charlab import Match, compute_elo, load_matches
    from charlab.data.jsonl import JsonlWriter

    path = tmp_path / "matches.jsonl"
    with JsonlWriter(path) as writer:
        for _ in range(3):
            writer.write(Match(prompt="p", base_response="b", tuned_response="t", winner="tuned"))
    ratings = compute_elo(load_matches(path), k_factor=32.0)
    assert ratings["tuned"] > 1000.0 > ratings["base"]
