"""The constitution editor's logic: validate JSON text, and save it only inside the constitutions folder.

A persona name is the file name, so it must match `[a-z0-9_-]+`: that alone rules out `../x`, `a/b`, hidden
files and empty names. The target is also resolved and checked to be a plain file directly inside the folder
(no symlink pointing elsewhere), and an existing file is only replaced when the user asks.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Optional

from charlab.constitution import (
    Constitution,
    constitution_path,
    list_personas,
    parse_constitution,
    save_constitution,
    validate_persona_name,
)
from charlab.errors import ConstitutionError


def valid_name(name: str) -> bool:
    """Whether `name` is a usable persona name (`[a-z0-9_-]+`, at most 64 characters)."""
    try:
        validate_persona_name(name)
    except ConstitutionError:
        return False
    return True


def persona_names(directory: Path) -> list[str]:
    """The personas (constitution files) in the folder."""
    return list_personas(directory)


def load_text(directory: Path, name: str) -> str:
    """The file's text as written (any supported format), for editing."""
    path = safe_target(directory, name)
    if not path.is_file():
        raise ConstitutionError(f"{path}: constitution file not found")
    return path.read_text(encoding="utf-8")


def template(name: str) -> str:
    """A small valid constitution to start a new persona from."""
    constitution = Constitution(
        name=name,
        system_prompt="You are ... (describe the character the assistant plays, in a few sentences).",
        description="One sentence about this persona.",
        traits=[
            {"trait": "I ... (a first-person sentence about one trait)", "questions": ["A question that shows it"]}
        ],
        safety=["I never help with anything harmful."],
    )
    return constitution.to_json()


def parse_text(text: str, name: Optional[str] = None) -> Constitution:
    """Validate editor text; with `name`, the persona is renamed to it. Errors are one line with the field."""
    if not text or not text.strip():
        raise ConstitutionError("the constitution is empty")
    try:
        data: Any = json.loads(text)
    except json.JSONDecodeError as err:
        raise ConstitutionError(f"invalid JSON at line {err.lineno} column {err.colno}: {err.msg}") from None
    if name is not None:
        validate_persona_name(name)
        if isinstance(data, dict):
            data["name"] = name
    source = Path(f"{name}.json" if name else "constitution")
    return parse_constitution(data, source, name=name)


def safe_target(directory: Path, name: str) -> Path:
    """`<directory>/<name>.json`, refused unless it is a plain file place directly inside `directory`."""
    path = constitution_path(directory, name)  # validates the name
    root = Path(directory).resolve()
    if path.is_symlink() or path.resolve().parent != root:
        raise ConstitutionError(f"{path}: not a plain file inside {root}; refusing to write there")
    return path


def save_text(text: str, name: str, directory: Path, overwrite: bool = False) -> Path:
    """Validate `text` as persona `name` and write it (charlab's JSON format) to `<directory>/<name>.json`."""
    validate_persona_name(name)
    constitution = parse_text(text, name)
    path = safe_target(directory, name)
    if path.exists() and not overwrite:
        raise ConstitutionError(f"{path.name} already exists: tick 'replace the existing file' to overwrite it")
    return save_constitution(constitution, directory, overwrite=overwrite)
