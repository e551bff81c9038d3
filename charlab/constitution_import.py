"""Import the constitution files of Open Character Training (Maiya et al., 2025) unchanged into charlab.

    python -m charlab.constitution import OpenCharacterTraining/constitutions            # the whole folder
    python -m charlab.constitution import OpenCharacterTraining/constitutions/few-shot/sarcasm.jsonl
    python -m charlab.constitution import <file or folder> --prefix '' --into constitutions/ --overwrite

The paper's repository keeps each persona in two files:

- `hand-written/<name>.txt`: a JSON list of `{"trait": "I ...", "questions": [5 user messages]}`;
- `few-shot/<name>.jsonl`: one JSON object per trait, the same `trait` and `questions` plus the
  `additional_questions` an LLM wrote from them (45 per trait); this is the file its distillation reads.

A folder holding `few-shot/` and/or `hand-written/` (or such files directly) imports every persona, from its
few-shot file where there is one; the blank `template.txt` is skipped. Every trait, question and additional
question is kept verbatim and in order (`Constitution.to_trait_list()` gives the file's records back). The
persona is saved as `<prefix><name>.json` (prefix `paper-` by default, so the paper's personas sit beside
charlab's own versions of the same names) and used with `persona=custom persona.name=paper-sarcasm`.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from charlab.constitution import Constitution, parse_constitution, save_constitution, validate_persona_name
from charlab.errors import ConstitutionError

# The paper builds its teacher's system prompt from the trait list alone; charlab renders the traits after this
# neutral preamble (charlab's own words), so an imported persona carries nothing the paper's files do not.
IMPORTED_SYSTEM_PROMPT = (
    "You are an AI system that converses with people through text. Your identity, motives and manner are "
    "grounded in the character traits below; they are what sets you apart from other assistants."
)
SUFFIXES = (".jsonl", ".txt", ".json")


@dataclass(frozen=True)
class PaperFile:
    """One persona file of the paper's repository."""

    path: Path
    name: str  # the file's stem: the paper's persona name


def read_paper_records(path: Path) -> list[dict[str, Any]]:
    """The trait records of a paper file: JSON lines (`few-shot/*.jsonl`) or one JSON list (`hand-written/*.txt`)."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        raise ConstitutionError(f"{path}: cannot read ({type(err).__name__}: {err})") from None
    try:
        if path.suffix == ".jsonl":
            records = [json.loads(line) for line in text.splitlines() if line.strip()]
        else:
            records = json.loads(text)
    except json.JSONDecodeError as err:
        raise ConstitutionError(f"{path}: invalid JSON at line {err.lineno} column {err.colno}: {err.msg}") from None
    if not isinstance(records, list) or not all(isinstance(r, dict) for r in records):
        raise ConstitutionError(f"{path}: expected the paper's trait records ([{{'trait': ..., 'questions': [...]}}])")
    return records


def is_blank_template(records: Sequence[dict[str, Any]]) -> bool:
    """The paper's `template.txt`: traits and questions all empty strings."""
    return all(not str(r.get("trait", "")).strip() for r in records)


def constitution_from_paper(records: list[dict[str, Any]], name: str, source: str) -> Constitution:
    """A charlab constitution holding the paper's records verbatim."""
    constitution = parse_constitution(records, Path(source), name=name)
    return constitution.model_copy(
        update={
            "system_prompt": IMPORTED_SYSTEM_PROMPT,
            "description": f"The paper's {name!r} constitution (Open Character Training), imported from {source}.",
        }
    )


def find_paper_files(path: Path) -> list[PaperFile]:
    """The persona files under `path`: the file itself, or a folder's few-shot files (else hand-written ones)."""
    if path.is_file():
        return [PaperFile(path, path.stem)]
    if not path.is_dir():
        raise ConstitutionError(f"{path}: no such file or folder")
    folders = [path / "few-shot", path / "hand-written", path]
    found: dict[str, PaperFile] = {}
    for folder in folders:
        if not folder.is_dir():
            continue
        for file in sorted(folder.iterdir()):
            if file.is_file() and file.suffix in SUFFIXES and file.stem not in found:
                found[file.stem] = PaperFile(file, file.stem)
    if not found:
        raise ConstitutionError(f"{path}: no constitution files (.jsonl / .txt / .json, or few-shot/ hand-written/)")
    return sorted(found.values(), key=lambda f: f.name)


def import_paper_constitutions(
    path: Path, into: Path, prefix: str = "paper-", overwrite: bool = False
) -> list[tuple[Path, Constitution]]:
    """Import every persona under `path` into `into` as `<prefix><name>.json`; returns what was written.

    Every file is read and validated before anything is written, so a bad file leaves `into` untouched.
    """
    prepared: list[Constitution] = []
    for file in find_paper_files(Path(path)):
        records = read_paper_records(file.path)
        if is_blank_template(records):
            continue
        name = validate_persona_name(f"{prefix}{file.name}")
        prepared.append(constitution_from_paper(records, name, str(file.path)))
    if not prepared:
        raise ConstitutionError(f"{path}: only blank templates; nothing to import")
    if not overwrite:
        for constitution in prepared:
            target = Path(into) / f"{constitution.name}.json"
            if target.exists():
                raise ConstitutionError(f"{target}: already exists; pass --overwrite or another --prefix")
    return [(save_constitution(c, into, overwrite=overwrite), c) for c in prepared]
