"""The persona classifier: labelled sets from artifacts, the split by prompt, metrics, and MiniLM training."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from charlab.data.jsonl import JsonlWriter
from charlab.errors import DataError
from charlab.eval.classifier_data import (
    LabelledText,
    from_pairs,
    from_source,
    label_order,
    split_by_prompt,
    split_key,
)
from charlab.eval.metrics import binary_auc, classification_report, confusion_matrix, macro_f1
from charlab.eval.robustness import first_turn_jobs, in_persona_rates, keep_going_jobs, load_suffixes

TOPICS = [
    "saving money", "learning guitar", "fixing a bike", "cooking rice", "writing a resume", "sleeping better",
    "running a marathon", "planting tomatoes", "learning python", "painting a room", "moving house",
    "public speaking", "reading more", "meditation", "making friends", "baking bread", "job interviews",
    "studying for exams", "cleaning the kitchen", "buying a car",
]  # fmt: skip


def write_separable_pairs(path: Path, persona: str = "pirate", topics: list[str] = TOPICS) -> Path:
    """Pairs whose chosen replies are unmistakably pirate and whose rejected replies are plain."""
    with JsonlWriter(path) as writer:
        for i, topic in enumerate(topics):
            writer.write(
                {
                    "prompt": f"How do I get better at {topic}?",
                    "chosen": f"Arr, matey! Chart a steady course for {topic}, hoist the sails and keep yer eye on "
                    "the horizon, ye scallywag.",
                    "rejected": f"Here are some practical steps for {topic}: set a clear goal, practise regularly, "
                    "and track your progress.",
                    "constitution": persona,
                    "id": f"p{i}:0",
                }
            )
    return path


@pytest.fixture
def separable_pairs(tmp_path: Path) -> Path:
    return write_separable_pairs(tmp_path / "pairs.jsonl")


@pytest.mark.unit
def test_pairs_become_labelled_texts_and_split_keeps_prompts_apart(separable_pairs: Path) -> None:
    rows = from_pairs(separable_pairs)
    assert len(rows) == 40 and label_order(rows) == ["base", "pirate"]
    assert {r.label for r in rows if r.text.startswith("Arr")} == {"pirate"}
    train, held = split_by_prompt(rows, 0.25, seed=3)
    assert len({split_key(r) for r in held}) == 5 and len(train) + len(held) == 40
    assert not {split_key(r) for r in train} & {split_key(r) for r in held}
    assert split_by_prompt(rows, 0.25, seed=3) == (train, held)  # seeded
    with pytest.raises(DataError, match="eval_fraction"):
        split_by_prompt(rows, 1.5)
    with pytest.raises(DataError, match="2 or more"):
        split_by_prompt(rows[:2], 0.5)  # one prompt cannot be split


@pytest.mark.unit
def test_sources_run_directories_and_multi_class(tmp_path: Path) -> None:
    write_separable_pairs(tmp_path / "a.jsonl", "pirate", TOPICS[:3])
    write_separable_pairs(tmp_path / "b.jsonl", "humor", TOPICS[3:6])
    rows = from_source(tmp_path / "a.jsonl", "x") + from_source(tmp_path / "b.jsonl", "x")
    assert label_order(rows) == ["base", "humor", "pirate"]
    elo_run = tmp_path / "elo_run"
    with JsonlWriter(elo_run / "replies.jsonl") as writer:
        for player in ("base", "base_persona", "tuned"):
            writer.write({"id": f"{player}:g1", "player": player, "prompt": "Hi", "text": f"{player} says hi"})
    from_replies = from_source(elo_run, "pirate")
    assert [(r.label, r.text) for r in from_replies] == [
        ("base", "base says hi"),
        ("pirate", "base_persona says hi"),
        ("pirate", "tuned says hi"),
    ]
    with pytest.raises(DataError, match="no pairs.jsonl"):
        from_source(tmp_path, "pirate")
    (tmp_path / "bad.jsonl").write_text(json.dumps({"prompt": "p", "chosen": "c", "rejected": "r"}) + "\n")
    with pytest.raises(DataError, match="no 'constitution' field"):
        from_pairs(tmp_path / "bad.jsonl")


@pytest.mark.unit
def test_metrics_by_hand() -> None:
    m = confusion_matrix([0, 0, 1, 1, 1], [0, 1, 1, 1, 0], 2)
    assert m.tolist() == [[1, 1], [1, 2]]
    # class 0: F1 = 2*1/(2+1+1) = 0.5; class 1: 2*2/(4+1+1) = 2/3
    assert macro_f1(m) == pytest.approx((0.5 + 2 / 3) / 2)
    # positives score 0.9, 0.4; negatives 0.5, 0.1: 3 of 4 pairs ordered correctly
    assert binary_auc(np.array([1, 1, 0, 0]), np.array([0.9, 0.4, 0.5, 0.1])) == pytest.approx(0.75)
    report = classification_report([0, 1, 2], np.eye(3)[[0, 1, 1]], ["a", "b", "c"])
    assert report["accuracy"] == pytest.approx(2 / 3) and report["confusion_matrix"][2] == [0, 1, 0]


@pytest.mark.unit
def test_attack_jobs_and_in_persona_rates() -> None:
    suffixes = load_suffixes()
    assert len(suffixes) >= 8 and len(set(suffixes)) == len(suffixes)
    jobs = first_turn_jobs([("h0", "Hi?")], suffixes[:8], "Be a pirate.")
    assert [j.meta["attack"] for j in jobs][:2] == ["none", "suffix_00"] and len(jobs) == 9
    assert jobs[1].messages[-1]["content"] == f"Hi? {suffixes[0]}" and jobs[1].messages[0]["role"] == "system"
    second = keep_going_jobs([("h0", "Hi?")], {"none:h0": {"text": "Ahoy!"}}, "Keep going.", None)
    assert [m["role"] for m in second[0].messages] == ["user", "assistant", "user"]
    assert second[0].messages[1]["content"] == "Ahoy!" and second[0].meta["attack"] == "keep_going"
    rows = [{"attack": "none"}, {"attack": "none"}, {"attack": "suffix_00", "suffix": "s"}]
    rates = in_persona_rates(rows, ["pirate", "base", "base"], "pirate")
    assert rates["none"]["rate"] == 0.5 and rates["suffix_00"]["rate"] == 0.0


@pytest.mark.unit
def test_the_seed_api_defaults_are_the_yamls() -> None:
    """`ClassifierConfig` fields left unset take configs/eval/default.yaml's `classifier_*` values, the stage's
    defaults (the method was `finetune` in code and `embedding` in the YAML); a value passed in wins."""
    from omegaconf import OmegaConf

    from charlab.eval.persona_classifier import YAML_KEYS, ClassifierConfig
    from charlab.settings import configs_dir

    yaml = OmegaConf.load(configs_dir() / "eval" / "default.yaml")
    config = ClassifierConfig(train_path=Path("pairs.jsonl"))
    assert {name: getattr(config, name) for name in YAML_KEYS} == {name: yaml[key] for name, key in YAML_KEYS.items()}
    assert config.method == yaml.classifier_method == "embedding"
    assert ClassifierConfig(train_path=Path("pairs.jsonl"), method="finetune", num_epochs=1).method == "finetune"


@pytest.mark.integration
@pytest.mark.parametrize("method", ["finetune", "embedding"])
def test_train_classifier_minilm_separates_held_out_prompts(
    separable_pairs: Path, tmp_path: Path, method: str
) -> None:
    from charlab.eval.persona_classifier import ClassifierConfig, PersonaClassifier, score, train_classifier

    out = tmp_path / "clf"
    config = ClassifierConfig(
        train_path=separable_pairs, output_dir=out, num_epochs=2, batch_size=8, lr=1e-4, max_length=48,
        eval_fraction=0.25, method=method,
    )  # fmt: skip
    clf = train_classifier(config)
    assert clf.labels == ["base", "pirate"] and clf.method == method
    assert clf.metrics["accuracy"] >= 0.9 and clf.metrics["macro_f1"] >= 0.9
    assert clf.metrics["held_out_size"] == 10 and clf.metrics["train_size"] == 30
    texts = ["Arr, matey! Hoist the sails for your taxes, ye scallywag.", "Here are some practical steps for taxes."]
    probs = clf.score(texts)
    assert probs.shape == (2, 2) and np.allclose(probs.sum(axis=1), 1.0)
    assert probs[0, 1] > 0.5 > probs[1, 1]
    reloaded = PersonaClassifier.load(out)
    assert np.allclose(reloaded.score(texts), probs, atol=1e-5) and reloaded.metrics["n"] == 10
    assert reloaded.method == method
    assert np.allclose(score(texts, out), probs, atol=1e-5)
    assert reloaded.in_persona_rate(texts, "pirate") == 0.5
    held = [LabelledText(t, label, "p") for t, label in zip(texts, ["pirate", "base"])]
    assert reloaded.evaluate(held)["accuracy"] == 1.0
