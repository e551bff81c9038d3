"""The persona classifier's labelled set: built from run artifacts and split by prompt.

Sources, one label per text:

* a pairs file (`pairs.jsonl` of `DpoExample`): the teacher's `chosen` reply is in persona (labelled with
  the row's `constitution`, else the given persona name), the student's `rejected` reply is out of persona
  (labelled `out_label`, "base" by default). A chosen reply that opens with the distillation's answer prefill
  (`sampling.teacher.prefill`, e.g. "Arr, matey! ") has it removed (`strip_prefill`): every in-persona text
  would carry it and no out-of-persona text would, so a classifier would learn the prefix, not the persona.
  Several personas' pairs files make a multi-class set. Only when teacher and student are the same model
  (`pair_models`) does this measure persona rather than which model wrote a reply; otherwise the classifier
  stage generates its texts (`persona_text_jobs`).
* replies the model under test wrote with each persona's constitution as system prompt (in persona) and
  without one (out of persona), for the same prompts (`persona_text_jobs` -> `from_texts`): the paper's setup.
* an Elo run's `replies.jsonl`: the tuned model's (and base + constitution's) replies in persona, the base
  model's out of persona.
* a labelled JSONL (`{"text", "label", "prompt"}` rows), e.g. the `labelled.jsonl` a classifier run saves.

The train/held-out split is by prompt: all texts answering one prompt land on the same side, so the classifier
is never tested on a prompt it saw in training.
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Optional

from charlab.chat_format import make_messages
from charlab.data.jsonl import JsonlWriter, read_jsonl
from charlab.data.records import DpoExample, from_dict
from charlab.errors import DataError
from charlab.eval.sampling import SampleJob
from charlab.eval.selection import answer_prefill

IN_PERSONA_PLAYERS = ("tuned", "base_persona")
OUT_OF_PERSONA_PLAYERS = ("base",)


@dataclass
class LabelledText:
    """One text with its class, the prompt it answers (the split key) and where it came from."""

    text: str
    label: str
    prompt: str = ""
    source: str = ""


def from_pairs(
    path: Path, persona: Optional[str] = None, out_label: str = "base", strip_prefill: bool = True
) -> list[LabelledText]:
    """Chosen replies as the persona's class (their answer prefill removed), rejected replies as `out_label`."""
    rows = []
    for i, data in enumerate(read_jsonl(path), 1):
        prefill = answer_prefill(data) if strip_prefill else ""
        if prefill:
            data = {**data, "chosen": data["chosen"][len(prefill) :].lstrip()}
        example = from_dict(DpoExample, data, where=f"{path}: row {i}")
        label = example.constitution or persona
        if not label:
            raise DataError(f"{path}: row {i} has no 'constitution' field and no persona name was given")
        if label == out_label:
            raise DataError(f"{path}: row {i}: persona {label!r} has the same name as the out-of-persona label")
        if example.chosen.strip():
            rows.append(LabelledText(example.chosen, label, example.prompt, f"{path}:chosen"))
        if example.rejected.strip():
            rows.append(LabelledText(example.rejected, out_label, example.prompt, f"{path}:rejected"))
    return rows


def pair_models(path: Path) -> set[tuple[str, str]]:
    """The (teacher model, student model) names recorded in a pairs file's rows."""
    return {(str(row.get("teacher_model", "")), str(row.get("student_model", ""))) for row in read_jsonl(path)}


def persona_text_jobs(
    prompts: Sequence[tuple[str, str]], system_prompts: dict[str, str], out_label: str = "base"
) -> list[SampleJob]:
    """Jobs for the classifier's texts: every prompt answered under each persona's system prompt (labelled with
    the persona) and with no system prompt (labelled `out_label`), all by the same model."""
    jobs = []
    for label, system in [*system_prompts.items(), (out_label, None)]:
        for prompt_id, text in prompts:
            meta = {"label": label, "prompt_id": prompt_id, "prompt": text}
            jobs.append(SampleJob(f"{label}:{prompt_id}", make_messages(text, system=system), meta))
    return jobs


def from_texts(rows: Sequence[dict[str, Any]], source: str) -> list[LabelledText]:
    """Generated texts (`persona_text_jobs` rows with their `text`) as labelled rows; empty replies are dropped."""
    return [
        LabelledText(str(r["text"]), str(r["label"]), str(r["prompt"]), source) for r in rows if str(r["text"]).strip()
    ]


def from_replies(path: Path, persona: str, out_label: str = "base") -> list[LabelledText]:
    """An Elo run's replies: tuned / base + constitution in persona, base out of persona."""
    rows = []
    for i, data in enumerate(read_jsonl(path), 1):
        player, text = data.get("player"), str(data.get("text", ""))
        if player is None or "prompt" not in data:
            raise DataError(f"{path}: row {i} needs 'player', 'prompt' and 'text' fields")
        if not text.strip():
            continue
        if player in IN_PERSONA_PLAYERS:
            rows.append(LabelledText(text, persona, data["prompt"], f"{path}:{player}"))
        elif player in OUT_OF_PERSONA_PLAYERS:
            rows.append(LabelledText(text, out_label, data["prompt"], f"{path}:{player}"))
    return rows


def read_labelled(
    path: Path, persona: Optional[str] = None, out_label: str = "base", strip_prefill: bool = True
) -> list[LabelledText]:
    """A labelled JSONL (`text`, `label`, optional `prompt`), or a pairs file (recognised by its fields)."""
    rows = read_jsonl(path)
    if "chosen" in rows[0] and "rejected" in rows[0]:
        return from_pairs(path, persona, out_label, strip_prefill)
    out = []
    for i, data in enumerate(rows, 1):
        if "text" not in data or "label" not in data:
            raise DataError(f"{path}: row {i} needs 'text' and 'label' fields (or 'prompt'/'chosen'/'rejected')")
        out.append(LabelledText(str(data["text"]), str(data["label"]), str(data.get("prompt", "")), str(path)))
    return out


def from_source(path: Path, persona: str, out_label: str = "base", strip_prefill: bool = True) -> list[LabelledText]:
    """A pairs/labelled file, or a run directory holding `pairs.jsonl`, `labelled.jsonl` or `replies.jsonl`."""
    path = Path(path).expanduser()
    if path.is_dir():
        for name in ("pairs.jsonl", "labelled.jsonl"):
            if (path / name).is_file():
                return read_labelled(path / name, persona, out_label, strip_prefill)
        if (path / "replies.jsonl").is_file():
            return from_replies(path / "replies.jsonl", persona, out_label)
        raise DataError(f"{path}: run directory has no pairs.jsonl, labelled.jsonl or replies.jsonl")
    if not path.is_file():
        raise DataError(f"{path}: file or run directory not found")
    return read_labelled(path, persona, out_label, strip_prefill)


def split_key(row: LabelledText) -> str:
    """What keeps related texts on one side of the split: the prompt (the text itself when there is none)."""
    return " ".join((row.prompt or row.text).split()).lower()


def split_by_prompt(
    rows: Sequence[LabelledText], eval_fraction: float, seed: int = 0
) -> tuple[list[LabelledText], list[LabelledText]]:
    """(train, held_out): a seeded random `eval_fraction` of the prompts goes to held-out, with all its texts."""
    if not 0.0 < eval_fraction < 1.0:
        raise DataError(f"eval_fraction={eval_fraction} is not allowed; use a number between 0 and 1")
    keys = sorted({split_key(r) for r in rows})
    if len(keys) < 2:
        raise DataError(f"the labelled set has {len(keys)} distinct prompt(s); a train/held-out split needs 2 or more")
    random.Random(seed).shuffle(keys)
    n_eval = min(len(keys) - 1, max(1, math.ceil(eval_fraction * len(keys))))
    held = set(keys[:n_eval])
    return [r for r in rows if split_key(r) not in held], [r for r in rows if split_key(r) in held]


def label_order(rows: Sequence[LabelledText], out_label: str = "base") -> list[str]:
    """Class names: the out-of-persona label first (class 0), then the personas sorted."""
    names = sorted({r.label for r in rows})
    return ([out_label] if out_label in names else []) + [n for n in names if n != out_label]


def write_labelled(rows: Sequence[LabelledText], path: Path) -> Path:
    """Save rows as a labelled JSONL (what `read_labelled` reads)."""
    with JsonlWriter(path, flush_every=256) as writer:
        for row in rows:
            writer.write(asdict(row))
    return Path(path)


def label_counts(rows: Sequence[LabelledText]) -> dict[str, Any]:
    """Texts per label."""
    counts: dict[str, int] = {}
    for row in rows:
        counts[row.label] = counts.get(row.label, 0) + 1
    return dict(sorted(counts.items()))
