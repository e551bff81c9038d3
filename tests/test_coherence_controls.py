"""The coherence instruments against the cheap fakes that would fool a persona-only evaluation, on SmolLM2-135M.

Players on 16 held-out prompts: base; base + the pirate constitution's system prompt; hand-written coherent pirate
replies (`tests/fixtures/coherent_pirate.jsonl`); and three fakes built from them: a looping player (the first
sentence of base's reply, five times), a prefix-only player ("Arr, matey! " + base's reply) and an off-topic
player (the coherent pirate replies, each given to the next prompt). Each fake must be caught by the instrument
meant for it, with its 95% CI (paired with base, by prompt), and read as "worse" by the verdict; base +
constitution and the coherent pirate must pass every coherence instrument (an instrument that flags all persona
text is as broken as one that flags none). The persona classifier is trained like the demo's: on pairs whose
chosen replies were written with the answer prefill "Arr, matey! ", which it strips.

Injected bugs, each seen to fail its control (the line broken, then restored):
- loops: the repeated n-gram check in `filters.degeneracy` never firing (`< min_distinct_ngrams` -> `< 0`): the
  looping player reads 1 of 16 (CI +0.00 – +0.19), not worse.
- relevance (LM): `relevance.lm_identification` scoring the own prompt in every row (`[item.prompt_id, *others]` ->
  `[item.prompt_id] * (1 + len(...))`): no reply beats itself, 0.00 vs 0.00, off-topic no worse than base.
- relevance (MiniLM): `embedding_relevance` taking the first distractor as the own prompt: 0.00 vs 0.00, not flagged.
Not caught here: the prefill left in the classifier's training texts (`prefill = ""` in `from_pairs`). The MiniLM
embedding classifier does not learn the prefix alone (prefix-only stays below the coherent pirate with or without the
stripping; on the demo's own pairs 0.10 without, 0.15 with, vs the caricature 0.75 / 0.90); what the prefix inflated
was its held-out accuracy (0.94 with it, 0.75 without). `tests/test_coherence.py` guards the stripping itself.
"""

from __future__ import annotations

import json
from typing import Any

import pytest

from charlab.chat_format import make_messages
from charlab.constitution import load_constitution
from charlab.eval.classifier_data import from_pairs
from charlab.eval.coherence import player_estimates, reply_rows
from charlab.eval.loops import stock_vocabulary, stop_words
from charlab.eval.persona_classifier import ClassifierConfig, load_encoder, train_on_rows
from charlab.eval.prompts import generic_prompts
from charlab.eval.relevance import ReplyItem, distractors, embedding_relevance, lm_identification
from charlab.eval.verdict import KEPT, WORSE, coherence_readings
from charlab.generation.base import SamplingParams
from charlab.settings import project_root
from tests.test_eval_controls import smol  # noqa: F401  (the SmolLM2 sampler fixture)

pytestmark = [pytest.mark.integration, pytest.mark.slow]

ROOT = project_root()
PERSONA = load_constitution(ROOT / "constitutions" / "pirate.json", name="pirate")
FIXTURE = [json.loads(row) for row in (ROOT / "tests" / "fixtures" / "coherent_pirate.jsonl").read_text().splitlines()]
HELD_OUT = [(row["prompt_id"], row["prompt"]) for row in FIXTURE]
TRAIN = generic_prompts()[216:236]
PREFILL = "Arr, matey! "
REPLY = SamplingParams(temperature=0.7, top_p=0.95, max_new_tokens=48, seed=1)
PLAYERS = ("base", "base_persona", "coherent", "looping", "prefix_only", "off_topic")


def first_sentence(text: str) -> str:
    end = min((text.find(mark) for mark in ".!?" if mark in text), default=-1)
    return text[: end + 1] if end > 0 else text


@pytest.fixture(scope="module")
def replies(smol: Any) -> dict[str, dict[str, Any]]:  # noqa: F811
    """Every player's reply to every held-out prompt, keyed `<player>:<prompt id>`."""
    base = smol.sample([make_messages(text) for _, text in HELD_OUT], REPLY)
    prompted = smol.sample([make_messages(text, system=PERSONA.system_prompt) for _, text in HELD_OUT], REPLY)
    coherent = {row["prompt_id"]: row["text"] for row in FIXTURE}
    out = {}
    for i, ((pid, _), b, p) in enumerate(zip(HELD_OUT, base, prompted)):
        texts = {
            "base": b.text, "base_persona": p.text, "coherent": coherent[pid],
            "looping": " ".join([first_sentence(b.text)] * 5), "prefix_only": PREFILL + b.text,
            "off_topic": coherent[HELD_OUT[(i + 1) % len(HELD_OUT)][0]],
        }  # fmt: skip
        out.update({f"{name}:{pid}": {"text": text} for name, text in texts.items()})
    return out


@pytest.fixture(scope="module")
def classifier(smol: Any, tmp_path_factory: pytest.TempPathFactory) -> Any:  # noqa: F811
    """The demo's classifier: trained on pairs whose chosen (teacher, pirate prompt + answer prefill) replies open
    with the prefill and rejected (base) replies do not; the prefill is stripped from the training texts."""
    folder = tmp_path_factory.mktemp("classifier")
    teacher = smol.sample([make_messages(t, system=PERSONA.system_prompt) for _, t in TRAIN],
                          SamplingParams(**{**REPLY.__dict__, "prefill": PREFILL}))  # fmt: skip
    student = smol.sample([make_messages(t) for _, t in TRAIN], REPLY)
    pairs = folder / "pairs.jsonl"
    with pairs.open("w") as f:
        for (_, prompt), chosen, rejected in zip(TRAIN, teacher, student):
            row = {"prompt": prompt, "chosen": PREFILL + chosen.text, "rejected": rejected.text,
                   "constitution": "pirate", "sampling": {"teacher": {"prefill": PREFILL}}}  # fmt: skip
            f.write(json.dumps(row) + "\n")
    rows = from_pairs(pairs)
    config = ClassifierConfig(train_path=pairs, output_dir=folder / "clf", method="embedding", max_length=128)
    return train_on_rows(rows, rows[:2], config)


@pytest.fixture(scope="module")
def rows(smol: Any, replies: dict, classifier: Any) -> list[dict[str, Any]]:  # noqa: F811
    """Every reply measured as `stage=coherence` measures it (K = 5 other prompts)."""
    items = [ReplyItem(f"{p}:{pid}", pid, replies[f"{p}:{pid}"]["text"]) for p in PLAYERS for pid, _ in HELD_OUT]
    others = distractors([pid for pid, _ in HELD_OUT], 5)
    lm = lm_identification(smol, items, dict(HELD_OUT), others, batch_size=16)
    encoder, tokenizer = load_encoder("minilm", device="cpu")
    minilm = embedding_relevance(encoder, tokenizer, items, dict(HELD_OUT), others)
    predicted = classifier.predict([item.text for item in items])
    in_persona = {item.id: label == "pirate" for item, label in zip(items, predicted)}
    ignore = stop_words() | stock_vocabulary(PERSONA)
    return reply_rows(
        replies, PLAYERS, HELD_OUT, ignore=ignore, lm=lm, minilm=minilm, in_persona=in_persona,
        min_content_words=3, min_distinct_ngrams=0.5,
    )  # fmt: skip


def readings(rows: list[dict], player: str) -> dict[str, Any]:
    """The verdict's coherence readings with `player` as tuned (paired with base), by instrument."""
    renamed = [{**r, "id": r["id"].replace(f"{player}:", "tuned:"), "player": "tuned"} if r["player"] == player else r
               for r in rows if r["player"] in ("base", player)]  # fmt: skip
    summary: dict[str, Any] = {"instruments": {"distractors": "5"}}
    for measure in ("loop", "relevance", "minilm_relevance"):
        summary[measure] = {k: v.as_dict() for k, v in
                            player_estimates(renamed, ["base", "tuned"], HELD_OUT, measure, 2000).items()}  # fmt: skip
    summary["loop_counts"] = {p: [sum(r["loop"] is not None for r in renamed if r["player"] == p), len(HELD_OUT)]
                              for p in ("base", "tuned")}  # fmt: skip
    return {r.instrument: r for r in coherence_readings(summary, 10)}


def test_each_fake_is_caught_by_the_instrument_meant_for_it(rows: list[dict]) -> None:
    looping = readings(rows, "looping")
    assert looping["loops"].status == WORSE, looping["loops"].text
    off_topic = readings(rows, "off_topic")
    assert off_topic["relevance"].status == WORSE, off_topic["relevance"].text
    assert off_topic["MiniLM relevance"].status == WORSE, off_topic["MiniLM relevance"].text
    assert off_topic["loops"].status == KEPT  # the replies themselves are fine: only the prompt is wrong


def test_coherent_pirates_pass_every_coherence_instrument(rows: list[dict]) -> None:
    for player in ("coherent", "base_persona", "prefix_only"):
        for instrument, reading in readings(rows, player).items():
            assert reading.status == KEPT, f"{player}: {instrument}: {reading.text}"


def test_a_prefix_alone_does_not_make_a_reply_in_character(rows: list[dict]) -> None:
    rates = player_estimates(rows, ["base", "coherent", "prefix_only"], HELD_OUT, "in_character", 2000)
    assert rates["coherent - base"].low > 0, rates  # the classifier sees the persona written throughout ...
    gap = rates["prefix_only - base"].value - rates["coherent - base"].value
    prefix, coherent = rates["prefix_only"], rates["coherent"]
    # ... not the prefix
    assert gap < 0 and prefix.high < coherent.value, f"prefix-only {prefix} vs coherent {coherent}"
